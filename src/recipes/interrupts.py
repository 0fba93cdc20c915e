"""Signals as exceptions during a run, so every ``finally`` (the undo) runs on SIGTERM too; and
``--timeout``, which unwinds a run that takes too long the same way."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import attrs

# Set by the handler below: age's Rust code turns an exception raised inside its callbacks into
# an EncryptError ("encryption failed: KeyboardInterrupt"), so the stream code asks this instead.
signalled = threading.Event()
# Set when the command's ``--timeout`` expired (the interrupt that unwinds it was its alarm).
expired = threading.Event()

# After a timeout, how long the unwind (ending the run's commands, the undo) may take before it
# is interrupted too: what is then left undone, each host's guard does (DESIGN principle 9).
UNWIND_SECONDS = 600.0

_depth = 0


class TimedOut(KeyboardInterrupt):
    """The command's ``--timeout`` expired: unwound like an interrupt, reported as a failure."""


@attrs.frozen
class Deadline:
    """A command's ``--timeout``: its length and the words that set it (for the error line)."""

    seconds: float
    said: str


def arm_deadline(deadline: Deadline) -> None:
    """From now, ``deadline.seconds`` until SIGALRM interrupts the main thread (``TimedOut``),
    then ``UNWIND_SECONDS`` more for the unwind. Only inside ``interrupts_as_exceptions``, which
    disarms it."""

    def handler(_signum: int, _frame: Any) -> None:
        signalled.set()
        if expired.is_set():
            raise KeyboardInterrupt(f"the unwind after --timeout took over {UNWIND_SECONDS:g}s")
        expired.set()
        signal.setitimer(signal.ITIMER_REAL, UNWIND_SECONDS)
        raise TimedOut(f"timed out after {deadline.said} (--timeout {deadline.said})")

    expired.clear()
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, deadline.seconds)


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP/SIGINT (each unless ignored) into KeyboardInterrupt so every ``finally``
    (the undo) runs, and remember that one came (``signalled``)."""
    global _depth
    if threading.current_thread() is not threading.main_thread() or _depth:
        yield  # another thread, or inside one already (the CLI's, around an engine's)
        return

    def handler(signum: int, _frame: Any) -> None:
        signalled.set()
        raise KeyboardInterrupt(f"signal {signum}")

    signalled.clear()
    expired.clear()
    alarm = signal.getsignal(signal.SIGALRM)
    # a signal ignored by whoever started us stays ignored: `nohup recipes run` survives the
    # logout's SIGHUP, a background job the terminal's Ctrl-C
    wanted = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        wanted.append(signal.SIGINT)
    old = {s: signal.signal(s, handler) for s in wanted}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        signal.setitimer(signal.ITIMER_REAL, 0)  # a --timeout ends with its command
        signal.signal(signal.SIGALRM, alarm)
        for s, h in old.items():
            signal.signal(s, h)
