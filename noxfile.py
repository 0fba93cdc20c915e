"""nox sessions: tests, lint, typecheck, docs, and bench (the benchmark suite; never run by default)."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Every test, against the real servers the harness starts (needs root and Debian packages)."""
    session.run("./scripts/test", *session.posargs, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "bench")
    session.run("ruff", "format", "--check", "src", "tests", "bench")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Regenerate the per-recipe reference pages from params and steps."""
    session.install("-e", ".")
    session.run("python", "-m", "recipes.docgen")


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """The benchmark suite (docs/performance.md): ``nox -s bench -- --scale 4``. Needs root and Debian."""
    session.run("./scripts/install-test-deps", external=True)
    session.run(".venv/bin/python", "bench/run.py", *session.posargs, external=True)
