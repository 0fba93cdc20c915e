"""`recipes prune` with the real CLI on a local repository: real chains of the django recipe over
SSH, [retention] applied; a dry run changes nothing, prune removes exactly what it listed,
never a parent of a kept snapshot nor an untrusted one, clears a killed run's debris, and the
latest snapshot still restores."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import attrs

from recipes import locks
from tests.integration.django_site import comparable, seed_tree
from tests.integration.world import World


def run(world: World, root: str, *extra: str) -> dict[str, object]:
    out = world.cli("--json", "run", "django", "--host", "source", "--set", f"root={root}", *extra)
    assert out.returncode == 0, out.stderr
    manifest: dict[str, object] = json.loads(out.stdout)
    return manifest


def tree(repo: Path) -> dict[str, int]:
    """Every file in the repository but the locks, with its size."""
    return {
        str(p.relative_to(repo)): p.stat().st_size
        for p in repo.rglob("*")
        if p.is_file() and p.relative_to(repo).parts[0] != "locks"
    }


def listed(world: World) -> list[str]:
    """The snapshot directories `snapshots` lists (those with a manifest), by where they lie."""
    out = json.loads(world.cli("--json", "snapshots", "django", check=True).stdout)
    here = world.repo / "django" / "source"
    dirs = sorted(p.name for p in here.iterdir() if (p / "manifest.json").exists())
    assert len(out) == len(dirs)  # damaged ones are listed as such
    return dirs


def set_retention(world: World, text: str) -> None:
    base = world.config.read_text().split("\n[retention]\n")[0]
    world.config.write_text(f"{base}\n[retention]\n{text}\n")


def prune(world: World, *extra: str) -> list[dict[str, Any]]:
    out = world.cli("--json", "prune", *extra)
    assert out.returncode == 0, out.stderr
    reports: list[dict[str, Any]] = json.loads(out.stdout)
    return reports


def gone(reports: list[dict[str, Any]]) -> set[str]:
    return {str(s["snapshot"]) for r in reports for s in r["snapshots"] if not s["keep"]}


def test_prune_removes_what_retention_lets_go_and_never_a_kept_chain(
    world: World, site: tuple[str, Path, Path]
) -> None:
    root, src, dst = site
    seed_tree(src)
    ids: list[str] = []
    for step in range(3):  # three chains: a full and one incremental each
        full = run(world, root, "--full")
        (src / "etc/hostname").write_bytes(f"web-{step}\n".encode())
        incr = run(world, root)
        assert (incr["level"], incr["parent"]) == (1, full["snapshot"])
        ids += [str(full["snapshot"]), str(incr["snapshot"])]
    a, a1, b, b1, c, c1 = ids
    here = world.repo / "django" / "source"

    # A killed run's leftovers (objects and the signature, written before the manifest), two
    # days old, and a run that may still be writing (no manifest, an hour old): only the
    # first is debris.
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).strftime("%Y%m%dT%H%M%SZ")
    young = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y%m%dT%H%M%SZ")
    killed, running = here / f"{old}-dead01", here / f"{young}-a11ce1"
    shutil.copytree(here / c1, killed)
    (killed / "manifest.json").unlink()
    shutil.copytree(here / c1, running)
    (running / "manifest.json").unlink()
    (here / "notes").mkdir()  # not a snapshot id: nothing of ours, never touched
    damaged = here / f"{old}-bad0bad"  # a manifest that cannot be read: never deleted
    shutil.copytree(here / a1, damaged)
    (damaged / "manifest.json").write_text("{not json")
    # A copy of a snapshot under another id: its manifest names another place, so it is
    # untrusted, and prune must leave it alone whatever the rules say.
    moved = f"{old}-f0f0f0"
    shutil.copytree(here / a, here / moved)

    # duply's rules: incrementals only for the newest two fulls.
    set_retention(world, 'max_age = "2Y"\nmax_fulls_with_incrs = 2')
    before = tree(world.repo)
    dry = prune(world, "--dry-run")
    assert tree(world.repo) == before  # a dry run changes nothing
    assert gone(dry) == {a1}
    (report,) = dry
    assert report["debris"] == [f"{old}-dead01"]
    reasons = {s["snapshot"]: s["reason"] for s in report["snapshots"]}
    assert reasons[a1].startswith(f"max_fulls_with_incrs 2: an incremental of full {a}")
    assert reasons[moved].startswith("left alone: untrusted")
    assert report["damaged"][0].startswith(f"{damaged.name}: left alone: its manifest cannot be read")
    text = world.cli("prune", "--dry-run", check=True).stdout
    assert f"would remove {a1}" in text and "would remove debris" in text

    done = prune(world)
    assert gone(done) == gone(dry)  # exactly what the dry run listed
    assert sorted(listed(world)) == sorted([a, b, b1, c, c1, moved, damaged.name])
    assert not (here / a1).exists() and not killed.exists()
    assert running.exists()  # too young to be debris

    # restic's keeps alone: keep_last 1 keeps c1, and c1's chain keeps its full c.
    set_retention(world, 'max_age = "0s"\nmax_fulls_with_incrs = 0\nkeep_last = 1')
    done = prune(world, "django", "--host", "source")
    assert gone(done) == {a, b, b1}
    reasons = {s["snapshot"]: s["reason"] for s in done[0]["snapshots"]}
    assert reasons[c] == f"needed by kept snapshot {c1} (its chain)"
    assert sorted(listed(world)) == sorted([c, c1, moved, damaged.name])
    assert sorted(p.name for p in here.iterdir()) == sorted(
        [c, c1, moved, running.name, "notes", damaged.name]
    )

    # The latest still restores, over its whole chain.
    world.cli(
        "restore", "django", "--host", "target", "--from", "source", "--set", f"root={root}", check=True
    )
    assert comparable(dst) == comparable(src)

    # No rule removes anything more; a second prune finds nothing to do.
    assert gone(prune(world)) == set()


def test_prune_waits_for_nobody_on_a_dry_run_and_refuses_while_a_run_holds_the_lock(
    world: World, site: tuple[str, Path, Path]
) -> None:
    root, src, _ = site
    seed_tree(src)
    first = run(world, root)
    run(world, root, "--full")
    set_retention(world, "max_fulls_with_incrs = 1\nkeep_last = 1")
    lock = world.repo / "locks" / "django@source"
    now = dt.datetime.now(dt.UTC)
    held = attrs.evolve(locks.Lease.new("django", "source", "run", now), controller="elsewhere", machine="x")
    lock.parent.mkdir(exist_ok=True)
    lock.write_bytes(held.dumps())
    before = tree(world.repo)
    assert world.cli("prune", "--dry-run").returncode == 0
    out = world.cli("prune")
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("recipes: error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "django@source is locked by " in out.stderr
    assert tree(world.repo) == before
    assert str(first["snapshot"]) in listed(world)
