"""Signals as exceptions during a run, so every ``finally`` (the undo) runs on SIGTERM too."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

# Set by the handler below: age's Rust code turns an exception raised inside its callbacks into
# an EncryptError ("encryption failed: KeyboardInterrupt"), so the stream code asks this instead.
signalled = threading.Event()


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP/SIGINT (each unless ignored) into KeyboardInterrupt so every ``finally``
    (the undo) runs, and remember that one came (``signalled``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        signalled.set()
        raise KeyboardInterrupt(f"signal {signum}")

    signalled.clear()
    # a signal ignored by whoever started us stays ignored: `nohup recipes run` survives the
    # logout's SIGHUP, a background job the terminal's Ctrl-C
    wanted = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        wanted.append(signal.SIGINT)
    old = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
