"""Bytes in motion: remote stdout -> (zstd) -> age -> sha256 -> repository, and back, in constant memory."""

from __future__ import annotations

import hashlib
from typing import Any, BinaryIO, Protocol, cast

import attrs

from recipes import agestream
from recipes.errors import ConfigError, StepFailed, VerifyError

CHUNK = 1 << 20
# An identity file is a few lines; anything larger is the wrong file.
IDENTITY_MAX = 1 << 16


class Readable(Protocol):
    """Anything with ``read(n)`` that returns ``b""`` at the end."""

    def read(self, n: int = -1, /) -> bytes: ...


class Writable(Protocol):
    """Anything with ``write(b)``."""

    def write(self, data: bytes, /) -> Any: ...


@attrs.frozen
class Stored:
    """What storing one object produced: stored size and sha256 of the stored bytes."""

    size: int
    sha256: str
    compressed_remotely: bool


class _NonEmpty:
    """Passes the host's zstd frames through and remembers whether they decode to at least one byte."""

    def __init__(self, source: Readable) -> None:
        import zstandard

        self._source = source
        self._probe: Any = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        self.seen = False

    def read(self, n: int = -1, /) -> bytes:
        data = self._source.read(n)
        if data and not self.seen:
            try:
                self.seen = bool(self._probe.decompress(data))
            except Exception as exc:  # zstandard.ZstdError
                raise StepFailed(f"the host's zstd stream is corrupt: {exc}") from exc
            if self.seen:
                self._probe = None  # its window (about 1 MB) is not needed any more
        return data


class _Tapped:
    """Feeds the plain bytes of a passing stream to fact taps (``facts.py``): as they are, or
    decompressed when the host compressed them. The work runs in a thread of its own behind a
    queue bounded in bytes (``LIMIT``; one chunk always fits), so it overlaps with encryption
    instead of adding to it, in constant memory; a tap's failure never fails the stream (its
    facts are then left out), and a worker that died never blocks the stream."""

    LIMIT = 1 << 20

    def __init__(self, source: Readable, taps: list[Any], compressed: bool) -> None:
        import collections
        import threading

        self._source = source
        self._taps = taps
        self._compressed = compressed
        self._cond = threading.Condition()
        self._chunks: collections.deque[bytes] = collections.deque()
        self.queued = 0  # bytes handed over and not yet taken by the worker
        self._ended = False  # no chunk comes after the ones queued
        self._gone = False  # the worker stopped: nothing waits for it any more
        self._thread = threading.Thread(target=self._work, name="facts", daemon=True)
        self._thread.start()

    def _put(self, data: bytes) -> None:
        with self._cond:
            while self.queued and self.queued + len(data) > self.LIMIT and not self._gone:
                self._cond.wait()
            if not self._gone:
                self._chunks.append(data)
                self.queued += len(data)
                self._cond.notify_all()

    def _get(self) -> bytes | None:
        with self._cond:
            while not self._chunks and not self._ended:
                self._cond.wait()
            if not self._chunks:
                return None
            data = self._chunks.popleft()
            self.queued -= len(data)
            self._cond.notify_all()
            return data

    def _end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _work(self) -> None:
        complete = False
        try:
            self._feed()
            complete = True
        finally:  # even on an error no tap catches: the stream goes on, these facts are left out
            with self._cond:
                self._gone = True
                self._chunks.clear()
                self.queued = 0
                self._cond.notify_all()
            if not complete:
                self._taps.clear()

    def _feed(self) -> None:
        import zstandard

        taps = self._taps

        class Feed:
            def write(self, plain: bytes) -> int:
                for tap in taps:
                    tap.feed(plain)
                return len(plain)

        # A stream writer hands the plain bytes over in 128 KiB pieces: memory stays bounded
        # however well a chunk compresses.
        sink = (
            zstandard.ZstdDecompressor().stream_writer(cast(Any, Feed()), write_size=1 << 17)
            if self._compressed
            else None
        )
        broken = False
        while (data := self._get()) is not None:
            if broken:
                continue
            try:
                if sink is not None:
                    sink.write(data)
                else:
                    Feed().write(data)
            except Exception:  # a corrupt stream is reported by the store; facts are dropped
                broken = True
                taps.clear()

    def read(self, n: int = -1, /) -> bytes:
        data = self._source.read(n)
        if data:
            self._put(data)
        else:
            self._end()
        return data

    def close(self) -> None:
        """Wait for the taps to have seen everything (after the stream ended)."""
        self._end()
        self._thread.join()


class _Compressing:
    """Compresses a raw stream with zstd on the controller (for hosts without zstd)."""

    def __init__(self, source: Readable, level: int) -> None:
        import zstandard

        self._reader = zstandard.ZstdCompressor(level=level, threads=-1).stream_reader(
            source,  # type: ignore[arg-type]
            read_size=CHUNK,
        )

    def read(self, n: int = -1, /) -> bytes:
        return bytes(self._reader.read(CHUNK if n is None or n < 0 else max(n, CHUNK)))


class _Buffered:
    """Serves small reads (age asks for 8 KiB) out of large upstream chunks."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._buf = memoryview(b"")

    def read(self, n: int = -1, /) -> bytes:
        if not self._buf:
            self._buf = memoryview(self._source.read(CHUNK))
            if not self._buf:
                return b""
        if n is None or n < 0:
            n = len(self._buf)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out.tobytes()

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Guard:
    """Remembers the first exception raised inside a callback that age's Rust code made.

    pyrage turns any exception from ``read``/``write`` into its own error; the original
    (KeyboardInterrupt on SIGTERM, a lost connection, a full disk) must be the one raised.
    """

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def wrap_read(self, source: Readable) -> Readable:
        guard = self

        class Reader:
            def read(self, n: int = -1, /) -> bytes:
                try:
                    return source.read(n)
                except BaseException as exc:
                    guard.error = guard.error or exc
                    raise

        return Reader()

    def reraise(self, fallback: BaseException) -> BaseException:
        return self.error if self.error is not None else fallback


class _Hashing:
    """Counts and hashes everything written through it."""

    def __init__(self, sink: Writable) -> None:
        self._sink = sink
        self.sha = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None

    def write(self, data: bytes, /) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.error is not None:
            raise self.error
        try:
            self._sink.write(data)
        except BaseException as exc:
            self.error = exc
            raise
        return len(data)

    def flush(self) -> None:
        pass


def store(
    source: Readable,
    sink: Writable,
    recipients: list[str],
    *,
    compressed: bool,
    level: int = 1,
    taps: list[Any] | None = None,
) -> Stored:
    """Encrypt a stream to age recipients into ``sink``, zstd-compressing it here unless ``compressed``.

    ``compressed`` says the host already ran zstd (the engine decided where zstd runs, so
    nothing is guessed from the bytes). Raises ``StepFailed`` when the stream decodes to
    nothing: an empty dump is a failed dump.
    """

    parsed = [_recipient(r) for r in recipients]
    keys = [agestream.x25519_key(r) for r in recipients]
    tapped = _Tapped(source, taps, compressed) if taps else None
    if tapped is not None:
        source = tapped
    counted = _Counting(source)  # bytes from the host, before any compression here
    probe = _NonEmpty(counted) if compressed else None
    upstream: Readable = probe if probe is not None else _Compressing(counted, level)
    try:
        if keys and all(keys):  # X25519 only: encrypted here, off the GIL (agestream.py)
            hashing = _Hashing(sink)
            agestream.encrypt(upstream.read, hashing.write, cast(list[bytes], keys), CHUNK)
            return _stored(hashing, probe, counted, compressed)
        return _encrypt(upstream, sink, parsed, probe, counted, compressed)
    finally:
        if tapped is not None:
            tapped.close()


def _stored(hashing: _Hashing, probe: _NonEmpty | None, counted: _Counting, compressed: bool) -> Stored:
    empty = not probe.seen if probe is not None else counted.raw_seen == 0
    if empty:
        raise StepFailed("the command produced no output")
    return Stored(size=hashing.size, sha256=hashing.sha.hexdigest(), compressed_remotely=compressed)


def _encrypt(
    upstream: Readable,
    sink: Writable,
    parsed: list[Any],
    probe: _NonEmpty | None,
    counted: _Counting,
    compressed: bool,
) -> Stored:
    import pyrage

    hashing = _Hashing(sink)
    guard = _Guard()
    try:
        pyrage.encrypt_io(_Buffered(guard.wrap_read(upstream)), hashing, parsed)
    except (pyrage.EncryptError, OSError) as exc:
        raise guard.reraise(hashing.error or StepFailed(f"encryption failed: {exc}")) from None
    # pyrage ignores an error from the last write (its finish step): look for it ourselves.
    if hashing.error is not None:
        raise hashing.error
    return _stored(hashing, probe, counted, compressed)


class _Counting:
    """Remembers whether any byte came through (for the raw, controller-compressed path)."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self.raw_seen = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._source.read(n)
        self.raw_seen += len(data)
        return data


def _recipient(text: str) -> Any:
    import pyrage

    text = text.strip()
    if text.startswith("age1"):
        return pyrage.x25519.Recipient.from_str(text)
    return pyrage.ssh.Recipient.from_str(text)


def load_identities(path: str) -> list[Any]:
    """Read age identities (``AGE-SECRET-KEY-1...`` lines; ``#`` comments) from a file.

    Anything else (missing, a directory, binary, empty, a public key by mistake, a damaged key)
    is one ConfigError line naming the file and line, and never quoting the secret.
    """
    import pyrage

    where = f"identity file {path}"
    try:
        with open(path, "rb") as fh:
            data = fh.read(IDENTITY_MAX + 1)
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory, not an age identity file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    if len(data) > IDENTITY_MAX:
        raise ConfigError(f"{where}: too large for an age identity file (over {IDENTITY_MAX} bytes)")
    if data.startswith(b"age-encryption.org/"):
        raise ConfigError(
            f"{where}: is itself age-encrypted; passphrase-protected identities are not supported: "
            "decrypt it with `age -d` into a 0600 file"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{where}: not a text file; expected AGE-SECRET-KEY-1... lines (from `recipes init`)"
        ) from None
    identities = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("AGE-SECRET-KEY-"):
            try:
                identities.append(pyrage.x25519.Identity.from_str(line))
            except Exception:  # pyrage.IdentityError; its text could echo the secret
                raise ConfigError(
                    f"{where}: line {number} is not a valid age secret key (damaged?)"
                ) from None
        elif line.startswith("age1"):
            raise ConfigError(
                f"{where}: line {number} is an age public key (a recipient); restores need the "
                "secret key, AGE-SECRET-KEY-1..."
            )
        else:
            raise ConfigError(f"{where}: line {number} is not an age secret key (AGE-SECRET-KEY-1...)")
    if not identities:
        raise ConfigError(f"{where}: holds no age secret key (AGE-SECRET-KEY-1...)")
    return identities


class _VerifyingReader:
    """Hashes the stored bytes as they are read, to compare with the manifest at the end."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._fh.read(CHUNK if n is None or n < 0 else max(n, CHUNK))
        self.sha.update(data)
        self.size += len(data)
        return data


class _Output:
    """Hands decrypted bytes to ``sink``, zstd-decoding them first unless the host will."""

    def __init__(self, sink: Writable, decompress: bool) -> None:
        import zstandard

        # Concatenated frames are valid zstd (a host may compress in several runs).
        self._obj = (
            zstandard.ZstdDecompressor().decompressobj(read_across_frames=True) if decompress else None
        )
        self._sink = sink
        self.size = 0
        self.error: BaseException | None = None

    def write(self, data: bytes, /) -> int:
        if self.error is not None:
            raise self.error
        try:
            out = self._obj.decompress(data) if self._obj is not None else data
            if out:
                self._sink.write(out)
                self.size += len(out)
        except BaseException as exc:
            self.error = self.error or exc
            raise
        return len(data)

    def flush(self) -> None:
        pass


def fetch(
    fh: BinaryIO, sink: Writable, identities: list[Any], sha256: str, size: int, decompress: bool = True
) -> int:
    """Decrypt (and, unless the host will, decompress) a stored object into ``sink``.

    The stored bytes' size and sha256 are checked against the manifest as they stream by.
    Returns the number of bytes written to ``sink``.
    """
    import pyrage

    reader = _VerifyingReader(fh)
    out = _Output(sink, decompress)
    guard = _Guard()
    try:
        pyrage.decrypt_io(_Buffered(guard.wrap_read(reader)), out, identities)
    except (pyrage.DecryptError, OSError) as exc:
        if out.error is not None:
            raise out.error from None
        if guard.error is not None:
            raise guard.error from None
        raise VerifyError(f"cannot decrypt: {exc} (wrong identity file, or a damaged object)") from exc
    if out.error is not None:  # an error from the last write, which pyrage may not report
        raise out.error
    if reader.size != size or reader.sha.hexdigest() != sha256:
        raise VerifyError(
            f"stored object does not match its manifest (size {reader.size} != {size} or sha256 differs)"
        )
    return out.size
