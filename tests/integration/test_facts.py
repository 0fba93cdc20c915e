"""Facts taps against real dumps and archives: pg_dump, pg_dumpall, mysqldump, sqlite3 .dump, GNU tar.

Each stream is fed in random chunk sizes; the counts must equal ``SELECT count(*)`` on the live
database, and the tar facts an ``os.walk`` of the tree and the real sha256 of the sampled files.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from recipes.facts import RowCounter, TarFacts
from tests import servers

# Strings that trip naive parsers: tuple separators, quotes, escapes, COPY's end marker.
AWKWARD = [
    "),(",
    "it's",
    "''",
    "back\\slash",
    "\\.",
    "line\n\\.\nbreak",
    "tab\there",
    "semi;colon);",
    "(unbalanced",
    'dq"uote',
    "\r\n",
    "é ü 字",
    "`backtick`",
    "",
]


def feed_random(tap: Any, data: bytes, seed: int) -> dict[str, Any]:
    """Feed data in random chunk sizes (1 byte to 256 KiB) and return the result."""
    rnd = random.Random(seed)
    pos = 0
    while pos < len(data):
        size = rnd.randint(1, rnd.choice([1, 3, 7, 512, 513, 4096, 65536, 262144]))
        tap.feed(data[pos : pos + size])
        pos += size
    out: dict[str, Any] = tap.result()
    return out


def feed_random_all(tap_factory: Any, data: bytes) -> dict[str, Any]:
    """The result for three random chunkings, checked equal to one whole feed."""
    whole = tap_factory()
    whole.feed(data)
    expected: dict[str, Any] = whole.result()
    for seed in range(3):
        assert feed_random(tap_factory(), data, seed) == expected
    assert "error" not in expected
    return expected


def _pg_fill(pg: servers.Postgres, db: str) -> dict[str, int]:
    """Tables with known row counts (awkward strings, bytea, an empty one, quoted names)."""
    values = ", ".join("(" + "$q$" + s + "$q$" + ")" for s in AWKWARD)
    pg.psql(
        f"""
        CREATE SCHEMA "Odd Schema";
        CREATE TABLE public.words (s text);
        INSERT INTO public.words SELECT v.s FROM (VALUES {values}) v(s), generate_series(1, 300);
        CREATE TABLE public.empty (id int);
        CREATE TABLE "Odd Schema"."we""ird.t" (id int, b bytea, j jsonb);
        INSERT INTO "Odd Schema"."we""ird.t"
            SELECT g, decode(repeat('5c2e0a', g % 5), 'hex'), '{{"a": "\\\\."}}'::jsonb
            FROM generate_series(1, 1234) g;
        CREATE TABLE public.nulls (a text, b int);
        INSERT INTO public.nulls SELECT NULL, NULL FROM generate_series(1, 77);
        """,
        db=db,
    )
    counts = {}
    for schema, table in (
        ("public", "words"),
        ("public", "empty"),
        ("Odd Schema", 'we"ird.t'),
        ("public", "nulls"),
    ):
        quoted = '"' + schema.replace('"', '""') + '"."' + table.replace('"', '""') + '"'
        counts[f"{schema}.{table}"] = int(pg.psql(f"SELECT count(*) FROM {quoted}", db=db))
    assert counts["public.words"] == len(AWKWARD) * 300
    return counts


def test_pg_dump_and_pg_dumpall_rows(pg_source: servers.Postgres, fresh_pg_db: str) -> None:
    counts = _pg_fill(pg_source, fresh_pg_db)
    env = {**os.environ, **pg_source.dsn_env(fresh_pg_db)}
    dump = subprocess.run(["pg_dump", "--create"], env=env, check=True, capture_output=True).stdout
    rows = feed_random_all(lambda: RowCounter("postgresql"), dump)["rows"]
    # --create writes "\connect <db>", so keys carry the database, as with pg_dumpall.
    assert rows == {f"{fresh_pg_db}.{k}": v for k, v in counts.items()}

    plain = subprocess.run(["pg_dump"], env=env, check=True, capture_output=True).stdout
    assert feed_random_all(lambda: RowCounter("postgresql"), plain)["rows"] == counts

    everything = subprocess.run(["pg_dumpall"], env=env, check=True, capture_output=True).stdout
    all_rows = feed_random_all(lambda: RowCounter("postgresql"), everything)["rows"]
    mine = {k[len(fresh_pg_db) + 1 :]: v for k, v in all_rows.items() if k.startswith(fresh_pg_db + ".")}
    assert mine == counts


def test_pg_dumpall_database_with_an_awkward_name(pg_source: servers.Postgres) -> None:
    """pg_dumpall writes ``\\connect -reuse-previous=on "dbname='...'"`` for such names."""
    name = "it's a \\ db"
    quoted = '"' + name + '"'
    pg_source.psql(f"CREATE DATABASE {quoted};")
    try:
        pg_source.psql("CREATE TABLE t (a int); INSERT INTO t SELECT generate_series(1, 5);", db=name)
        env = {**os.environ, **pg_source.dsn_env()}
        everything = subprocess.run(["pg_dumpall"], env=env, check=True, capture_output=True).stdout
        assert b"-reuse-previous=on" in everything
        rows = feed_random_all(lambda: RowCounter("postgresql"), everything)["rows"]
        assert rows[f"{name}.public.t"] == 5
    finally:
        pg_source.psql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE);")


def _sql_string(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def test_mysqldump_rows(mariadb_source: servers.MariaDB, fresh_mariadb_db: str) -> None:
    db = fresh_mariadb_db
    values = ",".join(f"({i},{_sql_string(s)},{_sql_string(s[::-1])})" for i, s in enumerate(AWKWARD * 200))
    mariadb_source.sql(
        f"USE `{db}`;"
        "CREATE TABLE words (id int, s text, r text) CHARACTER SET utf8mb4;"
        f"INSERT INTO words VALUES {values};"
        "CREATE TABLE empty (id int);"
        "CREATE TABLE `we``ird t` (b blob);"
        "INSERT INTO `we``ird t` SELECT UNHEX(REPEAT('27292C28', seq % 7)) FROM seq_1_to_999;"
        "CREATE TABLE log (a int);"
        "CREATE TRIGGER tr AFTER INSERT ON empty FOR EACH ROW\nINSERT INTO log VALUES (NEW.id);"
        "CREATE VIEW v AS SELECT * FROM words;"
    )
    tables = ["words", "empty", "we`ird t", "log"]
    counts = {
        f"{db}.{t}": int(mariadb_source.sql(f"SELECT count(*) FROM `{db}`.`{t.replace('`', '``')}`"))
        for t in tables
    }
    assert counts[f"{db}.words"] == len(AWKWARD) * 200
    base = ["mysqldump", "--no-defaults", *mariadb_source.client_args()]
    # The recipes' own options (one database, with routines and triggers), and small INSERTs.
    for extra in (["--net-buffer-length=4096"], ["--skip-extended-insert"], []):
        dump = subprocess.run(
            [*base, *extra, "--single-transaction", "--routines", "--events", "--databases", db],
            check=True,
            capture_output=True,
        ).stdout
        assert b"DELIMITER ;;" in dump
        rows = feed_random_all(lambda: RowCounter("mysql"), dump)["rows"]
        assert rows == counts  # the view's stand-in is a CREATE VIEW, not a table: not listed


def test_sqlite_dump_rows(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE words (id INTEGER PRIMARY KEY AUTOINCREMENT, s TEXT, b BLOB);
        CREATE TABLE "we""ird t" (x);
        CREATE TABLE empty (x);
        CREATE TABLE log (a);
        CREATE TRIGGER tr AFTER INSERT ON empty BEGIN
        INSERT INTO log VALUES(new.x);
        END;
        CREATE VIEW v AS SELECT * FROM words;
        """
    )
    con.executemany("INSERT INTO words (s, b) VALUES (?, ?)", [(s, s.encode()) for s in AWKWARD * 50])
    con.executemany('INSERT INTO "we""ird t" VALUES (?)', [(i,) for i in range(321)])
    con.commit()
    tables = ["words", 'we"ird t', "empty", "log", "sqlite_sequence"]
    counts = {
        t: con.execute('SELECT count(*) FROM "' + t.replace('"', '""') + '"').fetchone()[0] for t in tables
    }
    con.close()
    dump = subprocess.run(["sqlite3", "-bail", str(path), ".dump"], check=True, capture_output=True).stdout
    assert feed_random_all(lambda: RowCounter("sqlite"), dump)["rows"] == counts


def test_gnu_tar_facts_match_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    rnd = random.Random(7)
    for i in range(300):
        d = root / f"d{i % 13}" / ("sub" if i % 3 else "") / ("n" * (i % 160))
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}-{'é' if i % 5 == 0 else ''}").write_bytes(
            rnd.randbytes(rnd.choice([0, 1, 511, 512, 513, 9000]))
        )
    (root / "big").write_bytes(rnd.randbytes(3 << 20))  # too big for the sample
    (root / "empty-dir").mkdir()
    os.symlink("big", root / "sym")
    os.link(root / "d0" / "f0-é", root / "hard")

    files = dirs = size = 0
    inodes: set[int] = set()
    for dirpath, _dirnames, filenames in os.walk(root):
        dirs += 1
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)) and st.st_ino not in inodes:
                inodes.add(st.st_ino)
                files += 1
                size += st.st_size
    data = subprocess.run(["tar", "-C", str(root), "-cf", "-", "."], check=True, capture_output=True).stdout
    r = feed_random_all(lambda: TarFacts(sample=25), data)
    # A second hard link to a file is a link entry; its data is counted once.
    assert (r["files"], r["dirs"], r["links"], r["bytes"]) == (files, dirs, 2, size)
    assert len(r["sample"]) == 25
    for path, digest in r["sample"].items():
        assert path.startswith("./")
        assert hashlib.sha256((root / path).read_bytes()).hexdigest() == digest
    # The same tree archived in another order (and by another tool) gives the same sample.
    again = subprocess.run(
        ["tar", "-C", str(root), "--sort=name", "--format=posix", "-cf", "-", "."],
        check=True,
        capture_output=True,
    ).stdout
    assert feed_random_all(lambda: TarFacts(sample=25), again)["sample"] == r["sample"]
