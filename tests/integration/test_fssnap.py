"""fssnap's btrfs commands on a real loop-device btrfs, run as root over SSH on a test host.

Each command goes through ``recipes.hosts`` (the path the engine uses). The volume is the session
``btrfs`` fixture, mounted (top level) inside the source host's private mount namespace.
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from recipes import fssnap, hosts
from recipes.model import Command
from recipes.steps import tar_excludes
from tests import servers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host(ssh_source: servers.SshHost) -> Iterator[hosts.Host]:
    """The source host as the engine reaches it: paramiko, root, host key pinned."""
    h = hosts.open_host(ssh_source.spec())
    yield h
    h.close()


@pytest.fixture(scope="module")
def mnt(btrfs: servers.Btrfs, ssh_source: servers.SshHost) -> Iterator[str]:
    """The btrfs's top level, mounted on the source host (module-wide); its path there."""
    name = f"fssnap-{uuid.uuid4().hex[:8]}"
    outside = Path(ssh_source.binds["/srv/site"]) / name
    outside.mkdir()
    path = f"/srv/site/{name}/btrfs"
    btrfs.mount_on(ssh_source, path)
    yield path
    btrfs.unmount_on(ssh_source, path)
    outside.joinpath("btrfs").rmdir()
    outside.rmdir()


def run(host: hosts.Host, script: str | Command) -> hosts.Result:
    """Run a root script (or command) on the host."""
    return hosts.run(host, script if isinstance(script, Command) else Command(script))


def ok(host: hosts.Host, script: str | Command) -> str:
    """Run it, assert exit 0, return stdout."""
    r = run(host, script)
    assert r.exit_status == 0, f"exit {r.exit_status}: {r.stderr}{r.stdout.decode()}"
    return r.stdout.decode()


def one_line_failure(r: hosts.Result) -> str:
    """Assert a failed create: exit 1, nothing on stdout, exactly one ``fssnap:`` stderr line."""
    assert r.exit_status == 1 and r.stdout == b"", (r.exit_status, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fssnap: "), r.stderr
    return lines[0]


def snapshots(host: hosts.Host, mnt: str) -> list[str]:
    """Every snapshot of recipes on the filesystem, by ``btrfs subvolume list``."""
    out = ok(host, f"btrfs subvolume list {shlex.quote(mnt)}")
    return [line.split(" path ", 1)[1] for line in out.splitlines() if fssnap.BTRFS_PREFIX in line]


@pytest.fixture
def vol(host: hosts.Host, mnt: str) -> Iterator[str]:
    """A fresh subvolume ``vol-<id>`` with ``app/`` (40 files of 64 KiB) and ``app/etc/conf``."""
    v = f"{mnt}/vol-{uuid.uuid4().hex[:8]}"
    ok(
        host,
        f"btrfs -q subvolume create {v} && mkdir -p {v}/app/etc && echo one > {v}/app/etc/conf && "
        f"for i in $(seq 40); do head -c 65536 /dev/urandom > {v}/app/f$i; done",
    )
    yield v
    # Whatever a test left: its snapshots first, then nested subvolumes, then the volume.
    run(
        host,
        f"for s in {mnt}/.recipes-snap-* {v}/.recipes-snap-* {v}/*/.recipes-snap-*; do "
        f'[ -e "$s" ] && btrfs -q subvolume delete "$s"; done; '
        f"btrfs subvolume list -o {v} | sed 's/.* path //' | sort -r | while read -r p; do "
        f'btrfs -q subvolume delete "{mnt}/$p"; done; btrfs -q subvolume delete {v}',
    )


def tag() -> str:
    return uuid.uuid4().hex[:10]


# ----------------------------------------------------------------------------------------- create


def test_snapshot_is_read_only_holds_the_data_and_not_later_writes(
    host: hosts.Host, mnt: str, vol: str
) -> None:
    t = tag()
    snap = fssnap.parse(run(host, fssnap.create("btrfs", f"{vol}/app", t)).stdout)
    # Beside the subvolume, so outside the tree being archived.
    assert snap == fssnap.Snapshot(
        "btrfs", f"{mnt}/.recipes-snap-{t}/app", f"btrfs:{mnt}/.recipes-snap-{t}", vol
    )
    assert ok(host, f"btrfs property get -ts {mnt}/.recipes-snap-{t} ro").strip() == "ro=true"
    assert run(host, f"touch {snap.root}/new").exit_status != 0
    assert run(host, f"echo changed > {snap.root}/etc/conf").exit_status != 0
    assert ok(host, f"cd {vol}/app && find . -type f | sort | xargs sha256sum") == ok(
        host, f"cd {snap.root} && find . -type f | sort | xargs sha256sum"
    )
    ok(host, f"echo two > {vol}/app/etc/conf && rm {vol}/app/f1 && echo x > {vol}/app/late")
    assert ok(host, f"cat {snap.root}/etc/conf") == "one\n"
    assert "late" not in ok(host, f"ls {snap.root}").split()
    assert "f1" in ok(host, f"ls {snap.root}").split()
    assert snapshots(host, mnt) == [f".recipes-snap-{t}"]
    ok(host, fssnap.remove(snap.handle))
    assert snapshots(host, mnt) == []
    assert run(host, f"test -e {mnt}/.recipes-snap-{t}").exit_status == 1
    ok(host, fssnap.remove(snap.handle))  # gone already: still exit 0
    assert ok(host, f"cat {vol}/app/etc/conf") == "two\n"  # the live tree is untouched


def test_a_level_1_from_the_next_snapshot_stays_small_only_with_no_check_device(
    host: hosts.Host, mnt: str, vol: str
) -> None:
    s1 = fssnap.parse(run(host, fssnap.create("btrfs", f"{vol}/app", tag())).stdout)
    work = f"{vol}/work"  # outside app/, so not archived
    ok(host, f"mkdir {work}")
    flags = " ".join(fssnap.TAR_SNAPSHOT_FLAGS)
    ok(host, f"tar -C {s1.root} -cf {work}/l0.tar {flags} --listed-incremental={work}/a.snar .")
    ok(host, f"cp {work}/a.snar {work}/b.snar && echo two > {vol}/app/etc/conf")
    s2 = fssnap.parse(run(host, fssnap.create("btrfs", f"{vol}/app", tag())).stdout)
    devices = ok(host, f"stat -c %d {vol}/app {s1.root} {s2.root}").split()
    assert len(set(devices)) == 3  # each snapshot is a device of its own
    ok(host, f"tar -C {s2.root} -cf {work}/l1.tar {flags} --listed-incremental={work}/a.snar .")
    ok(host, f"tar -C {s2.root} -cf {work}/l1-default.tar --listed-incremental={work}/b.snar .")
    sizes = dict(
        zip(
            ("l0", "l1", "default"),
            map(int, ok(host, f"stat -c %s {work}/l0.tar {work}/l1.tar {work}/l1-default.tar").split()),
            strict=True,
        )
    )
    print(
        f"level 0: {sizes['l0']} B; level 1 --no-check-device: {sizes['l1']} B; without: {sizes['default']} B"
    )
    files = ok(host, f"tar -tf {work}/l1.tar").split()
    assert [f for f in files if not f.endswith("/")] == ["./etc/conf"]
    assert sizes["l0"] > 40 * 65536
    assert sizes["l1"] < sizes["l0"] // 20  # one changed file
    assert sizes["default"] >= sizes["l0"]  # without the flag: every file again
    for s in (s1, s2):
        ok(host, fssnap.remove(s.handle))


def test_a_path_under_a_nested_subvolume_and_a_refused_parent(host: hosts.Host, mnt: str, vol: str) -> None:
    ok(host, f"btrfs -q subvolume create {vol}/app/db && echo rows > {vol}/app/db/table")
    t = tag()
    snap = fssnap.parse(run(host, fssnap.create("btrfs", f"{vol}/app/db", t)).stdout)
    assert snap.source == f"{vol}/app/db"
    assert snap.handle == f"btrfs:{vol}/app/.recipes-snap-{t}"
    assert snap.root == f"{vol}/app/.recipes-snap-{t}"
    assert ok(host, f"cat {snap.root}/table") == "rows\n"
    ok(host, fssnap.remove(snap.handle))
    # A snapshot of vol would hold app/db as an empty directory: refused, nothing made.
    before = snapshots(host, mnt)
    line = one_line_failure(run(host, fssnap.create("btrfs", f"{vol}/app", tag())))
    assert f"holds the nested subvolume {vol}/app/db" in line and "snapshot=none" in line
    assert snapshots(host, mnt) == before == []


def test_a_mounted_subvolume_gets_its_snapshot_inside_and_archives_exclude_it(
    host: hosts.Host, mnt: str, vol: str, btrfs: servers.Btrfs
) -> None:
    name = vol.rsplit("/", 1)[1]
    at = f"{mnt}-{name}"  # the subvolume mounted on its own (subvol=), as /srv/app would be
    ok(host, f"mkdir -p {at} && mount -t btrfs -o subvol={name} {btrfs.device} {at}")
    try:
        a, b = tag(), tag()
        first = fssnap.parse(run(host, fssnap.create("btrfs", at, a)).stdout)
        assert first.root == f"{at}/.recipes-snap-{a}"  # its parent is another mount
        assert run(host, f"test -e {first.root}/.recipes-snap-{a}").exit_status == 1
        second = fssnap.parse(run(host, fssnap.create("btrfs", f"{at}/", b)).stdout)
        # The first snapshot shows in the second as an empty directory ...
        assert ok(host, f"ls -A {second.root}/.recipes-snap-{a}") == ""
        excludes = " ".join(tar_excludes((fssnap.SNAPSHOT_EXCLUDE,)))
        listing = ok(host, f"tar -C {second.root} -cf - {excludes} . | tar -tf -").split()
        # ... which the archive leaves out; the data is all there.
        assert not [m for m in listing if fssnap.BTRFS_PREFIX in m]
        assert "./app/etc/conf" in listing
        for s in (first, second):
            ok(host, fssnap.remove(s.handle))
        assert ok(host, f"ls -A {at}").split() == ["app"]
    finally:
        run(host, f"umount {at}; rmdir {at}")


def test_cleanup_finds_the_snapshot_from_the_inputs_alone(host: hosts.Host, mnt: str, vol: str) -> None:
    t = tag()
    run(host, fssnap.create("btrfs", f"{vol}/app", t))  # its output is lost, say
    assert snapshots(host, mnt) == [f".recipes-snap-{t}"]
    ok(host, fssnap.cleanup("btrfs", f"{vol}/app", t))
    assert snapshots(host, mnt) == []
    ok(host, fssnap.cleanup("btrfs", f"{vol}/app", t))
    ok(host, fssnap.cleanup("auto", f"{vol}/app", t))


# ------------------------------------------------------------------------------------ refusals


def test_btrfs_on_a_path_that_is_not_btrfs_fails_with_one_line_and_leaves_nothing(
    host: hosts.Host, mnt: str
) -> None:
    ext4 = mnt.rsplit("/", 1)[0] + "/plain"  # the site dir: ext4 on these machines
    ok(host, f"mkdir -p {ext4}/app && echo x > {ext4}/app/f")
    before = ok(host, f"ls -A {ext4} {ext4}/app")
    line = one_line_failure(run(host, fssnap.create("btrfs", f"{ext4}/app", tag())))
    fs = ok(host, f"findmnt -n -o FSTYPE -T {ext4}").strip()
    assert line == (
        f"fssnap: snapshot=btrfs: {ext4}/app is on {fs}, not btrfs: set snapshot=none (or lvm/auto), "
        "or move the data onto a btrfs subvolume"
    )
    assert ok(host, f"ls -A {ext4} {ext4}/app") == before
    line = one_line_failure(run(host, fssnap.create("btrfs", f"{ext4}/missing", tag())))
    assert line == f"fssnap: snapshot: {ext4}/missing does not exist: check the path parameter"
    ok(host, fssnap.cleanup("btrfs", f"{ext4}/app", "x"))  # nothing to clean: exit 0
    ok(host, f"rm -r {ext4}")


def test_auto_picks_btrfs_on_btrfs_and_fails_clearly_on_ext4_and_tmpfs(
    host: hosts.Host, mnt: str, vol: str
) -> None:
    snap = fssnap.parse(run(host, fssnap.create("auto", f"{vol}/app", tag())).stdout)
    assert snap.kind == "btrfs" and ok(host, f"cat {snap.root}/etc/conf") == "one\n"
    ok(host, fssnap.remove(snap.handle))
    assert fssnap.parse_probe(run(host, fssnap.probe(f"{vol}/app")).stdout) == fssnap.Probe("btrfs", "btrfs")

    base = mnt.rsplit("/", 1)[0]
    tmp = f"{base}/tmpfs"
    ok(host, f"mkdir -p {tmp} && mount -t tmpfs none {tmp} && mkdir {tmp}/app")
    try:
        for where, fs in (
            (base, ok(host, f"findmnt -n -o FSTYPE -T {base}").strip()),
            (f"{tmp}/app", "tmpfs"),
        ):
            assert fs != "btrfs"
            line = one_line_failure(run(host, fssnap.create("auto", where, tag())))
            assert line == (
                f"fssnap: snapshot=auto: {where} is on {fs}, neither btrfs nor an LVM logical volume: "
                "set snapshot=none (the application then stays stopped while it is archived)"
            )
            probe = fssnap.parse_probe(run(host, fssnap.probe(where)).stdout)
            assert probe == fssnap.Probe(fs, "none", "neither btrfs nor an LVM logical volume")
        assert ok(host, f"ls -A {tmp}/app") == ""
    finally:
        run(host, f"umount {tmp}; rmdir {tmp}")


def test_a_failure_after_the_snapshot_removes_it(host: hosts.Host, mnt: str, vol: str) -> None:
    # A btrfs that makes snapshots but says they are writable: create must give up and clean up.
    fake, real = f"{vol}/fakebin", ok(host, "command -v btrfs").strip()
    wrapper = (
        "#!/bin/sh\n"
        'echo "$*" >> "${0%/*}/log"\n'
        'if [ "$1 $2" = "property get" ]; then echo ro=false; exit 0; fi\n'
        f'exec {shlex.quote(real)} "$@"\n'
    )
    r = hosts.run(
        host, Command(f"mkdir {fake} && cat > {fake}/btrfs && chmod +x {fake}/btrfs"), wrapper.encode()
    )
    assert r.exit_status == 0, r.stderr
    t = tag()
    snap = f"{mnt}/.recipes-snap-{t}"
    create = fssnap.create("btrfs", f"{vol}/app", t)
    line = one_line_failure(run(host, Command(f"PATH={fake}:$PATH\n" + create.script)))
    assert line == f"fssnap: snapshot=btrfs: {snap} is not read-only after snapshot -r: check btrfs-progs"
    calls = ok(host, f"cat {fake}/log").splitlines()
    made = calls.index(f"subvolume snapshot -r -- {vol} {snap}")  # it was really made ...
    assert calls[made + 1 :] == [f"property get -ts {snap} ro", f"subvolume delete -- {snap}"]
    assert snapshots(host, mnt) == []  # ... and is gone


def test_create_never_removes_a_snapshot_it_did_not_make(host: hosts.Host, mnt: str, vol: str) -> None:
    t = tag()
    fssnap.parse(run(host, fssnap.create("btrfs", f"{vol}/app", t)).stdout)
    line = one_line_failure(run(host, fssnap.create("btrfs", f"{vol}/app", t)))
    assert line.startswith(f"fssnap: snapshot=btrfs: {mnt}/.recipes-snap-{t} already exists")
    assert snapshots(host, mnt) == [f".recipes-snap-{t}"]  # the earlier one is still there
    ok(host, fssnap.cleanup("btrfs", f"{vol}/app", t))


def test_remove_refuses_what_is_not_a_read_only_snapshot(host: hosts.Host, mnt: str, vol: str) -> None:
    live = f"{mnt}/.recipes-snap-{tag()}"
    ok(host, f"btrfs -q subvolume create {live} && echo keep > {live}/data")
    try:
        r = run(host, fssnap.remove(f"btrfs:{live}"))
        assert r.exit_status == 1
        assert r.stderr == (
            f"fssnap: snapshot: refusing to remove {live}: it is not a read-only snapshot (ro=false): "
            "look at it and remove it by hand\n"
        )
        assert ok(host, f"cat {live}/data") == "keep\n"
        plain = f"{vol}/.recipes-snap-{tag()}"
        ok(host, f"mkdir {plain} && echo keep > {plain}/data")
        r = run(host, fssnap.remove(f"btrfs:{plain}"))
        assert r.exit_status == 1 and "it is not a btrfs subvolume" in r.stderr
        assert ok(host, f"cat {plain}/data") == "keep\n"
        ok(host, f"rm -r {plain}")
    finally:
        run(host, f"btrfs -q subvolume delete {live}")
