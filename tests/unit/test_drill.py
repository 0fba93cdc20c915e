"""The drill's comparisons, without hosts: archive facts against what a scratch host printed,
dump row counts, the endpoint refusal and the record's signature."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipes import drill
from recipes import manifest as mf
from recipes.errors import ConfigError
from recipes.hosts import key_values
from recipes.repository import Repository
from recipes.signing import generate_signing_key

SAMPLE = {"./etc/a": "a" * 64, "./srv/b": "b" * 64}


def archive(facts: dict[str, object]) -> mf.StoredObject:
    return mf.StoredObject("files.tar", "files", "files.tar.zst.age", 1, "0" * 64, facts=facts)


def by_name(checks: list[dict[str, object]]) -> dict[object, dict[str, object]]:
    return {c["name"]: c for c in checks}


def test_equal_counts_and_sample_pass() -> None:
    obj = archive({"files": 3, "bytes": 30, "sample": SAMPLE})
    measured = {"files": "3", "bytes": "30", "sample0": "a" * 64, "sample1": "b" * 64}
    got = by_name(drill.archive_checks(obj, "/r", measured, level=0, shared=False))
    assert all(c["ok"] and "skipped" not in c for c in got.values()), got


def test_a_missing_file_fails_count_and_sample_naming_the_path() -> None:
    obj = archive({"files": 3, "bytes": 30, "sample": SAMPLE})
    measured = {"files": "2", "bytes": "20", "sample0": "a" * 64, "sample1": "missing"}
    got = by_name(drill.archive_checks(obj, "/r", measured, level=0, shared=False))
    assert not got["files.tar files"]["ok"] and got["files.tar files"]["found"] == "2"
    assert not got["files.tar bytes"]["ok"]
    assert not got["files.tar sample"]["ok"] and "./srv/b missing" in str(got["files.tar sample"]["found"])


def test_changed_content_fails_the_sample() -> None:
    obj = archive({"files": 3, "bytes": 30, "sample": SAMPLE})
    measured = {"files": "3", "bytes": "30", "sample0": "c" * 64, "sample1": "b" * 64}
    got = by_name(drill.archive_checks(obj, "/r", measured, level=0, shared=False))
    assert not got["files.tar sample"]["ok"] and "./etc/a cccc" in str(got["files.tar sample"]["found"])


def test_a_rewritten_file_counts_and_is_left_out_of_bytes_and_sample_by_name() -> None:
    obj = archive({"files": 3, "bytes": 30, "sample": SAMPLE})
    measured = {"files": "2", "bytes": "20", "rewritten": "1", "sample0": "x" * 64, "sample1": "b" * 64}
    got = by_name(drill.archive_checks(obj, "/r", measured, level=0, shared=False, rewritten=["/r/etc/a"]))
    assert got["files.tar files"]["ok"]
    assert "/r/etc/a" in str(got["files.tar bytes"]["skipped"])
    assert got["files.tar sample"]["ok"] and "not compared" in str(got["files.tar sample"]["found"])


@pytest.mark.parametrize(
    ("facts", "level", "shared", "why"),
    [
        ({}, 0, False, "no facts recorded"),
        ({"files": 1, "bytes": 1, "sample": {}, "error": "cut"}, 0, False, "incomplete: cut"),
        ({"files": 9, "bytes": 9, "sample": SAMPLE}, 2, False, "incremental (level 2)"),
        ({"files": 9, "bytes": 9, "sample": SAMPLE}, 0, True, "may hold other files"),
    ],
)
def test_what_cannot_be_compared_is_skipped_with_its_reason_never_passed(
    facts: dict[str, object], level: int, shared: bool, why: str
) -> None:
    measured = {"files": "1", "bytes": "1", "sample0": "a" * 64, "sample1": "b" * 64}
    got = by_name(drill.archive_checks(archive(facts), "/r", measured, level=level, shared=shared))
    assert why in str(got["files.tar files"]["skipped"])
    assert str(got["files.tar files"]["found"]).startswith("skipped: ")


def test_row_counts_compare_per_table_and_a_dropped_table_is_missing() -> None:
    obj = mf.StoredObject(
        "dumps/mysql.sql", "dump", "p", 1, "0" * 64, engine="mysql",
        facts={"rows": {"app.t": 5, "app.u": 0, "mysql.user": 3}},
    )  # fmt: skip
    got = by_name(drill.row_checks(obj, drill.parse_counts(b"app.t\t5\nnoise\n")))
    assert got["dumps/mysql.sql rows app.t"]["ok"]
    assert got["dumps/mysql.sql rows app.u"] == {
        "name": "dumps/mysql.sql rows app.u", "ok": False, "expected": "0", "found": "missing",
    }  # fmt: skip
    assert "skipped" in got["dumps/mysql.sql rows mysql system tables"]


def test_measure_command_output_parses() -> None:
    command = drill.measure_command("/srv/r", "1700000000.5", ["/srv/r/a b"], ["/srv/r/x.db"])
    assert "-newermt @1700000000.5" in command.script and "'/srv/r/a b'" in command.script
    assert key_values(b"files=3\nbytes=10\nrewritten=1\nsample0=missing\n")["sample0"] == "missing"


def test_endpoints_equal_to_the_source_are_refused_and_local_sockets_are_not() -> None:
    source = {"postgres": {"host": "DB1", "port": 5432}, "gateway": "http://gw", "buckets": ["reg"]}
    with pytest.raises(ConfigError, match="scratch side's postgres db1:5432"):
        drill.refuse_shared_endpoints(source, {"postgres": {"host": "db1", "port": 5432}})
    with pytest.raises(ConfigError, match="bucket reg at http://gw"):
        drill.refuse_shared_endpoints(source, {"gateway": "http://gw/", "buckets": ["reg"]})
    drill.refuse_shared_endpoints(source, {"postgres": {"host": "db2", "port": 5432}})
    drill.refuse_shared_endpoints({"postgres": True}, {"postgres": True})  # each host's own socket


def test_records_verify_and_a_changed_one_does_not(tmp_path: Path) -> None:
    key = generate_signing_key(tmp_path / "k", "test")
    repo = Repository(str(tmp_path / "repo"))
    record = {
        "format": 1, "recipe": "django", "host": "web1", "scratch": "s", "snapshot": "x",
        "started": "2026-01-02T03:04:05Z", "finished": "2026-01-02T03:04:09Z", "passed": True,
        "rto_seconds": 4.0, "steps": [], "checks": [],
    }  # fmt: skip
    path = drill.write_record(repo, record, key)
    assert path.endswith("drills/django/web1/20260102T030405Z.json")
    assert drill.last(repo, "django", "web1", [key.public]) == record
    other = generate_signing_key(tmp_path / "o", "other")
    assert drill.last(repo, "django", "web1", [other.public]) is None
    Path(path).write_text(json.dumps({**record, "passed": False}))
    (entry,) = drill.listing(repo, "django", "web1", [key.public])
    assert not entry["verified"] and "bad signature" in entry["problem"]
