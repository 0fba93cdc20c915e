"""Facts taps: tar counts and sample, SQL row counts, the same for any chunking, bounded memory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipes.facts import RowCounter, TarFacts, taps_for

SALT = b"recipes.facts.sample\0"


def feed_split(tap: Any, data: bytes, cuts: list[int]) -> dict[str, Any]:
    """Feed data cut at the given offsets; return the result (checked JSON-safe)."""
    last = 0
    for cut in sorted({c % (len(data) + 1) for c in cuts}):
        tap.feed(data[last:cut])
        last = cut
    tap.feed(data[last:])
    result: dict[str, Any] = tap.result()
    assert json.loads(json.dumps(result)) == result
    return result


def whole(tap: Any, data: bytes) -> dict[str, Any]:
    return feed_split(tap, data, [])


# --------------------------------------------------------------------------- tar


def make_tar(fmt: int, files: dict[str, bytes], order: list[str] | None = None) -> bytes:
    """A tar made by Python's tarfile: a dir, the files, a symlink and a hard link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        d = tarfile.TarInfo("./top")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name in order or list(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
        s = tarfile.TarInfo("./top/sym")
        s.type = tarfile.SYMTYPE
        s.linkname = "x" * 300
        tar.addfile(s)
        h = tarfile.TarInfo("./top/hard")
        h.type = tarfile.LNKTYPE
        h.linkname = next(iter(files))
        tar.addfile(h)
    return buf.getvalue()


def expected_sample(files: dict[str, bytes], k: int = 16, limit: int = 1 << 20) -> dict[str, str]:
    eligible = [p for p in files if len(files[p]) <= limit]
    chosen = sorted(eligible, key=lambda p: hashlib.sha256(SALT + p.encode()).digest())[:k]
    return {p: hashlib.sha256(files[p]).hexdigest() for p in sorted(chosen)}


FILES = {
    "./top/a": b"alpha\n",
    "./top/" + "long-" * 60 + "name": b"a name longer than 100 bytes\n",
    "./top/" + "deep/" * 30 + "f": b"deep" * 200,
    "./top/ünïcødé": b"pax path\n",
    "./top/empty": b"",
    "./top/big": os.urandom(3000),
    **{f"./top/n{i:03d}": os.urandom(i * 7) for i in range(40)},
}


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_tarfile_archive_counts_and_sample(fmt: int) -> None:
    data = make_tar(fmt, FILES)
    r = whole(TarFacts(), data)
    assert r == {
        "files": len(FILES),
        "dirs": 1,
        "links": 2,
        "bytes": sum(len(v) for v in FILES.values()),
        "sample": expected_sample(FILES),
    }


def test_sample_does_not_depend_on_archive_order_and_respects_limits() -> None:
    forward = whole(TarFacts(sample=5, max_sample_bytes=100), make_tar(tarfile.PAX_FORMAT, FILES))
    backward = whole(
        TarFacts(sample=5, max_sample_bytes=100),
        make_tar(tarfile.GNU_FORMAT, FILES, order=list(reversed(FILES))),
    )
    assert forward["sample"] == backward["sample"] == expected_sample(FILES, 5, 100)
    assert len(forward["sample"]) == 5
    assert whole(TarFacts(sample=0), make_tar(tarfile.PAX_FORMAT, FILES))["sample"] == {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=0), max_size=40),
    fmt=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]),
)
def test_tar_any_chunking_same_result(cuts: list[int], fmt: int) -> None:
    data = make_tar(fmt, FILES)
    assert feed_split(TarFacts(), data, cuts) == whole(TarFacts(), data)


def test_tar_pax_global_header_and_size_override() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "g"}) as tar:
        info = tarfile.TarInfo("./f")
        info.size = 5
        info.pax_headers = {"mtime": "1.5"}
        tar.addfile(info, io.BytesIO(b"12345"))
    data = buf.getvalue()
    assert data[156:157] == b"g"  # the archive really starts with a global header
    assert whole(TarFacts(), data)["files"] == 1


def test_tar_damage_is_reported_not_raised() -> None:
    data = make_tar(tarfile.GNU_FORMAT, FILES)
    assert "error" not in whole(TarFacts(), data)
    broken = bytearray(make_tar(tarfile.GNU_FORMAT, FILES))
    broken[0] ^= 0x01  # the first header's name: its checksum no longer matches
    r = whole(TarFacts(), bytes(broken))
    assert "checksum" in r["error"] and r["files"] == 0
    truncated = whole(TarFacts(), data[: len(data) // 2])
    assert "end-of-archive" in truncated["error"]


def gnu_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"a\n",
        "dir/b.bin": os.urandom(5000),
        "dir/" + "L" * 120 + "/c": b"long dir name\n",
        "dir/sub/d": b"",
        "x/" * 40 + "deep": b"deep\n",
    }
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    (root / "empty-dir").mkdir()
    os.symlink("a.txt", root / "sym")
    return {f"./{k}": v for k, v in files.items()}


def walk_dirs(root: Path) -> int:
    return 1 + sum(len(dirs) for _, dirs, _ in os.walk(root))


@pytest.mark.parametrize("fmt", ["gnu", "posix", "oldgnu"])
def test_gnu_tar_archive(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    files = gnu_tree(root)
    data = subprocess.run(
        ["tar", "-C", str(root), f"--format={fmt}", "-cf", "-", "."], check=True, capture_output=True
    ).stdout
    r = whole(TarFacts(), data)
    assert r == {
        "files": len(files),
        "dirs": walk_dirs(root),
        "links": 1,
        "bytes": sum(len(v) for v in files.values()),
        "sample": expected_sample(files),
    }


def test_gnu_tar_listed_incremental_levels(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    files = gnu_tree(root)
    snar = tmp_path / "state.snar"

    def run() -> bytes:
        return subprocess.run(
            ["tar", "-C", str(root), f"--listed-incremental={snar}", "-cf", "-", "."],
            check=True,
            capture_output=True,
        ).stdout

    level0 = run()
    assert b"D" in {level0[i + 156 : i + 157] for i in range(0, 4096, 512)}
    r0 = whole(TarFacts(), level0)
    assert (r0["files"], r0["dirs"], r0["bytes"]) == (
        len(files),
        walk_dirs(root),
        sum(len(v) for v in files.values()),
    )
    (root / "dir" / "new").write_bytes(b"new file\n")
    level1 = run()
    r1 = whole(TarFacts(), level1)
    # Level 1 lists every directory (as D entries) but carries only the new file.
    assert r1 == {
        "files": 1,
        "dirs": walk_dirs(root),
        "links": 0,
        "bytes": 9,
        "sample": {"./dir/new": hashlib.sha256(b"new file\n").hexdigest()},
    }
    for size in (1, 511, 512, 513, 4096):
        assert feed_split(TarFacts(), level1, list(range(0, len(level1), size))) == r1


def test_gnu_sparse_file(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    with open(root / "sparse", "wb") as f:
        for i in range(30):  # many holes: old GNU format needs extension headers
            f.seek(i * 100_000)
            f.write(b"data")
    size = (root / "sparse").stat().st_size
    for fmt in ("gnu", "posix"):
        data = subprocess.run(
            ["tar", "-C", str(root), "--sparse", f"--format={fmt}", "-cf", "-", "sparse"],
            check=True,
            capture_output=True,
        ).stdout
        r = whole(TarFacts(), data)
        assert (r["files"], r["bytes"], r["sample"]) == (1, size, {}), fmt
        assert "error" not in r


# --------------------------------------------------------------------------- SQL

PG_DUMP = rb"""--
-- PostgreSQL database dump
--
SET statement_timeout = 0;
CREATE TABLE public.t (
    id integer,
    s text
);
CREATE FUNCTION public.f() RETURNS void AS $$ SELECT 1 $$ LANGUAGE sql;
COPY public.t (id, s) FROM stdin;
1	plain
2	back\\.slash
3	\\.
4	\N
5	tab\there\nnewline
\.
COPY public.empty (id) FROM stdin;
\.
COPY "Odd"."we""ird.t" ("x y") FROM stdin;
.
\\.

\.
--
-- done
--
"""


def test_pg_dump_counts() -> None:
    assert whole(RowCounter("postgresql"), PG_DUMP) == {
        "rows": {'Odd.we"ird.t': 3, "public.empty": 0, "public.t": 5}
    }


PG_DUMPALL = (
    b"\\connect template1\n"
    b"\\connect postgres\n"
    + PG_DUMP
    + b"\\connect -reuse-previous=on \"dbname='we\\\\ir\\'d db'\"\n"
    + PG_DUMP
    + b'\\connect "Upper"\n'
    + b"COPY public.t (id) FROM stdin;\n1\n\\.\n"
)


def test_pg_dumpall_keys_by_database() -> None:
    rows = whole(RowCounter("postgresql"), PG_DUMPALL)["rows"]
    assert rows == {
        'postgres.Odd.we"ird.t': 3,
        "postgres.public.empty": 0,
        "postgres.public.t": 5,
        "we\\ir'd db.Odd.we\"ird.t": 3,
        "we\\ir'd db.public.empty": 0,
        "we\\ir'd db.public.t": 5,
        "Upper.public.t": 1,
    }


MYSQL_DUMP = rb"""-- MariaDB dump
/*!40101 SET NAMES utf8mb4 */;
CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 */;
USE `shop`;
DROP TABLE IF EXISTS `t`;
CREATE TABLE `t` (
  `id` int(11) NOT NULL,
  `s` text DEFAULT 'x),(y'
) ENGINE=InnoDB;
LOCK TABLES `t` WRITE;
INSERT INTO `t` VALUES (1,'a),(b'),(2,'it\'s'),(3,'back\\'),(4,'(('),(5,''''),
(6,'nl\nhere'),(7,NULL),(8,0x28292C28);
INSERT INTO `t` VALUES (9,'x');
UNLOCK TABLES;
CREATE TABLE `empty` (
  `id` int
);
CREATE TABLE `we``ird` (`a` int);
INSERT IGNORE INTO `we``ird` (`a`) VALUES (1),(2);
REPLACE INTO `we``ird` VALUES (3);
DELIMITER ;;
/*!50003 CREATE*/ /*!50003 TRIGGER `tr` AFTER INSERT ON `t` FOR EACH ROW BEGIN
INSERT INTO `empty` VALUES (1);
END */;;
DELIMITER ;
USE `other`;
CREATE TABLE `t` (`id` int);
INSERT INTO `t` VALUES (1);INSERT INTO `t` VALUES (2);
"""


def test_mysqldump_counts() -> None:
    assert whole(RowCounter("mysql"), MYSQL_DUMP) == {
        "rows": {"other.t": 2, "shop.empty": 0, "shop.t": 9, "shop.we`ird": 3}
    }


SQLITE_DUMP = b"""PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE log(a);
CREATE TABLE IF NOT EXISTS "we""ird t"(id INTEGER PRIMARY KEY AUTOINCREMENT, s TEXT);
INSERT INTO "we""ird t" VALUES(1,replace('a\\nb','\\n',char(10)));
INSERT INTO "we""ird t" VALUES(2,'x''y);(');
INSERT INTO "we""ird t" VALUES(3,'old sqlite
wrote newlines as is);');
INSERT INTO "we""ird t"(id,s) VALUES(4,X'2829');
CREATE TABLE empty(x);
DELETE FROM sqlite_sequence;
INSERT INTO sqlite_sequence VALUES('we"ird t',4);
CREATE TRIGGER tr AFTER INSERT ON log BEGIN
INSERT INTO log VALUES(new.a);
END;
CREATE INDEX i ON log(a);
COMMIT;
"""


def test_sqlite_dump_counts() -> None:
    assert whole(RowCounter("sqlite"), SQLITE_DUMP) == {
        "rows": {"empty": 0, "log": 0, "sqlite_sequence": 1, 'we"ird t': 4}
    }


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0), max_size=60),
    case=st.sampled_from(
        [("postgresql", PG_DUMPALL), ("mysql", MYSQL_DUMP), ("sqlite", SQLITE_DUMP), ("postgresql", PG_DUMP)]
    ),
)
def test_sql_any_chunking_same_result(cuts: list[int], case: tuple[str, bytes]) -> None:
    engine, data = case
    assert feed_split(RowCounter(engine), data, cuts) == whole(RowCounter(engine), data)


def mysql_literal(value: str) -> bytes:
    """Escape a string the way mysqldump does."""
    out = value.encode()
    for a, b in (
        (b"\\", b"\\\\"),
        (b"'", b"\\'"),
        (b"\n", b"\\n"),
        (b"\r", b"\\r"),
        (b"\0", b"\\0"),
        (b"\x1a", b"\\Z"),
    ):
        out = out.replace(a, b)
    return b"'" + out + b"'"


def pg_copy_field(value: str) -> bytes:
    """Escape a value the way COPY text format does."""
    out = value.encode()
    for a, b in ((b"\\", b"\\\\"), (b"\n", b"\\n"), (b"\r", b"\\r"), (b"\t", b"\\t")):
        out = out.replace(a, b)
    return out


TEXT = st.text(alphabet=st.sampled_from(list("ab(),;'\"\\.\n\t\r`\0 é")), max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    tables=st.lists(st.lists(st.lists(TEXT, min_size=1, max_size=3), max_size=8), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_generated_dumps_any_strings(tables: list[list[list[str]]], cuts: list[int]) -> None:
    my = io.BytesIO()
    pg = io.BytesIO()
    lite = io.BytesIO()
    expected = {}
    for i, rows in enumerate(tables):
        expected[f"t{i}"] = len(rows)
        my.write(f"CREATE TABLE `t{i}` (\n  `c` text\n);\n".encode())
        if rows:
            tuples = b",".join(b"(" + b",".join(map(mysql_literal, r)) + b")" for r in rows)
            my.write(f"INSERT INTO `t{i}` VALUES ".encode() + tuples + b";\n")
        pg.write(f"COPY public.t{i} (c) FROM stdin;\n".encode())
        for r in rows:
            pg.write(b"\t".join(map(pg_copy_field, r)) + b"\n")
        pg.write(b"\\.\n")
        lite.write(f"CREATE TABLE t{i}(c);\n".encode())
        for r in rows:
            vals = b",".join(b"'" + v.encode().replace(b"'", b"''") + b"'" for v in r)
            lite.write(f"INSERT INTO t{i} VALUES(".encode() + vals + b");\n")
    assert feed_split(RowCounter("mysql"), my.getvalue(), cuts)["rows"] == expected
    assert feed_split(RowCounter("sqlite"), lite.getvalue(), cuts)["rows"] == expected
    assert feed_split(RowCounter("postgresql"), pg.getvalue(), cuts)["rows"] == {
        f"public.{k}": v for k, v in expected.items()
    }


def test_huge_single_insert_is_not_buffered() -> None:
    """An 11 MB one-line INSERT (one huge string, then many tuples) passes with bounded memory."""
    counter = RowCounter("mysql")
    tracemalloc.start()
    try:
        counter.feed(b"INSERT INTO `t` VALUES (1,'")
        piece = b"x\\'),(" * 10_000
        for _ in range(140):  # 8 MB inside one string
            counter.feed(piece)
        counter.feed(b"'),")
        tuples = b"(2,'a'),(3,'b)'),"  # then 2.7 MB of tuples
        block = tuples * 4096
        for _ in range(40):
            counter.feed(block)
        counter.feed(b"(4,'end');\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert counter.result() == {"rows": {"t": 1 + 40 * 4096 * 2 + 1}}
    assert peak < 4 << 20


def test_unfinished_dump_is_reported() -> None:
    r = whole(RowCounter("postgresql"), b"COPY public.t (a) FROM stdin;\n1\n2\n")
    assert r["rows"] == {"public.t": 2} and "public.t" in r["error"]
    r = whole(RowCounter("mysql"), b"INSERT INTO `t` VALUES (1,'abc")
    assert "t" in r["error"]


def test_taps_for() -> None:
    assert [type(t) for t in taps_for("files", None)] == [TarFacts]
    (counter,) = taps_for("dump", "mysql")
    assert isinstance(counter, RowCounter) and counter.engine == "mysql"
    assert taps_for("state", None) == [] and taps_for("dump", "oracle") == []
    with pytest.raises(ValueError):
        RowCounter("oracle")
