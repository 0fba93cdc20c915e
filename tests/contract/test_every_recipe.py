"""Every registered recipe: plans are non-empty, each dump has its load, nothing secret shows."""

from __future__ import annotations

import json

import pytest

from recipes import apps, docgen, ops, plan
from recipes.model import Command
from recipes.recipe import make_params

SENTINEL = "pw-SENTINEL-4242"
# Parameters that switch every database on, with passwords, per recipe.
LOADED = {
    "django": {
        "postgres": {"host": "127.0.0.1", "password_env": "RECIPES_TEST_PW"},
        "mysql": {"host": "127.0.0.1", "password_env": "RECIPES_TEST_PW"},
        "sqlite": ["/var/opt/p/p.db"],
    },
    "dss": {
        "govern_postgres": {"host": "127.0.0.1", "password_env": "RECIPES_TEST_PW", "database": "govern"},
        "jobs_check": "bin/dsscli running-jobs",
    },
    "deis": {"gateway": "http://deis-store.example.com", "etcd": "10.0.0.5:4001"},
    "looker": {
        "mysql": {"host": "127.0.0.1", "password_env": "RECIPES_TEST_PW", "database": "looker"},
        "include_logs": True,
    },
    "govuk-datastore": {
        "mysql": {"host": "127.0.0.1", "password_env": "RECIPES_TEST_PW"},
        "aws_key_env": "RECIPES_TEST_PW",
        "aws_secret_env": "RECIPES_TEST_PW",
        "passphrase_env": "RECIPES_TEST_PW",
        "s3_endpoint_url": "http://127.0.0.1:9000",
        "sign_key": "0123456789ABCDEF",
        "encrypt_key": "0123456789ABCDEF",
        "databases": ["whitehall"],
    },
    "govuk-assets": {
        "aws_key_env": "RECIPES_TEST_PW",
        "aws_secret_env": "RECIPES_TEST_PW",
        "passphrase_env": "RECIPES_TEST_PW",
        "owner": "assets:assets",
        "encrypt_key": "0123456789ABCDEF",
    },
}


@pytest.fixture(params=apps.names())
def recipe_name(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RECIPES_TEST_PW", SENTINEL)
    return str(request.param)


def test_registered_recipes_have_docs_and_params(recipe_name: str) -> None:
    r = apps.get(recipe_name)
    assert r.summary and r.seed
    assert recipe_name in LOADED, "add loaded parameters for the new recipe to this contract test"


def test_plans_are_non_empty_and_every_backup_object_is_restored(recipe_name: str) -> None:
    r = apps.get(recipe_name)
    params = make_params(r, LOADED[recipe_name], "contract")
    backup = plan.backup_plan(r, params, "h")
    restore = plan.restore_plan(r, params, "h")
    assert backup.steps and restore.steps
    assert all(s.ops() for s in backup.steps + restore.steps)
    if getattr(r, "external_restore", False):
        # The restore source is a duplicity collection: what a run writes there, a restore reads.
        wrote = {_collection(op.dst) for op in backup.ops() if isinstance(op, ops.Transfer)} - {None}
        got = {_collection(op.src) for op in restore.ops() if isinstance(op, ops.Transfer)} - {None}
        assert wrote and wrote == got
        return
    written = {end.name for op in backup.ops() for end in _ends(op) if end is _dst(op)}
    read = {end.name for op in restore.ops() for end in _ends(op) if end is _src(op)}
    assert written and written == read


def _collection(end: object) -> tuple[str, str] | None:
    if isinstance(end, ops.DuplicityCollection):
        return (end.url, end.file_to_restore)
    return None


def _ends(op: ops.Op) -> list[ops.SnapshotObject]:
    if not isinstance(op, ops.Transfer):
        return []
    return [e for e in (op.src, op.dst) if isinstance(e, ops.SnapshotObject)]


def _src(op: ops.Op) -> object:
    return op.src if isinstance(op, ops.Transfer) else None


def _dst(op: ops.Op) -> object:
    return op.dst if isinstance(op, ops.Transfer) else None


def _commands(p: plan.Plan) -> list[Command]:
    """Every command the plan's ops would send to a host (undo and guard commands included)."""
    out: list[Command] = []
    for op in p.ops():
        if isinstance(op, (ops.Exec, ops.Undo)):
            out.append(op.command)
        elif isinstance(op, ops.Guard):
            out.append(op.probe)
        elif isinstance(op, ops.Transfer):
            for end in (op.src, op.dst):
                if isinstance(end, ops.HostCommand):
                    out += [c for c in (end.command, end.incremental, end.check) if c is not None]
    return out


def test_no_secret_in_plans_docs_or_argv(recipe_name: str) -> None:
    r = apps.get(recipe_name)
    params = make_params(r, LOADED[recipe_name], "contract")
    for p in (plan.backup_plan(r, params, "h"), plan.restore_plan(r, params, "h")):
        assert SENTINEL not in "\n".join(p.lines())
        assert SENTINEL not in json.dumps(p.to_dict())
        for command in _commands(p):
            line, stdin = command.wire()
            assert SENTINEL not in line
            if command.secrets:
                assert SENTINEL.encode() in stdin
    assert SENTINEL not in docgen.page(recipe_name)


def test_generated_docs_are_current(recipe_name: str) -> None:
    from pathlib import Path

    path = Path(__file__).parents[2] / "docs" / "recipes" / f"{recipe_name}.md"
    assert path.read_text() == docgen.page(recipe_name), "run `python -m recipes.docgen`"


def test_show_describes_every_recipe(recipe_name: str) -> None:
    """`recipes show` works for a recipe with a parameter that has no default (deis: gateway):
    its plans are drawn with the recipe's example values."""
    from click.testing import CliRunner

    from recipes.cli import main

    shown = CliRunner().invoke(main, ["--json", "show", recipe_name])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["name"] == recipe_name and data["backup"] and data["restore"]
