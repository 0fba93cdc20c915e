"""govuk-datastore / govuk-assets without servers: automysqlbackup's file names, which dump feeds
which database, duplicity's argv (no secret in it), golden plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes import apps, duplicity, plan
from recipes.apps.govuk import OffsiteRestoreOptions
from recipes.errors import ConfigError, StepFailed
from recipes.ops import DuplicityCollection
from recipes.recipe import make_params
from tests.unit.test_plan_golden import _check

LATEST = [
    "latest/daily_whitehall_production_2024-01-17_06h25m.sql.bz2",
    "latest/weekly_whitehall_production_2024-01-14_06h25m.sql.bz2",
    "latest/daily_signon_2024-01-17_06h25m_Wednesday.sql.bz2",
    "latest/weekly_signon_2024-01-17_06h25m.sql.bz2",
    "latest/monthly_release_2024-01-01_06h25m.sql.bz2",
    "latest/daily_release_2023-12-31_06h25m.sql.bz2",
    "latest/README",
    "daily/whitehall_production/daily_whitehall_production_2024-01-16_06h25m.sql.bz2",
]


def test_one_dump_per_database_the_newest() -> None:
    chosen = {d.database: d.file for d in duplicity.choose(LATEST)}
    assert chosen == {
        # an underscore in the database name
        "whitehall_production": "daily_whitehall_production_2024-01-17_06h25m.sql.bz2",
        "signon": "daily_signon_2024-01-17_06h25m_Wednesday.sql.bz2",  # same stamp: the daily
        "release": "monthly_release_2024-01-01_06h25m.sql.bz2",  # the monthly is newer
    }


def test_databases_limit_the_choice_and_a_missing_one_fails_before_the_host() -> None:
    assert [d.database for d in duplicity.choose(LATEST, ("signon",))] == ["signon"]
    with pytest.raises(duplicity.BeforeHost, match=r"no dump of nope in latest/.*release, signon"):
        duplicity.choose(LATEST, ("signon", "nope"))
    with pytest.raises(StepFailed, match="no latest/"):
        duplicity.choose(["latest/README"])


def test_the_dumps_use_line_names_the_database() -> None:
    head = (
        b"-- MariaDB dump\n\nCREATE DATABASE /*!32312 IF NOT EXISTS*/ `white``hall`;\n\nUSE `white``hall`;\n"
    )
    assert duplicity.use_database(head) == "white`hall"
    assert duplicity.use_database(b"-- dump of one database\nCREATE TABLE t (id int);\n") is None
    assert (
        duplicity.header("white`hall")
        == b"CREATE DATABASE IF NOT EXISTS `white``hall`;\nUSE `white``hall`;\n"
    )


def _src(**kw: object) -> DuplicityCollection:
    base: dict[str, object] = {
        "url": "boto3+s3://b/p/",
        "file_to_restore": "/data/x/latest.tbz2",
        "gpg_key_file": "/k.asc",
        "passphrase_env": "PW_ENV",
        "aws_key_env": "AK_ENV",
        "aws_secret_env": "AS_ENV",
    }
    return DuplicityCollection(**{**base, **kw})  # type: ignore[arg-type]


def test_duplicity_argv_holds_no_secret_and_strips_slashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW_ENV", "pw-SENTINEL")
    monkeypatch.setenv("AK_ENV", "ak-SENTINEL")
    monkeypatch.setenv("AS_ENV", "as-SENTINEL")
    src = _src(time="2024-01-17T06:00:00", s3_endpoint_url="http://s3", sign_key="ABCDEF01")
    argv = duplicity.restore_argv(src, "/tmp/x/restored", work="/tmp/x")
    assert argv[:4] == ["duplicity", "restore", "--file-to-restore", "data/x/latest.tbz2"]
    assert argv[4:6] == ["--time", "2024-01-17T06:00:00"]
    assert "--sign-key" in argv and "--s3-endpoint-url" in argv
    env = duplicity._environment(src)
    assert env["PASSPHRASE"] == "pw-SENTINEL" and env["AWS_SECRET_ACCESS_KEY"] == "as-SENTINEL"
    text = " ".join(argv) + "\n".join(duplicity.plan_lines(src) + duplicity.backup_plan_lines(src))
    assert "SENTINEL" not in text


def test_a_missing_secret_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PW_ENV", raising=False)
    with pytest.raises(ConfigError, match="PW_ENV is not set"):
        duplicity._environment(_src())


def test_snapshot_time_cannot_be_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PW_ENV", "AK_ENV", "AS_ENV"):
        monkeypatch.setenv(name, "x")
    with pytest.raises(ConfigError, match="not a duplicity time"):
        duplicity.precheck(_src(gpg_key_file=__file__, time="--force"))


CASES = {
    "govuk-datastore": {
        "source": "boto3+s3://govuk-offsite-backups-production/govuk-datastores/",
        "s3_endpoint_url": "https://s3.eu-west-1.amazonaws.com",
        "aws_key_env": "GOVUK_AWS_KEY",
        "aws_secret_env": "GOVUK_AWS_SECRET",
        "mysql": {"host": "127.0.0.1", "password_env": "MYPW"},
        "databases": ["whitehall_production", "signon"],
        "encrypt_key": "0123456789ABCDEF",
        "sign_key": "0123456789ABCDEF",
    },
    "govuk-assets": {
        "aws_key_env": "GOVUK_AWS_KEY",
        "aws_secret_env": "GOVUK_AWS_SECRET",
        "owner": "assets:assets",
        "encrypt_key": "0123456789ABCDEF",
    },
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("action", ["backup", "restore"])
def test_govuk_plans_match_golden(name: str, action: str) -> None:
    recipe = apps.get(name)
    params = make_params(recipe, json.loads(json.dumps(CASES[name])), "test")
    if action == "backup":
        p = plan.backup_plan(recipe, params, "db1")
    else:
        p = plan.restore_plan(
            recipe, params, "db1", options=OffsiteRestoreOptions(time="2024-01-17T06:00:00")
        )
    _check(f"{name}-{action}.txt", "\n".join(p.lines()) + "\n")
    _check(f"{name}-{action}.json", json.dumps(p.to_dict(), indent=2, sort_keys=True) + "\n")


def test_restore_plans_list_the_seeds_revert_steps_as_manual() -> None:
    for name in CASES:
        recipe = apps.get(name)
        p = plan.restore_plan(recipe, make_params(recipe, {}, "t"), "h")
        last = p.steps[-1]
        assert last.name == "revert-manual-actions"
        text = "\n".join(p.lines())
        assert "manual (not run, yours to do): the seed's 'revert all the manual actions" in text
        assert (
            "gpg --delete-secret-key" in text
            and "warning: the collection is encrypted but not signed" in text
        )


def test_count_rows_reads_every_dump_of_latest_in_one_pass(tmp_path: Path) -> None:
    import bz2
    import io
    import tarfile

    from recipes.duplicity import count_rows

    dump = b"USE `shop`;\nCREATE TABLE `t` (id int);\nINSERT INTO `t` VALUES (1),(2),(3);\n"
    path = tmp_path / "latest.tbz2"
    with tarfile.open(path, "w:bz2") as tar:
        for name, data in (
            ("latest/weekly_shop_2024-01-13_06h25m.sql.bz2", bz2.compress(dump)),
            ("latest/daily_shop_2024-01-13_06h25m.sql.bz2", bz2.compress(dump)),
            ("latest/README", b"not a dump"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert count_rows(str(path)) == {
        "daily_shop_2024-01-13_06h25m.sql.bz2": {"shop.t": 3},
        "weekly_shop_2024-01-13_06h25m.sql.bz2": {"shop.t": 3},
    }
    cut = tmp_path / "cut.tbz2"
    with tarfile.open(cut, "w:bz2") as tar:
        data = bz2.compress(dump[:-4])
        info = tarfile.TarInfo("latest/daily_shop_2024-01-13_06h25m.sql.bz2")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(StepFailed, match="is cut short"):
        count_rows(str(cut))
