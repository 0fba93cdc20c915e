"""``recipes copy``: snapshots with their chains to another repository (seed 002's offline disk),
verified on arrival; again skips what is there; a copy that fails leaves nothing listed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import attrs

from tests.integration.django_site import SQLITE_DB, comparable, seed_tree, sqlite_rows
from tests.integration.world import World


def _two_snapshots(world: World, root: str, src: Path) -> list[str]:
    sets = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    ids = [json.loads(world.cli("--json", "run", "django", "--host", "source", *sets, check=True).stdout)]
    (src / "etc/hostname").write_text("copied\n")
    ids.append(json.loads(world.cli("--json", "run", "django", "--host", "source", *sets, check=True).stdout))
    return [str(m["snapshot"]) for m in ids]


def _flip(path: Path) -> None:
    """Bit rot: one byte in the middle of ``path`` flipped."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _copied(world: World, site: tuple[str, Path, Path], tmp_path: Path) -> tuple[str, str, Path]:
    """Two snapshots (a full and an incremental) copied to an offline disk: (full, incr, disk)."""
    root, src, _ = site
    seed_tree(src)
    full, incr = _two_snapshots(world, root, src)
    offline = tmp_path / "offline-disk"
    assert world.cli("copy", "--all", "--to", str(offline)).returncode == 0
    return full, incr, offline


def test_copy_an_incremental_brings_its_chain_and_restores_from_the_copy(
    world: World, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    root, src, dst = site
    seed_tree(src)
    full, incr = _two_snapshots(world, root, src)
    offline = tmp_path / "offline-disk"
    out = world.cli("--json", "copy", incr[:20], "--to", str(offline))
    assert out.returncode == 0, out.stderr
    assert [(c["snapshot"], c["outcome"]) for c in json.loads(out.stdout)] == [
        (full, "copied"),
        (incr, "copied"),
    ]
    assert world.cli("verify", "--all", "--repo", str(offline)).returncode == 0
    again = world.cli("--json", "copy", "--all", "--to", str(offline))
    assert [c["outcome"] for c in json.loads(again.stdout)] == ["skipped", "skipped"]
    shutil.rmtree(world.repo)  # the online repository is gone: restore from the disk
    restored = world.cli(
        "restore",
        "django",
        "--host",
        "target",
        "--from",
        "source",
        "--repo",
        str(offline),
        "--set",
        f"root={root}",
    )
    assert restored.returncode == 0, restored.stderr
    assert comparable(dst) == comparable(src)
    assert sqlite_rows(dst / SQLITE_DB.lstrip("/")) == sqlite_rows(src / SQLITE_DB.lstrip("/"))


def test_a_damaged_object_fails_the_copy_and_nothing_is_listed_there(
    world: World, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    root, src, _ = site
    seed_tree(src)
    full, incr = _two_snapshots(world, root, src)
    _flip(world.repo / "django/source" / incr / "files.tar.zst.age")
    offline = tmp_path / "offline-disk"
    bad = world.cli("copy", "--all", "--to", str(offline))
    assert bad.returncode == 3, bad.stderr
    assert f"files.tar.zst.age of snapshot {incr}" in bad.stderr.strip().splitlines()[-1]
    listed = json.loads(world.cli("--json", "snapshots", "--repo", str(offline), check=True).stdout)
    assert [s["snapshot"] for s in listed] == [full]  # the good full arrived; the bad one is not listed
    assert not (offline / "django/source" / incr).exists()


def _resign_as(world: World, folder: Path, snapshot: str) -> None:
    """Make the snapshot in ``folder`` a validly signed one with the id ``snapshot`` (its folder
    renamed): another snapshot that happens to have the same id as one elsewhere."""
    from recipes import manifest as mf
    from recipes import signing

    m = attrs.evolve(mf.loads((folder / "manifest.json").read_text()), snapshot=snapshot)
    moved = folder.parent / snapshot
    folder.rename(moved)
    text = mf.dumps(m).encode()
    key = signing.load_signing_key(str(world.signing_key))
    (moved / "manifest.sig").write_bytes(key.sign(text, "recipes-manifest"))
    (moved / "manifest.json").write_bytes(text)


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_different_snapshot_under_the_same_id_at_the_destination_is_refused_not_overwritten(
    world: World, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    root, src, _ = site
    seed_tree(src)
    sets = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    ours = json.loads(world.cli("--json", "run", "django", "--host", "source", *sets, check=True).stdout)
    (src / "etc/hostname").write_text("theirs\n")
    other = tmp_path / "other-repo"
    again = ["--json", "run", "django", "--host", "source", "--repo", str(other), *sets]
    theirs = json.loads(world.cli(*again, check=True).stdout)
    _resign_as(world, other / "django/source" / theirs["snapshot"], ours["snapshot"])
    held = other / "django/source" / ours["snapshot"]
    before = _digests(held)
    assert world.cli("verify", "--all", "--repo", str(other)).returncode == 0
    out = world.cli("copy", "--all", "--to", str(other))
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"recipes: error: {held} already holds a different snapshot {ours['snapshot']}")
    assert "nothing was written there; move that folder away" in last
    assert _digests(held) == before  # the destination's snapshot is untouched
    assert world.cli("verify", "--all", "--repo", str(other)).returncode == 0


def test_copying_again_over_a_damaged_copy_repairs_only_what_is_damaged(
    world: World, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    full, _incr, offline = _copied(world, site, tmp_path)
    # bit rot on the disk in one object, in the online repository in the other
    _flip(offline / "django/source" / full / "files.snar.zst.age")
    _flip(world.repo / "django/source" / full / "files.tar.zst.age")
    again = world.cli("--json", "copy", "--all", "--to", str(offline))
    assert again.returncode == 0, again.stderr
    assert [c["outcome"] for c in json.loads(again.stdout)] == ["copied", "skipped"]
    assert world.cli("verify", "--all", "--repo", str(offline)).returncode == 0


def test_a_repair_that_fails_keeps_what_was_good_and_lists_the_snapshot_as_before(
    world: World, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    """The same object damaged on the disk and in the online repository: the repair cannot
    succeed (exit 3), but it removes nothing: the archive that verified stays, the snapshot is
    listed as before, and the incremental built on it keeps its parent."""
    full, incr, offline = _copied(world, site, tmp_path)
    held = offline / "django/source" / full
    for base in (held, world.repo / "django/source" / full):
        _flip(base / "files.snar.zst.age")
    archive = hashlib.sha256((held / "files.tar.zst.age").read_bytes()).hexdigest()
    bad = world.cli("copy", "--all", "--to", str(offline))
    assert bad.returncode == 3, bad.stderr
    assert hashlib.sha256((held / "files.tar.zst.age").read_bytes()).hexdigest() == archive
    listed = json.loads(world.cli("--json", "snapshots", "--repo", str(offline), check=True).stdout)
    assert [s["snapshot"] for s in listed] == [full, incr]
    checked = world.cli("--json", "verify", "--all", "--repo", str(offline))
    assert checked.returncode == 3
    problems = [p for s in json.loads(checked.stdout)["snapshots"] for p in s["problems"]]
    assert [p["object"] for p in problems] == ["files.snar.zst.age"]  # only what was already bad


def test_a_destination_manifest_that_does_not_verify_is_repaired_not_refused(
    world: World, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    """A byte changed in the disk's manifest (its signature no longer verifies) is a damaged
    copy, not "a different snapshot": copying again puts the signed one back."""
    full, _incr, offline = _copied(world, site, tmp_path)
    manifest = offline / "django/source" / full / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"level": 0', '"level":  0'))
    assert world.cli("verify", "--all", "--repo", str(offline)).returncode == 3
    again = world.cli("--json", "copy", "--all", "--to", str(offline))
    assert again.returncode == 0, again.stderr
    assert [c["outcome"] for c in json.loads(again.stdout)] == ["copied", "skipped"]
    assert world.cli("verify", "--all", "--repo", str(offline)).returncode == 0


def test_a_failed_repair_under_an_unreadable_manifest_keeps_every_object_however_often_tried(
    world: World, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    """The disk's manifest cut short (not listed at all) and one object damaged on both sides:
    each copy fails (exit 3), and none removes the folder or its good archive (a folder already
    there is repaired in place, never deleted, listed or not)."""
    full, _incr, offline = _copied(world, site, tmp_path)
    held = offline / "django/source" / full
    for base in (held, world.repo / "django/source" / full):
        _flip(base / "files.snar.zst.age")
    (held / "manifest.json").write_bytes((held / "manifest.json").read_bytes()[:40])
    archive = hashlib.sha256((held / "files.tar.zst.age").read_bytes()).hexdigest()
    for attempt in (1, 2):
        bad = world.cli("copy", "--all", "--to", str(offline))
        assert bad.returncode == 3, (attempt, bad.stderr)
        assert hashlib.sha256((held / "files.tar.zst.age").read_bytes()).hexdigest() == archive, attempt
