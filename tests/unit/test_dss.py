"""The dss recipe's parameters: the seed's exclude categories, one-line refusals of bad values,
and which parameters are content (what a snapshot holds) or endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from recipes import apps, plan
from recipes.apps.dss import CATEGORIES
from recipes.errors import ConfigError
from recipes.recipe import content_names, make_params
from recipes.steps import Archive, Fact, ManualStep, Quiesce, Run


def params(**values: Any) -> Any:
    return make_params(apps.get("dss"), values, "[recipes.dss]")


@pytest.mark.parametrize(
    ("values", "words"),
    [
        (
            {"exclude": ["tmp"]},
            "exclude: unknown category 'tmp': valid categories are temporary, logs, ignorable, data",
        ),
        ({"snapshot": "zfs"}, "snapshot: must be one of none, btrfs, lvm, auto, got 'zfs'"),
        ({"data_dir": "dss_data"}, "data_dir: must be an absolute path"),
        ({"install_dir": "opt/dss"}, "install_dir: must be an absolute path"),
        ({"user": "data iku"}, "user: must be a user name"),
        ({"jobs_check": "a\nb"}, "jobs_check: must be a non-empty command on one line"),
        ({"jobs_check": " "}, "jobs_check: must be a non-empty command on one line"),
        ({"govern_postgres": {"passwd": "x"}}, "unknown keys (passwd)"),
        ({"govern_postgres": {"port": 70000}}, "govern_postgres.port: must be a port number"),
    ],
)
def test_bad_values_are_one_config_error_line(values: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        params(**values)
    message = str(err.value)
    assert words in message and "\n" not in message and err.value.exit_code == 2


def test_content_is_what_the_snapshot_holds() -> None:
    assert set(content_names(apps.get("dss"))) == {"exclude", "include_config"}


def test_every_category_leaves_out_its_folders_relative_to_data_dir() -> None:
    p = params(data_dir="/data/dss", exclude=["data", "temporary"])
    archive = next(s for s in apps.get("dss").backup_steps(p) if isinstance(s, Archive))
    assert archive.root == "/data/dss"
    # in the seed's order whatever the order given; anchored, so projects/X/tmp stays
    assert archive.excludes == (*CATEGORIES["temporary"].folders, *CATEGORIES["data"].folders)
    assert "--anchored --exclude=./tmp --exclude=./caches" in archive.command.script
    assert params(exclude=[]).excluded() == ()


def test_without_jobs_check_the_plan_says_the_seeds_instruction() -> None:
    recipe = apps.get("dss")
    steps = recipe.backup_steps(params())
    assert [type(s) for s in steps] == [Run, Fact, ManualStep, Quiesce, Archive, Archive]
    assert "Make sure you don't have any job running" in steps[2].text
    assert "no jobs_check is set, so check in DSS" in steps[2].text
    with_check = recipe.backup_steps(params(jobs_check="bin/dsscli running-jobs"))
    assert [s.name for s in with_check[:4]] == ["check-data-dir", "dss_version", "no-running-jobs", "dss"]
    assert not any(isinstance(s, ManualStep) for s in with_check)
    lines = "\n".join(plan.backup_plan(recipe, params(), "dss1").lines())
    assert "DATA_DIR/bin/dss stop" in lines and "DATA_DIR/bin/dss start" in lines
