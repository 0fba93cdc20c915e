"""Golden plans: the exact commands a django backup and restore run, masked as printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from recipes import apps, plan
from recipes.recipe import make_params

GOLDEN = Path(__file__).parent / "golden"
PARAMS = {
    "root": "/srv/site",
    "postgres": {"host": "db.internal", "port": 5433, "password_env": "PGPW"},
    "sqlite": ["/var/opt/mysite/mysite.db"],
    "mysql": {"host": "127.0.0.1", "password_env": "MYPW"},
    "extra_excludes": ["/home/*/.cache"],
    "exclude_system": True,
}


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("RECIPES_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.read_text() == text, f"{name} changed: rerun with RECIPES_UPDATE_GOLDEN=1 if intended"


@pytest.mark.parametrize("action", ["backup", "restore"])
def test_django_plan_matches_golden(action: str) -> None:
    recipe = apps.get("django")
    params = make_params(recipe, json.loads(json.dumps(PARAMS)), "test")
    build = plan.backup_plan if action == "backup" else plan.restore_plan
    p = build(recipe, params, "web1")
    _check(f"django-{action}.txt", "\n".join(p.lines()) + "\n")
    _check(f"django-{action}.json", json.dumps(p.to_dict(), indent=2, sort_keys=True) + "\n")


def test_default_excludes_are_the_seeds_list_in_order() -> None:
    seed = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "002_32c4ab30ae1b088c.txt"
    from recipes.apps.django import DEFAULT_EXCLUDES

    expected = [
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/var/lock",
        "/var/run",
        "/lost+found",
        "/boot",
        "/tmp",
        "/var/tmp",
        "/media",
        "/mnt",
        "/var/cache",
        "/var/crash",
        "/var/swap",
        "/var/swapfile",
        "/var/swap.img",
        "/var/lib/mysql",
        "/var/lib/postgresql",
    ]
    assert list(DEFAULT_EXCLUDES) == expected
    vendored = Path(__file__).parent / "data" / "seed-002-excludes.txt"
    listed = [line[2:].strip() for line in vendored.read_text().splitlines() if line.startswith("- /")]
    assert listed[: len(expected)] == expected
    if seed.exists():  # the vendored excerpt is still the seed's text, where the seed is at hand
        assert [line for line in seed.read_text().splitlines() if line.startswith("- /")] == [
            line for line in vendored.read_text().splitlines() if line.startswith("- /")
        ]


DSS_VARIANTS: dict[str, dict[str, object]] = {
    "defaults": {},
    "all-categories": {"exclude": ["temporary", "logs", "ignorable", "data"]},
    "govern-jobs": {
        "data_dir": "/data/dss",
        "jobs_check": "bin/dsscli running-jobs",
        "govern_postgres": {
            "host": "pg.internal",
            "port": 5433,
            "password_env": "GOVERN_PW",
            "database": "govern",
        },
    },
}


LOOKER_VARIANTS: dict[str, dict[str, object]] = {
    "defaults": {},
    "logs-no-ssl": {"include_logs": True, "include_ssl": False},
    "cluster": {
        "mysql": {"host": "db.internal", "port": 3306, "user": "looker", "password_env": "LOOKER_DB_PW"},
        "nodes": ["looker2", "looker3"],
        "extra_paths": ["/etc/init.d/looker", "/etc/ssl/looker"],
    },
    "keystore-independent": {
        "keystore_independent": True,
        "master_key_file": "/etc/looker/cmk",
        "key_store": "s3://looker-keys/backups",
    },
}


@pytest.mark.parametrize("action", ["backup", "restore"])
@pytest.mark.parametrize("variant", list(DSS_VARIANTS))
def test_dss_plan_matches_golden(variant: str, action: str) -> None:
    recipe = apps.get("dss")
    params = make_params(recipe, json.loads(json.dumps(DSS_VARIANTS[variant])), "test")
    build = plan.backup_plan if action == "backup" else plan.restore_plan
    p = build(recipe, params, "dss1")
    _check(f"dss-{variant}-{action}.txt", "\n".join(p.lines()) + "\n")
    _check(f"dss-{variant}-{action}.json", json.dumps(p.to_dict(), indent=2, sort_keys=True) + "\n")


def test_dss_categories_are_the_seeds_lists() -> None:
    """The exclude categories name the seed's folders, section by section, in its order."""
    from recipes.apps.dss import CATEGORIES

    assert {name: cat.folders for name, cat in CATEGORIES.items()} == {
        "temporary": ("tmp", "caches", "data-catalog"),
        "logs": ("run", "jobs", "scenarios", "diagnosis"),
        "ignorable": ("exports", "prepared_bundles", "apinode-packages"),
        "data": ("managed_datasets", "analysis_data", "saved_models"),
    }
    seed = Path(__file__).resolve().parents[3] / "shared" / "seeds" / "001_700252c58385ca0c.txt"
    if seed.exists():  # where the seed is at hand, every folder is one of its bullet items
        bullets = {
            line[2:].replace("\\", "").split(" (")[0]
            for line in seed.read_text().splitlines()
            if line.startswith("* ")
        }
        assert {f for cat in CATEGORIES.values() for f in cat.folders} <= bullets


@pytest.mark.parametrize("variant", sorted(LOOKER_VARIANTS))
@pytest.mark.parametrize("action", ["backup", "restore"])
def test_looker_plan_matches_golden(action: str, variant: str) -> None:
    recipe = apps.get("looker")
    params = make_params(recipe, json.loads(json.dumps(LOOKER_VARIANTS[variant])), "test")
    build = plan.backup_plan if action == "backup" else plan.restore_plan
    p = build(recipe, params, "looker1")
    _check(f"looker-{variant}-{action}.txt", "\n".join(p.lines()) + "\n")
    _check(f"looker-{variant}-{action}.json", json.dumps(p.to_dict(), indent=2, sort_keys=True) + "\n")
