"""What a restore brings back is what was there: the django recipe over real SSH on trees an
operator's server really has (odd names, every file type, modes, owners, nanosecond mtimes, every
xattr namespace, ACLs, hard links, sparse files), through a full and an incremental chain, and a
file that shrank while tar read it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers
from tests.integration.world import World, on_first_read

MTIME_NS = 1_600_000_000_123_456_789
SPARSE_SIZE = 64 << 20


def exact(root: Path, skip: tuple[str, ...] = ()) -> dict[bytes, tuple[object, ...]]:
    """``root`` and every entry under it by byte name: type, mode, owner, mtime (ns), content or link
    target, device, every xattr (all namespaces, ACLs included) and its hard-link group (the
    smallest name sharing its inode)."""
    broot = os.fsencode(root)
    dropped = {os.fsencode(s) for s in skip}
    entries: dict[bytes, os.stat_result] = {b".": os.lstat(broot)}  # the root itself too
    for dirpath, dirnames, filenames in os.walk(broot):
        for name in list(dirnames):
            if os.path.relpath(os.path.join(dirpath, name), broot) in dropped:
                dirnames.remove(name)
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), broot)
            if rel not in dropped:
                entries[rel] = os.lstat(os.path.join(broot, rel))
    groups: dict[tuple[int, int], bytes] = {}
    for rel, st in sorted(entries.items()):
        groups.setdefault((st.st_dev, st.st_ino), rel)
    out: dict[bytes, tuple[object, ...]] = {}
    for rel, st in entries.items():
        p = os.path.join(broot, rel)
        detail: object = None
        xattrs: tuple[tuple[str, bytes], ...] = ()
        if stat.S_ISLNK(st.st_mode):
            detail = os.readlink(p)
        else:
            xattrs = tuple(sorted((k, os.getxattr(p, k)) for k in os.listxattr(p)))
            if stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(Path(os.fsdecode(p)).read_bytes()).hexdigest()
        link = groups[(st.st_dev, st.st_ino)] if not stat.S_ISDIR(st.st_mode) else None
        out[rel] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_mtime_ns,
            detail,
            st.st_rdev,
            xattrs,
            link,
        )
    return out


def write(root: Path, rel: bytes, data: bytes = b"x") -> bytes:
    p = os.path.join(os.fsencode(root), rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as fh:
        fh.write(data)
    return p


def allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def seed_odd_tree(src: Path) -> None:
    """Names, types, modes, owners and metadata a real server has, all mtimes at MTIME_NS."""
    b = os.fsencode(src)
    for name in (
        b"new\nline",
        b"tab\there",
        b"back\\slash",
        b"-leading-dash",
        b"--exclude=looks-like-an-option",
        b" spaces around ",
        b"latin1-\xe9\xff",
        b"star*?[glob]",
        b"L" * 255,
    ):
        write(src, b"names/" + name, b"name " + name)
    write(src, b"deep/" + b"/".join([b"d" * 60] * 6) + b"/f", b"a path over 256 bytes")
    os.makedirs(os.path.join(b, b"links/dir"))
    for target, name in (
        (b"/nonexistent/target", b"dangling"),
        (b"/etc/passwd", b"absolute"),
        (b"dir", b"to-dir"),
        (b"t" * 200, b"long-target"),
        (b"new\nline", b"newline-target"),
    ):
        os.symlink(target, os.path.join(b, b"links", name))
    a = write(src, b"hard/a", b"three names, one inode")
    os.link(a, os.path.join(b, b"hard/b"))
    os.makedirs(os.path.join(b, b"hard/sub"))
    os.link(a, os.path.join(b, b"hard/sub/c"))
    with open(src / "sparse.img", "wb") as fh:  # /var/log/lastlog, VM images
        fh.truncate(SPARSE_SIZE)
        fh.seek(SPARSE_SIZE // 3)
        fh.write(b"data between two holes")
    write(src, b"empty/file", b"")
    os.makedirs(src / "empty/dir")
    os.mkfifo(src / "fifo")
    (src / "chroot/dev").mkdir(parents=True)  # a chroot's devices (postfix, bind)
    os.mknod(src / "chroot/dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "chroot/dev/loop", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    for rel, mode in ((b"modes/setuid", 0o4755), (b"modes/setgid", 0o2711), (b"modes/zero", 0)):
        os.chmod(write(src, rel, rel), mode)
    os.makedirs(src / "modes/sticky")
    os.chmod(src / "modes/sticky", 0o1777)
    os.chmod(write(src, b"modes/closed/inner/f", b"under 0000 dirs"), 0o600)
    os.chmod(src / "modes/closed/inner", 0)
    os.chmod(src / "modes/closed", 0)
    os.chown(write(src, b"owners/no-name", b"u"), 54321, 65432)  # no such user on the target
    os.chown(write(src, b"owners/nfsnobody", b"u"), 4294967294, 165536)
    os.symlink("t", src / "owners/link")
    os.lchown(src / "owners/link", 4242, 4343)
    attr = write(src, b"x/attrs", b"attrs")
    os.setxattr(attr, "user.bin", b"\x00\x01\xff")
    os.setxattr(attr, "trusted.app", b"trusted value")
    cap = write(src, b"x/ping", b"#!/bin/sh\n")
    os.chmod(cap, 0o755)
    subprocess.run(["setcap", "cap_net_raw=+ep", os.fsdecode(cap)], check=True)
    os.makedirs(src / "x/acl")
    subprocess.run(["setfacl", "-m", "u:1234:r-x,g:99:rwx,d:u:1234:rwx", str(src / "x/acl")], check=True)
    write(src, b"x/acl/f", b"acl")
    subprocess.run(["setfacl", "-m", "u:1234:rw", str(src / "x/acl/f")], check=True)
    # excluded: by the default list, by a path with a space, by a glob; a hard link into /tmp
    twin = write(src, b"tmp/excluded-twin", b"twin")
    os.link(twin, os.path.join(b, b"hard/kept-twin"))
    write(src, b"srv/my cache/junk", b"j")
    write(src, b"srv/logs/x.log", b"l")
    write(src, b"srv/logs/x.txt", b"t")
    write(src, b"srv/data[1]/left-out", b"excluded by its escaped name")
    write(src, b"srv/data1/kept", b"what the unescaped pattern would leave out")
    settle(src)


def settle(src: Path) -> None:
    """Every mtime to MTIME_NS (sub-second), symlinks included, children before parents."""
    b = os.fsencode(src)
    for dirpath, dirnames, filenames in os.walk(b, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)


# a path with a space, a wildcard, and a path holding a wildcard character, escaped (TOML "\\[")
EXCLUDES = ("--set", 'extra_excludes=["/srv/my cache", "/srv/logs/*.log", "/srv/data\\\\[1]"]')
SKIPPED = ("tmp", "srv/my cache", "srv/logs/x.log", "srv/data[1]")


def backup(world: World, root: str) -> dict[str, object]:
    out = world.cli("--json", "run", "django", "--host", "source", "--set", f"root={root}", *EXCLUDES)
    assert out.returncode == 0, out.stderr
    manifest: dict[str, object] = json.loads(out.stdout)
    return manifest


def restore(world: World, root: str) -> subprocess.CompletedProcess[str]:
    proc = world.cli("restore", "django", "--host", "target", "--from", "source", "--set", f"root={root}")
    assert proc.returncode == 0, proc.stderr
    return proc


def expected(src: Path) -> dict[bytes, tuple[object, ...]]:
    """The source as it must come back: the link into the excluded /tmp comes back a lone file."""
    tree = exact(src, SKIPPED)
    kept = tree[b"hard/kept-twin"]
    tree[b"hard/kept-twin"] = (*kept[:-1], b"hard/kept-twin")
    return tree


def test_an_odd_tree_comes_back_exactly(world: World, site: tuple[str, Path, Path]) -> None:
    root, src, dst = site
    seed_odd_tree(src)
    os.chmod(src, 0o750)
    os.chown(src, 1000, 1000)
    os.utime(src, ns=(MTIME_NS, MTIME_NS))
    backup(world, root)
    proc = restore(world, root)
    assert exact(dst) == expected(src)
    assert "warn" not in proc.stdout + proc.stderr  # nothing to say: it all came back
    # security.capability survived the chown tar does first (ping keeps working)
    got = subprocess.run(["getcap", str(dst / "x/ping")], capture_output=True, text=True, check=True)
    assert "cap_net_raw=ep" in got.stdout
    # the holes stay holes: 64 MiB of apparent size, a few blocks on the disk
    assert allocated(src / "sparse.img") < 1 << 20
    assert allocated(dst / "sparse.img") < 1 << 20


def test_a_chain_of_type_changes_comes_back_exactly(world: World, site: tuple[str, Path, Path]) -> None:
    root, src, dst = site
    seed_odd_tree(src)
    write(src, b"change/file-then-dir", b"a file first")
    write(src, b"change/dir-then-link/f", b"a directory first")
    write(src, b"change/link-then-file", b"x")
    os.symlink("dir-then-link", src / "change/link-then-file2")
    write(src, b"change/same-mtime", b"AAAA")
    for i in range(300):
        write(src, f"change/big dir/f{i}\nx".encode(), f"{i}".encode())
    settle(src)
    full = backup(world, root)
    time.sleep(1.1)  # past the full's dump time, as a nightly run is

    c = src / "change"
    (c / "file-then-dir").unlink()
    write(src, b"change/file-then-dir/inside", b"now a directory")
    shutil.rmtree(c / "dir-then-link")
    os.symlink("../names", c / "dir-then-link")
    (c / "link-then-file2").unlink()
    write(src, b"change/link-then-file2", b"now a file")
    (src / "hard/b").unlink()  # a hard link broken: b is its own file now
    write(src, b"hard/b", b"three names, one inode")
    os.rename(c / "big dir", c / "renamed\tdir")
    (c / "same-mtime").unlink()  # recreated with the same name and mtime: another inode, ctime
    write(src, b"change/same-mtime", b"BBBB")
    os.utime(c / "same-mtime", ns=(MTIME_NS, MTIME_NS))
    os.unlink(src / "names" / os.fsdecode(b"latin1-\xe9\xff"))
    with open(src / "sparse.img", "r+b") as fh:  # a write into the hole
        fh.seek(SPARSE_SIZE // 2)
        fh.write(b"more data")
    one = backup(world, root)
    assert (one["level"], one["parent"]) == (1, full["snapshot"])

    proc = restore(world, root)
    assert exact(dst) == expected(src)
    assert allocated(dst / "sparse.img") < 1 << 20
    assert "warn" not in proc.stdout + proc.stderr


def test_a_file_that_shrank_while_read_is_named_again_at_restore(
    world: World, site: tuple[str, Path, Path]
) -> None:
    """GNU tar pads a file that shrank under it with zeros and exits 1: the snapshot is kept with
    the warning (docs/reliability.md), and the restore, which writes the padded file back, says so."""
    root, src, dst = site
    (src / "var/log").mkdir(parents=True)
    big = src / "var/log/rotated.log"
    with open(big, "wb") as fh:  # written, not sparse: tar reads every byte
        for _ in range(256):
            fh.write(bytes(1 << 20))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "var/log/a.sock"))  # tar's harmless "socket ignored" comes first
        # at tar's first read (it has taken the 256 MiB size from fstat): down to 100 bytes
        shrink = on_first_read(big, lambda: os.truncate(big, 100))
        out = world.cli("--json", "run", "django", "--host", "source", "--set", f"root={root}")
        shrink.join(timeout=30)
    assert out.returncode == 0, out.stderr
    assert big.stat().st_size == 100
    manifest = json.loads(out.stdout)
    files = next(o for o in manifest["objects"] if o["name"] == "files.tar")
    assert any("rotated.log: File shrank by" in w for w in files["warnings"]), files["warnings"]

    proc = restore(world, root)
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "restored as stored" in line]
    assert said, proc.stdout + proc.stderr
    assert f"files.tar of {manifest['snapshot']}" in said[0]
    assert "rotated.log: File shrank by" in said[0]
    # what the warning is about: the source has 100 bytes, the snapshot held 256 MiB (zeros)
    assert (dst / "var/log/rotated.log").stat().st_size == 256 << 20


@pytest.fixture
def no_acl_target(site: tuple[str, Path, Path], ssh_target: servers.SshHost) -> Iterator[list[str]]:
    """The target's root is a btrfs mounted ``noacl`` (a filesystem without ACL support) in the
    target's own mount namespace; yields the ssh command line that runs a command there."""
    root = site[0]
    vol = servers.start_btrfs(128)
    try:
        subprocess.run(["umount", vol.mount_point], check=True)  # only the target mounts it
        ssh = [
            "ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-i", ssh_target.key_file, "-p", str(ssh_target.port),
            f"{ssh_target.user}@{ssh_target.address}",
        ]  # fmt: skip
        mount = f"mkdir -p {root} && mount -t btrfs -o noacl,subvol=data {vol.device} {root}"
        subprocess.run([*ssh, mount], check=True, capture_output=True, stdin=subprocess.DEVNULL)
        vol.host_mounts.append((ssh_target, root))  # unmounted there by stop()
        yield ssh
    finally:
        vol.stop()


def test_acls_the_target_cannot_hold_are_a_warning_not_a_silent_loss(
    world: World, site: tuple[str, Path, Path], no_acl_target: list[str]
) -> None:
    """GNU tar exits 0 when it cannot set an ACL (only a warning on stderr): the restore says so."""
    root, src, _ = site
    write(src, b"shared/report.txt", b"for the auditors")
    subprocess.run(["setfacl", "-m", "u:1234:rw", str(src / "shared/report.txt")], check=True)
    backup(world, root)
    proc = restore(world, root)
    there = subprocess.run(
        [*no_acl_target, f"cat {root}/shared/report.txt && getfacl -cp {root}/shared/report.txt"],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    assert there.startswith("for the auditors")
    assert "user:1234:rw-" not in there  # the filesystem could not keep it
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if "tar warned" in line]
    assert said, proc.stdout + proc.stderr
    assert "extract files on target" in said[0] and "report.txt': Operation not supported" in said[0]
