"""The dss recipe's restore modes over real SSH (stand-ins in tests/integration/standins):
pristine over a DSS that has other content (kept aside; moved back on failure), elsewhere onto
a newer kit (installer replayed, integration steps listed), an older target refused, the
dss_version fact, include_config, and the dead-man's switch while DSS is stopped."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from recipes.apps.dss import CATEGORIES, INTEGRATIONS
from tests import servers
from tests.integration import standins
from tests.integration.standins import DssInstall, Site
from tests.integration.test_dss import USER, dss_sets, error_line, event_names, running, skip_for
from tests.integration.test_standins import ok, run
from tests.integration.world import World, fingerprint

pytestmark = pytest.mark.integration

TEMPORARY = CATEGORIES["temporary"].folders
DEADMAN = 4
# The guard wakes every second, ends what the controller left (TERM, up to 2 s, then KILL) and
# starts DSS through sudo; the stand-in waits for its process: generous on a loaded machine.
SLACK = 15


@pytest.fixture(scope="module")
def dss_user() -> str:
    standins.ensure_user(USER)
    return USER


@pytest.fixture
def sites(site: tuple[str, Path, Path]) -> Iterator[tuple[Site, Site]]:
    path, src, dst = site
    dst.mkdir(exist_ok=True)
    yield Site(src, path), Site(dst, path)
    standins.stop_processes(path)


def on_target(dst: Site, kit: DssInstall, data_dir: str) -> DssInstall:
    """The target's DSS: its own kit, the restored DATA_DIR."""
    return DssInstall(dst, kit.install_dir, data_dir, kit.version, "", USER, kit.events)


def backed_up(world: World, dss: DssInstall, ssh: servers.SshHost, *more: str) -> dict[str, object]:
    """A running source DSS backed up; returns the manifest."""
    ok(ssh, dss.dss("start"))
    backup = world.cli("--json", "run", "dss", "--host", "source", *dss_sets(dss, *more))
    assert backup.returncode == 0, backup.stderr
    return dict(json.loads(backup.stdout))


def asides(data_path: Path) -> list[Path]:
    return sorted(data_path.parent.glob(f"{data_path.name}.before-restore-*"))


def test_pristine_over_other_content_keeps_it_aside_and_records_the_version(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
) -> None:
    src_site, dst_site = sites
    dss = standins.install_dss(src_site, user=dss_user, version="12.6.1")
    old = standins.install_dss(dst_site, user=dss_user, version="12.6.1")  # other content, same path
    assert old.data_dir == dss.data_dir and old.installid != dss.installid
    manifest = backed_up(world, dss, ssh_source)
    assert manifest["facts"]["dss_version"] == "12.6.1"  # type: ignore[index]
    ok(ssh_target, old.dss("start"))
    before = fingerprint(old.data_path, ("run",))

    restore = world.cli("restore", "dss", "--host", "target", "--from", "source", *dss_sets(dss))
    assert restore.returncode == 0, restore.stderr  # no --force: pristine moves the content aside
    (aside,) = asides(old.data_path)
    assert fingerprint(aside, ("run",)) == before  # the old content, byte for byte
    skip = skip_for(TEMPORARY)
    assert fingerprint(old.data_path, skip) == fingerprint(dss.data_path, skip)
    assert (old.data_path / "install.ini").read_text() == (dss.data_path / "install.ini").read_text()
    assert running(ssh_target, old)
    assert event_names(old)[-2:] == ["dss-stopped", "dss-started"]


def test_pristine_failing_part_way_moves_the_old_content_back_and_starts_it(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
    pg_source: servers.Postgres,
    pg_target: servers.Postgres,
    fresh_pg_db: str,
) -> None:
    src_site, dst_site = sites
    dss = standins.install_dss(src_site, user=dss_user)
    old = standins.install_dss(dst_site, user=dss_user)
    pg_source.psql(
        "CREATE TABLE governed_items(id int PRIMARY KEY); INSERT INTO governed_items VALUES (1);",
        db=fresh_pg_db,
    )

    def govern(pg: servers.Postgres, env: str) -> str:
        table = f'host="127.0.0.1", port={pg.port}, password_env="{env}", database="{fresh_pg_db}"'
        return f"govern_postgres={{{table}}}"

    env = {"SRC_PG_PW": pg_source.password, "TGT_PG_PW": pg_target.password}
    ok(ssh_source, dss.dss("start"))
    world.cli(
        "run", "dss", "--host", "source", *dss_sets(dss, govern(pg_source, "SRC_PG_PW")), env=env, check=True
    )
    ok(ssh_target, old.dss("start"))
    before = fingerprint(old.data_path, ("run",))
    pg_target.psql(f'CREATE DATABASE "{fresh_pg_db}";')  # the Govern load will fail: it exists
    try:
        restore = world.cli(
            "restore",
            "dss",
            "--host",
            "target",
            "--from",
            "source",
            *dss_sets(dss, govern(pg_target, "TGT_PG_PW")),
            env=env,
        )
    finally:
        pg_target.psql(f'DROP DATABASE IF EXISTS "{fresh_pg_db}" WITH (FORCE);')
    assert restore.returncode == 1, restore.stderr
    line = error_line(restore.stderr)
    assert "load govern failed on target" in line, line
    assert "already exists" in line, line
    assert not asides(old.data_path)  # moved back, not left beside it
    assert fingerprint(old.data_path, ("run",)) == before
    assert running(ssh_target, old)  # the old DSS again, on its own data
    assert event_names(old)[-2:] == ["dss-stopped", "dss-started"]
    # honest: the config went into etc_dir, but DATA_DIR's extract was taken back
    assert (
        "PARTLY restored" in line
        and f"taken back after the failure: move {old.data_dir} back on target" in line
    )


def test_elsewhere_onto_a_newer_kit_replays_the_installer_and_lists_the_integrations(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
) -> None:
    src_site, dst_site = sites
    dss = standins.install_dss(src_site, user=dss_user, version="12.5.0")
    kit = standins.install_dss_kit(dst_site, version="13.1.0")
    data_dir = f"{dst_site.site_path}/data/dss_moved"  # another location
    backed_up(world, dss, ssh_source)
    sets = [*dss_sets(dss, "mode=elsewhere", f"install_dir={kit.install_dir}")]
    sets[sets.index(f"data_dir={dss.data_dir}")] = f"data_dir={data_dir}"

    plan = world.cli("restore", "dss", "--host", "target", "--from", "source", "--plan", *sets)
    assert plan.returncode == 0, plan.stderr
    for text in INTEGRATIONS:
        assert text in plan.stdout, plan.stdout
    assert "installer.sh" in plan.stdout
    assert not dst_site.local_path(data_dir).exists()  # a plan writes nothing

    restore = world.cli("restore", "dss", "--host", "target", "--from", "source", *sets)
    assert restore.returncode == 0, restore.stderr
    target = on_target(dst_site, kit, data_dir)
    calls = [e.detail for e in standins.read_events(kit.events) if e.name == "installer-called"]
    assert calls == [f"-d {data_dir} -u"]
    for name in ("dss", "dsscli"):
        link = target.data_path / "bin" / name
        assert link.is_symlink() and str(link.readlink()).startswith(kit.install_dir + "/"), link
    assert running(ssh_target, target)
    assert json.loads((target.data_path / "dss-version.json").read_text())["product_version"] == "13.1.0"

    missing = world.cli(
        "restore", "dss", "--host", "target", "--from", "source", *dss_sets(dss, "mode=elsewhere")
    )
    assert missing.returncode == 2, missing.stderr
    assert "install_dir" in error_line(missing.stderr)


@pytest.mark.parametrize("mode", ["pristine", "elsewhere"])
def test_an_older_target_is_refused_and_nothing_is_written(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
    mode: str,
) -> None:
    src_site, dst_site = sites
    dss = standins.install_dss(src_site, user=dss_user, version="12.5.0")
    backed_up(world, dss, ssh_source)
    if mode == "elsewhere":
        kit = standins.install_dss_kit(dst_site, version="12.4.2")
        sets = dss_sets(dss, "mode=elsewhere", f"install_dir={kit.install_dir}")
    else:
        old = standins.install_dss(dst_site, user=dss_user, version="12.4.2")
        kit = old
        ok(ssh_target, old.dss("start"))
        before = fingerprint(old.data_path, ("run",))
    refused = world.cli(
        "restore",
        "dss",
        "--host",
        "target",
        "--from",
        "source",
        *sets if mode == "elsewhere" else dss_sets(dss),
    )
    assert refused.returncode == 2, refused.stderr
    line = error_line(refused.stderr)
    assert "12.5.0" in line and "12.4.2" in line, line
    names = event_names(kit)
    assert "installer-called" not in names and "dss-stopped" not in names, names
    data = dst_site.local_path(dss.data_dir)
    if mode == "elsewhere":
        assert not data.exists()
    else:
        assert fingerprint(data, ("run",)) == before and not asides(data)
        assert running(ssh_target, on_target(dst_site, kit, dss.data_dir))


def members(world: World, name: str) -> list[str]:
    (snap,) = world.repo.glob("dss/source/*/manifest.json")
    out = subprocess.run(
        f"age -d -i {world.identity} {snap.parent}/{name}.zst.age | zstd -d | tar -t",
        shell=True,
        check=True,
        capture_output=True,
        text=True,
        executable="/bin/bash",
    ).stdout
    return sorted(m.removeprefix("./").rstrip("/") for m in out.splitlines() if m not in ("./", "."))


def test_include_config_carries_exactly_the_install_folders(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
) -> None:
    src_site, dst_site = sites
    dss = standins.install_dss(src_site, user=dss_user, etc_config=True)
    etc = src_site.root / "etc"
    (etc / "dataiku" / "another-install").mkdir(parents=True)  # not this install's: left out
    (etc / "other-app").mkdir()
    (etc / "other-app" / "conf").write_text("x\n")
    standins.install_dss_kit(dst_site)
    backed_up(world, dss, ssh_source)
    i = dss.installid
    assert members(world, "config.tar") == sorted(
        [
            f"dataiku/{i}",
            f"dataiku/{i}/installer.conf",
            f"dataiku-security/{i}",
            f"dataiku-security/{i}/security.conf",
        ]
    )
    world.cli("restore", "dss", "--host", "target", "--from", "source", *dss_sets(dss), check=True)
    got = fingerprint(dst_site.root / "etc")
    assert sorted(got) == sorted(["dataiku", "dataiku-security", *members(world, "config.tar")])
    for rel in (f"dataiku/{i}/installer.conf", f"dataiku-security/{i}/security.conf"):
        assert (dst_site.root / "etc" / rel).read_bytes() == (etc / rel).read_bytes()
    assert ((dst_site.root / "etc" / f"dataiku-security/{i}/security.conf").stat().st_mode & 0o777) == 0o600


def test_include_config_with_neither_folder_still_backs_up(
    world: World, sites: tuple[Site, Site], ssh_source: servers.SshHost, dss_user: str
) -> None:
    dss = standins.install_dss(sites[0], user=dss_user)  # no etc folders at all
    manifest = backed_up(world, dss, ssh_source)
    assert "config.tar" in {o["name"] for o in manifest["objects"]}  # type: ignore[attr-defined]
    assert members(world, "config.tar") == []


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached within {timeout:g}s")


def test_sigkill_of_the_controller_while_dss_is_stopped_the_guard_starts_it(
    world: World, sites: tuple[Site, Site], ssh_source: servers.SshHost, dss_user: str, tmp_path: Path
) -> None:
    """The Govern dump (after the stop) hangs on a server that accepts and never answers."""
    dss = standins.install_dss(sites[0], user=dss_user)
    ok(ssh_source, dss.dss("start"))
    config = world.config.with_name("deadman-dss.toml")
    config.write_text(f"{world.config.read_text()}\n[engine]\ndeadman_seconds = {DEADMAN}\n")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        govern = f'govern_postgres={{host="127.0.0.1", port={port}, password_env="GOVERN_PW", database="g"}}'
        log = tmp_path / "run.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "recipes",
                    "--config",
                    str(config),
                    "run",
                    "dss",
                    "--host",
                    "source",
                    *dss_sets(dss, govern),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**world.env(), "GOVERN_PW": "unused"},
            )
        try:
            wait_for(
                lambda: "dss-stopped" in event_names(dss) and "step dump govern" in log.read_text(),
                60,
                "stopped, dump hanging",
            )
            assert not running(ssh_source, dss)
            proc.kill()
            proc.wait()
            # `bin/dss status` says running as soon as the server wrote its pid; `start` logs its
            # event just after: wait for both.
            wait_for(
                lambda: running(ssh_source, dss) and event_names(dss)[-1:] == ["dss-started"],
                DEADMAN + SLACK,
                "the guard started DSS again",
            )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert event_names(dss)[-2:] == ["dss-stopped", "dss-started"]
    assert not list(world.repo.glob("dss/source/*/manifest.json"))


def _linked(site: Site, dss: DssInstall, link: str) -> DssInstall:
    """``link`` made a symlink to dss's DATA_DIR (a DATA_DIR on a volume of its own), and the
    install seen through it."""
    site.local_path(link).parent.mkdir(parents=True, exist_ok=True)
    site.local_path(link).symlink_to(dss.data_dir)
    return attrs.evolve(dss, data_dir=link)


def test_pristine_over_a_symlinked_data_dir_writes_where_the_link_points(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
) -> None:
    """Was: the link itself was moved aside and a new, real DATA_DIR made in its place (on the
    link's filesystem), so DSS ran off the wrong disk and the volume kept only old data."""
    src_site, dst_site = sites
    link = f"{src_site.site_path}/home/dataiku/dss_data"
    real = f"{src_site.site_path}/volume/dss_data"
    dss = _linked(src_site, standins.install_dss(src_site, user=dss_user, data_dir=real), link)
    old = _linked(dst_site, standins.install_dss(dst_site, user=dss_user, data_dir=real), link)
    backed_up(world, dss, ssh_source)
    ok(ssh_target, old.dss("start"))
    before = fingerprint(dst_site.local_path(real), ("run",))

    restore = world.cli("restore", "dss", "--host", "target", "--from", "source", *dss_sets(dss))
    assert restore.returncode == 0, restore.stderr
    link_path, real_path = dst_site.local_path(link), dst_site.local_path(real)
    assert link_path.is_symlink() and os.readlink(link_path) == real  # still the link, to the volume
    assert not asides(link_path)  # nothing in the link's place but the link
    (aside,) = asides(real_path)  # the old content, beside the real directory
    assert fingerprint(aside, ("run",)) == before
    skip = skip_for(TEMPORARY)
    assert fingerprint(real_path, skip) == fingerprint(src_site.local_path(real), skip)
    assert (
        f"{link} is a symlink to {real}: moved {real} aside to {aside_of(aside, dst_site)}" in restore.stderr
    )
    assert running(ssh_target, old)


def test_pristine_over_a_symlinked_data_dir_failing_moves_the_content_back_behind_the_link(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
) -> None:
    """The target's kit is newer than the snapshot's DSS, so the restored DATA_DIR does not
    start (the stand-in refuses another version): the old content goes back where it was."""
    src_site, dst_site = sites
    link = f"{src_site.site_path}/home/dataiku/dss_data"
    real = f"{src_site.site_path}/volume/dss_data"
    dss = _linked(src_site, standins.install_dss(src_site, user=dss_user, data_dir=real), link)
    old = _linked(
        dst_site, standins.install_dss(dst_site, user=dss_user, data_dir=real, version="12.6.1"), link
    )
    backed_up(world, dss, ssh_source)
    ok(ssh_target, old.dss("start"))
    before = fingerprint(dst_site.local_path(real), ("run",))

    restore = world.cli("restore", "dss", "--host", "target", "--from", "source", *dss_sets(dss))
    assert restore.returncode == 1, restore.stderr
    line = error_line(restore.stderr)
    assert "start-dss failed on target" in line and f"taken back after the failure: move {link} back" in line
    link_path, real_path = dst_site.local_path(link), dst_site.local_path(real)
    assert link_path.is_symlink() and os.readlink(link_path) == real
    assert not asides(real_path) and not asides(link_path)
    assert fingerprint(real_path, ("run",)) == before
    assert running(ssh_target, old)


def aside_of(aside: Path, site: Site) -> str:
    return site.host_path(aside)


def test_pristine_over_a_mount_point_data_dir_is_refused_before_dss_stops_unless_it_is_empty(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
) -> None:
    """DATA_DIR on a volume of its own, mounted there: it cannot be renamed. Was: DSS stopped,
    then ``mv: ... Device or resource busy`` and a line naming ``…before-restore-{{run}}``."""
    src_site, dst_site = sites
    dss = standins.install_dss(src_site, user=dss_user)
    old = standins.install_dss(dst_site, user=dss_user)
    backed_up(world, dss, ssh_source)
    d = shlex.quote(old.data_dir)
    copy = f"/tmp/dss-copy-{uuid.uuid4().hex[:8]}"
    # the target host (its own mount namespace) mounts a volume at DATA_DIR holding its content
    ok(ssh_target, f"cp -a {d} {copy} && mount -t tmpfs tmpfs {d} && cp -a {copy}/. {d}/ && rm -rf {copy}")
    try:
        ok(ssh_target, f"chown {dss_user}: {d} && chmod 755 {d}")
        ok(ssh_target, old.dss("start"))
        before = fingerprint(old.data_path, ("run",))
        refused = world.cli("restore", "dss", "--host", "target", "--from", "source", *dss_sets(dss))
        assert refused.returncode == 2, refused.stderr
        line = error_line(refused.stderr)
        assert line == (
            f"recipes: error: {old.data_dir} is a mount point holding files, so the restore cannot move "
            "it aside: move its content elsewhere on that volume yourself (that is what is kept), then "
            "restore again (on target)"
        ), line
        assert "dss-stopped" not in event_names(old) and running(ssh_target, old)
        assert fingerprint(old.data_path, ("run",)) == before

        # emptied by hand: the restore writes into the mounted volume, nothing is moved
        ok(ssh_target, old.dss("stop"))
        ok(ssh_target, f"find {d} -mindepth 1 -delete")
        restore = world.cli("restore", "dss", "--host", "target", "--from", "source", *dss_sets(dss))
        assert restore.returncode == 0, restore.stderr
        ok(ssh_target, f"mountpoint -q {d} && test -f {d}/install.ini")
        assert not asides(old.data_path)
        assert running(ssh_target, old)
    finally:
        standins.stop_processes(dst_site.site_path)
        run(ssh_target, f"umount -l {d}")


def test_a_move_aside_that_fails_names_the_aside_it_tried(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
) -> None:
    """DATA_DIR's parent immutable (chattr +i: no entry there can be renamed, DATA_DIR's own
    content stays writable): the move fails; the line names the aside with this run's id (was:
    ``…before-restore-{{run}}``) and DSS runs again."""
    src_site, dst_site = sites
    dss = standins.install_dss(src_site, user=dss_user)
    old = standins.install_dss(dst_site, user=dss_user)
    backed_up(world, dss, ssh_source)
    parent = shlex.quote(str(Path(old.data_dir).parent))
    ok(ssh_target, old.dss("start"))
    ok(ssh_target, f"chattr +i {parent}")
    try:
        failed = world.cli("restore", "dss", "--host", "target", "--from", "source", *dss_sets(dss))
        assert failed.returncode == 1, failed.stderr
        line = error_line(failed.stderr)
        assert line.startswith(f"recipes: error: move {old.data_dir} aside to {old.data_dir}.before-restore-")
        assert "{{" not in line and "Operation not permitted" in line, line
        assert running(ssh_target, old)
    finally:
        run(ssh_target, f"chattr -i {parent}")
