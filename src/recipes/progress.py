"""What a run tells whoever watches it (the CLI's progress bars): steps starting and ending, and
bytes moving. The engine only ever adds to a counter; drawing is the watcher's business, on its
own clock. The default watcher watches nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recipes import manifest as mf


class Meter:
    """A byte counter one transfer adds to; ``total`` is the expected size when known."""

    __slots__ = ("done", "name", "total")

    def __init__(self, name: str, total: int | None = None) -> None:
        self.name = name
        self.total = total
        self.done = 0

    def __call__(self, n: int) -> None:
        self.done += n


class Progress:
    """Watches a run: subclass and override; every hook here does nothing."""

    def step(self, kind: str, name: str) -> None:
        """A step starts."""

    def step_done(self, record: mf.StepRecord) -> None:
        """A step ended well."""

    def meter(self, name: str, total: int | None = None) -> Meter:
        """A counter for the stored bytes of object ``name`` (written on backup, read on restore)."""
        return Meter(name, total)

    def raw(self, name: str) -> Meter:
        """A counter for the plain bytes of object ``name`` before the controller compressed them."""
        return Meter(name)


_current: ContextVar[Progress] = ContextVar("recipes_progress", default=Progress())  # noqa: B039


def current() -> Progress:
    """The watcher of runs started now (the CLI sets one with ``watching``)."""
    return _current.get()


@contextlib.contextmanager
def watching(progress: Progress) -> Iterator[Progress]:
    """Runs started inside report to ``progress``."""
    token = _current.set(progress)
    try:
        yield progress
    finally:
        _current.reset(token)


class CountingReader:
    """Adds the length of every read to ``meter`` (nothing else per chunk)."""

    def __init__(self, source: Any, meter: Meter) -> None:
        self._source = source
        self._meter = meter

    def read(self, n: int = -1, /) -> bytes:
        data: bytes = self._source.read(n)
        self._meter.done += len(data)
        return data


class CountingWriter:
    """Adds the length of every write to ``meter`` (nothing else per chunk)."""

    def __init__(self, sink: Any, meter: Meter) -> None:
        self._sink = sink
        self._meter = meter

    def write(self, data: bytes, /) -> Any:
        self._meter.done += len(data)
        return self._sink.write(data)


def expected_sizes(parent: mf.Manifest) -> dict[str, int]:
    """What each object of an incremental on ``parent`` should weigh, for an ETA: the parent's
    dumps and states (whole every time), and its archives only when the parent is itself an
    incremental (a full's archive says nothing about an incremental's)."""
    return {o.name: o.size for o in parent.objects if o.kind != "files" or parent.level > 0}
