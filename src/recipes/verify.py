"""``recipes verify``: check snapshots without restoring them.

Without a key: every manifest's signature and place, its chain, and each object's size and
sha256. With ``deep`` (and the age identity): each object is also decrypted and decompressed,
archives are listed by GNU tar and dumps are checked at both ends, writing nothing anywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import queue
import re
import shutil
import subprocess
import threading
from collections.abc import Generator
from typing import Any, cast

import attrs

from recipes import chain, readahead, stream
from recipes import manifest as mf
from recipes.errors import RecipeError, VerifyError
from recipes.repository import Listed, Repository
from recipes.trust import Trust

# How each engine's dump starts and ends when it is complete (tail: the dumper's last words).
DUMP_ENDS = {
    "postgresql": (rb"PostgreSQL database (cluster )?dump", rb"PostgreSQL database (cluster )?dump complete"),
    "mysql": (rb"(MySQL|MariaDB) dump", rb"-- Dump completed"),
    "sqlite": (rb"PRAGMA foreign_keys=OFF;|BEGIN TRANSACTION;", rb"COMMIT;\s*$"),
}
EDGE = 64 << 10


@attrs.frozen
class Problem:
    """One thing wrong with a snapshot: which object (None: the manifest) and why."""

    snapshot: str
    object: str | None
    reason: str

    def line(self) -> str:
        where = f"{self.object} of snapshot {self.snapshot}" if self.object else f"snapshot {self.snapshot}"
        return f"{where}: {self.reason}"


@attrs.frozen
class Report:
    """What verifying one snapshot found."""

    recipe: str
    host: str
    snapshot: str
    objects: int
    bytes: int
    deep: bool
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    repo: Repository,
    item: Listed,
    trust: Trust,
    *,
    deep: bool = False,
    identities: list[Any] | None = None,
    identity_file: str | None = None,
) -> Report:
    """Check one snapshot; problems are collected, never raised (except storage failures)."""
    m = item.manifest
    problems: list[Problem] = []
    reason = trust.problem(item)
    if reason is not None:
        problems.append(Problem(m.snapshot, None, reason))
    else:
        try:
            chain.resolve(m, trust.lookup(lambda sid: repo.load_listed(m.recipe, m.host, sid)))
        except (RecipeError, ValueError) as exc:
            problems.append(Problem(m.snapshot, None, f"its chain: {exc}"))
    read_deep = deep and reason is None
    abort = _Abort()

    def check(obj: mf.StoredObject) -> Problem | None:
        # Deep reads each object once: the decrypting pass checks size and sha256 as it goes (and
        # writes nothing anywhere). Only a bad object is read again, to name the cause precisely.
        stoppable = cast(Repository, _Stoppable(repo, abort.event))
        why = _deep(stoppable, m, obj, identities or [], identity_file, abort) if read_deep else None
        if abort.event.is_set():
            return None  # another object's failure or an interrupt is raised instead
        if why is not None or not read_deep:
            try:
                repo.verify_objects(m, [obj], stopped=abort.event.is_set)
            except VerifyError as exc:
                if abort.event.is_set():
                    return None  # a read cut short by the stop: not this object's fault
                return Problem(m.snapshot, obj.path, str(exc).split(": ", 1)[-1])
        return Problem(m.snapshot, obj.path, why) if why is not None else None

    if read_deep and len(m.objects) > 1:
        found = _together(m.objects, check, abort)
    else:
        found = [check(obj) for obj in m.objects]
    problems += [p for p in found if p is not None]
    total = sum(obj.size for obj in m.objects)
    return Report(m.recipe, m.host, m.snapshot, len(m.objects), total, deep, tuple(problems))


class _Stopped(RecipeError):
    """The snapshot's check was stopped (another object failed, or an interrupt)."""


class _Stoppable:
    """The repository as ``_deep`` reads it, with reads that stop once ``event`` is set: the
    in-process paths (no ``age``/``zstd`` programs) give up at the next chunk, as the programs'
    feed does, instead of reading a whole archive after the snapshot's check has failed."""

    def __init__(self, repo: Repository, event: threading.Event) -> None:
        self._repo = repo
        self._event = event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repo, name)

    @contextlib.contextmanager
    def open_object(self, m: mf.Manifest, obj: mf.StoredObject, **kw: Any) -> Any:
        with self._repo.open_object(m, obj, **kw) as fh:
            yield _StoppableFile(fh, self._event)


class _StoppableFile:
    def __init__(self, fh: Any, event: threading.Event) -> None:
        self._fh = fh
        self._event = event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def read(self, n: int = -1, /) -> bytes:
        if self._event.is_set():
            raise _Stopped("stopped")
        data: bytes = self._fh.read(n)
        return data


# Objects read at once by ``verify --deep``: the big archive streams while the small ones (the
# tar state, dumps) are checked beside it; more would only share the same two cores.
TOGETHER = 2


class _Abort:
    """What a failed or interrupted snapshot check stops: the running programs and the reads."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def add(self, procs: list[subprocess.Popen[bytes]]) -> None:
        with self._lock:
            self._procs += procs
            if self.event.is_set():
                self._kill(procs)

    def fire(self) -> None:
        with self._lock:
            self.event.set()
            self._kill(self._procs)

    @staticmethod
    def _kill(procs: list[subprocess.Popen[bytes]]) -> None:
        for p in procs:
            with contextlib.suppress(OSError):
                p.kill()


def _together(
    objects: tuple[mf.StoredObject, ...] | list[mf.StoredObject],
    check: Any,
    abort: _Abort,
) -> list[Problem | None]:
    """``check`` each object, ``TOGETHER`` at a time, the biggest first (the small ones run beside
    it); results in the manifest's order. A failure or an interrupt stops the rest, then is raised."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    order = sorted(range(len(objects)), key=lambda i: -objects[i].size)
    pool = ThreadPoolExecutor(TOGETHER, thread_name_prefix="verify")
    futures: dict[int, Any] = {}
    try:
        for i in order:
            futures[i] = pool.submit(check, objects[i])
        for done in wait(futures.values(), return_when=FIRST_EXCEPTION).done:
            done.result()  # the first failure is raised now, not once the slowest one is done
        return [futures[i].result() for i in range(len(objects))]
    except BaseException:
        abort.fire()
        for f in futures.values():
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True)


def _deep(
    repo: Repository,
    m: mf.Manifest,
    obj: mf.StoredObject,
    identities: list[Any],
    identity_file: str | None = None,
    abort: _Abort | None = None,
) -> str | None:
    """Decrypt and decompress one object and judge its content; the reason it is bad, or None.

    With ``identity_file`` and the ``age`` and ``zstd`` programs on PATH they do the work, in
    processes of their own (as the shell pipeline would); otherwise it is done in-process.
    """
    sink = _Edges() if obj.kind == "dump" else _Digest()
    try:
        if identity_file is not None and shutil.which("age") and shutil.which("zstd"):
            why = _through_tools(repo, m, obj, identity_file, None if obj.kind == "files" else sink, abort)
            if why is not None or obj.kind == "files":
                return why
        elif obj.kind == "files":
            return _list_archive(repo, m, obj, identities)
        else:
            with repo.open_object(m, obj) as fh:
                stream.fetch(fh, sink, identities, obj.sha256, obj.size)
    except RecipeError as exc:
        return str(exc)
    if isinstance(sink, _Digest):
        if obj.content_sha256 and sink.sha.hexdigest() != obj.content_sha256:
            return "its content does not match the manifest's content_sha256"
        return None
    ends = DUMP_ENDS.get(obj.engine or "")
    if ends is None:
        return None if sink.size else "the dump is empty"
    head, tail = ends
    if not re.search(head, bytes(sink.head)):
        return f"does not start like a {obj.engine} dump"
    if not re.search(tail, bytes(sink.tail)):
        return f"does not end like a complete {obj.engine} dump (truncated when it was made?)"
    return None


TAR_LIST = ["tar", "--list", "--file=-", "--numeric-owner"]


def _through_tools(
    repo: Repository,
    m: mf.Manifest,
    obj: mf.StoredObject,
    identity_file: str,
    sink: Any,
    abort: _Abort | None = None,
) -> str | None:
    """``age -d | zstd -d`` into ``sink`` (None: into ``tar --list``), fed by a thread that reads
    the stored object once and hashes it on the way; the reason it is bad, or None."""
    import tempfile

    argvs = [["age", "-d", "-i", identity_file], ["zstd", "-q", "-d", "-c"]]
    if sink is None:
        argvs.append(TAR_LIST)
    with contextlib.ExitStack() as files:
        errs = [files.enter_context(tempfile.TemporaryFile()) for _ in argvs]
        feed: _Feed | _FileFeed
        fd = _file_of(files, repo, m, obj) if repo.local else None
        feed = (
            _FileFeed(fd, abort.event if abort else None, obj.size)
            if fd is not None
            else _Feed(repo, m, obj, abort.event if abort else None)
        )
        codes = _pipeline(argvs, errs, feed, sink, abort)
        said = []
        for f in errs:
            f.seek(0)
            said.append(f.read(4096).decode("utf-8", "replace"))
    if feed.error is not None:
        raise feed.error
    if feed.size != obj.size or feed.sha.hexdigest() != obj.sha256:
        return f"stored object does not match its manifest (size {feed.size} != {obj.size} or sha256 differs)"
    whats = ["cannot decrypt", "cannot decompress", "GNU tar cannot list it"]
    for code, text, what in zip(codes, said, whats, strict=False):
        if code != 0:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            return f"{what}: {lines[0] if lines else 'exit ' + str(code)}"
    return None


def _file_of(
    files: contextlib.ExitStack, repo: Repository, m: mf.Manifest, obj: mf.StoredObject
) -> int | None:
    """The open file's descriptor of a local object (held open by ``files``), or None where the
    filesystem gives no real file (a wrapped or cached one): then it is read through a pipe."""
    import io
    import os
    import stat

    # Only a regular file of the manifest's size goes to age: a FIFO in its place would block the
    # open, a device (``/dev/zero``) would feed age's header search until memory runs out.
    repo.check_sizes(m, [obj])
    fh = files.enter_context(repo.open_object(m, obj))
    try:
        fd = fh.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    if not isinstance(fd, int):
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != obj.size:
        raise VerifyError(
            f"snapshot {m.snapshot}: {obj.path} is not a regular file of {obj.size} bytes (replaced)"
        )
    return fd


def _pipeline(
    argvs: list[list[str]],
    errs: list[Any],
    feed: _Feed | _FileFeed,
    sink: Any,
    abort: _Abort | None = None,
) -> list[int]:
    """Run ``argvs`` as one pipeline fed by ``feed``; the last one's stdout goes to ``sink``
    (None: nowhere). Every process is killed if anything goes wrong here; their exit codes."""
    procs: list[subprocess.Popen[bytes]] = []
    end = subprocess.DEVNULL if sink is None else subprocess.PIPE
    try:
        for i, argv in enumerate(argvs):
            procs.append(
                subprocess.Popen(
                    argv,
                    stdin=feed.stdin if i == 0 else procs[-1].stdout,
                    stdout=end if i == len(argvs) - 1 else subprocess.PIPE,
                    stderr=errs[i],
                )
            )
            if abort is not None:
                abort.add(procs[-1:])
            if i > 0:
                prev = procs[-2].stdout
                assert prev is not None
                prev.close()  # the next process holds it now
        # 1 MiB pipes between the stages: fewer wake-ups of each program than with 64 KiB
        for pipe in [procs[0].stdin] + [p.stdout for p in procs]:
            if pipe is not None and not pipe.closed:
                _widen(pipe)
        feed.start(procs[0].stdin)
        out = procs[-1].stdout
        if out is not None:
            while chunk := out.read(1 << 20):
                sink.write(chunk)
        feed.join()
        return [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            p.kill()
            p.wait()
        feed.stop()
        raise


def _widen(pipe: Any) -> None:
    """A 1 MiB pipe buffer where the kernel allows it (Linux); a no-op elsewhere."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)


# Bytes of each ranged GET of the feed: s3fs's read-ahead cache costs about a quarter less CPU
# per byte with 8 MiB than with 4 MiB (16 MiB: a little less again, but 50 MB more peak RSS;
# 32 MiB was slower; see docs/performance.md).
FEED_BLOCK = 8 << 20
# Chunks (1 MiB) the feed's reader may run ahead of the pipe.
AHEAD = 8


class _Hashing:
    """What the pipeline's first program is fed from, hashed by a thread of its own: ``size``
    and ``sha`` once joined, ``error`` if the reading failed; ``stop`` gives up."""

    def __init__(self, abort: threading.Event | None = None) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._abort = abort if abort is not None else self._stop

    def _stopped(self) -> bool:
        return self._stop.is_set() or self._abort.is_set()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """Give up (the pipeline failed or was interrupted): stop reading, then wait."""
        self._stop.set()
        self.join()


class _Feed(_Hashing):
    """Reads a stored object once, hashing it, into a pipe; once the reader stops reading, the
    rest is still read and hashed, so size and sha256 are always checked whole."""

    stdin = subprocess.PIPE

    def __init__(
        self, repo: Repository, m: mf.Manifest, obj: mf.StoredObject, abort: threading.Event | None = None
    ) -> None:
        super().__init__(abort)
        self._where = (repo, m, obj)

    def start(self, pipe: Any) -> None:
        self._thread = threading.Thread(target=self._work, args=(_UntilClosed(pipe),), daemon=True)
        self._thread.start()

    def _work(self, pipe: _UntilClosed) -> None:
        try:
            repo, m, obj = self._where
            with repo.open_object(m, obj, block_size=FEED_BLOCK) as fh:
                for chunk in self._ahead(fh):
                    self.sha.update(chunk)
                    self.size += len(chunk)
                    pipe.write(chunk)
        except BaseException as exc:
            self.error = exc
        finally:
            pipe.close()

    def _ahead(self, fh: Any) -> Generator[bytes, None, None]:
        """``fh``'s chunks, read up to ``AHEAD`` chunks ahead: the next GET is under way while
        this chunk goes into the pipe (age would wait for it otherwise)."""
        return readahead.chunks(fh, ahead=AHEAD, stopped=self._stopped)


class _FileFeed(_Hashing):
    """A local object: ``age`` reads the open file itself (its stdin), and a thread hashes the
    same open file with ``pread``, so no byte is copied through this process into a pipe; both
    read one inode, whatever happens to the path meanwhile. Hashing stops one byte past
    ``limit`` (the manifest's size: the check fails either way), so a device in an object's place
    (``/dev/zero``) cannot keep it reading; a read error is the object's verdict (exit 3)."""

    def __init__(self, fd: int, abort: threading.Event | None = None, limit: int | None = None) -> None:
        super().__init__(abort)
        self.stdin = fd
        self._limit = limit

    def start(self, pipe: Any) -> None:
        self._thread = threading.Thread(target=self._work, name="hash", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        import os

        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while not self._stopped():
                if self._limit is not None and self.size > self._limit:
                    break
                n = os.preadv(self.stdin, [buf], self.size)
                if not n:
                    break
                self.sha.update(view[:n])
                self.size += n
        except OSError as exc:
            self.error = VerifyError(f"cannot read it: {exc.strerror or exc}")
        except BaseException as exc:
            self.error = exc


def _list_archive(
    repo: Repository, m: mf.Manifest, obj: mf.StoredObject, identities: list[Any]
) -> str | None:
    """GNU tar lists the archive (``tar -t``): a damaged or non-tar stream fails it."""
    proc = subprocess.Popen(
        TAR_LIST,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stderr is not None
    _widen(proc.stdin)  # fewer wake-ups of tar: a 1 MiB pipe
    sink = _Unzstd(_UntilClosed(proc.stdin))
    try:
        with repo.open_object(m, obj) as fh:
            stream.fetch(fh, sink, identities, obj.sha256, obj.size, decompress=False)
        sink.close()
    except BaseException:
        sink.abandon()
        proc.kill()
        proc.wait()
        raise
    err = proc.stderr.read().decode("utf-8", "replace")
    if proc.wait() != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        return f"GNU tar cannot list it: {lines[0] if lines else 'exit ' + str(proc.returncode)}"
    return None


class _Unzstd:
    """Decompresses zstd into ``sink`` in a thread of its own behind a bounded queue, so
    decompressing and feeding tar overlap with decrypting (zstd and pipe writes release the GIL)."""

    DEPTH = 4
    BATCH = 1 << 20

    def __init__(self, sink: _UntilClosed) -> None:
        self._sink = sink
        self._batch = bytearray()
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="unzstd", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        import zstandard

        writer: Any = zstandard.ZstdDecompressor().stream_writer(cast(Any, self._sink), write_size=1 << 20)
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                writer.write(data)
            except Exception as exc:  # a corrupt frame: reported once the stream ended
                self._error = exc
        if self._error is None:
            try:
                writer.flush()
            except Exception as exc:
                self._error = exc

    def write(self, data: bytes, /) -> int:
        # decrypt hands over small pieces: pass them on in 1 MiB batches (fewer queue hand-offs)
        self._batch += data
        if len(self._batch) >= self.BATCH:
            self._queue.put(bytes(self._batch))
            self._batch.clear()
        return len(data)

    def close(self) -> None:
        """Wait for the rest; a zstd error becomes the archive's verify problem."""
        if self._batch:
            self._queue.put(bytes(self._batch))
            self._batch.clear()
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise VerifyError(f"cannot decompress: {self._error}")
        self._sink.close()

    def abandon(self) -> None:
        self._queue.put(None)
        self._thread.join()


class _UntilClosed:
    """tar's stdin; once tar stops reading (at its end-of-archive blocks, or on an error) the rest
    is discarded, so the stream still runs to its end and its size and sha256 are checked."""

    def __init__(self, pipe: Any) -> None:
        self._pipe: Any = pipe

    def write(self, data: bytes, /) -> int:
        if self._pipe is not None:
            try:
                self._pipe.write(data)
            except BrokenPipeError:
                self._pipe = None
        return len(data)

    def close(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(BrokenPipeError):
                self._pipe.close()


class _Edges:
    """Keeps the first and last ``EDGE`` bytes of a stream."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.size += len(data)
        if len(self.head) < EDGE:
            self.head += data[: EDGE - len(self.head)]
        self.tail += data
        if len(self.tail) > EDGE:
            del self.tail[: len(self.tail) - EDGE]
        return len(data)


class _Digest:
    """sha256 of the plain content (tar states carry it in the manifest)."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()

    def write(self, data: bytes, /) -> int:
        self.sha.update(data)
        return len(data)
