"""The django recipe end to end over real SSH: seed -> backup -> restore on a second host -> compare.

Source and target are two sshd "hosts" (mount namespaces) with their own PostgreSQL and
MariaDB clusters and their own /srv/site (see tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest

from recipes.apps.django import DEFAULT_EXCLUDES
from tests import servers
from tests.integration.django_site import SQLITE_DB, comparable, seed_tree, sqlite_rows
from tests.integration.world import World, fingerprint, on_first_read


def seed_postgres(pg: servers.Postgres, db: str) -> None:
    pg.psql(
        "CREATE TABLE polls_choice(id serial PRIMARY KEY, label text, votes int, data bytea);"
        "INSERT INTO polls_choice(label, votes, data) "
        "SELECT 'choice ' || g, g * 7, decode(md5(g::text), 'hex') FROM generate_series(1, 2000) g;"
        "CREATE VIEW popular AS SELECT * FROM polls_choice WHERE votes > 100;",
        db=db,
    )


def pg_rows(pg: servers.Postgres, db: str) -> str:
    return pg.psql("SELECT id, label, votes, encode(data, 'hex') FROM polls_choice ORDER BY id", db=db)


def test_backup_over_ssh_and_restore_on_second_host(
    world: World,
    site: tuple[str, Path, Path],
    pg_source: servers.Postgres,
    pg_target: servers.Postgres,
    fresh_pg_db: str,
) -> None:
    root, src, dst = site
    seed_tree(src)
    seed_postgres(pg_source, fresh_pg_db)
    sets = ["--set", f"root={root}", "--set", "postgres=true", "--set", f'sqlite=["{SQLITE_DB}"]']

    backup = world.cli("--json", "run", "django", "--host", "source", *sets)
    assert backup.returncode == 0, backup.stderr
    manifest = json.loads(backup.stdout)
    names = {o["name"] for o in manifest["objects"]}
    assert names == {
        "files.tar",
        "files.snar",  # tar's listed-incremental state, for the next backup
        "dumps/postgresql.sql",
        "dumps/sqlite-var-opt-mysite-mysite.db.sql",
    }
    where = {o["name"]: o["compressed_on"] for o in manifest["objects"]}
    assert where.pop("files.snar") == "controller"  # read back after tar, compressed here
    assert set(where.values()) == {"host"}  # auto, and the host has zstd
    assert (manifest["level"], manifest["parent"]) == (0, None)
    _facts_match_the_source(manifest, src, fresh_pg_db)

    listed = json.loads(world.cli("--json", "snapshots", "django", "--host", "source", check=True).stdout)
    assert [s["snapshot"] for s in listed] == [manifest["snapshot"]]

    try:
        restore = world.cli("restore", "django", "--host", "target", "--from", "source", *sets)
        assert restore.returncode == 0, restore.stderr

        assert comparable(dst) == comparable(src)
        # excluded directories are not restored at all
        for excluded in ("tmp", "var/cache", "proc", "var/tmp", "var/lib/postgresql", "var/swapfile"):
            assert (src / excluded).exists() and not (dst / excluded).exists(), excluded
        assert sqlite_rows(dst / SQLITE_DB.lstrip("/")) == sqlite_rows(src / SQLITE_DB.lstrip("/"))
        assert pg_rows(pg_target, fresh_pg_db) == pg_rows(pg_source, fresh_pg_db)
        assert pg_target.psql("SELECT count(*) FROM popular", db=fresh_pg_db).strip() == "1986"

        again = world.cli("restore", "django", "--host", "target", "--from", "source", *sets)
        assert again.returncode == 2
        assert "not empty" in again.stderr and "--force" in again.stderr
        lines = again.stderr.splitlines()  # the config file in use, then one error line
        assert len(lines) == 2 and " recipes: config " in lines[0]  # timestamped: not a terminal
    finally:
        pg_target.psql(f'DROP DATABASE IF EXISTS "{fresh_pg_db}" WITH (FORCE);')
        # pg_dumpall carried the source's postgres password: give the target its own back
        pg_target.psql(f"ALTER ROLE postgres PASSWORD '{pg_target.password}';")


def _facts_match_the_source(manifest: dict[str, Any], src: Path, pg_db: str | None) -> None:
    """Facts counted from the streams as they passed equal the source counted directly: an
    archive's whether zstd ran on the host or here (drills check them), a dump's rows."""
    got = {o["name"]: o["facts"] for o in manifest["objects"]}
    sqlite = got["dumps/sqlite-var-opt-mysite-mysite.db.sql"]["rows"]
    assert sqlite["polls_question"] == len(sqlite_rows(src / SQLITE_DB.lstrip("/")))
    if pg_db is not None:
        rows = got["dumps/postgresql.sql"]["rows"]
        assert rows[f"{pg_db}.public.polls_choice"] == 2000
    files = got["files.tar"]
    kept = [
        p
        for p in src.rglob("*")
        if not any(p.relative_to(src).as_posix().startswith(x.strip("/")) for x in DEFAULT_EXCLUDES)
    ]
    regular = [p for p in kept if p.is_file() and not p.is_symlink()]
    assert files["files"] == len(regular)
    assert files["bytes"] == sum(p.stat().st_size for p in regular)
    assert files["sample"]
    for path, digest in files["sample"].items():
        assert hashlib.sha256((src / path).read_bytes()).hexdigest() == digest, path


def test_compression_on_the_controller_at_another_level_round_trips(
    world: World, site: tuple[str, Path, Path]
) -> None:
    """``compression = "controller"``: the host only runs tar and sqlite3; the controller runs zstd."""
    root, src, dst = site
    seed_tree(src)
    text = world.config.read_text()
    world.config.write_text(
        text.replace("[repository]\n", '[repository]\ncompression = "controller"\ncompression_level = 5\n')
    )
    sets = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    plan = world.cli("plan", "django", "--host", "source", *sets, check=True)
    assert "(zstd -5 on the controller)" in plan.stdout and "| zstd" not in plan.stdout

    manifest = json.loads(world.cli("--json", "run", "django", "--host", "source", *sets, check=True).stdout)
    assert {o["compressed_on"] for o in manifest["objects"]} == {"controller"}
    _facts_match_the_source(manifest, src, None)
    world.cli("restore", "django", "--host", "target", "--from", "source", *sets, check=True)
    assert comparable(dst) == comparable(src)
    assert sqlite_rows(dst / SQLITE_DB.lstrip("/")) == sqlite_rows(src / SQLITE_DB.lstrip("/"))


def test_break_glass_restore_with_age_zstd_tar_only(
    world: World, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    root, src, _ = site
    seed_tree(src)
    world.cli("run", "django", "--host", "source", "--set", f"root={root}", check=True)
    (snap,) = list(world.repo.glob("django/source/*/manifest.json"))
    # docs/restore.md's first block, as written there (the signer line from the config)
    doc = (Path(__file__).parents[2] / "docs/restore.md").read_text()
    block = doc.split("then each object's sha256 against it:\n\n```sh\n", 1)[1].split("```", 1)[0]
    signer = (world.signing_key.parent / (world.signing_key.name + ".pub")).read_text().strip()
    script = block.replace("/var/backups/recipes/django/web1/20261122T101500Z-1a2b3c", str(snap.parent))
    script = "set -e\n" + script.replace("ssh-ed25519 AAAAC3Nza... recipes@controller", signer)
    checked = subprocess.run(
        script, shell=True, cwd=tmp_path, capture_output=True, text=True, executable="/bin/bash"
    )
    assert checked.returncode == 0, checked.stderr
    assert 'Good "recipes-manifest" signature' in checked.stdout
    digests = [line.split('"')[3] for line in checked.stdout.splitlines() if '"sha256"' in line]
    assert digests and checked.stdout.split()[-2] == digests[0]  # sha256sum agrees with the manifest
    # and a forged manifest fails the same check
    snap.write_text(snap.read_text().replace('"level": 0', '"level": 0 '))
    forged = subprocess.run(script, shell=True, cwd=tmp_path, capture_output=True, executable="/bin/bash")
    assert forged.returncode != 0
    out = tmp_path / "plain"
    out.mkdir()
    subprocess.run(
        f"age -d -i {world.identity} {snap.parent}/files.tar.zst.age | zstd -d"
        # as docs/restore.md says
        f" | tar -x --numeric-owner -p --acls --xattrs --xattrs-include='*' -C {out}",
        shell=True,
        check=True,
        executable="/bin/bash",
    )
    assert fingerprint(out, DEFAULT_EXCLUDES) == fingerprint(src, DEFAULT_EXCLUDES)
    # and the stored sha256 matches what sha256sum says
    m = json.loads(snap.read_text())
    obj = next(o for o in m["objects"] if o["name"] == "files.tar")
    digest = subprocess.run(
        ["sha256sum", str(snap.parent / obj["path"])], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert digest == obj["sha256"]


def test_failed_dump_fails_the_snapshot(world: World, site: tuple[str, Path, Path]) -> None:
    root, src, _ = site
    seed_tree(src)
    bad = world.cli(
        "run", "django", "--host", "source", "--set", f"root={root}", "--set", 'sqlite=["/var/opt/nope.db"]'
    )
    assert bad.returncode == 1
    assert "sqlite database not found" in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("recipes: error:")
    assert not list(world.repo.glob("django/source/*/manifest.json"))
    assert not list(world.repo.glob("django/source/*"))  # the partial snapshot was removed
    assert not list(world.cache.glob("**/*.partial"))  # and the controller's staging of tar's state
    listed = world.cli("--json", "snapshots", check=True)
    assert json.loads(listed.stdout) == []


def login_with(db: servers.MariaDB, password: str) -> servers.MariaDB:
    """The same server, logged in with another root password (a restore brings the source's)."""
    return servers.MariaDB(db.datadir, db.socket, db.port, password)


def test_mariadb_dump_and_restore_with_password_from_env(
    world: World,
    site: tuple[str, Path, Path],
    mariadb_source: servers.MariaDB,
    mariadb_target: servers.MariaDB,
    fresh_mariadb_db: str,
) -> None:
    root, src, _ = site
    seed_tree(src)
    db = fresh_mariadb_db
    mariadb_source.sql(
        f"CREATE TABLE `{db}`.t(id INT PRIMARY KEY, v VARCHAR(20), b BLOB);"
        f"INSERT INTO `{db}`.t VALUES (1, 'one', UNHEX('00FF10')), (2, 'two', NULL);"
        f"CREATE PROCEDURE `{db}`.p() SELECT 42;"
    )
    src_env = {"SRC_MYSQL_PW": mariadb_source.root_password}
    tgt_env = {"TGT_MYSQL_PW": mariadb_target.root_password}
    common = ["--set", f"root={root}"]
    backup = world.cli(
        "--json",
        "run",
        "django",
        "--host",
        "source",
        *common,
        "--set",
        f'mysql={{host="127.0.0.1", port={mariadb_source.port}, password_env="SRC_MYSQL_PW"}}',
        env=src_env,
    )
    assert backup.returncode == 0, backup.stderr
    assert mariadb_source.root_password not in backup.stdout + backup.stderr
    try:
        restore = world.cli(
            "restore",
            "django",
            "--host",
            "target",
            "--from",
            "source",
            *common,
            "--set",
            f'mysql={{host="127.0.0.1", port={mariadb_target.port}, password_env="TGT_MYSQL_PW"}}',
            env=tgt_env,
        )
        assert restore.returncode == 0, restore.stderr
        got = login_with(mariadb_target, mariadb_source.root_password).sql(
            f"SELECT id, v, HEX(b) FROM `{db}`.t ORDER BY id; SHOW PROCEDURE STATUS WHERE Db='{db}'",
        )
        assert got.splitlines()[0].split("\t") == ["1", "one", "00FF10"]
        assert got.splitlines()[1].split("\t") == ["2", "two", "NULL"]
        assert "\tp\tPROCEDURE" in got
    finally:
        # the dump carried source's root password (--flush-privileges): log in with it to clean up
        login_with(mariadb_target, mariadb_source.root_password).sql(
            f"DROP DATABASE IF EXISTS `{db}`; "
            f"ALTER USER root@'127.0.0.1' IDENTIFIED BY '{mariadb_target.root_password}'; "
            f"ALTER USER root@'::1' IDENTIFIED BY '{mariadb_target.root_password}'; "
            "FLUSH PRIVILEGES",
        )


def test_postgres_over_tcp_with_password_on_stdin(
    world: World, site: tuple[str, Path, Path], pg_source: servers.Postgres, fresh_pg_db: str
) -> None:
    root, src, _ = site
    seed_tree(src)
    seed_postgres(pg_source, fresh_pg_db)
    table = f'postgres={{host="127.0.0.1", port={pg_source.port}, password_env="SRC_PG_PW"}}'
    args = ["django", "--host", "source", "--set", f"root={root}", "--set", table]

    plan = world.cli("plan", *args, env={"SRC_PG_PW": pg_source.password})
    assert plan.returncode == 0, plan.stderr
    assert "PGPASSWORD=*** pg_dumpall --host=127.0.0.1" in plan.stdout
    assert pg_source.password not in plan.stdout
    ok = world.cli("-vv", "run", *args, env={"SRC_PG_PW": pg_source.password})
    assert ok.returncode == 0, ok.stderr
    assert pg_source.password not in ok.stdout + ok.stderr  # not even in debug logs
    wrong = world.cli("run", *args, env={"SRC_PG_PW": "wrong-password"})
    assert wrong.returncode == 1
    assert "password authentication failed" in wrong.stderr
    missing = world.cli("run", *args)
    assert missing.returncode == 2 and "SRC_PG_PW is not set" in missing.stderr
    assert len(list(world.repo.glob("django/source/*/manifest.json"))) == 1


@pytest.fixture
def pg_snapshot(
    world: World,
    site: tuple[str, Path, Path],
    pg_source: servers.Postgres,
    pg_target: servers.Postgres,
    fresh_pg_db: str,
) -> Iterator[tuple[list[str], Path]]:
    """A snapshot of a tree and a PostgreSQL cluster; yields the restore arguments and the
    target dir, and gives the target cluster its own state back afterwards."""
    root, src, dst = site
    seed_tree(src)
    seed_postgres(pg_source, fresh_pg_db)
    sets = ["--set", f"root={root}", "--set", "postgres=true"]
    world.cli("run", "django", "--host", "source", *sets, check=True)
    try:
        yield ["restore", "django", "--host", "target", "--from", "source", *sets], dst
    finally:
        pg_target.psql(f'DROP DATABASE IF EXISTS "{fresh_pg_db}" WITH (FORCE);')
        # pg_dumpall carried the source's postgres password: give the target its own back
        pg_target.psql(f"ALTER ROLE postgres PASSWORD '{pg_target.password}';")


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("recipes: error: ") and "Traceback" not in proc.stderr
    return lines[-1]


def test_a_wrong_identity_is_exit_3_and_writes_nothing(
    world: World, pg_snapshot: tuple[list[str], Path], tmp_path: Path
) -> None:
    restore, dst = pg_snapshot
    other = tmp_path / "other.txt"
    other.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    wrong = world.cli(*restore, "--identity", str(other))
    assert wrong.returncode == 3, wrong.stderr
    assert "cannot decrypt" in one_error_line(wrong)
    assert not dst.exists()


def test_the_first_sql_error_fails_the_load_and_names_the_partial_state(
    world: World,
    pg_snapshot: tuple[list[str], Path],
    pg_target: servers.Postgres,
    fresh_pg_db: str,
) -> None:
    """The database already exists on the target: psql stops at the first real error (not at
    the CREATE ROLE of the roles the target has), and the line says what the target holds now."""
    restore, _ = pg_snapshot
    pg_target.psql(f'CREATE DATABASE "{fresh_pg_db}";')
    clash = world.cli(*restore, "--force")
    assert clash.returncode == 1, clash.stderr
    line = one_error_line(clash)
    assert "load postgresql failed" in line
    assert f'database "{fresh_pg_db}" already exists' in line and "psql:<stdin>:" in line
    assert "PARTLY restored" in line and "extract files" in line
    # psql stopped there: it did not go on to fill the database that was in the way
    tables = "SELECT count(*) FROM pg_tables WHERE tablename = 'polls_choice'"
    assert pg_target.psql(tables, db=fresh_pg_db).strip() == "0"


def test_a_tampered_object_is_exit_3_before_anything_is_written(
    world: World, pg_snapshot: tuple[list[str], Path]
) -> None:
    restore, dst = pg_snapshot
    (snap,) = world.repo.glob("django/source/*/manifest.json")
    obj = snap.parent / "dumps/postgresql.sql.zst.age"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x40
    obj.write_bytes(bytes(data))
    bad = world.cli(*restore)
    assert bad.returncode == 3, bad.stderr
    assert "dumps/postgresql.sql.zst.age" in one_error_line(bad) and "sha256" in bad.stderr
    assert not dst.exists()  # checked before the files were extracted


def test_a_truncated_object_is_exit_3_before_anything_is_written(
    world: World, pg_snapshot: tuple[list[str], Path]
) -> None:
    restore, dst = pg_snapshot
    (snap,) = world.repo.glob("django/source/*/manifest.json")
    obj = snap.parent / "dumps/postgresql.sql.zst.age"
    obj.write_bytes(obj.read_bytes()[:-10])
    short = world.cli(*restore)
    assert short.returncode == 3, short.stderr
    assert "truncated" in one_error_line(short)
    assert not dst.exists()


def test_tar_exit_1_on_a_changing_file_is_a_recorded_warning(
    world: World, site: tuple[str, Path, Path]
) -> None:
    """GNU tar says "file changed as we read it" (exit 1) on a live system: the snapshot is kept
    and the manifest records the warning; any other tar failure fails it (see the missing root)."""
    root, src, _ = site
    seed_tree(src)
    big = src / "srv/data/growing.bin"
    with open(big, "wb") as fh:  # written, not sparse (tar skips holes): 64 MiB for tar to read
        for _ in range(64):
            fh.write(bytes(1 << 20))
    # touched at tar's first read of it, as a live system's log is
    toucher = on_first_read(big, lambda: os.utime(big))
    out = world.cli("--json", "run", "django", "--host", "source", "--set", f"root={root}")
    toucher.join(timeout=30)
    assert out.returncode == 0, out.stderr
    files = next(o for o in json.loads(out.stdout)["objects"] if o["name"] == "files.tar")
    assert any("file changed as we read it" in w for w in files["warnings"]), files["warnings"]
    missing = world.cli("run", "django", "--host", "source", "--set", f"root={root}/no-such-dir")
    assert missing.returncode == 1
    assert "No such file or directory" in one_error_line(missing)


def test_a_dump_with_no_connection_on_the_target_is_one_line_not_a_skip(
    world: World, pg_snapshot: tuple[list[str], Path]
) -> None:
    """The snapshot holds a PostgreSQL dump; the target's config says nothing about PostgreSQL:
    the restore refuses before running anything there, instead of silently leaving it out."""
    restore, dst = pg_snapshot
    i = restore.index("postgres=true")
    without = restore[: i - 1] + restore[i + 1 :]
    proc = world.cli(*without)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert "dumps/postgresql.sql" in line and "postgresql connection" in line
    assert not dst.exists()
