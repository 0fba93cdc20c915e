"""Short downtime: DSS stopped, its DATA_DIR snapshotted on a real loop-device btrfs, started
again at once; the archive reads the read-only snapshot, which is removed however the run ends."""

from __future__ import annotations

import json
import shlex
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests import servers
from tests.integration import standins
from tests.integration.standins import Site
from tests.integration.test_dss import USER, dss_sets, running
from tests.integration.test_standins import ok
from tests.integration.world import World, fingerprint

pytestmark = pytest.mark.integration


@pytest.fixture
def on_btrfs(
    btrfs: servers.Btrfs, ssh_source: servers.SshHost, site: tuple[str, Path, Path]
) -> Iterator[tuple[str, Site, Site]]:
    """A btrfs subvolume mounted inside the source host (path there), and the two sites."""
    path, src, dst = site
    dst.mkdir(exist_ok=True)
    src.joinpath("btrfs").mkdir()
    mnt = f"{path}/btrfs"
    btrfs.mount_on(ssh_source, mnt)
    vol = f"{mnt}/vol-{uuid.uuid4().hex[:8]}"
    ok(ssh_source, f"btrfs -q subvolume create {shlex.quote(vol)}")
    yield vol, Site(src, path), Site(dst, path)
    standins.stop_processes(path)
    ok(ssh_source, f"btrfs -q subvolume delete {shlex.quote(vol)}")
    btrfs.unmount_on(ssh_source, mnt)


def _snapshots(host: servers.SshHost, vol: str) -> list[str]:
    out = ok(host, f"btrfs subvolume list {shlex.quote(vol.rsplit('/', 1)[0])}")
    return [line for line in out.splitlines() if ".recipes-snap-" in line]


def test_dss_on_btrfs_starts_again_once_the_snapshot_exists(
    world: World,
    on_btrfs: tuple[str, Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
) -> None:
    standins.ensure_user(USER)
    vol, src_site, dst_site = on_btrfs
    laid = standins.install_dss(src_site, user=USER)
    data_dir = f"{vol}/dss_data"
    ok(ssh_source, f"cp -a {shlex.quote(laid.data_dir)} {shlex.quote(data_dir)}")
    dss = attrs.evolve(laid, data_dir=data_dir)
    ok(ssh_source, dss.dss("start"))
    sets = [*dss_sets(dss, "snapshot=btrfs", "include_config=false")]

    backup = world.cli("--json", "run", "dss", "--host", "source", *sets)
    assert backup.returncode == 0, backup.stderr
    manifest = json.loads(backup.stdout)
    steps = [(s["kind"], s["name"]) for s in manifest["steps"]]
    assert steps.index(("fssnapshot", "data-dir")) < steps.index(("archive", "files"))
    assert "dss@source" in manifest["downtime"]
    assert running(ssh_source, dss)  # started at once, and not stopped again
    names = [e.name for e in standins.read_events(dss.events) if e.name.startswith("dss-")]
    assert names[-2:] == ["dss-stopped", "dss-started"], names
    assert _snapshots(ssh_source, vol) == []  # the snapshot's removal ran
    tar = [a for a in manifest["steps"] if a["name"] == "files"]
    assert tar and "--no-check-device" in json.dumps(
        json.loads(world.cli("--json", "plan", "dss", "--host", "source", *sets, check=True).stdout)
    )

    # The snapshot held DATA_DIR as it was when DSS stopped: restore it elsewhere and compare.
    standins.install_dss_kit(dst_site)
    restore = world.cli(
        "restore", "dss", "--host", "target", "--from", "source", *dss_sets(laid, "include_config=false")
    )
    assert restore.returncode == 0, restore.stderr
    skip = ("tmp", "caches", "data-catalog", "run")
    assert fingerprint(dst_site.local_path(laid.data_dir), skip) == fingerprint(laid.data_path, skip)


def test_looker_on_btrfs_with_mysql_starts_again_once_the_snapshot_exists(
    world: World,
    on_btrfs: tuple[str, Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
) -> None:
    standins.ensure_user("looker")
    vol, src_site, dst_site = on_btrfs
    laid = standins.install_looker(src_site, user="looker")
    home = f"{vol}/home-looker"
    ok(ssh_source, f"cp -a {shlex.quote(laid.home)} {shlex.quote(home)}")
    lk = attrs.evolve(laid, home=home)
    ok(ssh_source, lk.command("start"))
    sets = ["--set", f"home={home}", "--set", f'extra_paths=["{lk.initd}"]', "--set", "snapshot=btrfs"]

    backup = world.cli("--json", "run", "looker", "--host", "source", *sets)
    assert backup.returncode == 0, backup.stderr
    manifest = json.loads(backup.stdout)
    steps = [(s["kind"], s["name"]) for s in manifest["steps"]]
    assert steps.index(("fssnapshot", "home")) < steps.index(("archive", "files"))
    assert "looker@source" in manifest["downtime"]
    assert [e.name for e in standins.read_events(lk.events)][-2:] == ["stopped", "started"]
    assert ok(ssh_source, lk.command("status")) is not None  # running again (exit 0)
    assert _snapshots(ssh_source, vol) == []
    members = world.cli("plan", "looker", "--host", "source", *sets, check=True).stdout
    assert "--no-check-device" in members and "{{snapshot_root}}" in members

    ok(ssh_source, lk.command("stop"))
    restore = world.cli(
        "restore", "looker", "--host", "target", "--from", "source",
        "--set", f"home={laid.home}", "--set", f'extra_paths=["{laid.initd}"]',
    )  # fmt: skip
    assert restore.returncode == 0, restore.stderr
    ok(ssh_target, laid.command("stop"))
    skip = (*standins.LOOKER_EXCLUDED, "looker/log", "looker/.deploying", "looker/.tmp", "looker/.db")
    restored = fingerprint(dst_site.local_path(laid.home), skip)
    source = fingerprint(laid.home_dir, skip)  # directory mtimes moved with the stop and start
    assert {k: v for k, v in restored.items() if not stat.S_ISDIR(int(str(v[0])))} == {
        k: v for k, v in source.items() if not stat.S_ISDIR(int(str(v[0])))
    }
    assert restored.keys() == source.keys()
