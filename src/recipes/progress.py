"""What a run tells whoever watches it (the CLI's progress bars): steps starting and ending, and
bytes moving. The engine only ever adds to a counter; drawing is the watcher's business, on its
own clock. The default watcher watches nothing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

if TYPE_CHECKING:
    from recipes import manifest as mf


@runtime_checkable
class FileCounter(Protocol):
    """What counts an archive's members as its plain stream passes (``facts.TarFacts``)."""

    @property
    def files_seen(self) -> int:
        """Regular files passed so far (read from another thread: one int, never torn)."""


class Meter:
    """A byte counter one transfer adds to; ``total`` is the expected size when known. For an
    archive, ``files`` counts its members as they pass (when the controller sees its plain
    stream) and ``files_total`` is the expected count (from the previous snapshot's facts)."""

    __slots__ = ("done", "files", "files_total", "name", "total")

    def __init__(self, name: str, total: int | None = None, files_total: int | None = None) -> None:
        self.name = name
        self.total = total
        self.done = 0
        self.files: FileCounter | None = None
        self.files_total = files_total

    def __call__(self, n: int) -> None:
        self.done += n

    def count_files(self, taps: Iterable[object]) -> None:
        """Show the member count of the first tap that keeps one (none: no count is shown)."""
        self.files = next((t for t in taps if isinstance(t, FileCounter)), None)

    @property
    def files_done(self) -> int | None:
        """Members passed so far, or None when nothing counts them."""
        return self.files.files_seen if self.files is not None else None


class Progress:
    """Watches a run: subclass and override; every hook here does nothing."""

    def step(self, kind: str, name: str) -> None:
        """A step starts."""

    def step_done(self, record: mf.StepRecord) -> None:
        """A step ended well."""

    def meter(self, name: str, total: int | None = None, files_total: int | None = None) -> Meter:
        """A counter for the stored bytes of object ``name`` (written on backup, read on restore)."""
        return Meter(name, total, files_total)

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


@attrs.frozen
class Expected:
    """What each object of the coming backup should weigh (stored bytes) and, for archives, how
    many files it should carry: an ETA and a count to show, never a check."""

    sizes: dict[str, int] = attrs.Factory(dict)
    files: dict[str, int] = attrs.Factory(dict)


def expected(parent: mf.Manifest | None, previous: Sequence[mf.Manifest] = ()) -> Expected:
    """Expectations for a backup: an incremental on ``parent``, or a full (``parent`` None) after
    the snapshots ``previous`` (oldest first, as listed).

    An incremental expects the parent's dumps and states (whole every time), and its archives
    only when the parent is itself an incremental (a full's archive says nothing about an
    incremental's). A full expects the newest full's archives (a tree mostly keeps its size
    between fulls) and the newest snapshot's dumps and states. File counts come from the same
    archives' facts, when they were counted (zstd on the controller).
    """
    if parent is not None:
        like = [o for o in parent.objects if o.kind != "files" or parent.level > 0]
    else:
        newest_full = next((m for m in reversed(previous) if m.level == 0), None)
        archives = [o for o in newest_full.objects if o.kind == "files"] if newest_full else []
        latest = previous[-1].objects if previous else ()
        rest = [o for o in (newest_full.objects if newest_full else ()) if o.kind != "files"]
        like = archives + rest + [o for o in latest if o.kind != "files"]  # later ones win
    files = {
        o.name: o.facts["files"]
        for o in like
        if o.kind == "files" and type(o.facts.get("files")) is int and "error" not in o.facts
    }
    return Expected({o.name: o.size for o in like}, files)


def expected_sizes(parent: mf.Manifest) -> dict[str, int]:
    """The stored sizes ``expected`` gives for an incremental on ``parent``."""
    return expected(parent).sizes
