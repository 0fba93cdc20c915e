"""Incremental chains over real SSH: GNU tar listed-incremental on the source host, the chain
applied in order on the target host, deletions reproduced, and a full whenever the parent's tar
state cannot be had (nothing of it survives on the host)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from recipes import signing
from recipes.apps.django import DEFAULT_EXCLUDES
from tests.integration.django_site import SQLITE_DB, comparable, seed_tree, sqlite_rows
from tests.integration.world import World, fingerprint

STATE_DIRS = "/tmp/recipes-state.*"


def no_new_state_dirs(before: set[str], patience: float = 30.0) -> bool:
    """Whether every state dir made since ``before`` is gone. A leaked one stays forever; one of a
    concurrent run elsewhere on this machine (its /tmp is the hosts') goes when that run ends."""
    deadline = time.monotonic() + patience
    while set(glob.glob(STATE_DIRS)) - before:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def run(world: World, root: str, *extra: str) -> dict[str, object]:
    out = world.cli("--json", "run", "django", "--host", "source", "--set", f"root={root}", *extra)
    assert out.returncode == 0, out.stderr
    manifest: dict[str, object] = json.loads(out.stdout)
    return manifest


def stored(manifest: dict[str, object], name: str) -> int:
    objects = manifest["objects"]
    assert isinstance(objects, list)
    return int(next(o["size"] for o in objects if o["name"] == name))


def change(src: Path, step: int) -> None:
    """Edits, additions, deletions (a file and a whole directory), a rename, a chmod, and rows
    of the SQLite database changed (so each snapshot's dump differs)."""
    db = sqlite3.connect(src / SQLITE_DB.lstrip("/"))
    with db:
        if step == 1:
            db.execute("INSERT INTO polls_question(text, pub, img) VALUES ('added at 1', 1.0, x'00')")
        else:
            db.execute("DELETE FROM polls_question WHERE id <= 100")
    db.close()
    if step == 1:
        (src / "etc/hostname").write_bytes(b"web2\n")
        (src / "srv/data/new.bin").write_bytes(os.urandom(5000))
        (src / "home/django/notes with spaces.txt").unlink()
        shutil.rmtree(src / "opt/mysite/venv")
        (src / "home/django/.bashrc").rename(src / "home/django/.profile")
        (src / "root/.ssh/authorized_keys").chmod(0o400)
    else:
        (src / "etc/opt/mysite/settings.py").write_bytes(b"DEBUG = True\n")
        (src / "srv/data/new.bin").unlink()
        (src / "srv/later/deep").mkdir(parents=True)
        (src / "srv/later/deep/file.txt").write_bytes(b"later\n")


def test_chain_backs_up_changes_only_and_restores_every_point(
    world: World, site: tuple[str, Path, Path]
) -> None:
    root, src, dst = site
    seed_tree(src)
    before = set(glob.glob(STATE_DIRS))
    sets = ["--set", f'sqlite=["{SQLITE_DB}"]']
    full = run(world, root, *sets)
    assert (full["level"], full["parent"]) == (0, None)
    points = {full["snapshot"]: comparable(src)}
    rows = {full["snapshot"]: sqlite_rows(src / SQLITE_DB.lstrip("/"))}

    change(src, 1)
    one = run(world, root, *sets)
    assert (one["level"], one["parent"]) == (1, full["snapshot"])
    # only what changed (the SQLite file among it): the 300 kB random blob is not stored again
    assert stored(one, "files.tar") < stored(full, "files.tar") / 4
    points[one["snapshot"]] = comparable(src)
    rows[one["snapshot"]] = sqlite_rows(src / SQLITE_DB.lstrip("/"))

    change(src, 2)
    two = run(world, root, *sets)
    assert (two["level"], two["parent"]) == (2, one["snapshot"])
    points[two["snapshot"]] = comparable(src)
    rows[two["snapshot"]] = sqlite_rows(src / SQLITE_DB.lstrip("/"))
    assert len({len(r) for r in rows.values()}) == 3  # three different databases
    assert no_new_state_dirs(before)  # nothing of tar's state is left on the host

    listed = json.loads(world.cli("--json", "snapshots", "django", check=True).stdout)
    assert [(s["level"], s["parent"]) for s in listed] == [
        (0, None),
        (1, full["snapshot"]),
        (2, one["snapshot"]),
    ]

    # the latest: full + 2 incrementals, deletions and the rename reproduced, dumps from the latest
    world.cli(
        "restore",
        "django",
        "--host",
        "target",
        "--from",
        "source",
        "--set",
        f"root={root}",
        *sets,
        check=True,
    )
    assert comparable(dst) == points[two["snapshot"]]
    assert not (dst / "opt/mysite/venv").exists() and not (dst / "home/django/.bashrc").exists()
    assert sqlite_rows(dst / SQLITE_DB.lstrip("/")) == rows[two["snapshot"]]

    # a point in the middle of the chain: the full and the first incremental only, and that
    # snapshot's own dump; the restore is not told about the SQLite database: what a snapshot
    # holds comes from its manifest
    subprocess.run(["rm", "-rf", str(dst)], check=True)
    restore = world.cli(
        "--json",
        "restore",
        "django",
        "--host",
        "target",
        "--snapshot",
        str(one["snapshot"]),
        "--set",
        f"root={root}",
    )
    assert restore.returncode == 0, restore.stderr
    assert comparable(dst) == points[one["snapshot"]]
    assert (dst / "home/django").is_dir() and not (dst / "home/django/notes with spaces.txt").exists()
    assert sqlite_rows(dst / SQLITE_DB.lstrip("/")) == rows[one["snapshot"]]


def test_without_the_cached_state_the_identity_reads_it_and_without_both_a_full(
    world: World, site: tuple[str, Path, Path]
) -> None:
    root, src, _ = site
    seed_tree(src)
    full = run(world, root)
    (src / "etc/hostname").write_bytes(b"changed\n")

    shutil.rmtree(world.cache)  # a wiped cache, or another controller
    one = run(world, root)
    assert (one["level"], one["parent"]) == (1, full["snapshot"])  # state decrypted from the repository

    shutil.rmtree(world.cache)
    text = world.config.read_text()
    world.config.write_text("\n".join(line for line in text.splitlines() if "identity_file" not in line))
    blind = world.cli("--json", "run", "django", "--host", "source", "--set", f"root={root}")
    assert blind.returncode == 0, blind.stderr
    assert json.loads(blind.stdout)["level"] == 0
    assert "not in this controller's cache" in blind.stderr and "no identity file" in blind.stderr

    forced = run(world, root, "--full")  # the cache has the last state again, but --full wins
    assert (forced["level"], forced["parent"]) == (0, None)
    changed = run(world, root, "--set", 'extra_excludes=["/srv/data"]')
    assert changed["level"] == 0  # other parameters: a new chain


def test_a_broken_chain_fails_the_restore_in_one_line_and_the_next_backup_is_full(
    world: World, site: tuple[str, Path, Path]
) -> None:
    root, src, dst = site
    seed_tree(src)
    full = run(world, root)
    (src / "etc/hostname").write_bytes(b"changed\n")
    run(world, root)
    shutil.rmtree(world.repo / "django/source" / str(full["snapshot"]))

    restore = world.cli("restore", "django", "--host", "target", "--from", "source", "--set", f"root={root}")
    assert restore.returncode == 1
    assert f"needs its parent {full['snapshot']}" in restore.stderr
    lines = restore.stderr.splitlines()  # the config file in use, then one error line
    assert len(lines) == 2 and " recipes: config " in lines[0]  # timestamped: not a terminal
    assert not dst.exists()  # refused before anything was written

    again = run(world, root)
    assert again["level"] == 0


def test_break_glass_chain_with_age_zstd_tar_only(
    world: World, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    """docs/restore.md: each snapshot of the chain in order, incrementals with -G (deletions)."""
    root, src, _ = site
    seed_tree(src)
    run(world, root)
    change(src, 1)
    run(world, root)
    out = tmp_path / "plain"
    out.mkdir()
    snaps = " ".join(p.parent.name for p in sorted(world.repo.glob("django/source/*/manifest.json")))
    # the loop of docs/restore.md, as written there
    subprocess.run(
        f"repo={world.repo}/django/source\n"
        f"for snap in {snaps}; do\n"
        """  g=; grep -q '"level": 0' "$repo/$snap/manifest.json" || g=--listed-incremental=/dev/null\n"""
        f'  age -d -i {world.identity} "$repo/$snap"/files.tar.zst.age | zstd -d \\\n'
        f"    | tar -x $g --numeric-owner -p --acls --xattrs --xattrs-include='*' -C {out}\n"
        "done\n",
        shell=True,
        check=True,
        executable="/bin/bash",
    )
    assert fingerprint(out, DEFAULT_EXCLUDES) == fingerprint(src, DEFAULT_EXCLUDES)


def test_another_machine_behind_the_same_host_name_gets_a_full(
    world: World, site: tuple[str, Path, Path]
) -> None:
    root, src, _ = site
    seed_tree(src)
    full = run(world, root)
    versions = full["versions"]
    assert isinstance(versions, dict) and len(versions["host-id"]) == 16  # derived, not the machine-id
    assert Path("/etc/machine-id").read_text().strip() not in json.dumps(full)
    # the parent says it came from another machine (an alias re-pointed, a reinstall)
    path = world.repo / "django/source" / str(full["snapshot"]) / "manifest.json"
    data = json.loads(path.read_text())
    data["versions"]["host-id"] = "0" * 16
    path.write_text(json.dumps(data))
    # a genuine parent from that machine: signed like any snapshot
    key = signing.load_signing_key(str(world.signing_key))
    (path.parent / "manifest.sig").write_bytes(key.sign(path.read_bytes(), signing.MANIFEST_NAMESPACE))
    again = world.cli("--json", "run", "django", "--host", "source", "--set", f"root={root}")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["level"] == 0
    assert "/etc/machine-id differs" in again.stderr


def test_an_untrusted_latest_snapshot_means_a_full(world: World, site: tuple[str, Path, Path]) -> None:
    """A parent whose manifest no longer matches its signature (or has none) never carries an
    incremental: its tar state could be anything. The log says why."""
    root, src, _ = site
    seed_tree(src)
    full = run(world, root)
    path = world.repo / "django/source" / str(full["snapshot"]) / "manifest.json"
    path.write_text(path.read_text().replace('"level": 0', '"level": 0 '))
    again = world.cli("--json", "run", "django", "--host", "source", "--set", f"root={root}")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["level"] == 0
    assert f"full: the latest snapshot {full['snapshot']}: its signature does not verify" in again.stderr


def test_a_run_failing_before_its_steps_ends_the_early_control_session(
    world: World, site: tuple[str, Path, Path]
) -> None:
    """The control session starts while the repository is read; when the run fails there (here:
    the snapshot folder cannot be made), the session ends and its state dir goes at once, while
    the API caller still holds the host open (and the error, with its frames)."""
    root, src, _ = site
    seed_tree(src)
    blocker = world.repo / "django" / "source"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"not a folder\n")
    code = f"""
import glob, sys, time
from recipes import apps, config, engine, plan
from recipes.errors import RepositoryError
from recipes.hosts import open_host, run
from recipes.model import Command
from recipes.recipe import make_params
from recipes.repository import Repository

before = set(glob.glob({STATE_DIRS!r}))
cfg = config.load()
p = plan.backup_plan(apps.get("django"), make_params(apps.get("django"), {{"root": {root!r}}}, "t"), "source")
host = open_host(cfg.host("source"))
try:
    run(host, Command("true"))  # connected: the early session starts while the repository is read
    try:
        engine.backup(p, host, Repository(cfg.repository_url()), list(cfg.repository.recipients),
                      chaining=cfg.chaining(), signer=cfg.signer())
    except RepositoryError as exc:
        kept = exc  # a caller keeping the error keeps its frames: nothing may rely on their end
        print("failed:", exc)
    time.sleep(2)  # a session started late (not ended by the failure) would have its dir by now
    deadline = time.monotonic() + 20
    while set(glob.glob({STATE_DIRS!r})) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    print("left:", sorted(set(glob.glob({STATE_DIRS!r})) - before))
finally:
    host.close()
"""
    env = {**world.env(), "RECIPES_CONFIG": str(world.config)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert f"failed: repository {world.repo}: write {blocker}/" in out.stdout, out.stdout + out.stderr
    assert f"{blocker} is a file where a folder must be" in out.stdout  # the file in the way, named
    assert "left: []" in out.stdout, out.stdout
