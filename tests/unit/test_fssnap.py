"""fssnap: argument checks, parsing, plan lines, and the LVM scripts run against stub tools.

What is tested for LVM, and how: device-mapper is not available on these machines, so no real
logical volume can be made. The LVM scripts are run for real by bash, with ``PATH`` holding only
small shell stubs of ``findmnt``, ``lvs``, ``lvcreate``, ``lvremove``, ``mount``, ``umount`` and
``mountpoint`` (they record their argv and keep volumes and mounts as files in a state dir) plus
links to the coreutils the scripts need. So the scripts' control flow is executed: which tools
are called with which arguments, in which order, the one-line failures, the cleanup after a
failed ``lvcreate`` or ``mount``, idempotent removal, and never removing what the run did not make.

What is not tested for LVM: that real ``lvcreate``/``lvs``/``mount`` accept these arguments and
print what the stubs print (``lvs --noheadings -o vg_name,lv_name`` of a ``/dev/mapper`` path,
``-l 10%ORIGIN``, ``-o ro,nouuid`` for xfs), snapshot space running out while the archive reads,
and a real filesystem's journal replay on the read-only mount. The btrfs scripts are tested on a
real btrfs in ``tests/integration/test_fssnap.py``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import attrs
import pytest

from recipes import fssnap
from recipes.errors import ConfigError
from recipes.model import Command

# Each stub appends "name args..." (bash %q quoting) to $STATE/log.
_RECORD = 'printf "%s" "${0##*/}" >> "$STATE/log"; printf " %q" "$@" >> "$STATE/log"; echo >> "$STATE/log"\n'
STUBS = {
    # findmnt -n -o COLUMNS -T PATH: the fake mount holding every path.
    "findmnt": r"""
case $3 in
  SOURCE,FSTYPE,TARGET) echo "$FAKE_SOURCE $FAKE_FSTYPE $FAKE_TARGET" ;;
  SOURCE) echo "$FAKE_SOURCE" ;;
  FSTYPE) echo "$FAKE_FSTYPE" ;;
esac
""",
    # lvs [--noheadings -o COLS] -- VG/LV|DEVICE; volumes are files $STATE/lv/VG/LV holding the origin.
    "lvs": r"""
for a; do last=$a; done
if [ "$last" = "$FAKE_SOURCE" ] && [ -n "$FAKE_VG" ]; then echo "  $FAKE_VG $FAKE_LV"; exit 0; fi
[ -f "$STATE/lv/$last" ] || { echo "  Failed to find logical volume \"$last\"" >&2; exit 5; }
[ "$3" = origin ] && echo "  $(cat "$STATE/lv/$last")"
exit 0
""",
    "lvcreate": r"""
if [ -n "$FAKE_LVCREATE_FAIL" ]; then
  echo "  Insufficient free space: 256 extents needed, but only 3 available" >&2; exit 5
fi
for a; do last=$a; done
mkdir -p "$STATE/lv/${last%/*}" && echo "${last#*/}" > "$STATE/lv/${last%/*}/$5"
echo "  Logical volume \"$5\" created."
""",
    "lvremove": r"""
for a; do last=$a; done
rm "$STATE/lv/$last" && echo "  Logical volume \"$last\" successfully removed."
""",
    "mount": r"""
if [ -n "$FAKE_MOUNT_FAIL" ]; then
  echo "mount: $7: wrong fs type, bad option, bad superblock on $6." >&2; exit 32
fi
echo "$7" >> "$STATE/mounts"
""",
    "umount": r"""
grep -vxF -- "$2" "$STATE/mounts" > "$STATE/mounts.new"; mv "$STATE/mounts.new" "$STATE/mounts"
""",
    "id": r"""
if [ "$1" = -un ]; then echo "${FAKE_USER:-root}"; else echo "${FAKE_UID:-0}"; fi
""",
    "mountpoint": r"""
grep -qxF -- "$3" "$STATE/mounts" 2>/dev/null
""",
}
REAL = (
    *("bash", "sh", "cat", "tr", "sed", "cut", "head", "tail", "grep", "stat", "realpath", "dirname"),
    *("basename", "mkdir", "rmdir", "rm", "mv", "env", "echo", "printf"),
)


@attrs.frozen
class Fake:
    """A stub LVM host: run scripts with its PATH, read what the stubs recorded and hold."""

    dir: Path
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def run(self, command: Command, **env: str) -> subprocess.CompletedProcess[str]:
        line, stdin = command.wire()
        assert stdin == b""
        return subprocess.run(
            line, shell=True, env={**self.env, **env}, capture_output=True, text=True, timeout=30
        )

    def calls(self) -> list[list[str]]:
        log = self.state / "log"
        return [shlex.split(x) for x in log.read_text().splitlines()] if log.exists() else []

    def tools(self) -> list[str]:
        return [c[0] for c in self.calls()]

    def volumes(self) -> list[str]:
        lv = self.state / "lv"
        return sorted(str(p.relative_to(lv)) for p in lv.rglob("*") if p.is_file()) if lv.exists() else []

    def mounts(self) -> list[str]:
        m = self.state / "mounts"
        return m.read_text().split() if m.exists() else []


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    """Stubs first in PATH, then links to only the real tools the scripts need; a fake xfs LV
    ``vg0/data`` (``/dev/mapper/vg0-data``) mounted on ``<tmp>/srv`` holding ``srv/app``."""
    stubs, real, state = tmp_path / "stubs", tmp_path / "real", tmp_path / "state"
    for d in (stubs, real, state, tmp_path / "srv" / "app", tmp_path / "run"):
        d.mkdir(parents=True)
    for name, body in STUBS.items():
        (stubs / name).write_text("#!/bin/bash\n" + _RECORD + body)
        (stubs / name).chmod(0o755)
    for tool in REAL:
        found = shutil.which(tool)
        assert found, tool
        (real / tool).symlink_to(found)
    (state / "lv" / "vg0").mkdir(parents=True)
    (state / "lv" / "vg0" / "data").write_text("\n")  # an origin volume: no origin of its own
    env = {
        "PATH": f"{stubs}:{real}",
        "STATE": str(state),
        "FAKE_SOURCE": "/dev/mapper/vg0-data",
        "FAKE_FSTYPE": "xfs",
        "FAKE_TARGET": str(tmp_path / "srv"),
        "FAKE_VG": "vg0",
        "FAKE_LV": "data",
    }
    return Fake(tmp_path, env)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fssnap: "), r.stderr
    return lines[0]


def create(fake: Fake, kind: fssnap.Kind = "lvm", **kw: str) -> Command:
    return fssnap.create(kind, f"{fake.dir}/srv/app", "T1", mount_base=f"{fake.dir}/run", **kw)


# ------------------------------------------------------------------------------------ LVM scripts


def test_lvm_create_snapshots_the_volume_and_mounts_it_read_only(fake: Fake) -> None:
    r = fake.run(create(fake))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    mnt = f"{fake.dir}/run/recipes-snap-T1"
    snap = fssnap.parse(r.stdout.encode())
    assert snap == fssnap.Snapshot(
        "lvm", f"{mnt}/app", f"lvm:vg0/recipes-snap-T1:{mnt}", "vg0/data", "/dev/vg0/recipes-snap-T1"
    )
    calls = fake.calls()
    assert [
        "lvcreate",
        "-q",
        "-y",
        "-s",
        "-n",
        "recipes-snap-T1",
        "-l",
        "10%ORIGIN",
        "--",
        "vg0/data",
    ] in calls
    assert calls[-1] == ["mount", "-t", "xfs", "-o", "ro,nouuid", "--", "/dev/vg0/recipes-snap-T1", mnt]
    assert fake.tools().index("lvcreate") < fake.tools().index("mount")
    assert "lvremove" not in fake.tools()
    assert fake.volumes() == ["vg0/data", "vg0/recipes-snap-T1"] and fake.mounts() == [mnt]
    assert stat.S_IMODE(os.stat(mnt).st_mode) == 0o700


def test_lvm_create_on_ext4_with_a_fixed_size(fake: Fake) -> None:
    r = fake.run(create(fake, lvm_size="2G"), FAKE_FSTYPE="ext4")
    assert r.returncode == 0, r.stderr
    calls = fake.calls()
    assert ["lvcreate", "-q", "-y", "-s", "-n", "recipes-snap-T1", "-L", "2G", "--", "vg0/data"] in calls
    assert calls[-1][:5] == ["mount", "-t", "ext4", "-o", "ro"]


def test_a_failed_mount_removes_the_new_volume_and_its_mount_point(fake: Fake) -> None:
    line = one_line(fake.run(create(fake), FAKE_MOUNT_FAIL="1"))
    mnt = f"{fake.dir}/run/recipes-snap-T1"
    assert line == (
        f"fssnap: snapshot=lvm: mount -o ro,nouuid /dev/vg0/recipes-snap-T1 {mnt} failed: "
        f"mount: {mnt}: wrong fs type, bad option, bad superblock on /dev/vg0/recipes-snap-T1."
    )
    tools = fake.tools()
    assert tools.index("lvcreate") < tools.index("mount") < tools.index("lvremove")
    assert fake.calls()[-1] == ["lvremove", "-f", "--", "vg0/recipes-snap-T1"]
    assert fake.volumes() == ["vg0/data"]  # the origin is untouched
    assert not os.path.exists(mnt)


def test_a_failed_lvcreate_leaves_nothing_and_says_how_to_fix(fake: Fake) -> None:
    line = one_line(fake.run(create(fake), FAKE_LVCREATE_FAIL="1"))
    assert line == (
        "fssnap: snapshot=lvm: lvcreate -s -l 10%ORIGIN vg0/data failed: Insufficient free space: "
        "256 extents needed, but only 3 available: free space in vg0 or set a smaller size"
    )
    assert "mount" not in fake.tools() and "lvremove" not in fake.tools()
    assert fake.volumes() == ["vg0/data"] and os.listdir(fake.dir / "run") == []


def test_a_path_not_on_a_logical_volume_is_refused(fake: Fake) -> None:
    line = one_line(fake.run(create(fake), FAKE_VG="", FAKE_SOURCE="/dev/sda1", FAKE_FSTYPE="ext4"))
    assert line == (
        f"fssnap: snapshot=lvm: {fake.dir}/srv/app is on /dev/sda1 (ext4), not an LVM logical volume: "
        "set snapshot=none (or btrfs/auto)"
    )
    assert "lvcreate" not in fake.tools()


def test_missing_lvm_tools_are_named(fake: Fake) -> None:
    (fake.dir / "stubs" / "lvcreate").unlink()
    line = one_line(fake.run(create(fake)))
    assert "LVM tools (lvs, lvcreate) are missing on this host: install lvm2" in line


def test_every_changing_script_needs_root(fake: Fake) -> None:
    path = f"{fake.dir}/srv/app"
    for command in (
        create(fake),
        fssnap.remove("lvm:vg0/recipes-snap-T1:/run/recipes-snap-T1"),
        fssnap.remove("btrfs:/srv/.recipes-snap-T1"),
        fssnap.cleanup("auto", path, "T1"),
    ):
        line = one_line(fake.run(command, FAKE_UID="1000", FAKE_USER="app"))
        assert line == "fssnap: snapshot: must run as root (not app): log in as root or set sudo for the host"
    assert [t for t in fake.tools() if t != "id"] == []


def test_create_never_removes_a_volume_it_did_not_make(fake: Fake) -> None:
    (fake.state / "lv" / "vg0" / "recipes-snap-T1").write_text("data\n")
    line = one_line(fake.run(create(fake)))
    assert line.startswith("fssnap: snapshot=lvm: vg0/recipes-snap-T1 already exists")
    assert fake.volumes() == ["vg0/data", "vg0/recipes-snap-T1"]
    assert "lvremove" not in fake.tools() and "lvcreate" not in fake.tools()


def test_lvm_remove_unmounts_and_removes_and_is_idempotent(fake: Fake) -> None:
    snap = fssnap.parse(fake.run(create(fake)).stdout.encode())
    (fake.state / "log").unlink()
    r = fake.run(fssnap.remove(snap.handle))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    mnt = f"{fake.dir}/run/recipes-snap-T1"
    assert ["umount", "--", mnt] in fake.calls()
    assert fake.calls()[-1] == ["lvremove", "-f", "--", "vg0/recipes-snap-T1"]
    assert fake.volumes() == ["vg0/data"] and fake.mounts() == [] and not os.path.exists(mnt)
    (fake.state / "log").unlink()
    r = fake.run(fssnap.remove(snap.handle))
    assert r.returncode == 0 and r.stderr == ""
    assert "lvremove" not in fake.tools() and "umount" not in fake.tools()


def test_lvm_remove_refuses_a_volume_that_is_not_a_snapshot(fake: Fake) -> None:
    (fake.state / "lv" / "vg0" / "recipes-snap-X").write_text("\n")  # no origin: a real volume
    r = fake.run(fssnap.remove("lvm:vg0/recipes-snap-X:/run/recipes-snap-X"))
    assert r.returncode == 1
    assert r.stderr == (
        "fssnap: snapshot: refusing to remove vg0/recipes-snap-X: it is not a snapshot volume: "
        "look at it and remove it by hand\n"
    )
    assert "lvremove" not in fake.tools() and "vg0/recipes-snap-X" in fake.volumes()


def test_auto_picks_lvm_off_btrfs_and_cleanup_finds_it_again(fake: Fake) -> None:
    r = fake.run(create(fake, "auto"))
    assert r.returncode == 0, r.stderr
    assert fssnap.parse(r.stdout.encode()).kind == "lvm"
    for _ in range(2):
        r = fake.run(fssnap.cleanup("lvm", f"{fake.dir}/srv/app", "T1", mount_base=f"{fake.dir}/run"))
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert fake.volumes() == ["vg0/data"] and fake.mounts() == []


def test_probe_reports_lvm_and_none(fake: Fake) -> None:
    probe = fssnap.probe(f"{fake.dir}/srv/app")
    assert fssnap.parse_probe(fake.run(probe).stdout.encode()) == fssnap.Probe("xfs", "lvm")
    r = fake.run(probe, FAKE_VG="", FAKE_FSTYPE="ext4")
    assert fssnap.parse_probe(r.stdout.encode()) == fssnap.Probe(
        "ext4", "none", "neither btrfs nor an LVM logical volume"
    )


# ---------------------------------------------------------------------------------- the Python side


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fssnap.create("btrfs", "srv/app", "t"), "absolute path"),
        (lambda: fssnap.create("btrfs", "/srv/app\n", "t"), "absolute path"),
        (lambda: fssnap.create("btrfs", "/srv/app", "a b"), "snapshot tag 'a b'"),
        (lambda: fssnap.create("btrfs", "/srv/app", "-rf"), "snapshot tag"),
        (lambda: fssnap.create("lvm", "/srv/app", "t", lvm_size="10%"), "like 2G, 512M or 10%ORIGIN"),
        (lambda: fssnap.remove("/srv/app"), "not a snapshot handle"),
        (lambda: fssnap.remove("btrfs:/srv/app"), "not a snapshot handle"),
        (lambda: fssnap.remove("lvm:vg0/data:/mnt"), "not a snapshot handle"),
        (lambda: fssnap.check_kind("zfs"), "snapshot must be one of none, btrfs, lvm, auto, not 'zfs'"),
    ],
)
def test_bad_arguments_are_config_errors(call: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        call()  # type: ignore[operator]
    assert "\n" not in str(e.value)


def test_values_reach_the_script_quoted() -> None:
    script = fssnap.create("btrfs", "/srv/it's here", "t1").script
    assert script.startswith("path='/srv/it'\"'\"'s here'\ntag=t1\n")
    assert fssnap.cleanup("none", "/srv", "t") == Command("true")
    assert fssnap.create("auto", "/srv", "t").user is None  # root: the engine must not switch user


def test_parse_needs_kind_root_and_handle() -> None:
    with pytest.raises(ValueError):
        fssnap.parse(b"kind=btrfs\nroot=/x\n")
    assert fssnap.parse(b"noise\nkind=btrfs\nroot=/a b\nhandle=btrfs:/.recipes-snap-t\n") == fssnap.Snapshot(
        "btrfs", "/a b", "btrfs:/.recipes-snap-t"
    )


def test_describe_names_the_commands_and_the_tar_flag() -> None:
    lines = fssnap.describe("btrfs", "/srv/app")
    assert lines[0].startswith("btrfs: read-only snapshot of the subvolume holding /srv/app")
    assert any("--no-check-device" in line for line in lines)
    assert any("guard" in line for line in lines)
    assert "lvcreate -s -L 5G" in " ".join(fssnap.describe("lvm", "/srv", lvm_size="5G"))
    auto = fssnap.describe("auto", "/srv")
    assert auto[1].startswith("btrfs:") and auto[2].startswith("lvm:")
    assert fssnap.describe("none", "/srv") == [
        "no filesystem snapshot: /srv is archived live, while the application is stopped"
    ]
