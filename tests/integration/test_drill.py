"""Restore drills over real SSH: back up from ``source``, drill onto ``target`` (the scratch host),
check the signed record; then damage the restored copy between restore and checks and see the
drill fail naming the check; and the refusals (scratch == source) writing nothing anywhere.

Backups use the recipes' own harness (``test_django``'s seeds); every drill runs the real CLI,
except the damaged ones, which call ``drill.run`` in process for its ``after_restore`` hook.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recipes import config, drill
from recipes.errors import VerifyError
from recipes.hosts import Host
from recipes.repository import Repository
from tests import servers
from tests.integration.django_site import SQLITE_DB, seed_tree
from tests.integration.test_django import seed_postgres
from tests.integration.world import World

RTO: dict[str, float] = {}
"""Each recipe's drill RTO from these runs (printed at the end of the session with -s)."""


@pytest.fixture(scope="module", autouse=True)
def _report_rto() -> Iterator[None]:
    yield
    if RTO:
        print("\ndrill RTO:", ", ".join(f"{k} {v:.2f}s" for k, v in sorted(RTO.items())))


def drill_in_process(world: World, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``drill.run`` as the CLI calls it, with the test's HOME (for hooks the CLI cannot take)."""
    old = {k: os.environ.get(k) for k in ("HOME", "XDG_CACHE_HOME")}
    os.environ.update({k: v for k, v in world.env().items() if k in old})
    try:
        return drill.run(config.load(str(world.config)), *args, **kwargs)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def records(world: World, recipe: str) -> list[dict[str, Any]]:
    got = world.cli("--json", "drills", recipe, check=True)
    data: list[dict[str, Any]] = json.loads(got.stdout)
    return data


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# --------------------------------------------------------------------------- django


@pytest.fixture
def django_backup(
    world: World, site: tuple[str, Path, Path], pg_source: servers.Postgres, fresh_pg_db: str
) -> Iterator[tuple[list[str], Path, str]]:
    """A django snapshot of the source (files, PostgreSQL, SQLite) and its --set arguments (each
    host's own cluster over its local socket)."""
    root, src, dst = site
    seed_tree(src)
    # a hard link: tar stores its second name as a link, the restored tree has two names for one
    # inode; the drill counts each inode once
    os.link(src / "srv/data/blob.bin", src / "srv/data/blob-again.bin")
    seed_postgres(pg_source, fresh_pg_db)
    common = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]', "--set", "postgres=true"]
    world.cli("run", "django", "--host", "source", *common, check=True)
    yield common, dst, fresh_pg_db


def _reset_pg(pg: servers.Postgres, db: str) -> None:
    pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE);')
    pg.psql(f"ALTER ROLE postgres PASSWORD '{pg.password}';")


def test_django_drill_passes_and_is_recorded(
    world: World, django_backup: tuple[list[str], Path, str], pg_target: servers.Postgres
) -> None:
    common, _dst, db = django_backup
    try:
        got = world.cli(
            "--json", "drill", "django", "--host", "source", "--to-host", "target",
            *common,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        record = json.loads(got.stdout)
        assert record["passed"] is True and record["host"] == "source" and record["scratch"] == "target"
        names = {c["name"]: c for c in record["checks"]}
        assert names["files.tar files"]["ok"] and names["files.tar sample"]["ok"]
        assert "skipped" in names["files.tar bytes"]  # the SQLite file is rebuilt from its dump
        assert names[f"dumps/postgresql.sql rows {db}.public.polls_choice"]["found"] == "2000"
        assert any(n.startswith("dumps/sqlite-var-opt-mysite-mysite.db.sql rows") for n in names)
        assert not [c for c in record["checks"] if not c["ok"]]
        assert [s["name"] for s in record["steps"]] == [
            "files",
            "postgresql",
            "sqlite-var-opt-mysite-mysite.db",
        ]
        RTO["django"] = record["rto_seconds"]
        listed = records(world, "django")
        assert len(listed) == 1 and listed[0]["verified"] is True and listed[0]["passed"] is True
        repo = Repository(str(world.repo))
        trust = config.load(str(world.config)).trust()
        assert drill.last(repo, "django", "source", trust) == record
        sig = Path(listed[0]["path"] + ".sig").read_text()
        assert "BEGIN SSH SIGNATURE" in sig
        # the runbook shows this drill: each step's measured duration and the result
        book = world.cli("runbook", "django", "--host", "source", *common, check=True).stdout
        assert book.count("in the last drill") == 3, book
        assert "The last drill passed" in book
    finally:
        _reset_pg(pg_target, db)


def test_django_drill_fails_naming_the_damaged_table_and_file(
    world: World, django_backup: tuple[list[str], Path, str], pg_target: servers.Postgres
) -> None:
    common, dst, db = django_backup

    def damage(host: Host) -> None:
        pg_target.psql("DROP TABLE polls_choice CASCADE;", db=db)
        sqlite = dst / SQLITE_DB.lstrip("/")
        con = sqlite3.connect(sqlite)
        con.execute("DELETE FROM polls_question WHERE id = (SELECT min(id) FROM polls_question)")
        con.commit()
        con.close()

    try:
        with pytest.raises(VerifyError) as failed:
            drill_in_process(
                world,
                "django",
                "source",
                "target",
                sets=common[1::2],
                after_restore=damage,
            )
        assert failed.value.exit_code == 3
        message = str(failed.value)
        assert f"dumps/postgresql.sql rows {db}.public.polls_choice" in message
        assert "found missing" in message and "polls_question" in message
        listed = records(world, "django")
        assert len(listed) == 1 and listed[0]["verified"] and listed[0]["passed"] is False
    finally:
        _reset_pg(pg_target, db)


def test_django_drill_fails_naming_a_deleted_file(
    world: World, django_backup: tuple[list[str], Path, str], pg_target: servers.Postgres
) -> None:
    common, dst, db = django_backup
    deleted: list[str] = []

    def damage(host: Host) -> None:
        repo = Repository(str(world.repo))
        m = repo.find("django", "source")
        files = m.object("files.tar")
        assert files is not None
        path = sorted(files.facts["sample"])[0]
        deleted.append(path)
        (dst / path).unlink()

    try:
        with pytest.raises(VerifyError) as failed:
            drill_in_process(
                world,
                "django",
                "source",
                "target",
                sets=common[1::2],
                after_restore=damage,
            )
        message = str(failed.value)
        assert "failed check files.tar files" in message and "files.tar sample" in message
        rec = records(world, "django")[0]
        sample = next(c for c in rec["checks"] if c["name"] == "files.tar sample")
        assert not sample["ok"] and f"{deleted[0]} missing" in sample["found"]
    finally:
        _reset_pg(pg_target, db)


def test_a_forced_drill_over_an_earlier_drills_files_counts_only_what_it_restored(
    world: World, site: tuple[str, Path, Path]
) -> None:
    """``--force`` reuses a scratch host that still holds files (an earlier drill's, or others
    with old times): only files the restore wrote count, so a stale file fails nothing."""
    root, src, dst = site
    seed_tree(src)
    common = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    world.cli("run", "django", "--host", "source", *common, check=True)
    first = world.cli("--json", "drill", "django", "--host", "source", "--to-host", "target", *common)
    assert first.returncode == 0, first.stderr
    stale = dst / "srv/data/left-from-an-earlier-drill.bin"
    stale.write_bytes(b"not in the snapshot\n" * 100)
    os.utime(stale, (1_600_000_000, 1_600_000_000))  # an old file, as tar restores them
    # its change time is now: let it fall behind the margin a forced drill allows for clocks
    time.sleep(drill.WRITTEN_MARGIN + 1)
    again = world.cli(
        "--json", "drill", "django", "--host", "source", "--to-host", "target", "--force", *common
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    checks = {c["name"]: c for c in json.loads(again.stdout)["checks"]}
    assert checks["files.tar files"]["ok"], checks["files.tar files"]
    assert checks["files.tar files"]["found"] == checks["files.tar files"]["expected"]
    assert stale.exists()  # the drill wrote over the scratch tree, it removed nothing of its own


# --------------------------------------------------------------------------- refusals


def test_scratch_equal_to_source_is_refused_before_anything_is_written(
    world: World, django_backup: tuple[list[str], Path, str], ssh_source: servers.SshHost, site: Any
) -> None:
    common, dst, _db = django_backup
    _root, src, _ = site
    before_src = _files(src)
    before_repo = _files(world.repo)
    text = world.config.read_text()
    world.config.write_text(
        text
        + "\n[hosts.same]\n"
        + f'address = "{ssh_source.address}"\nuser = "{ssh_source.user}"\nport = {ssh_source.port}\n'
        + f'key_file = "{ssh_source.key_file}"\nhost_key = "{ssh_source.host_public_key}"\n'
    )
    got = world.cli("drill", "django", "--host", "source", "--to-host", "same", *common)
    assert got.returncode == 2, got.stderr
    error = [line for line in got.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and "is the source source" in error[0], got.stderr
    assert _files(src) == before_src and _files(world.repo) == before_repo and not dst.exists()


def test_a_scratch_database_equal_to_the_source_is_refused(
    world: World, site: tuple[str, Path, Path], pg_source: servers.Postgres, fresh_pg_db: str
) -> None:
    """The source's snapshot records PostgreSQL at 127.0.0.1:PORT; a scratch side configured with
    the same server is refused before anything is written (the cluster is untouched)."""
    root, src, dst = site
    seed_tree(src)
    # a hard link: tar stores its second name as a link, the restored tree has two names for one
    # inode; the drill counts each inode once
    os.link(src / "srv/data/blob.bin", src / "srv/data/blob-again.bin")
    seed_postgres(pg_source, fresh_pg_db)
    table = f'postgres={{host="127.0.0.1", port={pg_source.port}, password_env="SRC_PG_PW"}}'
    args = ["--set", f"root={root}", "--set", table]
    env = {"SRC_PG_PW": pg_source.password}
    world.cli("run", "django", "--host", "source", *args, env=env, check=True)
    before = _files(world.repo)
    got = world.cli("drill", "django", "--host", "source", "--to-host", "target", *args, env=env)
    assert got.returncode == 2, got.stderr
    assert f"postgres 127.0.0.1:{pg_source.port}" in got.stderr and "is the source's" in got.stderr
    assert _files(world.repo) == before and not dst.exists()
    assert pg_source.psql("SELECT count(*) FROM polls_choice", db=fresh_pg_db).strip() == "2000"


def test_a_tampered_record_is_not_listed_as_verified(
    world: World, django_backup: tuple[list[str], Path, str], pg_target: servers.Postgres
) -> None:
    common, _dst, db = django_backup
    try:
        world.cli(
            "drill", "django", "--host", "source", "--to-host", "target", *common,
            check=True,
        )  # fmt: skip
    finally:
        _reset_pg(pg_target, db)
    (entry,) = records(world, "django")
    path = Path(entry["path"])
    data = json.loads(path.read_text())
    data["rto_seconds"] = 1.0
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (after,) = records(world, "django")
    assert after["verified"] is False and "bad signature" in after["problem"]
    listed = world.cli("drills", "django", check=True).stdout
    assert listed.startswith("UNVERIFIED ")
    assert (
        drill.last(Repository(str(world.repo)), "django", "source", config.load(str(world.config)).trust())
        is None
    )


def test_a_failed_drill_whose_record_cannot_be_written_still_names_the_failed_check(
    world: World, site: tuple[str, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A repository that takes no record (read-only, full, a file in the way of drills/) must
    not turn a failed check (exit 3) into "cannot write the drill record" (exit 1)."""
    root, src, dst = site
    seed_tree(src)
    common = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    world.cli("run", "django", "--host", "source", *common, check=True)
    (world.repo / "drills").write_text("a file where the drills folder must be\n")

    def damage(host: Host) -> None:
        m = Repository(str(world.repo)).find("django", "source")
        files = m.object("files.tar")
        assert files is not None
        (dst / sorted(files.facts["sample"])[0]).unlink()

    with pytest.raises(VerifyError) as failed:
        drill_in_process(world, "django", "source", "target", sets=common[1::2], after_restore=damage)
    message = str(failed.value)
    assert "failed check files.tar files" in message, message
    assert message.endswith("record not written (see the warning above)"), message
    assert any("the drill record was not written" in r.getMessage() for r in caplog.records)
    assert (world.repo / "drills").is_file()
