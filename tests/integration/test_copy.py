"""``recipes copy``: snapshots with their chains to another repository (seed 002's offline disk),
verified on arrival; again skips what is there; a copy that fails leaves nothing listed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.integration.django_site import SQLITE_DB, comparable, seed_tree, sqlite_rows
from tests.integration.world import World


def _two_snapshots(world: World, root: str, src: Path) -> list[str]:
    sets = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    ids = [json.loads(world.cli("--json", "run", "django", "--host", "source", *sets, check=True).stdout)]
    (src / "etc/hostname").write_text("copied\n")
    ids.append(json.loads(world.cli("--json", "run", "django", "--host", "source", *sets, check=True).stdout))
    return [str(m["snapshot"]) for m in ids]


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
    obj = world.repo / "django/source" / incr / "files.tar.zst.age"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    obj.write_bytes(bytes(data))
    offline = tmp_path / "offline-disk"
    bad = world.cli("copy", "--all", "--to", str(offline))
    assert bad.returncode == 3, bad.stderr
    assert f"files.tar.zst.age of snapshot {incr}" in bad.stderr.strip().splitlines()[-1]
    listed = json.loads(world.cli("--json", "snapshots", "--repo", str(offline), check=True).stdout)
    assert [s["snapshot"] for s in listed] == [full]  # the good full arrived; the bad one is not listed
    assert not (offline / "django/source" / incr).exists()
