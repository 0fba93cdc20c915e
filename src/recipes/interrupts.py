"""Signals as exceptions during a run, so every ``finally`` (the undo) runs on SIGTERM too; and
``--timeout``, which unwinds a run that takes too long the same way."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs

# Set by the handler below: age's Rust code turns an exception raised inside its callbacks into
# an EncryptError ("encryption failed: KeyboardInterrupt"), so the stream code asks this instead.
signalled = threading.Event()
# Set when the command's ``--timeout`` expired (the interrupt that unwinds it was its alarm).
expired = threading.Event()
# Set when the unwind's own time (``UNWIND_SECONDS``) ran out and interrupted it.
unwind_cut = threading.Event()
# Set by a real signal (SIGTERM/SIGHUP/SIGINT), never by --timeout's alarm: its exit stays 130.
signal_came = threading.Event()

# Once a run with ``--timeout`` unwinds (its time is up, a step failed, a signal came), how long
# the unwind (ending the run's commands, the undo) may take before it is interrupted too: what is
# then left undone, each host's guard does (DESIGN principle 9).
UNWIND_SECONDS = 600.0
# setitimer's limit (a C time_t) is about 292 years; no command is given that long.
LONGEST_TIMEOUT = 100 * 365 * 86400.0

_depth = 0


class TimedOut(KeyboardInterrupt):
    """The command's ``--timeout`` expired: unwound like an interrupt, reported as a failure."""


@attrs.frozen
class Deadline:
    """A command's ``--timeout``: its length and the words that set it (for the error line)."""

    seconds: float
    said: str

    def words(self) -> str:
        return f"timed out after {self.said} (--timeout {self.said})"


@attrs.define
class _Alarm:
    deadline: Deadline | None = None
    unwinding: bool = False
    ends: float = 0.0
    """time.monotonic() when the deadline is up."""


_alarm = _Alarm()


def deadline() -> Deadline | None:
    """The ``--timeout`` armed in this command (or the last one, once it ended), if any."""
    return _alarm.deadline


def _handler(_signum: int, _frame: Any) -> None:
    signalled.set()
    if _alarm.unwinding:
        unwind_cut.set()
        raise KeyboardInterrupt(f"the unwind took over {UNWIND_SECONDS:g}s (--timeout)")
    expired.set()
    _alarm.unwinding = True
    signal.setitimer(signal.ITIMER_REAL, UNWIND_SECONDS)
    assert _alarm.deadline is not None
    raise TimedOut(_alarm.deadline.words())


def arm_deadline(given: Deadline) -> None:
    """From now, ``given.seconds`` until SIGALRM interrupts the main thread (``TimedOut``), then
    ``UNWIND_SECONDS`` for the unwind. Only inside ``interrupts_as_exceptions``, which disarms it."""
    if threading.current_thread() is not threading.main_thread() or not _depth:
        raise RuntimeError("arm_deadline needs the main thread, inside interrupts_as_exceptions")
    _alarm.deadline, _alarm.unwinding = given, False
    _alarm.ends = time.monotonic() + given.seconds
    expired.clear()
    unwind_cut.clear()
    signal.signal(signal.SIGALRM, _handler)
    signal.setitimer(signal.ITIMER_REAL, min(given.seconds, LONGEST_TIMEOUT))


def unwinding() -> None:
    """The undo starts (a step failed, a signal came, or every step succeeded): under
    ``--timeout`` it gets its own ``UNWIND_SECONDS`` from now instead of what was left of the
    deadline, so a start is never cut at the deadline."""
    if _alarm.deadline is None or _alarm.unwinding:
        return
    _alarm.unwinding = True
    signal.setitimer(signal.ITIMER_REAL, UNWIND_SECONDS)


def resume() -> None:
    """The undo after a success is done: what is left of the deadline applies again (a drill's
    checks after its restore). When none is left, the unwind's own time goes on for the rest
    (the commit of a whole snapshot, a restore's return): the work is done and nothing is
    stopped, so it is finished rather than thrown away."""
    if _alarm.deadline is None or not _alarm.unwinding or expired.is_set() or unwind_cut.is_set():
        return
    left = _alarm.ends - time.monotonic()
    if left > 0:
        _alarm.unwinding = False
        signal.setitimer(signal.ITIMER_REAL, left)


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
        signal_came.set()
        raise KeyboardInterrupt(f"signal {signum}")

    signalled.clear()
    expired.clear()
    unwind_cut.clear()
    signal_came.clear()
    _alarm.deadline, _alarm.unwinding = None, False
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
        if _alarm.deadline is not None:  # a --timeout ends with its command; nobody else's timer
            signal.setitimer(signal.ITIMER_REAL, 0)  # first: no alarm inside this clean-up
            signal.signal(signal.SIGALRM, alarm)
            _alarm.unwinding = True  # (its words stay for the error line: ``deadline()``)
        _depth -= 1
        for s, h in old.items():
            signal.signal(s, h)
