"""Transfers between an S3 bucket (``ops.Bucket``, e.g. Deis's store-gateway) and a snapshot object.

Backup: the bucket is listed a page at a time (``list_objects_v2``, ``PAGE`` keys), and every
object becomes one member of a tar stream built on the fly (header, then the object's bytes as
s3fs reads them, in chunks): constant memory whatever the number and sizes of the objects, and
one snapshot object per bucket. Each object's ``Content-Type`` and user metadata
(``x-amz-meta-*``, from ``head_object``) ride in its member's PAX header as
``SCHILY.xattr.user.s3.content-type`` and ``SCHILY.xattr.user.s3.meta.<name>``: read by any
POSIX tar (GNU tar ignores them, or with ``--xattrs`` sets them as the files' ``user.*``
xattrs), so the snapshot still has one object per bucket. Its facts are the object count, the
bytes and the sha256 of a deterministic sample of objects, so a drill can compare. Restore: the
tar stream is read member by member in a thread and each member is put back as an object with
its content type and metadata.

The gateway's keys are the interpreter's captured secrets (``Exec(secret=True)``): they go to
s3fs in memory only, never into a command, a log line, a plan or a manifest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

from recipes import manifest as mf
from recipes import stream
from recipes.errors import StepFailed
from recipes.ops import Bucket

log = logging.getLogger("recipes")

CHUNK = 1 << 20
SAMPLE = 16
PAGE = 1000
"""Keys per listing request: the most S3 returns; only one page is held at a time."""
CONTENT_TYPE = "SCHILY.xattr.user.s3.content-type"
META = "SCHILY.xattr.user.s3.meta."
_SALT = b"recipes.buckets.sample\0"


def filesystem(end: Bucket, secrets: dict[str, str]) -> Any:
    """An s3fs filesystem on ``end.gateway`` with the captured keys (path-style, no region)."""
    import s3fs

    access, secret = (secrets.get(name) for name in end.key_values)
    if not access or not secret:
        raise StepFailed(
            f"no gateway keys for s3://{end.bucket}: the recipe must read "
            f"{end.key_values[0]} and {end.key_values[1]} before it copies the bucket"
        )
    return s3fs.S3FileSystem(
        key=access,
        secret=secret,
        client_kwargs={"endpoint_url": end.gateway},
        # Ranged reads get the whole object's checksum from some gateways (rclone): the
        # snapshot's own sha256 covers the bytes, so botocore checks only where S3 demands it.
        config_kwargs={
            "retries": {"max_attempts": 2},
            "connect_timeout": 20,
            "read_timeout": 60,
            "response_checksum_validation": "when_required",
            "request_checksum_calculation": "when_required",
        },
        skip_instance_cache=True,
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def header(key: str, size: int, head: dict[str, Any]) -> bytes:
    """The tar header of one object: its key, size, time, content type and user metadata."""
    member = tarfile.TarInfo(key)
    member.size = size
    member.mode = 0o644
    modified: Any = head.get("LastModified")
    member.mtime = int(modified.timestamp()) if modified is not None else int(time.time())
    pax: dict[str, str] = {}
    if head.get("ContentType"):
        pax[CONTENT_TYPE] = str(head["ContentType"])
    for name, value in sorted((head.get("Metadata") or {}).items()):
        pax[META + str(name).lower()] = str(value)
    member.pax_headers = pax
    return member.tobuf(format=tarfile.PAX_FORMAT)


def put_args(member: tarfile.TarInfo) -> dict[str, Any]:
    """``ContentType``/``Metadata`` for putting a member back, from its PAX header."""
    pax = member.pax_headers
    out: dict[str, Any] = {}
    if pax.get(CONTENT_TYPE):
        out["ContentType"] = pax[CONTENT_TYPE]
    meta = {k.removeprefix(META): v for k, v in pax.items() if k.startswith(META)}
    if meta:
        out["Metadata"] = meta
    return out


class BucketTar:
    """A readable tar stream of every object of a bucket, read object by object (constant memory).

    ``facts()`` after the end: ``objects``, ``bytes`` and ``sample`` (sha256 per object key of
    the ``SAMPLE`` keys whose salted hash is smallest: the same bucket gives the same sample).
    """

    def __init__(self, fs: Any, end: Bucket) -> None:
        self._fs = fs
        self._end = end
        self._chunks = self._generate()
        self._buffer = b""
        self.objects = 0
        self.bytes = 0
        self._sample: dict[str, tuple[bytes, str]] = {}

    def facts(self) -> dict[str, Any]:
        sample = {key: digest for key, (_, digest) in sorted(self._sample.items())}
        return {"objects": self.objects, "bytes": self.bytes, "sample": sample}

    def _listing(self) -> Iterator[str]:
        """The bucket's keys in S3's order, a page at a time (never every key at once)."""
        token: str | None = None
        while True:
            more = {"ContinuationToken": token} if token else {}
            page = self._fs.call_s3("list_objects_v2", Bucket=self._end.bucket, MaxKeys=PAGE, **more)
            for item in page.get("Contents", ()):
                key = str(item["Key"])
                if not key.endswith("/"):  # a "folder" marker carries no data
                    yield key
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _generate(self) -> Iterator[bytes]:
        for key in self._listing():
            head = self._fs.call_s3("head_object", Bucket=self._end.bucket, Key=key)
            size = int(head.get("ContentLength") or 0)
            yield header(key, size, head)
            digest = hashlib.sha256()
            got = 0
            with self._fs.open(f"{self._end.bucket}/{key}", "rb", block_size=CHUNK, size=size) as fh:
                while chunk := fh.read(CHUNK):
                    got += len(chunk)
                    digest.update(chunk)
                    yield chunk
            if got != size:
                raise StepFailed(
                    f"object {key} of s3://{self._end.bucket} changed while it was copied "
                    f"({got} bytes read, {size} listed): back up again"
                )
            if got % tarfile.BLOCKSIZE:
                yield b"\0" * (tarfile.BLOCKSIZE - got % tarfile.BLOCKSIZE)
            self.objects += 1
            self.bytes += size
            self._keep(key, digest.hexdigest())
        yield b"\0" * (2 * tarfile.BLOCKSIZE)

    def _keep(self, key: str, digest: str) -> None:
        rank = hashlib.sha256(_SALT + key.encode()).digest()
        self._sample[key] = (rank, digest)
        if len(self._sample) > SAMPLE:
            del self._sample[max(self._sample, key=lambda k: self._sample[k][0])]

    def read(self, n: int = -1, /) -> bytes:
        try:
            while n < 0 or len(self._buffer) < n:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buffer += chunk
        except StepFailed:
            raise
        except Exception as exc:  # botocore/aiohttp/OSError: the gateway failed mid-copy
            raise StepFailed(
                f"the gateway {self._end.gateway} answered {_one_line(exc)} (check it, then back up again)"
            ) from exc
        if n < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def store(
    end: Bucket,
    secrets: dict[str, str],
    name: str,
    writer: Any,
    recipients: list[str],
    level: int,
    what: str,
) -> mf.StoredObject:
    """Every object of the bucket into the snapshot object ``name`` (a tar, zstd, age)."""
    started = time.monotonic()
    path = f"{name}.zst.age"
    source = BucketTar(filesystem(end, secrets), end)
    try:
        with writer.open(path) as fh:
            stored = stream.store(source, fh, recipients, compressed=False, level=level)
    except StepFailed as exc:
        raise StepFailed(f"{what} failed: {exc}") from None
    facts = source.facts()
    seconds = round(time.monotonic() - started, 3)
    log.info(
        "stored %s: %d objects, %d bytes from s3://%s", path, facts["objects"], facts["bytes"], end.bucket
    )
    return mf.StoredObject(
        name=name,
        kind="bucket",
        path=path,
        size=stored.size,
        sha256=stored.sha256,
        compressed_on="controller",
        seconds=seconds,
        facts=facts,
    )


class BucketSink:
    """A writable tar stream whose members a thread puts back into the bucket as it reads them
    (through a pipe: constant memory); ``close`` waits for it and raises its error."""

    def __init__(self, fs: Any, end: Bucket) -> None:
        self._fs = fs
        self._end = end
        rfd, wfd = os.pipe()
        self._out: BinaryIO = os.fdopen(wfd, "wb", buffering=0)
        self._in: BinaryIO = os.fdopen(rfd, "rb")
        self.error: BaseException | None = None
        self.objects = 0
        self.bytes = 0
        self._thread = threading.Thread(target=self._work, name=f"bucket-{end.bucket}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            with tarfile.open(fileobj=self._in, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    src = tar.extractfile(member)
                    assert src is not None
                    with self._fs.open(
                        f"{self._end.bucket}/{member.name}", "wb", block_size=5 * CHUNK, **put_args(member)
                    ) as dst:
                        while chunk := src.read(CHUNK):
                            dst.write(chunk)
                    self.objects += 1
                    self.bytes += member.size
        except BaseException as exc:
            self.error = exc
        finally:
            self._in.close()

    def write(self, data: bytes, /) -> int:
        try:
            self._out.write(data)
        except BrokenPipeError:
            self._thread.join()
            raise self._failure() from None
        return len(data)

    def _failure(self) -> StepFailed:
        exc = self.error
        if isinstance(exc, StepFailed):
            return exc
        return StepFailed(
            f"putting objects back into s3://{self._end.bucket} on {self._end.gateway} failed: "
            f"{_one_line(exc) if exc is not None else 'the copy stopped'}"
        )

    def close(self, ok: bool = True) -> None:
        self._out.close()
        self._thread.join()
        if ok and self.error is not None:
            raise self._failure()


def ensure_bucket(fs: Any, end: Bucket) -> None:
    """Create the bucket unless it exists (an existing one is not an error)."""
    try:
        if not fs.exists(end.bucket):
            fs.mkdir(end.bucket)
    except Exception as exc:
        raise StepFailed(
            f"cannot create s3://{end.bucket} on {end.gateway}: {_one_line(exc)} "
            "(create it with the gateway's own tool, then restore again)"
        ) from exc


def restore(
    end: Bucket,
    secrets: dict[str, str],
    feed: Any,
    obj: mf.StoredObject,
    what: str,
) -> str:
    """Put every object of the stored tar back into the bucket; ``feed(sink)`` streams the
    snapshot object (decrypted, decompressed, verified) into the sink."""
    fs = filesystem(end, secrets)
    if end.create:
        ensure_bucket(fs, end)
    sink = BucketSink(fs, end)
    try:
        feed(sink)
    except BaseException:
        sink.close(ok=False)
        if sink.error is not None and not isinstance(sink.error, BrokenPipeError):
            raise StepFailed(f"{what} failed: {sink._failure()}") from None
        raise
    try:
        sink.close()
    except StepFailed as exc:
        raise StepFailed(f"{what} failed: {exc}") from None
    expected = obj.facts.get("objects")
    if isinstance(expected, int) and expected != sink.objects:
        raise StepFailed(
            f"{what}: {sink.objects} objects put back into s3://{end.bucket}, "
            f"the snapshot recorded {expected}"
        )
    log.info("put %d objects (%d bytes) back into s3://%s", sink.objects, sink.bytes, end.bucket)
    return f"ok ({sink.objects} objects)"
