"""Signals as exceptions: SIGTERM and SIGHUP unwind a command, unless whoever started it
ignored them (``nohup`` ignores SIGHUP: the job must survive the logout)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

CHILD = """
import os, signal, sys, time
from recipes.interrupts import interrupts_as_exceptions
try:
    with interrupts_as_exceptions():
        os.kill(os.getpid(), signal.{sig})
        time.sleep(0.5)
    print("survived")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("ignored", [False, True], ids=["default", "ignored"])
def test_a_signal_unwinds_unless_it_was_ignored_by_the_parent(sig: str, ignored: bool) -> None:
    number = getattr(signal, sig)

    def start() -> None:
        signal.signal(number, signal.SIG_IGN if ignored else signal.SIG_DFL)

    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(sig=sig)], preexec_fn=start, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("survived" if ignored else "interrupted")


UNWIND = """
import time
from recipes import interrupts
interrupts.UNWIND_SECONDS = 0.5
with interrupts.interrupts_as_exceptions():
    interrupts.arm_deadline(interrupts.Deadline(0.2, "0.2s"))
    try:
        time.sleep(10)
    except interrupts.TimedOut as exc:
        print(exc)
        try:
            time.sleep(10)  # an unwind that hangs (an undo's command that never ends)
        except KeyboardInterrupt as exc:
            print("unwind cut:", exc)
"""


def test_a_timeout_interrupts_then_bounds_the_unwind() -> None:
    """``--timeout`` interrupts the command, then gives its unwind ``UNWIND_SECONDS``: an undo
    that hangs cannot keep the run (and its lock) forever; each host's guard does what is left."""
    out = subprocess.run([sys.executable, "-c", UNWIND], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "timed out after 0.2s (--timeout 0.2s)",
        "unwind cut: the unwind took over 0.5s (--timeout)",
    ]


@pytest.mark.parametrize("given", ["soon", "0s", "", "300Y"])
def test_a_bad_timeout_is_a_usage_error(given: str) -> None:
    from click.testing import CliRunner

    from recipes import cli

    result = CliRunner().invoke(cli.main, ["verify", "--all", "--timeout", given])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("recipes: error: Invalid value for '--timeout'"), line


def test_a_timeout_ends_with_its_command(tmp_path: object) -> None:
    """The alarm is disarmed when the command returns: nothing fires later in the same process
    (a script calling the CLI twice, the test runner)."""
    from click.testing import CliRunner

    from recipes import cli

    result = CliRunner().invoke(cli.main, ["verify", "--all", "--timeout", "1h", "--repo", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
