"""The lease logic of recipes.locks on a local folder: take, refuse, renew, take over, release."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import time
from pathlib import Path

import attrs
import pytest

from recipes import locks
from recipes.errors import RecipeError
from recipes.repository import Repository

T0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)


def lock_file(repo: Path) -> Path:
    return repo / "locks" / "django@web1"


def test_a_lease_is_stale_only_after_its_lease_time_without_renewal() -> None:
    lease = locks.Lease.new("django", "web1", "run", T0)
    assert not lease.stale(T0 + dt.timedelta(seconds=locks.LEASE_SECONDS))
    assert lease.stale(T0 + dt.timedelta(seconds=locks.LEASE_SECONDS + 1))
    renewed = lease.renew(T0 + dt.timedelta(hours=5))
    assert not renewed.stale(T0 + dt.timedelta(hours=5, minutes=9))  # a long run keeps its lock
    assert locks.LEASE_SECONDS >= 5 * locks.RENEW_SECONDS
    short = attrs.evolve(renewed, lease_seconds=1)  # never shorter than 3 renewals
    assert not short.stale(T0 + dt.timedelta(hours=5, seconds=2 * locks.RENEW_SECONDS))


def test_held_lock_refuses_a_second_run_naming_the_holder(tmp_path: Path) -> None:
    repo = Repository(str(tmp_path))
    with repo.lock("django", "web1") as lease:
        stored = json.loads(lock_file(tmp_path).read_text())
        assert stored["token"] == lease.token and stored["pid"] == os.getpid()
        assert {"owner", "controller", "started", "renewed", "purpose"} <= stored.keys()
        with pytest.raises(locks.LockHeld) as info, repo.lock("django", "web1"):
            pass
        message = str(info.value)
        assert f"{lease.owner}@{lease.controller} pid {os.getpid()} since {lease.started}" in message
        assert "\n" not in message and info.value.exit_code == 1
        with repo.lock("django", "web2"):  # another host is another lock
            pass
    assert not lock_file(tmp_path).exists()


def test_lock_is_released_when_the_block_fails(tmp_path: Path) -> None:
    repo = Repository(str(tmp_path))
    with pytest.raises(KeyboardInterrupt), repo.lock("django", "web1"):
        raise KeyboardInterrupt
    assert not lock_file(tmp_path).exists()
    assert not [p for p in (tmp_path / "locks").iterdir()]  # no temporary file left either


def test_stale_lock_is_taken_over_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = Repository(str(tmp_path))
    ghost = locks.Lease.new("django", "web1", "run", T0 - dt.timedelta(days=3))
    lock_file(tmp_path).parent.mkdir()
    lock_file(tmp_path).write_bytes(ghost.dumps())
    with caplog.at_level(logging.WARNING, "recipes"), repo.lock("django", "web1") as lease:
        assert lease.token != ghost.token
        assert locks.Lease.loads(lock_file(tmp_path).read_bytes()).token == lease.token
    assert "taking over the stale lock" in caplog.text and ghost.holder() in caplog.text


def test_a_fresh_lock_of_another_controller_is_not_taken_over(tmp_path: Path) -> None:
    repo = Repository(str(tmp_path))
    now = dt.datetime.now(dt.UTC)
    other = locks.Lease.new("django", "web1", "run", now - dt.timedelta(seconds=locks.LEASE_SECONDS - 30))
    lock_file(tmp_path).parent.mkdir()
    lock_file(tmp_path).write_bytes(other.dumps())
    with pytest.raises(locks.LockHeld):
        locks.acquire(repo, "django", "web1")
    assert lock_file(tmp_path).read_bytes() == other.dumps()


def test_renewal_moves_the_renewed_time_and_notices_a_lost_lock(tmp_path: Path) -> None:
    repo = Repository(str(tmp_path))
    clock = [T0]
    store = locks.Store(repo)
    lease = locks.acquire(repo, "django", "web1", clock=lambda: clock[0], store=store)
    renewer = locks.Renewer(store, lease, 60, lambda: clock[0])
    clock[0] = T0 + dt.timedelta(minutes=30)
    renewer.renew_once()
    assert locks.Lease.loads(lock_file(tmp_path).read_bytes()).renewed == "2026-11-22T10:30:00Z"
    thief = locks.Lease.new("django", "web1", "run", T0)
    lock_file(tmp_path).write_bytes(thief.dumps())
    renewer.renew_once()
    assert renewer.lost == thief.holder()
    assert lock_file(tmp_path).read_bytes() == thief.dumps()  # never overwritten
    locks.release(repo, renewer.lease, store)
    assert lock_file(tmp_path).read_bytes() == thief.dumps()  # never someone else's


def test_renewer_thread_renews_while_the_run_lives(tmp_path: Path) -> None:
    repo = Repository(str(tmp_path))
    ticks = iter([T0 + dt.timedelta(minutes=m) for m in range(1000)])
    with locks.hold(repo, "django", "web1", renew_every=0.01, clock=lambda: next(ticks)) as lease:
        for _ in range(500):
            if locks.Lease.loads(lock_file(tmp_path).read_bytes()).renewed != lease.renewed:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("never renewed")
    assert not lock_file(tmp_path).exists()


def test_unreadable_lock_file_refuses_with_one_line(tmp_path: Path) -> None:
    repo = Repository(str(tmp_path))
    lock_file(tmp_path).parent.mkdir()
    lock_file(tmp_path).write_bytes(b"\x00garbage")
    with pytest.raises(RecipeError) as info:
        locks.acquire(repo, "django", "web1")
    assert "unreadable lock file" in str(info.value) and "\n" not in str(info.value)


def test_a_file_or_folder_in_the_way_of_a_lock_is_one_line_naming_it(tmp_path: Path) -> None:
    """A file where the locks folder goes (EEXIST from makedirs, never taken for a held lock), a
    folder where the lock file goes, a repository under a file: a RepositoryError naming the path."""
    from recipes.errors import RepositoryError

    (tmp_path / "locks").write_text("x\n")
    with pytest.raises(RepositoryError, match=f"{tmp_path}/locks is a file where a folder must be"):
        locks.acquire(Repository(str(tmp_path)), "django", "web1")
    (tmp_path / "locks").unlink()
    (lock_file(tmp_path) / "stray").mkdir(parents=True)
    with pytest.raises(RepositoryError, match=f"{lock_file(tmp_path)} is a folder where a file must be"):
        locks.acquire(Repository(str(tmp_path)), "django", "web1")
    under = Repository(str(tmp_path / "locks" / "django@web1" / "stray" / "f" / "repo"))
    (tmp_path / "locks" / "django@web1" / "stray" / "f").write_text("a file")
    with pytest.raises(RepositoryError, match="stray/f is a file where a folder must be") as info:
        locks.acquire(under, "django", "web1")
    assert "\n" not in str(info.value) and "move that file away" in str(info.value)


def test_a_dead_holder_on_this_controller_is_gone_but_not_one_elsewhere_or_alive() -> None:
    import os

    now = dt.datetime.now(dt.UTC)
    mine = locks.Lease.new("django", "web1", "run", now)
    assert not mine.gone_from_here()  # this very process holds it
    dead = attrs.evolve(mine, pid_start="1")  # the pid now belongs to another process
    assert dead.gone_from_here()
    assert not attrs.evolve(dead, machine="0" * 16).gone_from_here()  # another controller's
    assert not attrs.evolve(dead, pid_start="").gone_from_here()  # an older lease: wait it out
    assert os.getpid() == mine.pid


def test_two_runs_taking_over_one_stale_lock_never_both_hold_it(tmp_path: Path) -> None:
    """Run B judged the lock stale and is about to delete it when run A takes it over: B must not
    delete A's fresh lease and hold the lock as well (a local folder serializes the takeover)."""
    repo = Repository(str(tmp_path))
    ghost = locks.Lease.new("django", "web1", "run", T0 - dt.timedelta(days=3))
    lock_file(tmp_path).parent.mkdir()
    lock_file(tmp_path).write_bytes(ghost.dumps())
    won: list[str] = []

    def run_a() -> None:
        with contextlib.suppress(locks.LockHeld):
            won.append(locks.acquire(repo, "django", "web1").token)

    class Interleaving(locks.Store):
        def delete(self, path: str) -> None:
            a = threading.Thread(target=run_a)
            a.start()
            a.join(timeout=2)  # A completes now unless the takeover is serialized
            super().delete(path)
            self.rival = a

    store = Interleaving(repo)
    won.append(locks.acquire(repo, "django", "web1", store=store).token)
    store.rival.join(timeout=10)
    assert not store.rival.is_alive()
    assert len(won) == 1
    assert locks.Lease.loads(lock_file(tmp_path).read_bytes()).token == won[0]


class _StampedFS:
    """The few S3 calls a claim makes, over a dict, each object with the server's time."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, dt.datetime]] = {}
        self.now = T0

    def pipe_file(self, path: str, data: bytes, **_: object) -> None:
        self.files[path] = (data, self.now)

    def cat_file(self, path: str) -> bytes:
        if path not in self.files:
            raise FileNotFoundError(path)
        return self.files[path][0]

    def rm_file(self, path: str) -> None:
        self.files.pop(path, None)

    def ls(self, folder: str, detail: bool = False, **_: object) -> list[dict[str, object]]:
        inside = [(p, t) for p, (_, t) in self.files.items() if p.startswith(folder + "/")]
        return [{"name": p, "LastModified": t} for p, t in inside]


def test_on_s3_a_claim_is_dead_by_the_servers_times_never_by_a_controllers_clock() -> None:
    """A claim another controller wrote long ago by its own (wrong) clock is live while the
    server's stamps are close; one the server stamped a lease's time before ours is dead."""

    class FakeRepo:
        local = False
        root = "bucket/repo"

        def __init__(self) -> None:
            self.fs = _StampedFS()

    repo = FakeRepo()
    store = locks.Store(repo, backoff=0.001)  # type: ignore[arg-type]
    folder = "bucket/repo/locks/.claims/django@web1"
    other = attrs.evolve(locks.Lease.new("django", "web1", "run", T0 - dt.timedelta(days=1)), machine="x")
    repo.fs.pipe_file(f"{folder}/{other.token}-0", other.dumps())
    repo.fs.now = T0 + dt.timedelta(seconds=locks.CLAIM_SECONDS - 5)
    lease = locks.Lease.new("django", "web1", "run", T0)
    with pytest.raises(locks.LockHeld), store.exclusive("bucket/repo/locks/django@web1", lease):
        pass
    assert f"{folder}/{other.token}-0" in repo.fs.files
    repo.fs.now = T0 + dt.timedelta(seconds=locks.CLAIM_SECONDS + 5)
    with store.exclusive("bucket/repo/locks/django@web1", lease):
        assert f"{folder}/{other.token}-0" not in repo.fs.files
    assert not repo.fs.files  # ours went too
