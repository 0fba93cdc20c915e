"""The seed → code → test tables of the reference pages (``SEED_MAP``) name real steps and real
tests, so they cannot drift from the code they describe."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from recipes import apps, plan
from recipes.recipe import make_params

ROOT = Path(__file__).parents[2]


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


@pytest.mark.parametrize("name", ["deis", "govuk-datastore", "govuk-assets"])
def test_every_row_names_a_step_of_the_plan_and_an_existing_test(name: str) -> None:
    r = apps.get(name)
    rows = r.SEED_MAP  # type: ignore[attr-defined]
    assert rows
    extra = {"owner": "assets:assets"} if name == "govuk-assets" else {}  # the owner step
    params = make_params(r, {**getattr(r, "EXAMPLE_PARAMS", {}), **extra}, "test")
    steps = {
        "backup": {s.name for s in plan.backup_plan(r, params, "h").steps},
        "restore": {s.name for s in plan.restore_plan(r, params, "h").steps},
    }
    for command, step, tests in rows:
        kind, _, rest = step.partition(" ")
        if kind in steps:
            names = rest.split(" (")[0].replace(" … ", ", ").split(", ")
            assert set(names) <= steps[kind], (command, names, steps[kind])
        else:
            assert kind in ("controller:", "parameter", "parameters"), step
        assert tests, command
        for ref in tests:
            path, _, test = ref.partition("::")
            assert test in _tests_in(ROOT / path), ref
    assert "## Seed → code → test" in __import__("recipes.docgen").docgen.page(name)
