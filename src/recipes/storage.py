"""Storage access that fails in one line: S3 timeouts, bounded retries, no secrets in messages.

Every call the repository makes on its fsspec filesystem goes through ``GuardedFS``. A storage
failure (no credentials, endpoint unreachable or hanging, access denied, disk full, read-only,
permission denied) becomes a one-line ``RepositoryError`` (exit 1) naming the repository, the
cause and the fix. ``FileNotFoundError`` and ``FileExistsError`` pass through unchanged: callers
use them to mean "absent" and "already there".

Retries are bounded and happen in exactly two places:

* s3fs retries a request that timed out or lost its connection once (``S3FS_TRIES`` = 2 tries);
* ``GuardedFS`` retries whole idempotent calls (list, stat, read, whole-object write, delete)
  on the other transient failures: connection refused, HTTP 5xx, throttling; at most
  ``ATTEMPTS`` tries within ``RETRY_SECONDS``.

Objects of a snapshot are written by ``S3Upload`` (our multipart writer): each part and each
single PUT goes through ``GuardedFS.send``, which bypasses s3fs's retry and retries every
transient failure itself (timeouts and dropped connections too), at most ``ATTEMPTS`` tries,
sending the same buffer again.

botocore's own retries are off. A connection reset is the one failure both places retry, so it
costs at most ``ATTEMPTS`` x ``S3FS_TRIES`` (6) requests; every other failure at most ``ATTEMPTS``.
With the default timeouts
(``CONNECT_TIMEOUT`` 10 s, ``READ_TIMEOUT`` 20 s) a hanging endpoint fails a call after about
40 s (two tries); a refused connection after three tries, about 2 s; a connect timeout after at
most 30 s. A request whose body the server stops reading (read timeouts do not apply while
sending) is cut off after ``REQUEST_FACTOR`` read timeouts (120 s). Permanent failures (403,
missing bucket, no credentials) fail at once. After an endpoint failed once, clean-up calls
(removing the partial snapshot, releasing the lock) each get one try.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import importlib
import importlib.util
import io
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

from recipes.errors import RepositoryError

log = logging.getLogger("recipes")

CONNECT_TIMEOUT = 10
READ_TIMEOUT = 20
S3FS_TRIES = 2
REQUEST_FACTOR = 6  # a whole request (an 8 MiB part upload) may take 6 read timeouts: 120 s
ATTEMPTS = 3
RETRY_SECONDS = 30.0

T = TypeVar("T")

# S3 error codes that name a passing condition; everything else from the server is permanent.
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "500",
        "502",
        "503",
        "504",
    }
)
DENIED_CODES = frozenset(
    {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
)


def s3_options(options: dict[str, Any]) -> dict[str, Any]:
    """s3fs options with our defaults under the operator's ``[repository] options``.

    Defaults: connect/read timeouts, no botocore retries (ours are the bounded ones), and no
    shared instance cache (a fresh client per repository, so a test's frozen endpoint or
    another repository's settings never leak in).
    """
    out = dict(options)
    config = dict(out.get("config_kwargs") or {})
    config.setdefault("connect_timeout", CONNECT_TIMEOUT)
    config.setdefault("read_timeout", READ_TIMEOUT)
    config.setdefault("retries", {"total_max_attempts": 1})
    # botocore's own CRC check of a GET fails on a ranged read of a single-PUT object from
    # servers that send the whole object's checksum with a part (rclone serve s3: every object
    # of 4-8 MiB). Our sha256 over each whole object is the integrity check; this one is not.
    config.setdefault("response_checksum_validation", "when_required")
    # Nor a CRC32 of every part we send: a pass over each byte that nothing reads back.
    config.setdefault("request_checksum_calculation", "when_required")
    out["config_kwargs"] = config
    out.setdefault("skip_instance_cache", True)
    return out


# -- a leaner botocore: the S3 model and endpoints data this program can call, nothing else
#
# botocore keeps every JSON it loads as Python objects for the life of the client: the S3 model
# (3.2 MiB, 100 operations with their documentation) and endpoints.json (6.7 MiB, every AWS
# service in every region), about 12 MB of RSS. ``lean_session`` gives s3fs a session whose
# data loader finds a trimmed copy first, generated once per botocore version and source files
# into the controller cache (in a child process, so its peak is not ours); any doubt (a custom
# data path, ~/.aws/models overrides, an operation missing) means botocore's own files.

LEAN_FORMAT = 1
# Operations botocore itself may call (S3 Express sessions, region redirects) on top of every
# operation name written in s3fs's or our source.
LEAN_ALWAYS = ("CreateSession", "GetBucketLocation", "HeadBucket")
LEAN_ENDPOINTS = ("s3", "sts", "sso", "sso-oidc")  # credential providers call the last three
LEAN_FILES = ("s3/2006-03-01/service-2.json", "endpoints.json")


def _lean_sources() -> tuple[str, str, str] | None:
    """botocore's version and its own S3 model and endpoints files, or None when a custom
    data path or a ~/.aws/models override could change what botocore would load."""
    botocore = importlib.import_module("botocore")
    loader = importlib.import_module("botocore.loaders").Loader
    if os.environ.get("AWS_DATA_PATH"):
        return None
    custom = loader.CUSTOMER_DATA_PATH
    if os.path.exists(os.path.join(custom, "s3")) or os.path.exists(os.path.join(custom, "endpoints.json")):
        return None
    model_dir = os.path.join(loader.BUILTIN_DATA_PATH, "s3", "2006-03-01")
    model = next(
        (
            os.path.join(model_dir, n)
            for n in ("service-2.json", "service-2.json.gz")
            if os.path.exists(os.path.join(model_dir, n))
        ),
        None,
    )
    endpoints = os.path.join(loader.BUILTIN_DATA_PATH, "endpoints.json")
    if model is None or not os.path.exists(endpoints) or len(os.listdir(os.path.dirname(model_dir))) != 1:
        return None  # a second S3 API version: botocore would pick by version, not by path
    return botocore.__version__, model, endpoints


def _lean_dir(sources: tuple[str, str, str]) -> str:
    from recipes.tarstate import default_cache_dir

    h = hashlib.sha256(f"{LEAN_FORMAT}\0{sources[0]}\0".encode())
    for path in sources[1:]:
        with open(path, "rb") as fh:
            h.update(fh.read())
    return str(default_cache_dir() / "botocore" / f"{sources[0]}-{h.hexdigest()[:16]}")


def _lean_operations(names: list[str]) -> set[str]:
    """The operations whose snake_case name is written, quoted, in s3fs's or recipes' source."""
    import re

    xform_name = importlib.import_module("botocore").xform_name
    quoted: set[str] = set()
    for pkg in ("s3fs", "recipes"):
        spec = importlib.util.find_spec(pkg)  # its files only: importing s3fs costs 0.3 s
        if spec is None or spec.origin is None:
            raise RuntimeError(f"{pkg} not found")
        root = os.path.dirname(spec.origin)
        for base, _, files in os.walk(root):
            for f in files:
                if f.endswith(".py"):
                    with open(os.path.join(base, f), encoding="utf-8") as fh:
                        quoted.update(re.findall(r"[\"']([a-z0-9_]+)[\"']", fh.read()))
    return {n for n in names if xform_name(n) in quoted} | set(LEAN_ALWAYS)


def write_lean_data(target: str) -> None:
    """Write the trimmed S3 model and endpoints data under ``target`` (atomically, a marker
    last). Raises when anything looks unlike what this expects: the caller then uses the full data."""
    import gzip
    import json

    sources = _lean_sources()
    if sources is None:
        raise RuntimeError("custom botocore data in use")
    _, model_path, endpoints_path = sources
    opener: Any = gzip.open if model_path.endswith(".gz") else open
    with opener(model_path, "rb") as fh:
        model = json.load(fh)
    operations = model["operations"]
    keep = _lean_operations(list(operations))
    if not keep <= set(operations) or "UploadPart" not in keep or "ListObjectsV2" not in keep:
        raise RuntimeError("the S3 model lacks an operation this program calls")
    shapes = model["shapes"]
    seen: set[str] = set()
    todo = [
        ref["shape"]
        for name in keep
        for ref in [
            operations[name].get("input"),
            operations[name].get("output"),
            *operations[name].get("errors", []),
        ]
        if ref
    ]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        shape = shapes[name]  # a KeyError (a dangling reference) means: keep the full model
        todo.extend(shape[k]["shape"] for k in ("member", "key", "value") if k in shape)
        todo.extend(m["shape"] for m in shape.get("members", {}).values())

    def undocumented(x: Any) -> Any:  # botocore reads some "documentation" keys: keep them, empty
        if isinstance(x, dict):
            return {k: "" if k == "documentation" else undocumented(v) for k, v in x.items()}
        if isinstance(x, list):
            return [undocumented(v) for v in x]
        return x

    model["operations"] = {k: v for k, v in operations.items() if k in keep}
    model["shapes"] = {k: v for k, v in shapes.items() if k in seen}
    model = undocumented(model)
    with open(endpoints_path, "rb") as fh:
        endpoints = json.load(fh)
    for partition in endpoints["partitions"]:
        partition["services"] = {k: v for k, v in partition["services"].items() if k in LEAN_ENDPOINTS}
    os.makedirs(os.path.join(target, "s3", "2006-03-01"), mode=0o700, exist_ok=True)
    digests: dict[str, str] = {}
    for rel, data in (
        (LEAN_FILES[0], model),
        (LEAN_FILES[1], endpoints),
        ("complete", {"sha256": digests}),  # last: the files are whole and their digests known
    ):
        text = json.dumps(data, separators=(",", ":")).encode()
        digests[rel] = hashlib.sha256(text).hexdigest()
        path = os.path.join(target, rel)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)


def _lean_intact(target: str) -> bool:
    """The trimmed files are there and are what was written (their digests in ``complete``):
    a damaged copy would make every client creation fail."""
    import json

    try:
        with open(os.path.join(target, "complete"), "rb") as fh:
            digests = json.load(fh)["sha256"]
        for rel in LEAN_FILES:
            with open(os.path.join(target, rel), "rb") as fh:
                if hashlib.sha256(fh.read()).hexdigest() != digests[rel]:
                    return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def lean_session(fs: Any) -> bool:
    """Give an s3fs filesystem (before its first request) the session s3fs would make, with a
    data loader that reads the trimmed S3 model and endpoints first; False (botocore's full
    data) when they cannot be made or any doubt arises."""
    import subprocess
    import sys

    try:
        if getattr(fs, "session", None) is not None or getattr(fs, "_s3", None) is not None:
            return False
        sources = _lean_sources()
        if sources is None:
            return False
        target = _lean_dir(sources)
        # the cache lives under an existing home (or XDG_CACHE_HOME): a service account whose
        # home is /nonexistent must not get one made for it
        home = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(target))))
        if not os.path.isdir(home):
            return False
        if not _lean_intact(target):  # never made, or damaged since: make it (again)
            code = f"from recipes.storage import write_lean_data; write_lean_data({target!r})"
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False)
            if done.returncode != 0 or not _lean_intact(target):
                log.debug(
                    "storage: no trimmed botocore data: %s", done.stderr.decode(errors="replace")[-300:]
                )
                return False
        base: Any = importlib.import_module("botocore.loaders").Loader

        class LeanLoader(base):  # type: ignore[misc]
            """botocore's loader, reading the trimmed copies first; they count as built-in
            (they are botocore's own data, less what this program never calls)."""

            def is_builtin_path(self, path: str) -> bool:
                return bool(super().is_builtin_path(path)) or path.startswith(target + os.sep)

        session = importlib.import_module("aiobotocore.session").AioSession(**fs.kwargs)
        if session.get_config_variable("data_path"):
            return False
        session.register_component("data_loader", LeanLoader(extra_search_paths=[target]))
        fs.session = session
        return True
    except Exception as exc:  # never worse than botocore's own data
        log.debug("storage: no trimmed botocore data: %s", exc)
        return False


class Failure:
    """What went wrong with one storage call, in words, and whether trying again may help."""

    def __init__(
        self, reason: str, fix: str, transient: bool, down: bool = False, retried: bool = False
    ) -> None:
        self.reason = reason
        self.fix = fix
        self.transient = transient
        self.down = down  # the endpoint did not answer: clean-up gets one try only
        self.retried = retried  # s3fs already tried again (a read timeout, a dropped connection)


def _aiohttp_errors() -> Any:
    """aiohttp's module when s3fs loaded it (its errors can only come from there), else None."""
    return sys.modules.get("aiohttp")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def classify(exc: BaseException, endpoint: str, read_timeout: float) -> Failure | None:
    """A storage failure in words, or None when ``exc`` is not one (it then passes unchanged)."""
    if isinstance(exc, (FileNotFoundError, FileExistsError, RepositoryError)):
        return None
    be: Any = None
    with contextlib.suppress(ImportError):  # without S3 support only local failures exist
        be = importlib.import_module("botocore.exceptions")
    for e in _chain(exc):
        if be is not None:
            if isinstance(e, (be.NoCredentialsError, be.PartialCredentialsError)):
                return Failure(
                    "no S3 credentials found",
                    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
                    "or key/secret in [repository] options",
                    transient=False,
                )
            if isinstance(e, be.ReadTimeoutError):
                return Failure(
                    f"the S3 endpoint {endpoint} did not answer within {read_timeout:g} s",
                    "check the endpoint, or raise read_timeout in [repository] options.config_kwargs",
                    transient=True,
                    down=True,
                    retried=True,
                )
            if isinstance(e, be.ConnectTimeoutError):
                return Failure(
                    f"connecting to the S3 endpoint {endpoint} timed out",
                    "check the endpoint URL and the network",
                    transient=True,
                    down=True,
                )
            if isinstance(e, be.ConnectionClosedError):
                return Failure(
                    f"the S3 endpoint {endpoint} closed the connection before it answered",
                    "check that the service is up and the network between; try again",
                    transient=True,
                    down=True,
                    retried=True,
                )
            if isinstance(e, be.EndpointConnectionError):
                return Failure(
                    f"cannot reach the S3 endpoint {endpoint}",
                    "check [repository] options.endpoint_url and that the service is up",
                    transient=True,
                    down=True,
                )
            if isinstance(e, be.ClientError):
                err = e.response.get("Error", {})
                code = str(err.get("Code", ""))
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in DENIED_CODES or status == 403:
                    return Failure(
                        f"access denied by the S3 endpoint {endpoint} ({code or status})",
                        "check the access key and secret and the bucket policy",
                        transient=False,
                    )
                if code in TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
                    return Failure(
                        f"the S3 endpoint {endpoint} failed ({code or status})",
                        "try again later",
                        transient=True,
                    )
                return Failure(
                    f"the S3 endpoint {endpoint} refused the request ({code or status})",
                    "check the repository URL and [repository] options",
                    transient=False,
                )
            if isinstance(e, be.BotoCoreError):
                return Failure(
                    f"S3 client error: {type(e).__name__}",
                    "check [repository] options and the endpoint",
                    transient=False,
                )
        aio = _aiohttp_errors()
        if aio is not None and isinstance(e, aio.ClientPayloadError):
            return Failure(
                f"the S3 endpoint {endpoint} ended an answer before its end (connection lost?)",
                "try again; check the network and the S3 service if it persists",
                transient=True,
                retried=True,  # s3fs tried again already
            )
        if isinstance(e, asyncio.TimeoutError) or type(e).__name__ == "FSTimeoutError":
            return Failure(
                f"the S3 endpoint {endpoint} did not answer: a request took longer than "
                f"{REQUEST_FACTOR * read_timeout:g} s",
                "check the endpoint and the network",
                transient=True,
                down=True,
                retried=True,
            )
    if isinstance(exc, OSError):
        num = exc.errno
        if num in (errno.ENOSPC, errno.EDQUOT):
            return Failure(
                "no space left on the device" if num == errno.ENOSPC else "disk quota exceeded",
                f"free space there, or give the repository ({_WHERE}) a bigger disk",
                transient=False,
            )
        if num == errno.EROFS:
            return Failure(
                "the filesystem is read-only",
                f"remount it read-write, or give the repository ({_WHERE}) another place",
                transient=False,
            )
        if isinstance(exc, PermissionError) or num in (errno.EACCES, errno.EPERM):
            return Failure(
                "permission denied",
                "run as a user that may write there, or fix the directory's owner and mode",
                transient=False,
            )
        # A local repository with the wrong kind of entry in a place (what another tool or a
        # hand left there): say which path and that it is to be moved away, never retried.
        if num == errno.ENOTDIR:
            return Failure(
                f"{_file_in_the_way(str(exc.filename or ''))} is a file where a folder must be",
                f"move that file away, or give the repository ({_WHERE}) a folder",
                transient=False,
            )
        if num == errno.EISDIR:
            return Failure(
                f"{exc.filename or 'a path'} is a folder where a file must be",
                "move that folder away (recipes never makes one there)",
                transient=False,
            )
    return None


# Where a repository's place is given: the hint of a failure names them all (it may be either).
_WHERE = "--repo, copy --to, [repository] url"


def _file_in_the_way(path: str) -> str:
    """The nearest of ``path`` and its parents that is there but no folder (ENOTDIR's cause)."""
    here = path
    while here and here != os.path.dirname(here):
        if os.path.lexists(here) and not os.path.isdir(here):
            return here
        here = os.path.dirname(here)
    return path or "a path"


class GuardedFS:
    """An fsspec filesystem whose failures are one-line ``RepositoryError`` s, retried when transient."""

    def __init__(self, fs: Any, url: str, secrets: tuple[str, ...] = ()) -> None:
        self.fs = fs
        self.url = url
        self.secrets = tuple(s for s in secrets if s)
        self.down = False
        self.s3 = "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        config = getattr(fs, "config_kwargs", {}) or {}
        self.read_timeout = float(config.get("read_timeout", READ_TIMEOUT))
        self.endpoint = str(
            getattr(fs, "endpoint_url", None)
            or (getattr(fs, "client_kwargs", {}) or {}).get("endpoint_url")
            or "of AWS"
        )
        if self.s3:
            fs.retries = S3FS_TRIES
            fs.call_s3 = self._bounded_call_s3  # s3fs's files call it for every part they upload

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def _bounded_call_s3(self, *args: Any, **kwargs: Any) -> Any:
        """s3fs's ``call_s3`` with a total time limit per request.

        The read timeout never fires while a request body is being sent: a server that stops
        reading mid-upload would hang the run forever without this.
        """
        import fsspec.asyn

        limit = REQUEST_FACTOR * self.read_timeout
        return fsspec.asyn.sync(self.fs.loop, self.fs._call_s3, *args, timeout=limit, **kwargs)

    def error(self, exc: BaseException, what: str) -> RepositoryError | None:
        """The one-line error for a storage failure while doing ``what``, or None."""
        failure = classify(exc, self.endpoint, self.read_timeout)
        if failure is None:
            return None
        if failure.down:
            self.down = True
            if self.s3:
                self.fs.retries = 1
        return RepositoryError(self.scrub(f"repository {self.url}: {what}: {failure.reason}; {failure.fix}"))

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def call(self, what: str, fn: Callable[[], T], retry: bool = True, alone: bool = False) -> T:
        """Run ``fn``; transient failures retried (bounded), storage failures raised as one line.

        ``alone``: ``fn`` bypasses s3fs's own retry (``send``), so read timeouts and dropped
        connections are retried here too, still at most ``ATTEMPTS`` tries in all.
        """
        transient = tenacity.retry_if_exception(
            lambda e: (
                (f := classify(e, self.endpoint, self.read_timeout)) is not None
                and f.transient
                and (alone or not f.retried)
            )  # read timeouts, dropped connections: s3fs tried again
        )
        attempts = ATTEMPTS if retry and not self.down else 1
        retrying = tenacity.Retrying(
            retry=transient,
            stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_after_delay(RETRY_SECONDS),
            wait=tenacity.wait_exponential(multiplier=0.5, max=4),
            before_sleep=lambda rs: log.warning(
                "storage: %s failed (%s), trying again",
                what,
                type(rs.outcome.exception()).__name__ if rs.outcome else "?",
            ),
            reraise=True,
        )
        try:
            return retrying(fn)
        except Exception as exc:
            mapped = self.error(exc, what)
            if mapped is None:
                raise
            raise mapped from None

    # The calls the repository and the locks make; anything else passes through __getattr__.
    def ls(self, path: str, **kw: Any) -> Any:
        return self.call(f"list {path}", lambda: self.fs.ls(path, **kw))

    def glob(self, pattern: str, **kw: Any) -> Any:
        return self.call(f"list {pattern}", lambda: self.fs.glob(pattern, **kw))

    def find(self, path: str, **kw: Any) -> Any:
        return self.call(f"list {path}", lambda: self.fs.find(path, **kw))

    def info(self, path: str, **kw: Any) -> Any:
        return self.call(f"read {path}", lambda: self.fs.info(path, **kw))

    def size(self, path: str) -> Any:
        return self.call(f"read {path}", lambda: self.fs.size(path))

    def exists(self, path: str) -> bool:
        return bool(self.call(f"read {path}", lambda: self.fs.exists(path)))

    def cat_file(self, path: str, **kw: Any) -> bytes:
        data: bytes = self.call(f"read {path}", lambda: self.fs.cat_file(path, **kw))
        return data

    def cat_many(self, paths: list[str]) -> dict[str, bytes | None]:
        """Many small whole files in one call (S3 fetches them concurrently): each path's bytes,
        None when it is missing. Any other failure fails (and retries) the whole call."""

        def fetch() -> dict[str, bytes | None]:
            if (
                getattr(self.fs, "async_impl", False)
                and paths
                and not any(c in p for p in paths for c in "*?[")
            ):
                got = self.fs.cat(paths, on_error="return")
            else:  # a local folder: plain reads, no concurrency to gain
                got = {}
                for path in paths:
                    try:
                        got[path] = self.fs.cat_file(path)
                    except FileNotFoundError as exc:
                        got[path] = exc
            out: dict[str, bytes | None] = {}
            for path in paths:
                value = got.get(self.fs._strip_protocol(path), got.get(path))
                if isinstance(value, BaseException) and not isinstance(value, FileNotFoundError):
                    raise value
                out[path] = value if isinstance(value, bytes) else None
            return out

        return self.call(f"read {len(paths)} files under {self.url}", fetch)

    def pipe_file(self, path: str, data: bytes, **kw: Any) -> None:
        self.call(f"write {path}", lambda: self.fs.pipe_file(path, data, **kw))

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        if self.s3:
            return  # S3 has no directories, and s3fs would create a missing bucket here
        self.call(f"write {path}", lambda: self.fs.makedirs(path, exist_ok=exist_ok))

    def rm(self, path: str, recursive: bool = False, **kw: Any) -> None:
        self.call(f"remove {path}", lambda: self.fs.rm(path, recursive=recursive, **kw), retry=not self.down)

    def rm_file(self, path: str) -> None:
        self.call(f"remove {path}", lambda: self.fs.rm_file(path), retry=not self.down)

    def open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        """A ``GuardedFile`` (typed Any, like every fsspec file)."""
        what = f"{'read' if 'r' in mode else 'write'} {path}"
        fh = self.call(what, lambda: self.fs.open(path, mode, **kw), retry="r" in mode)
        return GuardedFile(self, fh, what)

    def send(self, what: str, method: str, body: Callable[[], Any], **kwargs: Any) -> Any:
        """One S3 request with a body (``upload_part``, ``put_object``), through s3fs's client
        (its credentials, endpoint, options and extra request arguments) but not its retry
        wrapper, which would send a file-like body again from where the failed try stopped:
        each try here gets a fresh ``body()``. Bounded like ``call``, with a time limit per try.
        """
        return self.call(what, self.once(method, body, **kwargs), alone=True)

    def once(self, method: str, body: Callable[[], Any] | None = None, **kwargs: Any) -> Callable[[], Any]:
        """One try of an S3 request on s3fs's client without s3fs's retry (``send``; a caller
        that must know whether a request is tried again passes it to ``call(alone=True)``)."""
        import fsspec.asyn

        fs = self.fs

        async def request() -> Any:
            await fs.set_session()
            client = await fs.get_s3(kwargs.get("Bucket"))
            fn = getattr(client, method)
            extra = {"Body": body()} if body is not None else {}
            return await fn(**fs._get_s3_method_kwargs(fn, **extra, **kwargs))

        limit = REQUEST_FACTOR * self.read_timeout
        return lambda: fsspec.asyn.sync(fs.loop, request, timeout=limit)

    def check_bucket(self, bucket: str) -> None:
        """Refuse a bucket that does not exist (s3fs would create it on the first write)."""
        try:
            self.call(f"check bucket {bucket}", lambda: self.fs.call_s3("head_bucket", Bucket=bucket))
        except FileNotFoundError:
            raise RepositoryError(
                f"repository {self.url}: bucket {bucket} does not exist on {self.endpoint}; "
                "check the URL for a typo, or create the bucket first (recipes never creates buckets)"
            ) from None


class GuardedFile:
    """A file of a ``GuardedFS``: read/write/close failures are one-line errors too."""

    def __init__(self, fs: GuardedFS, fh: Any, what: str) -> None:
        self._fs = fs
        self._fh = fh
        self._what = what

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def _guard(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            mapped = self._fs.error(exc, self._what)
            if mapped is None:
                raise
            raise mapped from None

    def read(self, n: int = -1, /) -> bytes:
        data: bytes = self._guard(lambda: self._fh.read(n))
        return data

    def readinto(self, buf: Any, /) -> int:
        count: int = self._guard(lambda: self._fh.readinto(buf))
        return count

    def write(self, data: bytes, /) -> int:
        count: int = self._guard(lambda: self._fh.write(data))
        return count

    def close(self) -> None:
        self._guard(self._fh.close)

    def discard(self) -> None:
        """Drop what was written (an unfinished upload is aborted) without committing it."""
        if not self._fs.down:
            try:
                if hasattr(self._fh, "discard"):
                    self._fh.discard()
            except Exception as exc:  # best effort: the snapshot's abort removes the rest
                log.debug("discard %s: %s", self._what, exc)
        try:
            if self._fs.s3:
                self._fh.closed = True  # never flush a half-written object on garbage collection
            else:
                self._fh.close()
        except Exception as exc:
            log.debug("close %s: %s", self._what, exc)

    def __enter__(self) -> GuardedFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """One line, and never a secret, even one an exception carried in."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return " ".join(text.split())


def secrets_of(options: dict[str, Any]) -> tuple[str, ...]:
    """Every secret the options or the environment hold, to scrub from messages."""
    found = [str(options.get(k, "")) for k in ("secret", "password", "token")]
    found += [os.environ.get(k, "") for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    return tuple(s for s in found if len(s) >= 4)


PART_SIZE = 5 << 20
"""The first parts of a multipart upload: S3's least, so two buffers hold 10 MiB."""
GROW_EVERY = 2_000
"""Parts double in size every ``GROW_EVERY`` parts (5 MiB up to 9.8 GiB, then 10, 20, 40, 80
MiB): S3's 10,000 parts then hold 303 GiB, and only objects past 9.8 GiB use bigger buffers."""
IN_FLIGHT = 2
"""Part buffers per object: one filling while the others upload, concurrently."""
MAX_PARTS = 10_000


def part_size(number: int, first: int = PART_SIZE) -> int:
    """The size of part ``number`` (from 1) of an upload whose first parts are ``first`` bytes."""
    return first << ((number - 1) // GROW_EVERY)


def _human(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"


def most_bytes(first: int = PART_SIZE) -> int:
    """The largest object ``MAX_PARTS`` parts of ``part_size`` hold."""
    return sum(part_size(n, first) for n in range(1, MAX_PARTS + 1))


def s3_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` in ``exc``'s chain ("" when none)."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""


def multipart_etag(part_etags: list[str]) -> str | None:
    """S3's ETag of a multipart object: md5 of the parts' binary md5s, then "-" and the count
    (None when a part's ETag is not a plain md5, as with SSE-KMS)."""
    import hashlib

    digests = []
    for tag in part_etags:
        tag = tag.strip('"')
        if len(tag) != 32:
            return None
        try:
            digests.append(bytes.fromhex(tag))
        except ValueError:
            return None
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


class PartBody(io.BytesIO):
    """A part's bytes as a file, over its buffer without copying it.

    Given bytes, aiohttp copies a body three times before it reaches the socket (a slice, a
    join with the headers, the transport's buffer); given a ``BytesIO`` it sends 64 KiB at a
    time and waits for the socket to drain. botocore reads it once more for the payload's
    sha256 (SigV4 over plain HTTP) and seeks back. Each try of a request gets a new one.
    """

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view
        self._at = 0

    def read(self, n: int | None = -1, /) -> bytes:
        end = len(self._view) if n is None or n < 0 else min(len(self._view), self._at + n)
        out = bytes(self._view[self._at : end])
        self._at = max(self._at, end)
        return out

    def read1(self, n: int | None = -1, /) -> bytes:
        return self.read(n)

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at

    def getbuffer(self) -> memoryview:
        return self._view[:]

    def getvalue(self) -> bytes:
        return bytes(self._view)


class S3Upload:
    """One new S3 object, written as a stream: a multipart upload of our own, in bounded memory.

    Each part is copied into one of ``in_flight`` buffers allocated once (``part_size`` each,
    bigger ones past ``GROW_EVERY`` parts: ``part_size()``);
    a full buffer is uploaded by a worker thread through the filesystem's own client
    (``call_s3``: same credentials, endpoint, timeouts), so reading, encrypting and hashing go
    on while up to ``in_flight`` parts are on the wire, and the writer waits when every buffer
    is in use. A part's transient failure is retried by ``GuardedFS.call`` with the same buffer;
    a permanent one fails the next ``write``/``close`` at once.

    Nothing is visible before ``close`` completes the upload (an object smaller than one part
    is one ``put_object`` at ``close``); ``abort`` (and any failure in ``close``) aborts the
    multipart upload, so a failed or discarded object leaves neither an object nor a pending
    upload. A killed process leaves a pending upload and no object: prune aborts those older
    than a day (``Repository.abort_stale_uploads``), or a bucket lifecycle rule does.
    """

    def __init__(
        self, fs: GuardedFS, path: str, part_size: int = PART_SIZE, in_flight: int = IN_FLIGHT
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if part_size < 5 << 20 or in_flight < 1:
            raise ValueError("S3 parts are at least 5 MiB, and at least one is in flight")
        self._fs = fs
        self.path = path
        self.bucket, self.key, _ = fs.fs.split_path(path)
        self._part_size = part_size  # the first parts'; later ones grow (``part_size()``)
        self._limit = part_size  # the size of the part being filled
        self._in_flight = in_flight
        self._buffers: list[bytearray] = []  # allocated on demand, at most in_flight
        self._free: list[bytearray] = []
        self._buf: bytearray | None = None
        self._pos = 0
        self._parts: list[dict[str, Any]] = []
        self._pending: dict[Any, tuple[int, bytearray]] = {}  # future -> (part number, buffer)
        self._number = 0
        self.upload_id: str | None = None
        self.closed = False
        self.size = 0
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="s3-part")

    # -- writing
    def write(self, data: bytes, /) -> int:
        if self.closed:
            raise ValueError(f"write to a closed upload of {self.path}")
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            if self._buf is None:
                self._buf = self._take_buffer()
                self._pos = 0
            n = min(len(view), self._limit - self._pos)
            self._buf[self._pos : self._pos + n] = view[:n]
            self._pos += n
            view = view[n:]
            if self._pos == self._limit:
                self._ship()
        self.size += total
        return total

    def flush(self) -> None:
        """Nothing to do: parts go out as they fill (file-like callers call this)."""

    def writable(self) -> bool:
        return True

    def _refuse_past_last(self) -> None:
        """Part ``MAX_PARTS`` + 1 is refused in one line (S3 would fail only at ``complete``)."""
        if self._number >= MAX_PARTS:
            raise RepositoryError(
                f"repository {self._fs.url}: write {self.path}: larger than {MAX_PARTS} parts "
                f"({_human(most_bytes(self._part_size))}), the most one S3 object may "
                "have; split the step's output"
            )

    def _take_buffer(self) -> bytearray:
        """A free part buffer, waiting for an upload to finish when all are in use."""
        self._refuse_past_last()  # before buffering a byte of a part S3 would not take
        self._limit = part_size(self._number + 1, self._part_size)
        while True:
            small = [b for b in self._free if len(b) < self._limit]  # parts only grow: drop them
            if small:
                self._free = [b for b in self._free if len(b) >= self._limit]
                self._buffers = [b for b in self._buffers if all(b is not x for x in small)]
            if self._free:
                return self._free.pop()
            if len(self._buffers) < self._in_flight:
                buf = bytearray(self._limit)
                self._buffers.append(buf)
                return buf
            self._reap(block=True)

    def _ship(self) -> None:
        """Hand the full (or last) buffer to a worker as the next part."""
        assert self._buf is not None
        self._refuse_past_last()
        if self.upload_id is None:
            self.upload_id = self._start()
        self._number += 1
        length, buf = self._pos, self._buf
        self._buf, self._pos = None, 0
        future = self._pool.submit(self._upload_part, self._number, buf, length)
        self._pending[future] = (self._number, buf)
        self._reap(block=False)

    def _start(self) -> str:
        what = f"write {self.path}"
        out = self._fs.call(
            what, lambda: self._fs.fs.call_s3("create_multipart_upload", Bucket=self.bucket, Key=self.key)
        )
        return str(out["UploadId"])

    def _upload_part(self, number: int, buf: bytearray, length: int) -> dict[str, Any]:
        view = memoryview(buf)[:length]
        out = self._fs.send(
            f"write {self.path} (part {number})",
            "upload_part",
            lambda: PartBody(view),
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
        )
        return {"PartNumber": number, "ETag": out["ETag"]}

    def _reap(self, block: bool) -> None:
        """Collect finished parts (waiting for one when ``block``); a failed part raises here."""
        from concurrent.futures import FIRST_COMPLETED, wait

        if not self._pending:
            return
        done, _ = wait(list(self._pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            _, buf = self._pending.pop(future)
            self._free.append(buf)
            self._parts.append(future.result())  # a part's error, as a one-line RepositoryError

    # -- finishing
    def close(self) -> None:
        """Complete the object (one PUT when it is smaller than a part); on failure, abort it."""
        if self.closed:
            return
        try:
            if self.upload_id is None:
                view = memoryview(self._buf or b"")[: self._pos]
                self._fs.send(
                    f"write {self.path}",
                    "put_object",
                    lambda: PartBody(view),
                    Bucket=self.bucket,
                    Key=self.key,
                )
            else:
                if self._pos:
                    self._ship()
                while self._pending:
                    self._reap(block=True)
                self._complete(sorted(self._parts, key=lambda p: int(p["PartNumber"])))
                self.upload_id = None
        except BaseException:
            self.abort()
            raise
        self._release()
        self._fs.fs.invalidate_cache(self.path)

    def _complete(self, parts: list[dict[str, Any]]) -> None:
        """CompleteMultipartUpload, tried again on transient failures. A try after one whose
        answer was lost (a reset after the server completed it) gets NoSuchUpload: then the
        object must be there as we sent it (``_landed``) to count as written; else it fails."""
        once = self._fs.once(
            "complete_multipart_upload",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )
        tries = 0

        def complete() -> Any:
            nonlocal tries
            tries += 1
            try:
                return once()
            except Exception as exc:
                if tries > 1 and s3_code(exc) == "NoSuchUpload" and self._landed(parts):
                    log.info(
                        "storage: write %s: completed by an earlier try whose answer was lost", self.path
                    )
                    return None
                raise

        self._fs.call(f"write {self.path}", complete, alone=True)

    def _landed(self, parts: list[dict[str, Any]]) -> bool:
        """Whether the object at our key is the one these parts make: our size, and the
        multipart ETag of these parts whenever the server answers with a multipart ETag."""
        try:
            head = self._fs.once("head_object", Bucket=self.bucket, Key=self.key)()
        except Exception as exc:
            if s3_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        if int(head.get("ContentLength", -1)) != self.size:
            return False
        etag = str(head.get("ETag", "")).strip('"')
        if "-" not in etag:
            return True  # no multipart ETag to compare (some servers send another digest)
        return etag == multipart_etag([str(p["ETag"]) for p in parts])

    def abort(self) -> None:
        """Drop the object: parts not started are cancelled, running ones awaited, then the
        multipart upload is aborted (one try when the storage already failed). Never raises."""
        if self.closed:
            return
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            try:
                self._fs.call(
                    f"abort the upload of {self.path}",
                    lambda: self._fs.fs.call_s3(
                        "abort_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=upload_id
                    ),
                    retry=not self._fs.down,
                )
            except Exception as exc:  # best effort: prune aborts stale uploads
                log.warning("could not abort the unfinished upload of %s: %s", self.path, exc)
        self._release()

    discard = abort

    def _release(self) -> None:
        self.closed = True
        self._pool.shutdown(wait=False)
        self._buffers.clear()
        self._free.clear()
        self._buf = None

    def __enter__(self) -> S3Upload:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
