"""The controller's cache of tar states: private, checked against the manifest, pruned."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from recipes import manifest as mf
from recipes.hosts import LocalHost
from recipes.tarstate import KEEP, RemoteState, StateCache

T0 = "2026-11-22T10:15:00Z"


def manifest(sid: str, content: bytes) -> mf.Manifest:
    state = mf.StoredObject(
        "files.snar",
        "state",
        "files.snar.zst.age",
        1,
        "00" * 32,
        content_sha256=hashlib.sha256(content).hexdigest(),
    )
    return mf.Manifest(sid, "django", "web1", T0, T0, {}, (state,))


def stage(cache: StateCache, sid: str, content: bytes) -> mf.Manifest:
    d = cache.staging("django", "web1", sid)
    (d / "files.snar").write_bytes(content)
    cache.commit("django", "web1", sid)
    return manifest(sid, content)


def test_states_are_private_and_a_shared_cache_dir_is_left_as_it_was(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    cache = StateCache(shared, "s3://bucket/prefix")
    staged = cache.staging("django", "web1", "20261123T100000Z-aaaaaa")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    d = staged
    while d != shared:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
        d = d.parent


def test_a_cached_state_is_used_only_when_it_matches_its_manifest(tmp_path: Path) -> None:
    cache = StateCache(tmp_path, "/repo")
    m = stage(cache, "20261123T100000Z-aaaaaa", b"GNU tar-1.34-2\nstate")
    path = cache.get(m, "files.snar")
    assert path is not None and path.read_bytes() == b"GNU tar-1.34-2\nstate"
    path.write_bytes(b"GNU tar-1.34-2\ntampered")
    assert cache.get(m, "files.snar") is None
    assert cache.get(manifest("20261123T110000Z-bbbbbb", b"x"), "files.snar") is None  # never cached
    # another repository URL is another cache
    assert StateCache(tmp_path, "/other-repo").get(m, "files.snar") is None


def test_only_the_newest_states_are_kept(tmp_path: Path) -> None:
    cache = StateCache(tmp_path, "/repo")
    made = [stage(cache, f"20261123T1{i}0000Z-aaaaaa", f"state {i}".encode()) for i in range(5)]
    kept = [m for m in made if cache.get(m, "files.snar") is not None]
    assert kept == made[-KEEP:]


def test_control_session_round_trips_states_and_removes_its_directory(tmp_path: Path) -> None:
    """The control script itself, run by a real bash on this machine (LocalHost)."""
    parent = tmp_path / "parent.snar"
    parent.write_bytes(b"GNU tar-1.34-2\n" + os.urandom(70_000))  # more than one pipe buffer
    remote = RemoteState.open(LocalHost(), {"files.snar": parent}, tmp_path)
    assert remote.facts["zstd"] in ("yes", "no") and remote.facts["tar"].startswith("tar (GNU tar)")
    state = Path(remote.path("files.snar"))
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700
    assert state.read_bytes() == parent.read_bytes()
    state.write_bytes(b"GNU tar-1.34-2\nnew state")  # what tar leaves behind
    staging = tmp_path / "staging"
    staging.mkdir()
    got = remote.collect(["files.snar"], staging)
    assert got["files.snar"].read_bytes() == b"GNU tar-1.34-2\nnew state"
    assert not state.parent.exists()


def test_control_session_without_parents_and_closed_early_leaves_nothing(tmp_path: Path) -> None:
    remote = RemoteState.open(LocalHost(), {}, tmp_path)
    directory = Path(remote.dir)
    assert directory.is_dir() and not any(directory.iterdir())  # empty: tar makes a level 0
    remote.close()  # a failed backup: no collect
    assert not directory.exists()


def test_control_session_outlives_a_hosts_tmout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hardened hosts export TMOUT, which bash's read obeys: the session must not time out."""
    monkeypatch.setenv("TMOUT", "1")
    remote = RemoteState.open(LocalHost(), {}, tmp_path)
    time.sleep(2.5)
    Path(remote.path("files.snar")).write_bytes(b"GNU tar-1.34-2\n")
    staging = tmp_path / "staging"
    staging.mkdir()
    assert remote.collect(["files.snar"], staging)["files.snar"].read_bytes() == b"GNU tar-1.34-2\n"


def test_a_killed_control_session_still_removes_its_directory(tmp_path: Path) -> None:
    remote = RemoteState.open(LocalHost(), {}, tmp_path)
    directory = Path(remote.dir)
    remote.proc.kill()  # what every error path does, e.g. Ctrl-C during collect
    assert not directory.exists()


def test_stale_staging_of_dead_runs_is_pruned_and_a_running_ones_kept(tmp_path: Path) -> None:
    cache = StateCache(tmp_path, "/repo")
    dead = cache.staging("django", "web1", "20261120T100000Z-dddddd")
    (dead / "files.snar").write_bytes(b"plain file names")
    two_days_ago = time.time() - 2 * 86400
    os.utime(dead, (two_days_ago, two_days_ago))
    running = cache.staging("django", "web1", "20261123T090000Z-rrrrrr")
    stage(cache, "20261123T100000Z-aaaaaa", b"state")
    assert not dead.exists() and running.exists()
