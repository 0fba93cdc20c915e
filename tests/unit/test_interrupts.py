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
