"""The lock per recipe@host: a second run is refused before it touches the application; a stale
lock is taken over; SIGKILL leaves a lock that blocks until its lease runs out; S3 works too."""

from __future__ import annotations

import datetime as dt
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
    opts = {**s3_server.options(), "config_kwargs": {"read_timeout": 5}}
    repo = Repository(f"s3://{s3_bucket}/repo", opts)
    stored = Path(s3_server.data_dir) / s3_bucket / "repo" / "locks" / "django@web1"
    with repo.lock("django", "web1") as lease:
        assert repo.conditional_writes is False  # rclone serve s3 ignores If-None-Match: read back
        assert locks.Lease.loads(stored.read_bytes()).token == lease.token
        rival = Repository(f"s3://{s3_bucket}/repo", opts)  # another controller's view
        with pytest.raises(locks.LockHeld) as info, rival.lock("django", "web1"):
            pass
        assert lease.holder() in str(info.value)
        assert locks.Lease.loads(stored.read_bytes()).token == lease.token  # the rival wrote nothing
    assert not stored.exists()
    assert not list((Path(s3_server.data_dir) / s3_bucket / "repo").rglob(".probe-*"))

    ghost = locks.Lease.new("django", "web1", "run", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    repo.fs.pipe_file(f"{s3_bucket}/repo/locks/django@web1", ghost.dumps())
    with repo.lock("django", "web1") as taken:
        assert locks.Lease.loads(stored.read_bytes()).token == taken.token != ghost.token
    assert not stored.exists()
