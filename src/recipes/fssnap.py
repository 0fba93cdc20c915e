"""Filesystem snapshots for a short quiesce: the commands that make, find and remove them.

A quiesce with a snapshot is ``stop app -> create() -> start app``; the archive then reads the
read-only snapshot at ``root`` while the application runs again, and ``remove(handle)`` (an undo,
also run by the host's dead-man guard) drops it. This module only builds shell commands; every
one runs as root on the host (``Command.user`` is None: log in as root or use a sudo host).

Snapshot names carry a tag chosen by the caller (one per run), so ``cleanup(kind, path, tag)``
can remove a snapshot even when ``create``'s output was lost (the controller died mid-create):

- btrfs: ``<dir>/.recipes-snap-<tag>``, a read-only snapshot of the subvolume ``S`` holding the
  path. ``<dir>`` is the directory holding ``S``, or ``S`` itself when ``S`` is a mount point
  (then the snapshot sits inside the live tree: archives must exclude ``SNAPSHOT_EXCLUDE``).
- LVM: logical volume ``<vg>/recipes-snap-<tag>``, mounted read-only on
  ``<mount_base>/recipes-snap-<tag>`` (``nouuid`` for xfs).
"""

from __future__ import annotations

import posixpath
import re
from typing import Literal, get_args

import attrs

from recipes.errors import ConfigError
from recipes.hosts import key_values
from recipes.model import Command, sh

Kind = Literal["none", "btrfs", "lvm", "auto"]
KINDS: tuple[Kind, ...] = get_args(Kind)

PREFIX = "recipes-snap-"
"""Name of an LVM snapshot volume and its mount point: ``recipes-snap-<tag>``."""
BTRFS_PREFIX = "." + PREFIX
"""Name of a btrfs snapshot: ``.recipes-snap-<tag>`` (hidden, next to or inside the subvolume)."""
SNAPSHOT_EXCLUDE = BTRFS_PREFIX + "*"
"""An ``Archive.excludes`` entry for archives of a snapshot's root: when the subvolume is a mount
point and the path is the whole subvolume, other runs' snapshots show there as empty directories."""
TAR_SNAPSHOT_FLAGS = ("--no-check-device",)
"""GNU tar flags for archives read from a snapshot: every btrfs snapshot (and every LVM snapshot
mount) has a device number of its own, so listed-incremental would otherwise re-dump every file."""
DEFAULT_LVM_SIZE = "10%ORIGIN"
"""Copy-on-write space of an LVM snapshot; it must hold every block the app writes meanwhile."""
DEFAULT_MOUNT_BASE = "/run"

_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_LVM_SIZE = re.compile(r"\d+(\.\d+)?[bBsSkKmMgGtTpPeE]?|\d+%(ORIGIN|FREE|VG|PVS)")
_LVM_NAME = r"[A-Za-z0-9+_.-]+"
_LVM_HANDLE = re.compile(rf"lvm:({_LVM_NAME})/({re.escape(PREFIX)}[A-Za-z0-9+_.-]+):(/.*)")


@attrs.frozen
class Snapshot:
    """What ``create`` printed: where the archive reads and what ``remove`` needs."""

    kind: Literal["btrfs", "lvm"]
    root: str
    """The directory inside the snapshot that corresponds to the path."""
    handle: str
    """Give to ``remove``: ``btrfs:<snapshot>`` or ``lvm:<vg>/<lv>:<mount point>``."""
    source: str = ""
    """The btrfs subvolume or the LVM volume (``vg/lv``) that was snapshotted."""
    device: str = ""
    """The LVM snapshot's block device (empty for btrfs)."""


@attrs.frozen
class Probe:
    """What ``probe`` printed: the filesystem type and which snapshot kind would work."""

    fs: str
    snapshot: Literal["btrfs", "lvm", "none"]
    reason: str = ""


def check_kind(value: object, where: str = "snapshot") -> Kind:
    """A parameter value as a Kind, or ConfigError naming the choices."""
    for kind in KINDS:
        if value == kind:
            return kind
    raise ConfigError(f"{where} must be one of {', '.join(KINDS)}, not {value!r}")


def _path(path: str) -> str:
    if not path.startswith("/") or any(c in path for c in "\n\r\0"):
        raise ConfigError(f"snapshot path must be an absolute path on one line, not {path!r}")
    return posixpath.normpath(path).replace("//", "/")


def _tag(tag: str) -> str:
    if not _TAG.fullmatch(tag):
        raise ConfigError(
            f"snapshot tag {tag!r} must be 1-64 letters, digits or _.+- (not starting with one)"
        )
    return tag


def _size(size: str) -> tuple[str, str]:
    if not _LVM_SIZE.fullmatch(size):
        raise ConfigError(f"LVM snapshot size {size!r} must be like 2G, 512M or 10%ORIGIN (lvcreate -L / -l)")
    return ("-l" if "%" in size else "-L"), size


# Shell pieces. Values reach them as variables set at the top of each script (shell-quoted), so the
# bodies are fixed text. Every failure is one stderr line from ``fail``; tools' own messages are
# captured and folded into it. The EXIT trap removes only what this very run made.

_PRELUDE = r"""
fail() { printf 'fssnap: %s\n' "$*" >&2; exit 1; }
oneline() { printf '%s' "$1" | tr '\n' ' ' | sed 's/  */ /g; s/^ //; s/ $//' | cut -c1-300; }
fstype() { findmnt -n -o FSTYPE -T "$1" 2>/dev/null | head -n1 | grep . || stat -f -c %T -- "$1" 2>/dev/null || echo unknown; }
need_root() {
  [ "$(id -u)" = 0 ] || fail "snapshot: must run as root (not $(n=$(id -un 2>/dev/null) || n=$(id -u); echo "$n")): log in as root or set sudo for the host"
}
resolve() {
  [ -e "$path" ] || fail "snapshot: $path does not exist: check the path parameter"
  path=$(realpath -e -- "$path") || fail "snapshot: cannot resolve $path: check the path parameter"
}
is_btrfs() { [ "$(stat -f -c %T -- "$path" 2>/dev/null)" = btrfs ]; }
is_lv() {
  command -v lvs >/dev/null 2>&1 || return 1
  src=$(findmnt -n -o SOURCE -T "$path" 2>/dev/null | head -n1) || return 1
  [ -n "$src" ] && lvs --noheadings -o vg_name,lv_name -- "$src" >/dev/null 2>&1
}
"""  # noqa: E501 (shell: one-line messages)

_BTRFS = r"""
btrfs_locate() {
  command -v btrfs >/dev/null 2>&1 || fail "snapshot=btrfs: the btrfs command is missing on this host: install btrfs-progs or set snapshot=none"
  sub=$path; [ -d "$sub" ] || sub=$(dirname -- "$sub")
  while :; do
    [ "$(stat -f -c %T -- "$sub" 2>/dev/null)" = btrfs ] || fail "snapshot=btrfs: $path is on $(fstype "$sub"), not btrfs: set snapshot=none (or lvm/auto), or move the data onto a btrfs subvolume"
    [ "$(stat -c %i -- "$sub")" = 256 ] && break
    mountpoint -q -- "$sub" && fail "snapshot=btrfs: $path is under $sub, a bind mount of a btrfs directory, not of a subvolume: snapshot the subvolume's own mount or set snapshot=none"
    sub=$(dirname -- "$sub")
  done
  if [ "$sub" = / ] || mountpoint -q -- "$sub"; then dir=$sub; else dir=$(dirname -- "$sub"); fi
  snap=${dir%/}/.recipes-snap-$tag
}
btrfs_nested() {
  # A snapshot leaves nested subvolumes empty: refuse rather than archive an empty directory.
  top=$(btrfs subvolume show -- "$sub" 2>&1 | head -n1)
  case $top in ""|ERROR*|*" "*) fail "snapshot=btrfs: btrfs subvolume show $sub printed no path: $(oneline "$top")" ;; esac
  kids=$(btrfs subvolume list -o -- "$sub" 2>&1) || fail "snapshot=btrfs: cannot list subvolumes under $sub: $(oneline "$kids")"
  while IFS= read -r line; do
    case $line in *" path "*) ;; *) continue ;; esac
    rel=${line#* path }; rel=${rel#"<FS_TREE>/"}
    [ "$top" = / ] || rel=${rel#"$top"/}
    live=${sub%/}/$rel
    case ${live##*/} in .recipes-snap-*) continue ;; esac
    case $live in "$path"/*) fail "snapshot=btrfs: $path holds the nested subvolume $live, which a snapshot of $sub leaves empty: set snapshot=none or archive $live as a path of its own" ;; esac
  done <<EOF
$kids
EOF
}
btrfs_drop() {  # $1: a snapshot this module made; gone already is fine
  [ -e "$1" ] || return 0
  [ "$(stat -f -c %T -- "$1" 2>/dev/null)" = btrfs ] && [ "$(stat -c %i -- "$1")" = 256 ] || fail "snapshot: refusing to remove $1: it is not a btrfs subvolume: look at it and remove it by hand"
  ro=$(btrfs property get -ts "$1" ro 2>&1)
  [ "$ro" = ro=true ] || fail "snapshot: refusing to remove $1: it is not a read-only snapshot ($(oneline "$ro")): look at it and remove it by hand"
  out=$(btrfs subvolume delete -- "$1" 2>&1) || { [ -e "$1" ] || return 0; fail "snapshot: btrfs subvolume delete $1 failed: $(oneline "$out")"; }
}
btrfs_create() {
  btrfs_locate
  btrfs_nested
  [ -e "$snap" ] && fail "snapshot=btrfs: $snap already exists (left by an earlier run with tag $tag?): remove it with 'btrfs subvolume delete $snap' or use another tag"
  made_snap=$snap
  out=$(btrfs subvolume snapshot -r -- "$sub" "$snap" 2>&1) || fail "snapshot=btrfs: btrfs subvolume snapshot -r $sub $snap failed: $(oneline "$out")"
  [ "$(btrfs property get -ts "$snap" ro 2>&1)" = ro=true ] || fail "snapshot=btrfs: $snap is not read-only after snapshot -r: check btrfs-progs"
  if [ "$sub" = / ]; then rel=$path; else rel=${path#"$sub"}; fi
  root=$snap$rel
  [ -e "$root" ] || fail "snapshot=btrfs: $root is missing in the new snapshot of $sub: check that $path is not a mount of its own"
  printf 'kind=btrfs\nroot=%s\nhandle=btrfs:%s\nsource=%s\n' "$root" "$snap" "$sub"
  made_snap=
}
"""  # noqa: E501 (shell: one-line messages)

_LVM = r"""
lvm_locate() {
  command -v lvs >/dev/null 2>&1 && command -v lvcreate >/dev/null 2>&1 || fail "snapshot=lvm: LVM tools (lvs, lvcreate) are missing on this host: install lvm2 or set snapshot=none"
  line=$(findmnt -n -o SOURCE,FSTYPE,TARGET -T "$path" 2>/dev/null | head -n1)
  [ -n "$line" ] || fail "snapshot=lvm: findmnt finds no mount holding $path: check that util-linux is installed"
  read -r src fst target <<EOF
$line
EOF
  names=$(lvs --noheadings -o vg_name,lv_name -- "$src" 2>/dev/null) || names=
  read -r vg lv <<EOF
$names
EOF
  [ -n "$vg" ] && [ -n "$lv" ] || fail "snapshot=lvm: $path is on $src ($fst), not an LVM logical volume: set snapshot=none (or btrfs/auto)"
  lvsnap=recipes-snap-$tag
  mnt=${mount_base%/}/recipes-snap-$tag
}
lvm_drop() {  # $1: vg/lv of a snapshot this module made, $2: its mount point; gone already is fine
  if mountpoint -q -- "$2"; then
    out=$(umount -- "$2" 2>&1) || { mountpoint -q -- "$2" && fail "snapshot: cannot unmount $2: $(oneline "$out"): stop what reads it (fuser -m $2) and run again"; }
  fi
  [ ! -d "$2" ] || rmdir -- "$2" 2>/dev/null || true
  lvs -- "$1" >/dev/null 2>&1 || return 0
  origin=$(lvs --noheadings -o origin -- "$1" 2>/dev/null | tr -d ' ')
  [ -n "$origin" ] || fail "snapshot: refusing to remove $1: it is not a snapshot volume: look at it and remove it by hand"
  out=$(lvremove -f -- "$1" 2>&1) || { lvs -- "$1" >/dev/null 2>&1 || return 0; fail "snapshot: lvremove $1 failed: $(oneline "$out")"; }
}
lvm_create() {
  lvm_locate
  lvs -- "$vg/$lvsnap" >/dev/null 2>&1 && fail "snapshot=lvm: $vg/$lvsnap already exists (left by an earlier run with tag $tag?): remove it with 'lvremove $vg/$lvsnap' or use another tag"
  mountpoint -q -- "$mnt" && fail "snapshot=lvm: $mnt is already a mount point (left by an earlier run with tag $tag?): unmount it or use another tag"
  made_lv=$vg/$lvsnap
  out=$(lvcreate -q -y -s -n "$lvsnap" "$size_flag" "$size" -- "$vg/$lv" 2>&1) || fail "snapshot=lvm: lvcreate -s $size_flag $size $vg/$lv failed: $(oneline "$out"): free space in $vg or set a smaller size"
  made_mnt=$mnt
  mkdir -p -m 700 -- "$mnt" || fail "snapshot=lvm: cannot make the mount point $mnt"
  opts=ro; [ "$fst" = xfs ] && opts=ro,nouuid
  out=$(mount -t "$fst" -o "$opts" -- "/dev/$vg/$lvsnap" "$mnt" 2>&1) || fail "snapshot=lvm: mount -o $opts /dev/$vg/$lvsnap $mnt failed: $(oneline "$out")"
  if [ "$target" = / ]; then rel=$path; else rel=${path#"$target"}; fi
  root=${mnt%/}$rel
  printf 'kind=lvm\nroot=%s\nhandle=lvm:%s:%s\nsource=%s\ndevice=%s\n' "$root" "$vg/$lvsnap" "$mnt" "$vg/$lv" "/dev/$vg/$lvsnap"
  made_lv= made_mnt=
}
"""  # noqa: E501 (shell: one-line messages)

_CLEANUP = r"""
made_snap= made_lv= made_mnt=
cleanup() {
  # Made by this run (it did not exist before), so no read-only check: just a subvolume.
  if [ -n "$made_snap" ] && [ "$(stat -c %i -- "$made_snap" 2>/dev/null)" = 256 ]; then
    btrfs subvolume delete -- "$made_snap" >/dev/null 2>&1
  fi
  [ -z "$made_lv$made_mnt" ] || (lvm_drop "$made_lv" "${made_mnt:-/nonexistent}") 2>/dev/null
  return 0
}
trap 'st=$?; cleanup; exit $st' EXIT
trap 'exit 1' HUP INT TERM PIPE
"""

_AUTO = r"""
auto_create() {
  if is_btrfs; then btrfs_create
  elif is_lv; then lvm_create
  else fail "snapshot=auto: $path is on $(fstype "$path"), neither btrfs nor an LVM logical volume: set snapshot=none (the application then stays stopped while it is archived)"
  fi
}
"""  # noqa: E501 (shell: one-line messages)


def _vars(**values: str) -> str:
    return "".join(f"{name}={sh(value)}\n" for name, value in values.items())


def create(
    kind: Kind,
    path: str,
    tag: str,
    *,
    lvm_size: str = DEFAULT_LVM_SIZE,
    mount_base: str = DEFAULT_MOUNT_BASE,
) -> Command:
    """One root script that snapshots the filesystem holding ``path`` read-only and prints
    ``kind=``, ``root=``, ``handle=``, ``source=`` (and ``device=`` for LVM) lines; see ``parse``.

    On failure it exits 1 with one ``fssnap: ...`` line on stderr and leaves nothing behind.
    """
    if kind == "none":
        raise ValueError("create() needs a snapshot kind other than none")
    flag, size = _size(lvm_size)
    head = _vars(path=_path(path), tag=_tag(tag), size_flag=flag, size=size, mount_base=_path(mount_base))
    main = {"btrfs": "btrfs_create", "lvm": "lvm_create", "auto": "auto_create"}[check_kind(kind)]
    body = _PRELUDE + _BTRFS + _LVM + _AUTO + _CLEANUP + f"need_root\nresolve\n{main}\n"
    return Command(head + body)


def cleanup(kind: Kind, path: str, tag: str, *, mount_base: str = DEFAULT_MOUNT_BASE) -> Command:
    """Remove the snapshot ``create(kind, path, tag)`` makes, found again from its inputs.

    For an undo registered before ``create`` runs (its output may never arrive). Exit 0 when
    there is nothing to remove, including when ``path`` is not on a snapshot-capable filesystem.
    """
    if kind == "none":
        return Command("true")
    head = _vars(path=_path(path), tag=_tag(tag), mount_base=_path(mount_base))
    by_kind = {
        "btrfs": 'btrfs_locate; btrfs_drop "$snap"',
        "lvm": 'lvm_locate; lvm_drop "$vg/$lvsnap" "$mnt"',
        "auto": 'if is_btrfs; then btrfs_locate; btrfs_drop "$snap"; '
        'elif is_lv; then lvm_locate; lvm_drop "$vg/$lvsnap" "$mnt"; fi',
    }[check_kind(kind)]
    gone = 'need_root\n[ -e "$path" ] || exit 0\npath=$(realpath -e -- "$path")\n'
    if kind != "auto":
        probe_ok = "is_btrfs" if kind == "btrfs" else "is_lv"
        gone += f"{probe_ok} || exit 0\n"
    return Command(head + _PRELUDE + _BTRFS + _LVM + gone + by_kind + "\n")


def remove(handle: str) -> Command:
    """Remove what ``create`` made, from its ``handle``; exit 0 when it is already gone.

    It refuses (exit 1, one line) to remove anything that is not a read-only btrfs snapshot or
    an LVM snapshot volume, so a wrong handle cannot delete live data.
    """
    if handle.startswith("btrfs:"):
        snap = _path(handle[len("btrfs:") :])
        if not posixpath.basename(snap).startswith(BTRFS_PREFIX):
            raise ConfigError(f"not a snapshot handle of recipes: {handle!r}")
        return Command(_PRELUDE + _BTRFS + f"need_root\nbtrfs_drop {sh(snap)}\n")
    m = _LVM_HANDLE.fullmatch(handle)
    if m is None:
        raise ConfigError(f"not a snapshot handle of recipes: {handle!r}")
    volume, mnt = f"{m[1]}/{m[2]}", _path(m[3])
    return Command(_PRELUDE + _LVM + f"need_root\nlvm_drop {sh(volume)} {sh(mnt)}\n")


_PROBE = r"""
resolve
echo "fs=$(fstype "$path")"
if is_btrfs; then
  if command -v btrfs >/dev/null 2>&1; then echo snapshot=btrfs; else echo snapshot=none; echo "reason=btrfs without the btrfs command (install btrfs-progs)"; fi
elif is_lv; then echo snapshot=lvm
else echo snapshot=none; echo "reason=neither btrfs nor an LVM logical volume"
fi
"""  # noqa: E501 (shell: one-line messages)


def probe(path: str) -> Command:
    """A command printing ``fs=<type>``, ``snapshot=btrfs|lvm|none`` and maybe ``reason=``.

    Run it as root like the others: ``lvs`` sees no volumes for other users.
    """
    return Command(_vars(path=_path(path)) + _PRELUDE + _PROBE)


def parse(output: bytes) -> Snapshot:
    """``create``'s stdout as a Snapshot; ValueError if a line is missing (a bug, not an input)."""
    kv = key_values(output)
    kind = kv.get("kind")
    if kind not in ("btrfs", "lvm") or not kv.get("root") or not kv.get("handle"):
        raise ValueError(f"snapshot create printed no kind/root/handle: {output[:200]!r}")
    made: Literal["btrfs", "lvm"] = "btrfs" if kind == "btrfs" else "lvm"
    return Snapshot(made, kv["root"], kv["handle"], kv.get("source", ""), kv.get("device", ""))


def parse_probe(output: bytes) -> Probe:
    """``probe``'s stdout as a Probe."""
    kv = key_values(output)
    snap = kv.get("snapshot")
    kind: Literal["btrfs", "lvm", "none"] = "btrfs" if snap == "btrfs" else "lvm" if snap == "lvm" else "none"
    return Probe(kv.get("fs", "unknown"), kind, kv.get("reason", ""))


def describe(
    kind: Kind, path: str, *, lvm_size: str = DEFAULT_LVM_SIZE, mount_base: str = DEFAULT_MOUNT_BASE
) -> list[str]:
    """Lines for plans and runbooks: what the snapshot is, what reads it, what removes it."""
    kind, path = check_kind(kind), _path(path)
    if kind == "none":
        return [f"no filesystem snapshot: {path} is archived live, while the application is stopped"]
    btrfs = (
        f"btrfs: read-only snapshot of the subvolume holding {path} "
        f"(btrfs subvolume snapshot -r SUBVOL DIR/{BTRFS_PREFIX}<tag>, DIR beside SUBVOL or, "
        "for a mounted subvolume, inside it)"
    )
    lvm = (
        f"lvm: snapshot volume VG/{PREFIX}<tag> of the logical volume holding {path} "
        f"(lvcreate -s {' '.join(_size(lvm_size))}), mounted read-only on "
        f"{_path(mount_base).rstrip('/')}/{PREFIX}<tag>"
    )
    first = {
        "btrfs": [btrfs],
        "lvm": [lvm],
        "auto": [f"snapshot of {path}, btrfs or LVM by what it is on (fails if neither):", btrfs, lvm],
    }[kind]
    return [
        *first,
        "taken while the application is stopped; the application starts again right after",
        f"the archive reads {path} inside the snapshot, with tar {' '.join(TAR_SNAPSHOT_FLAGS)}",
        "the snapshot is removed after the archive, on failure too, and by the host's guard "
        "if the controller is lost (btrfs subvolume delete / umount + lvremove)",
    ]
