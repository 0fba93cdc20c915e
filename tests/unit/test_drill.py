"""The drill's comparisons, without hosts: archive facts against what a scratch host printed,
dump row counts, the endpoint refusal and the record's signature."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import socket
import tarfile
from pathlib import Path

import pytest

from recipes import drill, duplicity
from recipes import manifest as mf
from recipes.apps.govuk import AssetsParams, DatastoreParams, GovukAssets, GovukDatastore
from recipes.errors import ConfigError
from recipes.facts import RowCounter, TarFacts
from recipes.hosts import Result, key_values
from recipes.model import Command
from recipes.ops import HostCommand
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


def test_the_same_endpoint_spelled_another_way_is_refused() -> None:
    """Default ports, a trailing dot, case and a URL's default port do not make a second place."""
    mysql = {"mysql": {"host": "localhost", "port": None, "database": "looker"}}
    with pytest.raises(ConfigError, match="scratch side's mysql"):
        drill.refuse_shared_endpoints(
            mysql, {"mysql": {"host": "LOCALHOST.", "port": 3306, "database": "looker"}}
        )
    with pytest.raises(ConfigError, match="scratch side's mysql"):  # the name and its address
        drill.refuse_shared_endpoints(
            mysql, {"mysql": {"host": "127.0.0.1", "port": 3306, "database": "looker"}}
        )
    drill.refuse_shared_endpoints(mysql, {"mysql": {"host": "localhost", "port": 3307, "database": "looker"}})
    gw = {"gateway": "http://gw.example", "buckets": ["registry"]}
    with pytest.raises(ConfigError, match="bucket registry"):
        drill.refuse_shared_endpoints(gw, {"gateway": "http://GW.example:80/", "buckets": ["registry"]})
    drill.refuse_shared_endpoints(gw, {"gateway": "https://gw.example", "buckets": ["registry"]})


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


def test_a_signed_record_copied_elsewhere_is_not_the_last_drill(tmp_path: Path) -> None:
    """An old passing record (of any recipe or host) and its signature, copied under a newer name,
    must not become "the last drill": a record is trusted only where it was written."""
    import shutil

    key = generate_signing_key(tmp_path / "k", "test")
    repo = Repository(str(tmp_path / "repo"))
    base = {
        "format": 1, "scratch": "s", "snapshot": "x", "finished": "2026-01-02T03:04:09Z",
        "rto_seconds": 4.0, "steps": [], "checks": [],
    }  # fmt: skip
    good = {**base, "recipe": "looker", "host": "other", "started": "2026-01-01T00:00:00Z", "passed": True}
    failed = {**base, "recipe": "django", "host": "web1", "started": "2026-01-02T03:04:05Z", "passed": False}
    old = drill.write_record(repo, good, key)
    drill.write_record(repo, failed, key)
    forged = tmp_path / "repo/drills/django/web1/29991231T000000Z.json"
    shutil.copyfile(old, forged)
    shutil.copyfile(old + ".sig", str(forged) + ".sig")
    assert drill.last(repo, "django", "web1", [key.public]) == failed
    entry = next(e for e in drill.listing(repo, "django", "web1", [key.public]) if e["path"] == str(forged))
    assert not entry["verified"] and "copied or renamed" in entry["problem"]


def test_two_drills_started_in_the_same_second_keep_both_records(tmp_path: Path) -> None:
    key = generate_signing_key(tmp_path / "k", "test")
    repo = Repository(str(tmp_path / "repo"))
    started = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    base = {
        "format": 1, "recipe": "django", "host": "web1", "scratch": "s", "snapshot": "x",
        "started": "2026-01-02T03:04:05Z", "rto_seconds": 4.0, "steps": [], "checks": [],
    }  # fmt: skip
    first = {**base, "id": drill.record_id(started), "finished": "2026-01-02T03:04:08Z", "passed": False}
    second = {**base, "id": drill.record_id(started), "finished": "2026-01-02T03:04:09Z", "passed": True}
    paths = {drill.write_record(repo, rec, key) for rec in (first, second)}
    assert len(paths) == 2 and all("/20260102T030405Z-" in p for p in paths)
    listed = drill.listing(repo, "django", "web1", [key.public])
    assert len(listed) == 2 and all(e["verified"] for e in listed)
    assert drill.last(repo, "django", "web1", [key.public]) == second
    # an id that is not the record's own start time is refused on writing and not trusted when read
    with pytest.raises(ValueError, match="not its start time"):
        drill.write_record(repo, {**base, "id": "20990101T000000Z-abcdef"}, key)
    moved = Path(next(iter(paths)))
    data = json.loads(moved.read_text())
    data["id"] = "20260102T030405Z-000000"
    text = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    renamed = moved.with_name("20260102T030405Z-000000.json")
    renamed.write_bytes(text)
    renamed.with_name(renamed.name + ".sig").write_bytes(key.sign(text, drill.NAMESPACE))
    entry = next(e for e in drill.listing(repo, "django", "web1", [key.public]) if e["path"] == str(renamed))
    assert entry["verified"]  # signed with its own id, where that id says: a real record
    forged = moved.with_name("20260102T030405Z-ffffff.json")
    forged.write_bytes(text)
    forged.with_name(forged.name + ".sig").write_bytes(key.sign(text, drill.NAMESPACE))
    entry = next(e for e in drill.listing(repo, "django", "web1", [key.public]) if e["path"] == str(forged))
    assert not entry["verified"] and "copied or renamed" in entry["problem"]


# --------------------------------------------------------------------------- folders an application writes


def test_a_volatile_folder_makes_the_file_count_a_range_and_leaves_its_samples_out() -> None:
    sample = {"./etc/a": "a" * 64, "./run/log": "b" * 64}
    obj = archive({"files": 19, "bytes": 300, "sample": sample})
    measured = {"files": "18", "bytes": "200", "volatile": "2", "sample0": "a" * 64, "sample1": "c" * 64}
    got = by_name(drill.archive_checks(obj, "/r", measured, level=0, shared=False, rewritten=["/r/run/"]))
    assert got["files.tar files"]["ok"] and "18 unchanged + 2 written" in str(got["files.tar files"]["found"])
    assert "/r/run/" in str(got["files.tar bytes"]["skipped"])
    assert got["files.tar sample"]["ok"] and "not compared (rebuilt by the restore): ./run/log" in str(
        got["files.tar sample"]["found"]
    )
    # two archived files gone outside run/: no count of what was written there makes up for them
    fewer = {**measured, "files": "16"}
    got = by_name(drill.archive_checks(obj, "/r", fewer, level=0, shared=False, rewritten=["/r/run/"]))
    assert not got["files.tar files"]["ok"]


def test_measure_command_counts_files_written_in_a_volatile_folder() -> None:
    script = drill.measure_command("/r", "1700000000", [], ["/r/run/", "/r/x.db"]).script
    assert "echo volatile=$(find /r/run/ -xdev -type f -newermt @1700000000" in script
    assert 'for f in /r/x.db; do [ -f "$f" ]' in script and "for f in /r/run/" not in script


# --------------------------------------------------------------------------- buckets and recorded names

BUCKET_FACTS = {"objects": 3, "bytes": 30, "sample": {"a": "1" * 64, "b/c": "2" * 64}}


def bucket(facts: dict[str, object]) -> mf.StoredObject:
    return mf.StoredObject("buckets/registry.tar", "bucket", "p", 1, "0" * 64, facts=facts)


def test_bucket_counts_and_sample_compare_and_a_removed_object_is_named() -> None:
    same = {"objects": 3, "bytes": 30, "sample": {"a": "1" * 64, "b/c": "2" * 64}}
    assert all(c["ok"] and "skipped" not in c for c in drill.bucket_checks(bucket(BUCKET_FACTS), same))
    gone = {"objects": 2, "bytes": 20, "sample": {"a": "1" * 64, "b/c": "missing"}}
    got = by_name(drill.bucket_checks(bucket(BUCKET_FACTS), gone))
    assert got["buckets/registry.tar objects"] == {
        "name": "buckets/registry.tar objects", "ok": False, "expected": "3", "found": "2",
    }  # fmt: skip
    assert not got["buckets/registry.tar bytes"]["ok"]
    assert "differ: b/c missing" in str(got["buckets/registry.tar sample"]["found"])
    unrecorded = by_name(drill.bucket_checks(bucket({}), same))
    assert "no facts recorded" in str(unrecorded["buckets/registry.tar objects"]["skipped"])


def test_measure_bucket_lists_and_hashes_the_sampled_keys() -> None:
    class Fs:
        data = {"registry/a": b"x", "registry/b/c": b"yz"}

        def find(self, path: str, detail: bool) -> dict[str, dict[str, int]]:
            return {k: {"size": len(v)} for k, v in self.data.items() if k.startswith(path + "/")}

        def open(self, path: str, mode: str, block_size: int) -> io.BytesIO:
            return io.BytesIO(self.data[path])

    got = drill.measure_bucket(Fs(), "registry", ["a", "zz"])
    assert got == {
        "objects": 2,
        "bytes": 3,
        "sample": {"a": hashlib.sha256(b"x").hexdigest(), "zz": "missing"},
    }


def result(status: int, out: bytes, err: str = "") -> Result:
    return Result(status, out, err)


def test_recorded_names_must_all_be_found_again_and_a_missing_tool_is_skipped() -> None:
    facts = {"etcd_keys": "/deis/domains/a /deis/config/app1/K"}
    (ok,) = drill.fact_checks(
        facts, "etcd_keys", result(0, b"/deis/config/app1/K /deis/domains/a /deis/new\n")
    )
    assert ok["ok"] and ok["found"] == "2 of 2 present"
    (bad,) = drill.fact_checks(facts, "etcd_keys", result(0, b"/deis/config/app1/K\n"))
    assert not bad["ok"] and bad["found"] == "1 of 2 present; missing: /deis/domains/a"
    (gone,) = drill.fact_checks(facts, "etcd_keys", result(127, b"", "etcdctl is not on the host"))
    assert gone["skipped"] == "etcdctl is not on the host"
    (failing,) = drill.fact_checks(facts, "etcd_keys", result(1, b"", "connection refused"))
    assert not failing["ok"] and failing["found"] == "exit 1: connection refused"
    (none,) = drill.fact_checks({"etcd_keys": ""}, "etcd_keys", result(0, b""))
    assert "recorded none" in str(none["skipped"])


# --------------------------------------------------------------------------- govuk-datastore row facts

DUMP = b"""CREATE DATABASE `gv_blog`;
USE `gv_blog`;
CREATE TABLE `posts` (id int);
INSERT INTO `posts` VALUES (1),(2),(3);
CREATE TABLE `tags` (id int);
"""


def counted(dump: bytes) -> dict[str, int]:
    """Rows per table as ``facts.RowCounter`` gives them (the shape ``recipes run`` records)."""
    counter = RowCounter("mysql")
    counter.feed(dump)
    rows: dict[str, int] = counter.result()["rows"]
    return rows


def datastore(**more: object) -> tuple[GovukDatastore, DatastoreParams]:
    values: dict[str, object] = {"source": "file:///c/", "file_to_restore": "x/latest.tbz2", **more}
    return GovukDatastore(), DatastoreParams(**values)  # type: ignore[arg-type]


def test_govuk_rows_come_from_the_newest_dump_per_database_in_the_manifest() -> None:
    recipe, p = datastore()
    rows = {
        "daily_gv_blog_2026-11-16_06h00m.sql.bz2": {"gv_blog.posts": 1},
        "daily_gv_blog_2026-11-17_06h00m.sql.bz2": counted(DUMP),
        "daily_gv_white_hall_2026-11-17_06h00m.sql.bz2": {"docs": 4},  # no USE line in that dump
    }
    facts = {"collection": "file:///c", "collection_file": "x/latest.tbz2", "rows": json.dumps(rows)}
    got = recipe.drill_dumps(p, facts)
    assert not isinstance(got, str)
    objs = {obj.name: obj.facts["rows"] for obj, _count in got}
    assert objs == {
        "latest.tbz2 daily_gv_blog_2026-11-17_06h00m.sql.bz2": {"gv_blog.posts": 3, "gv_blog.tags": 0},
        "latest.tbz2 daily_gv_white_hall_2026-11-17_06h00m.sql.bz2": {"gv_white_hall.docs": 4},
    }
    obj, count = got[0]
    assert "COUNT(*) FROM `gv_blog`.`posts`;" in count(("gv_blog.posts",)).script
    checks = by_name(drill.row_checks(obj, drill.parse_counts(b"gv_blog.posts\t3\n")))
    name = "latest.tbz2 daily_gv_blog_2026-11-17_06h00m.sql.bz2 rows gv_blog"
    assert checks[f"{name}.posts"]["ok"]
    assert checks[f"{name}.tags"] == {
        "name": f"{name}.tags",
        "ok": False,
        "expected": "0",
        "found": "missing",
    }


@pytest.mark.parametrize(
    ("facts", "why"),
    [
        ({"collection": "file:///c/"}, "records no row counts"),
        ({"collection": "file:///other/", "rows": "{}"}, "not the collection restored"),
        ({"collection": "file:///c/", "collection_file": "x/latest.tbz2", "rows": "{"}, "cannot be read"),
        ({"collection": "file:///c/", "collection_file": "x/latest.tbz2", "rows": "{}"}, "cannot be read"),
    ],
)
def test_govuk_rows_that_cannot_be_compared_say_why(facts: dict[str, str], why: str) -> None:
    recipe, p = datastore()
    got = recipe.drill_dumps(p, facts)
    assert isinstance(got, str) and why in got


# --------------------------------------------------------------------------- govuk-assets tree facts


class Streaming:
    """A host command's process (the Host boundary): its stdout is ``data`` in ``step``-byte
    reads, exit 0; ``run`` is what ``hosts.run`` reads."""

    def __init__(self, data: bytes, step: int = 777) -> None:
        self.data, self.at, self.step, self.stdin_closed = data, 0, step, False

    def read(self, n: int = -1, /) -> bytes:
        chunk = self.data[self.at : self.at + self.step]
        self.at += len(chunk)
        return chunk

    def write(self, data: bytes, /) -> int:
        return len(data)

    def close_stdin(self) -> None:
        self.stdin_closed = True

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def stderr(self) -> str:
        return ""

    def kill(self) -> None:
        pass


class OneCommandHost:
    """A Host whose every command prints ``data`` (and records the scripts it was given)."""

    name = "scratch"

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.scripts: list[str] = []

    def start(self, command: Command) -> Streaming:
        self.scripts.append(command.script)
        return Streaming(self.data)


TREE = {"./a.pdf": b"%PDF" + bytes(range(256)) * 20, "./sub/b.txt": b"attachment\n", "./sub/empty": b""}


def tar_stream(files: dict[str, bytes]) -> bytes:
    """GNU tar's stream of ``files`` (with ``.`` and ``./sub`` directories), padded to its
    10240-byte record as ``tar --create --file=-`` writes it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in (".", "./sub"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_pulling_a_tree_records_the_tar_streams_facts_as_it_passes(tmp_path: Path) -> None:
    """The backup side's ``_pull`` feeds the stream to ``TarFacts`` while tarfile unpacks it,
    and reads it to its end (tarfile stops at the first zero block): complete facts."""
    data = tar_stream(TREE)
    host = OneCommandHost(data)
    tap = TarFacts()
    size = duplicity._pull(host, HostCommand(Command("tar")), str(tmp_path / "t"), True, "assets", tap)  # type: ignore[arg-type]
    assert size == len(data) and len(data) % 10240 == 0
    got = tap.result()
    assert "error" not in got, got
    assert (got["files"], got["dirs"], got["bytes"]) == (3, 2, sum(len(v) for v in TREE.values()))
    assert got["sample"] == {k: hashlib.sha256(v).hexdigest() for k, v in TREE.items()}
    assert (tmp_path / "t" / "sub" / "b.txt").read_bytes() == b"attachment\n"


def assets(**more: object) -> tuple[GovukAssets, AssetsParams]:
    values: dict[str, object] = {"source": "file:///c/", "file_to_restore": "mnt/up/", **more}
    return GovukAssets(), AssetsParams(**values)  # type: ignore[arg-type]


def tree_facts(**more: str) -> dict[str, str]:
    tap = TarFacts()
    tap.feed(tar_stream(TREE))
    return {"collection": "file:///c", "collection_file": "mnt/up", "tree": json.dumps(tap.result()), **more}


def test_govuk_tree_facts_are_measured_at_the_target() -> None:
    recipe, p = assets(target="/srv/up")
    got = recipe.drill_tree(p, tree_facts())
    assert not isinstance(got, str)
    obj, root = got
    assert root == "/srv/up" and obj.name == "tree" and obj.facts["files"] == 3
    script = drill.measure_command(
        root, "1", [drill._joined(root, m) for m in sorted(obj.facts["sample"])], ()
    )
    assert "cd /srv/up " in script.script and "/srv/up/sub/b.txt" in script.script


@pytest.mark.parametrize(
    ("facts", "why"),
    [
        ({"collection": "file:///c/", "collection_file": "mnt/up"}, "records no tree facts"),
        ({"collection": "file:///other/", "tree": "{}"}, "not the collection restored"),
        ({"collection": "file:///c/", "collection_file": "mnt/other", "tree": "{}"}, "not the collection"),
        ({"collection": "file:///c/", "collection_file": "mnt/up/", "tree": "{"}, "cannot be read"),
        ({"collection": "file:///c/", "collection_file": "mnt/up", "tree": "[1]"}, "cannot be read"),
    ],
)
def test_govuk_tree_facts_that_cannot_be_compared_say_why(facts: dict[str, str], why: str) -> None:
    recipe, p = assets()
    got = recipe.drill_tree(p, facts)
    assert isinstance(got, str) and why in got


def manifest_with(facts: dict[str, str]) -> mf.Manifest:
    return mf.Manifest(
        snapshot="20260101T000000Z", recipe="govuk-assets", host="source", started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:00:01Z", params={}, objects=(), facts=facts,
    )  # fmt: skip


def test_external_tree_checks_compare_the_measured_target_and_skip_with_a_reason() -> None:
    recipe, p = assets(target="/srv/up")
    facts = tree_facts()
    sample = sorted(json.loads(facts["tree"])["sample"])
    digests = {m: hashlib.sha256(TREE[m]).hexdigest() for m in sample}
    printed = f"files=3\nbytes={sum(len(v) for v in TREE.values())}\n" + "".join(
        f"sample{i}={digests[m]}\n" for i, m in enumerate(sample)
    )
    host = OneCommandHost(printed.encode())
    got = by_name(drill.external_tree_checks(recipe, p, manifest_with(facts), host, "1.5", "latest"))  # type: ignore[arg-type]
    assert set(got) == {"tree files", "tree bytes", "tree sample"}
    assert all(c["ok"] and "skipped" not in c for c in got.values()), got
    assert "-newermt @1.5" in host.scripts[0]

    gone = OneCommandHost(printed.replace(f"sample1={digests[sample[1]]}", "sample1=missing").encode())
    bad = by_name(drill.external_tree_checks(recipe, p, manifest_with(facts), gone, "1.5", "latest"))  # type: ignore[arg-type]
    assert not bad["tree sample"]["ok"] and f"{sample[1]} missing" in str(bad["tree sample"]["found"])

    for manifest, snapshot, why in (
        (None, "latest", "no trusted govuk-assets manifest"),
        (manifest_with(facts), "2026-01-01", "--snapshot 2026-01-01"),
        (manifest_with({"collection": "file:///c/"}), "latest", "records no tree facts"),
    ):
        skips = drill.external_tree_checks(recipe, p, manifest, host, "1.5", snapshot)  # type: ignore[arg-type]
        assert [c["name"] for c in skips] == ["tree files", "tree bytes", "tree sample"]
        assert all(why in str(c["skipped"]) for c in skips), skips


def test_govuk_assets_checks_owner_only_when_set() -> None:
    recipe, p = assets()
    assert recipe.drill_checks(p) == []
    (owner,) = recipe.drill_checks(assets(owner="www-data:adm", target="/srv/up")[1])
    assert owner.name == "owner"
    assert "find /srv/up -xdev \\( ! -user www-data -o ! -group adm \\) -print -quit" in owner.command.script


def test_a_drill_without_a_scratch_database_of_its_own_is_refused_before_any_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GOV.UK drills often have no manifest of ours: the configuration's connection (the
    source's) is still refused as the scratch side's, before any host is opened."""
    from recipes import config, hosts

    key = generate_signing_key(tmp_path / "k", "test")
    (tmp_path / "recipes.toml").write_text(
        f'[repository]\nurl = "{tmp_path / "repo"}"\nsigners = ["{key.public.line}"]\n'
        f'signing_key = "{tmp_path / "k"}"\n'
        '[hosts.source]\naddress = "203.0.113.5"\n[hosts.scratch]\naddress = "203.0.113.6"\n'
        '[recipes.govuk-datastore]\nmysql = { host = "db.example", password_env = "MYSQL_PW" }\n'
        'passphrase_env = "PP"\ngpg_key_file = "/k.asc"\n'
    )
    cfg = config.load(str(tmp_path / "recipes.toml"))

    def never(*_a: object, **_k: object) -> None:
        raise AssertionError("a host was opened")

    monkeypatch.setattr(hosts, "open_host", never)
    with pytest.raises(
        ConfigError, match=r"scratch side's mysql db.example:3306/\* is the source's \(\[recipes"
    ):
        drill.run(cfg, "govuk-datastore", "source", "scratch")
    other = ['mysql.host="db2.example"', 'mysql.password_env="MYSQL_PW"']
    with pytest.raises(AssertionError, match="a host was opened"):  # past every refusal
        drill.run(cfg, "govuk-datastore", "source", "scratch", sets=other)


def test_local_on_either_side_refuses_this_machine_on_any_port() -> None:
    """``--host local`` is this machine: an SSH scratch on loopback or this machine's name (any
    port) is the same machine, as are two locals; another machine is fine."""
    from recipes.hosts import LOCAL, HostSpec

    local = HostSpec(LOCAL)
    for same in (
        HostSpec("s", address="127.0.0.1", port=2222),
        HostSpec("s", address="127.0.1.1"),
        HostSpec("s", address="localhost", port=22),
        HostSpec("s", address=socket.gethostname()),
    ):
        with pytest.raises(ConfigError, match="both this machine"):
            drill.refuse_same_host(local, same)
        with pytest.raises(ConfigError, match="both this machine"):
            drill.refuse_same_host(same, local)
    with pytest.raises(ConfigError, match="both this machine"):
        drill.refuse_same_host(local, local)
    drill.refuse_same_host(local, HostSpec("s", address="203.0.113.7"))


def test_a_dump_whose_facts_name_no_table_is_reported_not_silently_passed() -> None:
    obj = mf.StoredObject("dumps/x.sql", "dump", "dumps/x.sql.zst.age", 1, "0" * 64, facts={"rows": {}})
    (only,) = drill.row_checks(obj, {})
    assert only["name"] == "dumps/x.sql rows" and "recorded no table" in only["skipped"]
