"""The stream layer on its own: compression either side, empty output, wrong key, tampering."""

from __future__ import annotations

import io
import os

import pyrage
import pytest
import zstandard

from recipes import stream
from recipes.errors import StepFailed, VerifyError


def _key() -> tuple[str, object]:
    ident = pyrage.x25519.Identity.generate()
    return str(ident.to_public()), ident


class Chunks:
    """A source that returns its data in uneven chunks, like a network channel."""

    def __init__(self, data: bytes, size: int = 70_001) -> None:
        self._data = memoryview(data)
        self._size = size

    def read(self, n: int = -1, /) -> bytes:
        out, self._data = self._data[: self._size], self._data[self._size :]
        return out.tobytes()


@pytest.mark.parametrize("remote_zstd", [False, True])
def test_round_trip(remote_zstd: bool) -> None:
    recipient, ident = _key()
    plain = os.urandom(300_000) + b"text " * 200_000
    wire = zstandard.ZstdCompressor(level=1).compress(plain) if remote_zstd else plain
    stored = io.BytesIO()
    info = stream.store(Chunks(wire), stored, [recipient], compressed=remote_zstd)
    assert info.compressed_remotely is remote_zstd
    assert info.size == len(stored.getvalue())
    assert stored.getvalue().startswith(b"age-encryption.org/v1")
    out = io.BytesIO()
    n = stream.fetch(io.BytesIO(stored.getvalue()), out, [ident], info.sha256, info.size)
    assert out.getvalue() == plain and n == len(plain)


@pytest.mark.parametrize(
    ("wire", "compressed"), [(b"", False), (b"", True), (zstandard.ZstdCompressor().compress(b""), True)]
)
def test_empty_output_fails(wire: bytes, compressed: bool) -> None:
    recipient, _ = _key()
    with pytest.raises(StepFailed, match="no output"):
        stream.store(Chunks(wire), io.BytesIO(), [recipient], compressed=compressed)


def test_raw_data_that_looks_like_zstd_is_compressed_and_comes_back_as_it_was() -> None:
    """Where zstd ran is decided by the engine, never guessed from the first bytes."""
    recipient, ident = _key()
    plain = zstandard.ZstdCompressor().compress(b"an already compressed file " * 1000)
    stored = io.BytesIO()
    info = stream.store(Chunks(plain), stored, [recipient], compressed=False)
    out = io.BytesIO()
    stream.fetch(io.BytesIO(stored.getvalue()), out, [ident], info.sha256, info.size)
    assert out.getvalue() == plain


def test_a_host_stream_that_is_not_zstd_fails() -> None:
    recipient, _ = _key()
    with pytest.raises(StepFailed, match="corrupt"):
        stream.store(Chunks(b"bash: zstd: command not found\n"), io.BytesIO(), [recipient], compressed=True)


def test_wrong_identity_and_tampering_are_verify_errors() -> None:
    recipient, ident = _key()
    stored = io.BytesIO()
    info = stream.store(Chunks(b"x" * 100_000), stored, [recipient], compressed=False)
    _, other = _key()
    with pytest.raises(VerifyError, match="cannot decrypt"):
        stream.fetch(io.BytesIO(stored.getvalue()), io.BytesIO(), [other], info.sha256, info.size)
    data = bytearray(stored.getvalue())
    data[-20] ^= 1
    with pytest.raises(VerifyError):
        stream.fetch(io.BytesIO(bytes(data)), io.BytesIO(), [ident], info.sha256, info.size)
    with pytest.raises(VerifyError):  # truncated
        stream.fetch(io.BytesIO(bytes(data[:-100])), io.BytesIO(), [ident], info.sha256, info.size)


def test_errors_raised_inside_age_callbacks_surface_unchanged() -> None:
    recipient, _ = _key()

    class Interrupted:
        def read(self, n: int = -1, /) -> bytes:
            raise KeyboardInterrupt("signal 15")

    with pytest.raises(KeyboardInterrupt):
        stream.store(Interrupted(), io.BytesIO(), [recipient], compressed=False)

    class DiskFull:
        def write(self, data: bytes, /) -> int:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        stream.store(Chunks(b"y" * 100_000), DiskFull(), [recipient], compressed=False)


def test_a_sink_that_fails_on_restore_is_reported() -> None:
    recipient, ident = _key()
    stored = io.BytesIO()
    info = stream.store(Chunks(b"z" * 100_000), stored, [recipient], compressed=False)

    class Broken:
        def write(self, data: bytes, /) -> int:
            raise BrokenPipeError("remote tar exited")

    with pytest.raises(BrokenPipeError):
        stream.fetch(io.BytesIO(stored.getvalue()), Broken(), [ident], info.sha256, info.size)


def test_fetch_refuses_a_valid_object_whose_sha256_is_not_the_manifests() -> None:
    """Another valid encryption of the same bytes (as a swap from another snapshot would be):
    decrypts fine, same size, but it is not the object the signed manifest names."""
    recipient, ident = _key()
    plain = b"dump " * 10_000
    first, second = io.BytesIO(), io.BytesIO()
    info = stream.store(Chunks(plain), first, [recipient], compressed=False)
    stream.store(Chunks(plain), second, [recipient], compressed=False)
    assert first.getvalue() != second.getvalue()
    with pytest.raises(VerifyError, match="does not match its manifest"):
        stream.fetch(
            io.BytesIO(second.getvalue()), io.BytesIO(), [ident], info.sha256, len(second.getvalue())
        )


class SlowTap:
    """A fact tap that takes its time and records how much the stream had queued for it."""

    def __init__(self, tapped: list[stream._Tapped]) -> None:
        self.seen = bytearray()
        self.most = 0
        self._tapped = tapped

    def feed(self, chunk: bytes) -> None:
        import time

        time.sleep(0.002)
        self.most = max(self.most, self._tapped[0].queued if self._tapped else 0)
        self.seen += chunk

    def result(self) -> dict[str, object]:
        return {}


def test_the_facts_queue_is_bounded_in_bytes_and_the_taps_see_every_byte() -> None:
    data = os.urandom(12 << 20)
    holder: list[stream._Tapped] = []
    tap = SlowTap(holder)
    tapped = stream._Tapped(Chunks(data, 1 << 20), [tap], compressed=False)
    holder.append(tapped)
    out = bytearray()
    while chunk := tapped.read(1 << 20):
        out += chunk
        assert tapped.queued <= stream._Tapped.LIMIT
    tapped.close()
    assert out == data and tap.seen == data  # nothing dropped either side
    assert 0 < tap.most <= stream._Tapped.LIMIT


class DyingTap:
    """A tap whose error no handler catches (as a bug in a tap would be): the worker thread ends."""

    def feed(self, chunk: bytes) -> None:
        raise KeyboardInterrupt("a tap gave up")

    def result(self) -> dict[str, object]:
        return {}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_facts_worker_that_died_never_blocks_the_stream_and_its_facts_are_left_out() -> None:
    import threading

    recipient, _ = _key()
    data = os.urandom(10 << 20)
    taps: list[object] = [DyingTap()]
    done: list[stream.Stored] = []
    worker = threading.Thread(
        target=lambda: done.append(
            stream.store(Chunks(data, 1 << 20), io.BytesIO(), [recipient], compressed=False, taps=taps)
        ),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=30)
    assert done, "the stream stalled behind a dead facts thread"
    assert taps == []  # left out, not half-counted
