"""The lock per recipe@host: a second run is refused before it touches the application; a stale
lock is taken over; SIGKILL leaves a lock that blocks until its lease runs out; S3 works too."""

from __future__ import annotations

import datetime as dt
import itertools
import signal
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner

from recipes import cli, locks
from recipes.repository import Repository
from tests import servers
from tests.integration import test_compensation as comp
from tests.integration.test_compensation import (
    _launch,
    _pid,
    _svc_run,
    _wait_for,
    running,
    running_service,
    starts,
)
from tests.integration.world import World

svc = comp.svc  # fixtures: a running fake service on host source; the test recipe registered
registered = comp.registered

LOCK = Path("locks/svc-test@source")


@pytest.fixture
def other_svc(ssh_source: servers.SshHost) -> Iterator[tuple[str, Path]]:
    """A second running fake service on host source (same recipe@host, another dir)."""
    yield from running_service(ssh_source)


def test_second_run_is_refused_naming_the_holder_and_never_touches_the_service(
    world: World, svc: tuple[str, Path], other_svc: tuple[str, Path], registered: None
) -> None:
    inside, outside = svc
    other_inside, other_outside = other_svc
    other_pid = _pid(other_outside)
    first = _launch(world, inside)
    try:
        _wait_for(lambda: not running(outside))  # the first run holds the lock and has quiesced
        second = CliRunner().invoke(cli.main, _svc_run(world, other_inside))
        assert second.exit_code == 1, second.output
        errors = [line for line in second.output.splitlines() if line.startswith("recipes: error:")]
        assert len(errors) == 1 and "Traceback" not in second.output
        assert "svc-test@source is locked by " in errors[0] and f"pid {first.pid} since " in errors[0]
        # never touched: the other service was neither stopped nor started
        assert running(other_outside) and _pid(other_outside) == other_pid and starts(other_outside) == 0
        assert not running(outside) and starts(outside) == 0  # nor the first one started early
    finally:
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert running(outside) and starts(outside) == 1
    assert not (world.repo / LOCK).exists()  # released on the way out


def test_stale_lock_is_taken_over_and_released(
    world: World, svc: tuple[str, Path], registered: None, caplog: pytest.LogCaptureFixture
) -> None:
    inside, outside = svc
    ghost = locks.Lease.new("svc-test", "source", "run", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    ghost = attrs.evolve(ghost, controller="gone-box", pid=4242)
    (world.repo / LOCK).parent.mkdir(parents=True)
    (world.repo / LOCK).write_bytes(ghost.dumps())
    result = CliRunner().invoke(cli.main, _svc_run(world, inside))
    assert result.exit_code == 0, result.output
    assert "taking over the stale lock" in caplog.text and "gone-box pid 4242" in caplog.text
    assert starts(outside) == 1 and running(outside)
    assert not (world.repo / LOCK).exists()


def test_a_sigkilled_runs_lock_is_freed_here_at_once_and_elsewhere_by_its_lease(
    world: World, svc: tuple[str, Path], registered: None, caplog: pytest.LogCaptureFixture
) -> None:
    """On the controller whose run died, the next run sees the holder's process is gone and
    takes the lock over at once; a lock held by a run on another controller waits for its lease."""
    with world.config.open("a") as fh:
        fh.write("\n[engine]\ndeadman_seconds = 2\n")
    inside, outside = svc
    first = _launch(world, inside)
    _wait_for(lambda: not running(outside))
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    left = locks.Lease.loads((world.repo / LOCK).read_bytes())
    assert left.pid == first.pid
    _wait_for(lambda: running(outside))  # the host's guard started it again
    assert starts(outside) == 1
    # the same dead run, but recorded by another controller: only its lease can free it
    elsewhere = attrs.evolve(left, machine="0" * 16)
    (world.repo / LOCK).write_bytes(elsewhere.dumps())
    blocked = CliRunner().invoke(cli.main, _svc_run(world, inside))
    assert blocked.exit_code == 1 and f"pid {first.pid}" in blocked.output
    assert starts(outside) == 1  # refused before it touched the service
    expired = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=left.lease_seconds + 5)
    (world.repo / LOCK).write_bytes(elsewhere.renew(expired).dumps())
    after = CliRunner().invoke(cli.main, _svc_run(world, inside))
    assert after.exit_code == 0, after.output
    assert starts(outside) == 2 and not (world.repo / LOCK).exists()
    # here: taken over at once, with a warning naming why
    (world.repo / LOCK).write_bytes(left.dumps())
    again = CliRunner().invoke(cli.main, _svc_run(world, inside))
    assert again.exit_code == 0, again.output
    assert "its process is gone from this controller" in caplog.text
    assert starts(outside) == 3 and not (world.repo / LOCK).exists()


def test_lock_on_s3_without_conditional_writes(s3_server: servers.S3Server, s3_bucket: str) -> None:
    """rclone serve s3 ignores If-None-Match: the lock is taken under a claim."""
    opts = {**s3_server.options(), "config_kwargs": {"read_timeout": 5}}
    repo = Repository(f"s3://{s3_bucket}/repo", opts)
    stored = Path(s3_server.data_dir) / s3_bucket / "repo" / "locks" / "django@web1"
    claims = Path(s3_server.data_dir) / s3_bucket / "repo" / "locks" / ".claims"
    with repo.lock("django", "web1") as lease:
        assert not [p for p in claims.rglob("*") if p.is_file()]  # the claim went once the lock was written
        assert locks.Lease.loads(stored.read_bytes()).token == lease.token
        rival = Repository(f"s3://{s3_bucket}/repo", opts)  # another controller's view
        with pytest.raises(locks.LockHeld) as info, rival.lock("django", "web1"):
            pass
        assert lease.holder() in str(info.value)
        assert locks.Lease.loads(stored.read_bytes()).token == lease.token  # the rival wrote nothing
    assert not stored.exists()

    ghost = locks.Lease.new("django", "web1", "run", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    repo.fs.pipe_file(f"{s3_bucket}/repo/locks/django@web1", ghost.dumps())
    with repo.lock("django", "web1") as taken:
        assert locks.Lease.loads(stored.read_bytes()).token == taken.token != ghost.token
    assert not stored.exists()


RACER = """
import json, sys, time
from recipes.repository import Repository
from recipes import locks
opts, url = json.loads(sys.stdin.readline())
repo = Repository(url, opts)
repo.fs.ls(url.removeprefix("s3://").split("/")[0])  # connected before the start line


class Slow(locks.Store):
    # a server slow to answer: the window between seeing no lock and writing one is wide

    def read(self, path):
        data = super().read(path)
        if path.endswith("/django@web1"):
            time.sleep(0.3)
        return data


print("ready", flush=True)
sys.stdin.readline()  # the start line: every racer is connected and waiting
try:
    with locks.hold(repo, "django", "web1", store=Slow(repo)):
        began = time.time()
        time.sleep(0.4)
        print(json.dumps(["held", began, time.time()]))
except locks.LockHeld as exc:
    print(json.dumps(["refused", str(exc)]))
"""


def test_runs_started_together_on_s3_never_hold_the_lock_at_once(
    s3_server: servers.S3Server, s3_bucket: str
) -> None:
    """Six controllers (processes) take one recipe@host's lock at the same instant on a slow
    server that ignores If-None-Match: the claims let at most one hold it at any time."""
    import json
    import subprocess
    import sys

    payload = json.dumps([s3_server.options(), f"s3://{s3_bucket}/race"]) + "\n"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    for p in procs:
        assert p.stdin and p.stdout
        p.stdin.write(payload)
        p.stdin.flush()
    for p in procs:
        assert p.stdout and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    held = sorted((r[1], r[2]) for r in results if r[0] == "held")
    assert held, results
    for (_, end), (begin, _) in itertools.pairwise(held):
        assert begin >= end, f"two runs held the lock at once: {held}"
    refused = [r[1] for r in results if r[0] == "refused"]
    assert all("django@web1" in line for line in refused)
    root = Path(s3_server.data_dir) / s3_bucket / "race" / "locks"
    assert not [p for p in root.rglob("*") if p.is_file()]  # no lock and no claim left


def test_taking_over_a_stale_lock_on_s3_never_lets_two_runs_hold_it(
    s3_server: servers.S3Server, s3_bucket: str
) -> None:
    """Run B judged the lock stale and is about to delete it when run A comes: A waits for B's
    claim, then finds B's fresh lease; B never deletes a lease A wrote."""
    import threading

    opts = {**s3_server.options(), "config_kwargs": {"read_timeout": 5}}
    repo = Repository(f"s3://{s3_bucket}/takeover", opts)
    ghost = locks.Lease.new("django", "web1", "run", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    repo.fs.pipe_file(f"{s3_bucket}/takeover/locks/django@web1", ghost.dumps())
    won: list[str] = []
    refused: list[str] = []

    def run_a() -> None:
        try:
            won.append(locks.acquire(repo, "django", "web1").token)
        except locks.LockHeld as exc:
            refused.append(str(exc))

    class Interleaving(locks.Store):
        def delete(self, path: str) -> None:
            if path.endswith("/django@web1") and not hasattr(self, "rival"):
                self.rival = threading.Thread(target=run_a)
                self.rival.start()
                self.rival.join(timeout=2)  # A completes now unless B's claim holds it off
            super().delete(path)

    store = Interleaving(repo)
    won.append(locks.acquire(repo, "django", "web1", store=store).token)
    store.rival.join(timeout=60)
    assert not store.rival.is_alive()
    assert len(won) == 1, (won, refused)
    stored = Path(s3_server.data_dir) / s3_bucket / "takeover" / "locks" / "django@web1"
    assert locks.Lease.loads(stored.read_bytes()).token == won[0]
    assert refused and "is locked by" in refused[0]


def test_a_claim_left_by_a_dead_run_is_ignored_and_a_live_one_is_waited_for(
    s3_server: servers.S3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    opts = {**s3_server.options(), "config_kwargs": {"read_timeout": 5}}
    repo = Repository(f"s3://{s3_bucket}/claims", opts)
    claims = f"{s3_bucket}/claims/locks/.claims/django@web1"
    now = dt.datetime.now(dt.UTC)
    # a run of this controller that was SIGKILLed while it held its claim: its process is gone
    dead = attrs.evolve(locks.Lease.new("django", "web1", "run", now), pid_start="1", controller="gone-box")
    repo.fs.pipe_file(f"{claims}/{dead.token}-0", dead.dumps())
    with repo.lock("django", "web1"):
        pass
    assert "gone-box" in caplog.text and "left by a run that is gone" in caplog.text
    assert not repo.fs.exists(f"{claims}/{dead.token}-0")

    # another controller's claim, however old its own clock says it is, is waited for
    live = locks.Lease.new("django", "web1", "run", now - dt.timedelta(hours=1))
    live = attrs.evolve(live, machine="0" * 16, controller="busy-box")
    repo.fs.pipe_file(f"{claims}/{live.token}-0", live.dumps())
    with pytest.raises(locks.LockHeld) as info:
        locks.acquire(repo, "django", "web1", store=locks.Store(repo, backoff=0.01))
    assert "busy-box" in str(info.value) and "is taking its lock at this moment" in str(info.value)
    assert repo.fs.exists(f"{claims}/{live.token}-0")  # someone else's live claim is left alone
    assert not repo.fs.exists(f"{s3_bucket}/claims/locks/django@web1")  # and no lock was written
    repo.fs.rm_file(f"{claims}/{live.token}-0")

    # a claim this version cannot read (a newer one's) is a rival too, not garbage
    repo.fs.pipe_file(f"{claims}/future-0", b'{"format": 2}\n')
    with pytest.raises(locks.LockHeld) as info:
        locks.acquire(repo, "django", "web1", store=locks.Store(repo, backoff=0.01))
    assert "future-0" in str(info.value)
    assert repo.fs.exists(f"{claims}/future-0")
