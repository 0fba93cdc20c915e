"""A Looker restore cut short after the home began to be written (SIGTERM of the controller, a
failed extract): the one line says the target is PARTLY restored, which steps were done, which
was under way and which were not run, and that Looker was started again on that half-restored
home (the rule for every exit path: what was stopped is started again)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import servers
from tests.integration import standins
from tests.integration.standins import LookerInstall, Site
from tests.integration.test_compensation import _wait_for
from tests.integration.test_deadman import DEADMAN, SLACK, _config
from tests.integration.test_looker import looker_args, looker_user, sites, status  # noqa: F401
from tests.integration.test_standins import ok
from tests.integration.world import World

pytestmark = pytest.mark.integration

BIG = 200 << 20
"""Random bytes (zstd cannot shrink them), so the extract takes long enough to be cut short."""
ROOT = Path(__file__).parents[2]


def _line(stderr: str, prefix: str) -> str:
    """The one line of stderr that starts with ``prefix`` (and there is exactly one)."""
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def _backed_up_and_running_on_target(
    world: World, pair: tuple[Site, Site], ssh_target: servers.SshHost, user: str, big: int = 1 << 20
) -> tuple[LookerInstall, LookerInstall]:
    """A snapshot of a Looker home holding a file of ``big`` random bytes (from source), and a
    Looker of its own running on the target at the same home: the restore (with --force) stops
    it and writes over it."""
    src_site, dst_site = pair
    lk = standins.install_looker(src_site, user=user)
    with open(lk.home_dir / "big.bin", "wb") as fh:
        for _ in range(big >> 20):
            fh.write(os.urandom(1 << 20))
    world.cli("run", "looker", "--host", "source", *looker_args(lk), check=True)
    there = standins.install_looker(dst_site, user=user)
    ok(ssh_target, there.command("start"))
    assert status(ssh_target, there) == 0
    return lk, there


def _launch_restore(world: World, lk: LookerInstall, config: Path | None = None) -> subprocess.Popen[str]:
    """``recipes restore looker --force`` onto the target, as a process of its own."""
    args = ["restore", "looker", "--host", "target", "--from", "source", "--force", *looker_args(lk)]
    return subprocess.Popen(
        [sys.executable, "-m", "recipes", "--config", str(config or world.config), *args],
        cwd=ROOT,
        env=world.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _restore_cut_short(
    world: World,
    lk: LookerInstall,
    big: Path,
    cut: Callable[[subprocess.Popen[str]], object],
    config: Path | None = None,
) -> tuple[int, str]:
    """Start the restore, wait until the target receives the home (``big`` is there and
    growing), then ``cut`` it short; the controller's exit code and stderr."""
    proc = _launch_restore(world, lk, config)
    try:
        _wait_for(lambda: big.exists() and big.stat().st_size > 0, timeout=120)
        cut(proc)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_sigterm_mid_extract_says_partly_restored_and_that_looker_was_started_again(
    world: World,
    sites: tuple[Site, Site],  # noqa: F811
    ssh_target: servers.SshHost,
    looker_user: str,  # noqa: F811
) -> None:
    lk, there = _backed_up_and_running_on_target(world, sites, ssh_target, looker_user, BIG)
    big = there.home_dir / "big.bin"
    code, err = _restore_cut_short(world, lk, big, lambda proc: proc.send_signal(signal.SIGTERM))
    assert code == 130, err
    line = _line(err, "recipes: interrupted")
    assert "the target is PARTLY restored" in line, line
    assert "done quiesce looker, run looker-stopped; interrupted during extract files" in line, line
    assert "not run extract files, run health-check" in line, line  # the /etc/init.d extract, the check
    assert "start-looker" not in line, line  # the undo started it: not "not run"
    assert "started again after the interruption: looker on target" in line, line
    assert "restore again with --force" in line, line
    # really half-written, and Looker really runs on it
    assert big.stat().st_size < BIG
    assert status(ssh_target, there) == 0


def test_a_failed_extract_after_the_home_says_looker_runs_again_not_that_its_start_was_not_run(
    world: World,
    sites: tuple[Site, Site],  # noqa: F811
    ssh_target: servers.SshHost,
    looker_user: str,  # noqa: F811
) -> None:
    """The home is extracted, then putting /etc/init.d/looker back fails (its directory is a
    file on the target): the undo of the stop starts Looker again, and the line says so."""
    lk, there = _backed_up_and_running_on_target(world, sites, ssh_target, looker_user)
    initd = sites[1].local_path(lk.initd).parent
    subprocess.run(["rm", "-rf", str(initd)], check=True)
    initd.write_text("in the way\n")
    out = world.cli("restore", "looker", "--host", "target", "--from", "source", "--force", *looker_args(lk))
    assert out.returncode == 1, out.stderr
    line = _line(out.stderr, "recipes: error:")
    assert "extract files failed on target" in line, line
    assert (
        "the target is PARTLY restored: done quiesce looker, run looker-stopped, extract files; "
        "failed extract files; not run run health-check; "
        "started again after the failure: looker on target "
        "(it runs on the partly restored files: fix the cause and restore again with --force)"
    ) in line, line
    assert "not run start-looker" not in line, line
    assert status(ssh_target, there) == 0
    assert (there.home_dir / "big.bin").stat().st_size == 1 << 20  # the home itself was written


def test_a_failure_before_anything_is_written_claims_no_partial_restore(
    world: World,
    sites: tuple[Site, Site],  # noqa: F811
    ssh_target: servers.SshHost,
    looker_user: str,  # noqa: F811
) -> None:
    """The target's ``./looker stop`` exits 0 but Looker runs on: the restore fails at the check
    after the stop, before the home is written, and does not say PARTLY; nor does the refusal of
    a non-empty home without --force."""
    lk, there = _backed_up_and_running_on_target(world, sites, ssh_target, looker_user)
    before = (there.home_dir / "looker/looker.jar").read_bytes()
    refused = world.cli("restore", "looker", "--host", "target", "--from", "source", *looker_args(lk))
    assert refused.returncode == 2, refused.stderr
    line = _line(refused.stderr, "recipes: error:")
    assert "PARTLY" not in line and "not empty" in line, line
    script = there.app_dir / "looker"
    script.write_text(
        script.read_text().replace("  stop)\n", '  stop)\n    echo "Looker stopped"; exit 0\n', 1)
    )
    out = world.cli("restore", "looker", "--host", "target", "--from", "source", "--force", *looker_args(lk))
    assert out.returncode == 1, out.stderr
    line = _line(out.stderr, "recipes: error:")
    assert "still running after ./looker stop: not restoring over a live home" in line, line
    assert "PARTLY" not in line, line
    assert (there.home_dir / "looker/looker.jar").read_bytes() == before  # nothing written
    assert status(ssh_target, there) == 0


def test_a_connection_lost_mid_extract_says_partly_restored_and_that_looker_was_started_again(
    world: World,
    sites: tuple[Site, Site],  # noqa: F811
    ssh_target: servers.SshHost,
    looker_user: str,  # noqa: F811
) -> None:
    """The target's per-connection sshd processes are killed while the home is being written
    (the TCP connection drops): the engine reconnects to start Looker again, and the one line
    says the connection was lost, that the target is PARTLY restored and that Looker runs."""
    lk, there = _backed_up_and_running_on_target(world, sites, ssh_target, looker_user, BIG)
    big = there.home_dir / "big.bin"

    def drop_connection(_proc: subprocess.Popen[str]) -> None:
        kids = subprocess.run(["pgrep", "-P", str(ssh_target.pid)], capture_output=True, text=True).stdout
        assert kids.split(), "expected a per-connection sshd child"
        for kid in kids.split():
            os.kill(int(kid), signal.SIGKILL)

    code, err = _restore_cut_short(world, lk, big, drop_connection)
    assert code == 1, err
    line = _line(err, "recipes: error:")
    assert line.startswith("recipes: error: connection lost before the command finished; "), line
    done = "done quiesce looker, run looker-stopped; failed extract files"
    assert f"the target is PARTLY restored: {done}" in line, line
    assert "start-looker" not in line, line
    assert "started again after the failure: looker on target" in line, line
    assert big.stat().st_size < BIG
    assert status(ssh_target, there) == 0


def test_sigkill_mid_extract_the_targets_guard_starts_looker_again_and_a_new_restore_completes(
    world: World,
    sites: tuple[Site, Site],  # noqa: F811
    ssh_target: servers.SshHost,
    looker_user: str,  # noqa: F811
) -> None:
    """No exit path of the controller at all: the guard the restore armed on the target (at
    the stop's undo) starts Looker again once the controller is silent for the deadman time;
    the half-written home is then restored whole by running the restore again."""
    lk, there = _backed_up_and_running_on_target(world, sites, ssh_target, looker_user, BIG)
    big = there.home_dir / "big.bin"

    def kill(proc: subprocess.Popen[str]) -> None:
        assert status(ssh_target, there) != 0  # stopped for the restore
        proc.kill()

    _restore_cut_short(world, lk, big, kill, _config(world))  # a short deadman
    _wait_for(lambda: status(ssh_target, there) == 0, timeout=DEADMAN + SLACK)
    assert big.stat().st_size < BIG  # the controller died mid-extract
    again = _launch_restore(world, lk)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert big.stat().st_size == BIG and status(ssh_target, there) == 0
