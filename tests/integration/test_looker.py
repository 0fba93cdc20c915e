"""The looker recipe end to end over real SSH with the Looker stand-in (tests/integration/standins):
install on the source, back up through the CLI, restore on the second host, compare.

Both hosts see the same in-host path for the per-test site (``/srv/site/t-...``) backed by
different directories, so the restore lands where the source's files were, on another host.
"""

from __future__ import annotations

import hashlib
import json
import pwd
import re
import shlex
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers
from tests.integration import standins
from tests.integration.standins import LookerInstall, Site, keyfile_matches
from tests.integration.test_deadman import wait_for
from tests.integration.test_standins import alive, ok, run
from tests.integration.world import World, fingerprint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def looker_user() -> str:
    """The OS user Looker runs as (machine-wide; the hosts share /etc/passwd)."""
    standins.ensure_user("looker")
    return "looker"


@pytest.fixture
def sites(site: tuple[str, Path, Path]) -> Iterator[tuple[Site, Site]]:
    """Source and target views of the per-test site; no stand-in left running on either host."""
    path, src, dst = site
    dst.mkdir(exist_ok=True)
    yield Site(src, path), Site(dst, path)
    standins.stop_processes(path)


def looker_args(lk: LookerInstall, *more: str) -> list[str]:
    """``--set`` arguments naming the stand-in's home and init script."""
    return ["--set", f"home={lk.home}", "--set", f'extra_paths=["{lk.initd}"]', *more]


def status(host: servers.SshHost, lk: LookerInstall) -> int:
    """``./looker status`` on host: 0 running, 7 stopped."""
    return run(host, lk.command("status"))[0]


def events(lk: LookerInstall) -> list[str]:
    return [e.name for e in standins.read_events(lk.events)]


def snapshots(world: World) -> list[object]:
    listed = world.cli("--json", "snapshots", "looker", check=True)
    return list(json.loads(listed.stdout))


def archive_members(world: World, name: str) -> list[str]:
    """Member names (no ``./``, no trailing ``/``) of an archive of the one snapshot, as tar lists them."""
    (snap,) = world.repo.glob("looker/source/*/manifest.json")
    out = subprocess.run(
        f"age -d -i {world.identity} {snap.parent}/{name}.zst.age | zstd -d | tar -t",
        shell=True,
        check=True,
        capture_output=True,
        text=True,
        executable="/bin/bash",
    ).stdout
    return [m.removeprefix("./").rstrip("/") for m in out.splitlines() if m not in ("./", ".")]


def without_dir_mtimes(fp: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    return {k: ((*v[:4], None, *v[5:]) if v[0] == stat.S_IFDIR else v) for k, v in fp.items()}


KEPT_HOME = (".bashrc", ".ssh/id_rsa", "looker/looker", "looker/looker.jar", "looker/.db/looker.h2.db")


def test_backup_stops_copies_the_seed_table_and_restores_on_a_second_host(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    looker_user: str,
) -> None:
    src_site, dst_site = sites
    lk = standins.install_looker(src_site, user=looker_user)
    ok(ssh_source, lk.command("start"))
    pid = int((lk.app_dir / ".tmp/looker.pid").read_text())

    backup = world.cli("--json", "run", "looker", "--host", "source", *looker_args(lk))
    assert backup.returncode == 0, backup.stderr
    manifest = json.loads(backup.stdout)
    names = {o["name"] for o in manifest["objects"]}
    extra = "extra/" + lk.initd.strip("/").replace("/", "-") + ".tar"
    assert names == {"files.tar", "files.snar", extra}

    # stopped for the copy, started again after it: a new server process, running now
    assert events(lk) == ["started", "stopped", "started"]
    assert not alive(pid) and status(ssh_source, lk) == 0

    restore = world.cli("restore", "looker", "--host", "target", "--from", "source", *looker_args(lk))
    assert restore.returncode == 0, restore.stderr
    dst_home = dst_site.local_path(lk.home)
    # the health check ran and passed; Looker runs on the target now
    assert status(ssh_target, lk) == 0
    ok(ssh_target, lk.command("stop"))
    ok(ssh_source, lk.command("stop"))

    skip = (*standins.LOOKER_EXCLUDED, "looker/log", "looker/.deploying")
    # every kept file equal in content, mode, owner, mtime; directories too except their mtime,
    # which the servers' start and stop since the backup changed (pid and lock files)
    assert without_dir_mtimes(fingerprint(dst_home, skip)) == without_dir_mtimes(
        fingerprint(lk.home_dir, skip)
    )
    members = archive_members(world, "files.tar")
    for rel in (*standins.LOOKER_EXCLUDED, "looker/log"):
        assert (lk.home_dir / rel).exists() and not any(
            m == rel or m.startswith(rel + "/") for m in members
        ), rel
    # what the excluded directories held is not on the target (Looker made them anew on start)
    for rel in ("looker/.cache", "looker/.tmp/upload-1.tmp", "looker/.snapshots", "looker/models"):
        assert not (dst_home / rel).exists(), rel
    assert "2024-01-01 started" not in (dst_home / "looker/log/looker.log").read_text()
    for rel in (*standins.LOOKER_KEPT, *KEPT_HOME, "looker/.ssl/ca-signed.pem", "looker/.ssl/looker.jks"):
        assert (dst_home / rel).exists(), rel
    # the file outside the home, and only it of its directory
    assert archive_members(world, extra) == ["looker"]
    initd = dst_site.local_path(lk.initd)
    assert initd.read_bytes() == lk.site.local_path(lk.initd).read_bytes()
    assert sorted(p.name for p in initd.parent.iterdir()) == ["looker"]


def test_a_stopped_looker_stays_stopped_and_options_change_what_is_kept(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    looker_user: str,
) -> None:
    src_site, dst_site = sites
    lk = standins.install_looker(src_site, user=looker_user)
    (lk.site.root / "etc/init.d/other-service").write_text("#!/bin/sh\n")
    args = looker_args(lk, "--set", "include_logs=true", "--set", "include_ssl=false")
    world.cli("run", "looker", "--host", "source", *args, check=True)
    assert events(lk) == []  # not running: neither stopped nor started
    assert status(ssh_source, lk) == 7

    world.cli("restore", "looker", "--host", "target", "--from", "source", *args, check=True)
    dst_home = dst_site.local_path(lk.home)
    assert (dst_home / "looker/log/looker.log").exists()
    assert not (dst_home / "looker/.ssl").exists()
    assert (dst_home / ".ssh/id_rsa").read_bytes() == (lk.home_dir / ".ssh/id_rsa").read_bytes()
    assert not dst_site.local_path(lk.initd).with_name("other-service").exists()
    assert status(ssh_target, lk) == 0  # restore starts it and the health check passed

    # Again over the running copy (--force): stopped first, then a failing health check fails it.
    pid = int((dst_home / "looker/.tmp/looker.pid").read_text())
    failing = world.cli(
        "restore", "looker", "--host", "target", "--from", "source", *args, "--force",
        "--set", "health_check=./looker status && test -e no-such-file",
    )  # fmt: skip
    assert failing.returncode == 1, failing.stderr
    line = failing.stderr.strip().splitlines()[-1]
    assert line.startswith("recipes: error: health-check failed on target")
    assert not alive(pid) and status(ssh_target, lk) == 0  # stopped before the files, started after


def test_deploying_marker_is_never_copied_and_a_running_looker_is_not_stopped_for_it(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    looker_user: str,
) -> None:
    src_site, dst_site = sites
    lk = standins.install_looker(src_site, user=looker_user, deploying=True)
    backup = world.cli("-v", "run", "looker", "--host", "source", *looker_args(lk))
    assert backup.returncode == 0, backup.stderr
    (snap,) = world.repo.glob("looker/source/*/manifest.json")
    # the marker is said, as a warning, on the terminal and in the manifest
    assert "WARNING" in backup.stderr or "warning:" in backup.stderr
    assert ".deploying exists: left out of the snapshot" in backup.stderr
    recorded = json.loads(snap.read_text())["warnings"]
    assert len(recorded) == 1 and ".deploying exists: left out of the snapshot" in recorded[0]
    world.cli("restore", "looker", "--host", "target", "--from", "source", *looker_args(lk), check=True)
    dst_home = dst_site.local_path(lk.home)
    assert not (dst_home / "looker/.deploying").exists()
    assert status(ssh_target, lk) == 0  # the restored copy starts: no marker came with it

    # Running with the marker present: a stop now could not be undone (the startup script
    # refuses while .deploying exists), so the backup refuses before stopping anything.
    (lk.app_dir / ".deploying").unlink()
    ok(ssh_source, lk.command("start"))
    (lk.app_dir / ".deploying").write_text("")
    refused = world.cli("run", "looker", "--host", "source", *looker_args(lk))
    assert refused.returncode == 1, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("recipes: error: ") and ".deploying exists and Looker runs" in line
    assert status(ssh_source, lk) == 0 and "stopped" not in events(lk)
    assert [p.parent.name for p in world.repo.glob("looker/source/*/manifest.json")] == [snap.parent.name]


def seed_mysql(db: servers.MariaDB, name: str) -> None:
    db.sql(
        f"CREATE TABLE `{name}`.user(id INT PRIMARY KEY, email VARCHAR(64));"
        f"INSERT INTO `{name}`.user VALUES (1, 'a@example.com'), (2, 'b@example.com');"
        f"CREATE TABLE `{name}`.look(id INT PRIMARY KEY, title VARCHAR(64), body BLOB);"
        f"INSERT INTO `{name}`.look VALUES (7, 'Revenue', UNHEX('00FF10'));"
    )


def mysql_rows(db: servers.MariaDB, name: str) -> str:
    return db.sql(
        f"SELECT id, email FROM `{name}`.user ORDER BY id; "
        f"SELECT id, title, HEX(body) FROM `{name}`.look ORDER BY id"
    )


def mysql_set(db: servers.MariaDB, name: str, env: str) -> list[str]:
    table = f'mysql={{host="127.0.0.1", port={db.port}, password_env="{env}", database="{name}"}}'
    return ["--set", table]


def test_cluster_mysql_is_dumped_while_stopped_and_restored_with_rows_equal(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    looker_user: str,
    mariadb_source: servers.MariaDB,
    mariadb_target: servers.MariaDB,
    fresh_mariadb_db: str,
) -> None:
    src_site, _ = sites
    db = fresh_mariadb_db
    seed_mysql(mariadb_source, db)
    lk = standins.install_looker(src_site, user=looker_user)
    ok(ssh_source, lk.command("start"))
    secret = mariadb_source.root_password
    src = looker_args(lk, *mysql_set(mariadb_source, db, "SRC_MYSQL_PW"))
    plan = world.cli("plan", "looker", "--host", "source", *src, env={"SRC_MYSQL_PW": secret})
    assert plan.returncode == 0 and secret not in plan.stdout + plan.stderr
    steps = [line.split(":")[0] for line in plan.stdout.splitlines() if line[:1].isdigit()]
    assert steps.index("2. quiesce looker") < steps.index("4. dump mysql") < steps.index("5. archive files")
    backup = world.cli("-vv", "run", "looker", "--host", "source", *src, env={"SRC_MYSQL_PW": secret})
    assert backup.returncode == 0, backup.stderr
    assert secret not in backup.stdout + backup.stderr
    (manifest,) = world.repo.glob("looker/source/*/manifest.json")
    assert secret not in manifest.read_text()
    assert "dumps/mysql.sql" in {o["name"] for o in json.loads(manifest.read_text())["objects"]}
    assert status(ssh_source, lk) == 0

    dst = looker_args(lk, *mysql_set(mariadb_target, db, "TGT_MYSQL_PW"))
    mariadb_target.sql(f"DROP DATABASE IF EXISTS `{db}`")
    try:
        restore = world.cli(
            "-vv",
            "restore",
            "looker",
            "--host",
            "target",
            "--from",
            "source",
            *dst,
            env={"TGT_MYSQL_PW": mariadb_target.root_password},
        )
        assert restore.returncode == 0, restore.stderr
        assert mariadb_target.root_password not in restore.stdout + restore.stderr
        assert mysql_rows(mariadb_target, db) == mysql_rows(mariadb_source, db)
        assert "a@example.com" in mysql_rows(mariadb_target, db)
        assert status(ssh_target, lk) == 0
    finally:
        mariadb_target.sql(f"DROP DATABASE IF EXISTS `{db}`")


def test_a_dump_failing_after_the_stop_starts_looker_again_and_lists_nothing(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    looker_user: str,
    mariadb_source: servers.MariaDB,
    fresh_mariadb_db: str,
) -> None:
    src_site, _ = sites
    lk = standins.install_looker(src_site, user=looker_user)
    ok(ssh_source, lk.command("start"))
    args = looker_args(lk, *mysql_set(mariadb_source, fresh_mariadb_db, "SRC_MYSQL_PW"))
    wrong = "wrong-pw-" + fresh_mariadb_db
    bad = world.cli("-vv", "run", "looker", "--host", "source", *args, env={"SRC_MYSQL_PW": wrong})
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("recipes: error: ")
    assert "Traceback" not in bad.stderr and wrong not in bad.stdout + bad.stderr
    assert events(lk) == ["started", "stopped", "started"]  # the stop happened, then the undo
    assert status(ssh_source, lk) == 0
    assert snapshots(world) == []
    assert not list(world.repo.glob("looker/source/*/manifest.json"))


def test_plan_reads_like_the_seed(world: World) -> None:
    plan = world.cli("plan", "looker", "--host", "source", check=True)
    text = plan.stdout
    assert "./looker stop" in text and "./looker status" in text and "./looker start" in text
    assert "including all normal and hidden subdirectories" in text
    assert "Files outside of the Looker home directory" in text


def test_the_commands_work_when_the_login_is_the_looker_user(
    sites: tuple[Site, Site], ssh_source: servers.SshHost, looker_user: str
) -> None:
    """The same start/status/stop lines, run by a login that is the user itself (no sudo then)."""
    from recipes import apps
    from recipes.recipe import make_params
    from recipes.steps import Quiesce

    src_site, _ = sites
    lk = standins.install_looker(src_site, user=looker_user)
    recipe = apps.get("looker")
    params = make_params(recipe, {"home": lk.home, "extra_paths": [lk.initd]}, "test")
    (q,) = [s for s in recipe.backup_steps(params) if isinstance(s, Quiesce)]

    def as_user(script: str) -> int:
        return run(ssh_source, f"runuser -u {looker_user} -- bash -c {shlex.quote(script)}")[0]

    assert as_user(q.check.script) == 7
    assert as_user(q.start.script) == 0 and as_user(q.check.script) == 0
    assert as_user(q.stop.script) == 0 and as_user(q.check.script) == 7
    assert [(e.user, e.name) for e in standins.read_events(lk.events)] == [
        (looker_user, "started"),
        (looker_user, "stopped"),
    ]


def test_a_stop_that_leaves_looker_running_fails_the_backup_before_the_home_is_read(
    world: World, sites: tuple[Site, Site], ssh_source: servers.SshHost, looker_user: str
) -> None:
    """``./looker stop`` exits 0 but the server still runs: the backup must not copy a live home."""
    src_site, _ = sites
    lk = standins.install_looker(src_site, user=looker_user)
    ok(ssh_source, lk.command("start"))
    script = lk.app_dir / "looker"
    script.write_text(
        script.read_text().replace("  stop)\n", '  stop)\n    echo "Looker stopped"; exit 0\n', 1)
    )
    bad = world.cli("run", "looker", "--host", "source", *looker_args(lk))
    assert bad.returncode == 1, bad.stderr
    line = bad.stderr.strip().splitlines()[-1]
    assert line.startswith("recipes: error: ") and "still running after ./looker stop" in line
    assert snapshots(world) == []
    assert status(ssh_source, lk) == 0


# ---- cluster nodes, keystore-independent, dead-man's switch ----------------------------------


def config_with(world: World, text: str) -> Path:
    """The world's recipes.toml with ``text`` appended (another host alias, an [engine] table)."""
    path = world.config.with_name(f"looker-{uuid.uuid4().hex[:6]}.toml")
    path.write_text(world.config.read_text() + "\n" + text + "\n")
    return path


def two_nodes(sites: tuple[Site, Site], user: str) -> tuple[LookerInstall, LookerInstall]:
    """A running Looker on each host at the same in-host home: (main on source, node on target)."""
    src_site, dst_site = sites
    main = standins.install_looker(src_site, user=user)
    node = standins.install_looker(dst_site, user=user, home=main.home)
    return main, node


def test_cluster_every_node_is_stopped_before_the_copy_and_started_after_and_rows_restore(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    looker_user: str,
    mariadb_source: servers.MariaDB,
    mariadb_target: servers.MariaDB,
    fresh_mariadb_db: str,
) -> None:
    db = fresh_mariadb_db
    seed_mysql(mariadb_source, db)
    main, node = two_nodes(sites, looker_user)
    ok(ssh_source, main.command("start"))
    ok(ssh_target, node.command("start"))
    src = looker_args(main, "--set", 'nodes=["target"]', *mysql_set(mariadb_source, db, "SRC_MYSQL_PW"))
    backup = world.cli(
        "-vv", "run", "looker", "--host", "source", *src, env={"SRC_MYSQL_PW": mariadb_source.root_password}
    )
    assert backup.returncode == 0, backup.stderr
    assert events(main) == ["started", "stopped", "started"]
    assert events(node) == ["started", "stopped", "started"]
    # "make sure to stop every node before proceeding": the node went down before main did, and
    # both were down while the home was read (the stand-in's events carry their times)
    ev_main, ev_node = standins.read_events(main.events), standins.read_events(node.events)
    assert ev_node[1].time < ev_main[1].time < ev_main[2].time
    assert ev_main[1].time < ev_node[2].time
    assert status(ssh_source, main) == 0 and status(ssh_target, node) == 0

    dst = looker_args(main, *mysql_set(mariadb_target, db, "TGT_MYSQL_PW"))
    mariadb_target.sql(f"DROP DATABASE IF EXISTS `{db}`")
    try:
        restore = world.cli(
            "restore", "looker", "--host", "target", "--from", "source", *dst, "--force",
            env={"TGT_MYSQL_PW": mariadb_target.root_password},
        )  # fmt: skip
        assert restore.returncode == 0, restore.stderr
        assert mysql_rows(mariadb_target, db) == mysql_rows(mariadb_source, db)
        assert "a@example.com" in mysql_rows(mariadb_target, db)
        # the running node was stopped before its home was written, and runs again (the final
        # start: the restored script logs its events to the source's events file path)
        assert events(node)[3:] == ["stopped"] and status(ssh_target, node) == 0
    finally:
        mariadb_target.sql(f"DROP DATABASE IF EXISTS `{db}`")


def test_cluster_a_dump_failing_after_the_stop_starts_every_node_again_and_lists_nothing(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    looker_user: str,
    mariadb_source: servers.MariaDB,
    fresh_mariadb_db: str,
) -> None:
    main, node = two_nodes(sites, looker_user)
    ok(ssh_source, main.command("start"))
    ok(ssh_target, node.command("start"))
    args = looker_args(main, "--set", 'nodes=["target"]', *mysql_set(mariadb_source, fresh_mariadb_db, "PW"))
    bad = world.cli("run", "looker", "--host", "source", *args, env={"PW": "wrong-" + fresh_mariadb_db})
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("recipes: error: dump mysql failed")
    assert "Traceback" not in bad.stderr
    assert events(main) == ["started", "stopped", "started"]
    assert events(node) == ["started", "stopped", "started"]
    assert status(ssh_source, main) == 0 and status(ssh_target, node) == 0
    assert snapshots(world) == []


def test_an_unreachable_node_fails_in_one_line_before_main_is_stopped(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    looker_user: str,
) -> None:
    main, _ = two_nodes(sites, looker_user)
    ok(ssh_source, main.command("start"))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]  # bound, never listening: connections are refused
    try:
        block = re.search(r"\[hosts\.target\][^\[]*", world.config.read_text())
        assert block
        dead = re.sub(r"port = \d+", f"port = {port}", block.group(0)).replace(
            "[hosts.target]", "[hosts.node2]"
        )
        config = config_with(world, dead)
        args = looker_args(main, "--set", 'nodes=["node2"]')
        bad = world.cli("--config", str(config), "run", "looker", "--host", "source", *args)
    finally:
        closed.close()
    assert bad.returncode != 0, bad.stderr
    errors = [line for line in bad.stderr.splitlines() if "error" in line or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("recipes: error: cannot connect to node2"), bad.stderr
    assert bad.stderr.strip().splitlines()[-1] == errors[0]
    assert events(main) == ["started"] and status(ssh_source, main) == 0  # never stopped
    assert snapshots(world) == []


def key_dirs(host: servers.SshHost) -> set[str]:
    """The key directories of runs on host now (tests compare with those there before)."""
    return set(run(host, "ls -d /tmp/recipes-key-* 2>/dev/null")[1].split())


def ki_args(lk: LookerInstall, key_store: Path, *more: str) -> list[str]:
    return looker_args(
        lk,
        "--set", "keystore_independent=true",
        "--set", f"master_key_file={json.dumps(lk.cmk_file)}",
        "--set", f"key_store={json.dumps('file://' + str(key_store))}",
        *more,
    )  # fmt: skip


def test_keystore_independent_key_file_lands_in_the_key_store_only_and_is_fetched_on_restore(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    looker_user: str,
    tmp_path: Path,
) -> None:
    src_site, dst_site = sites
    cmk = "cmk-" + uuid.uuid4().hex
    lk = standins.install_looker(src_site, user=looker_user, cmk=cmk)
    ok(ssh_source, lk.command("start"))
    before = key_dirs(ssh_source) | key_dirs(ssh_target)
    store = tmp_path / "key-store"
    args = ki_args(lk, store)
    backup = world.cli("-vv", "--json", "run", "looker", "--host", "source", *args)
    assert backup.returncode == 0, backup.stderr
    assert events(lk) == ["started", "stopped", "keyfile-generated", "recrypted", "started"]
    assert status(ssh_source, lk) == 0

    (stored,) = [p for p in store.rglob("*") if p.is_file()]
    assert stored.name == "looker-backup.key.zst.age"
    key = subprocess.run(
        ["age", "-d", "-i", str(world.identity), str(stored)], check=True, capture_output=True
    ).stdout
    if not key.startswith(b"{"):
        key = subprocess.run(["zstd", "-d", "-c"], input=key, check=True, capture_output=True).stdout
    assert set(json.loads(key)) == {"dbmk", "backup_uid"}
    assert keyfile_matches(lk.recrypt_entries(), key)
    dbmk = json.loads(key)["dbmk"].rstrip("\n")

    (manifest_path,) = world.repo.glob("looker/source/*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    (ext,) = manifest["external"]
    assert ext["name"] == "looker-backup.key" and ext["path"].startswith(f"file://{store}/")
    assert ext["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert not any("key" in o["name"] for o in manifest["objects"])
    assert not list(world.repo.rglob("*looker-backup.key*"))
    assert not any(m.endswith("looker-backup.key") for m in archive_members(world, "files.tar"))
    assert key_dirs(ssh_source) <= before
    # no secret anywhere it could be read: output, -vv logs, manifest
    for secret in (cmk, dbmk, json.loads(key)["backup_uid"]):
        assert secret not in backup.stdout + backup.stderr
        assert secret not in manifest_path.read_text()

    restore = world.cli("-vv", "restore", "looker", "--host", "target", "--from", "source", *args)
    assert restore.returncode == 0, restore.stderr
    for secret in (cmk, dbmk):
        assert secret not in restore.stdout + restore.stderr
    assert "you will need the new key file created earlier" in restore.stderr  # the manual step
    fetched = dst_site.local_path(lk.home) / "looker/looker-backup.key"
    assert fetched.read_bytes() == key
    st = fetched.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == pwd.getpwnam(looker_user).pw_uid
    assert status(ssh_target, lk) == 0 and key_dirs(ssh_target) <= before


DEADMAN = 4
SLACK = 6


def test_sigkill_after_the_stop_the_guard_starts_looker_again_and_removes_the_key_dir(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    looker_user: str,
    tmp_path: Path,
) -> None:
    src_site, _ = sites
    lk = standins.install_looker(src_site, user=looker_user)
    script = lk.app_dir / "looker"
    hang = "  keystore_independent_recrypt)\n"
    assert hang in script.read_text()
    script.write_text(script.read_text().replace(hang, hang + "    ev hanging; sleep 60\n", 1))
    ok(ssh_source, lk.command("start"))
    config = config_with(world, f"[engine]\ndeadman_seconds = {DEADMAN}")
    before = key_dirs(ssh_source)
    args = ki_args(lk, tmp_path / "key-store")
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recipes", "--config", str(config), "run", "looker", "--host", "source",
             *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=world.env(),
        )  # fmt: skip
    try:
        wait_for(lambda: "hanging" in events(lk), 60, "stopped, recrypt hanging")
        assert status(ssh_source, lk) == 7 and key_dirs(ssh_source) - before
        proc.kill()
        proc.wait()
        wait_for(  # status says running once the pid is written; start logs its event just after
            lambda: status(ssh_source, lk) == 0 and events(lk)[-1:] == ["started"],
            DEADMAN + SLACK,
            "the guard started Looker again",
        )
        wait_for(lambda: key_dirs(ssh_source) <= before, DEADMAN + SLACK, "the guard removed the key dir")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert events(lk)[:3] == ["started", "stopped", "keyfile-generated"] and events(lk)[-1] == "started"
    assert not list(world.repo.glob("looker/source/*/manifest.json"))
