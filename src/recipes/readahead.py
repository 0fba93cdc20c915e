"""Reading a stored object a few chunks ahead in a thread, so the next GET (or disk read) is
under way while the caller hashes or pipes the chunk it has: reading and hashing overlap."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

CHUNK = 1 << 20
AHEAD = 8
"""Chunks the reader may run ahead of the caller: a bounded queue, so memory stays constant."""


def chunks(
    fh: Any, *, size: int = CHUNK, ahead: int = AHEAD, stopped: Callable[[], bool] = lambda: False
) -> Generator[bytes, None, None]:
    """``fh``'s chunks, read by a thread of its own up to ``ahead`` chunks ahead. A read error
    is raised here, in the caller's thread; ``stopped()`` (or the caller leaving) ends the reads."""
    got: queue.Queue[bytes | BaseException | None] = queue.Queue(ahead)
    quit = threading.Event()

    def read() -> None:
        try:
            while not (quit.is_set() or stopped()) and (chunk := fh.read(size)):
                got.put(chunk)
        except BaseException as exc:
            got.put(exc)
        else:
            got.put(None)

    reader = threading.Thread(target=read, name="read-ahead", daemon=True)
    reader.start()
    try:
        while (item := got.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        quit.set()
        while reader.is_alive():  # let a reader blocked on a full queue see ``quit``
            with contextlib.suppress(queue.Empty):
                got.get(timeout=0.05)
