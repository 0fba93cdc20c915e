"""Snapshots on any fsspec URL: objects first, manifest last, so nothing half-written is listed."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import hashlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import attrs

from recipes import manifest as mf
from recipes.errors import ConfigError, RepositoryError, VerifyError, masked

if TYPE_CHECKING:
    from recipes import locks

log = logging.getLogger("recipes")

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
DEFAULT_URL = "~/.local/share/recipes/repo"
TESTED = ("file", "local", "s3", "s3a")
"""The URL schemes the test suite runs a repository on (a plain path is a local folder); any
other fsspec URL is accepted as the design says, and failing to open it is one line."""


ID_TIME = "%Y%m%dT%H%M%SZ"
SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]+$")


def new_snapshot_id(now: dt.datetime | None = None, after: str | None = None) -> str:
    """Ids sort by time: ``20261122T101500Z-1a2b3c``; a new id sorts after ``after``.

    Two backups in the same second would otherwise sort by their random suffix, and the
    latest snapshot (an incremental's parent) would be a coin toss: the time part is bumped
    to one second past ``after`` when needed (a logical clock, never a sleep).
    """
    now = now or dt.datetime.now(dt.UTC)
    if after:
        try:
            floor = dt.datetime.strptime(after[: len("20261122T101500Z")], ID_TIME).replace(tzinfo=dt.UTC)
        except ValueError:
            floor = None
        if floor is not None and now < floor + dt.timedelta(seconds=1):
            now = floor + dt.timedelta(seconds=1)
    return now.strftime(ID_TIME) + "-" + secrets.token_hex(3)


def safe_name(text: str) -> str:
    """A host or recipe name as one path component."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", text).strip("._") or "_"


@attrs.frozen
class Unreadable:
    """A manifest or signature that is there but cannot be a file's bytes (a folder in its
    place): its snapshot is listed as damaged, like one whose manifest is garbled."""

    reason: str


@attrs.frozen
class Listed:
    """A committed snapshot as read: its manifest, the exact bytes it was parsed from, its
    signature (None when the snapshot has none) and where it lies, for ``trust.check``."""

    manifest: mf.Manifest
    raw: bytes = attrs.field(repr=False)
    signature: bytes | None = attrs.field(repr=False)
    recipe_dir: str
    host_dir: str
    snapshot_dir: str


def _beside(path: str, name: str) -> str:
    """The file ``name`` in the folder of ``path``."""
    return path.rsplit("/", 1)[0] + "/" + name


def _listing_order(path: str) -> tuple[str, str]:
    """Snapshots sort by their id (time first), then by where they lie."""
    return path.rsplit("/", 2)[-2], path


def _read_if_there(path: str) -> bytes | Unreadable | None:
    """A whole small file's bytes, or None when it is absent (removed meanwhile, or never
    written); ``Unreadable`` when a folder is in its place."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return Unreadable(f"{path.rsplit('/', 1)[-1]} is a folder, not a file")


def _subdirs(path: str, only: str | None) -> list[str]:
    """The directories in ``path`` (every name, hidden ones too, as fsspec's ``*`` matches), or just
    ``only`` when given and present. As in fsspec's local glob, a symlink is followed when named
    (``only``), never when found by the walk."""
    if only is not None:
        return [only] if os.path.isdir(os.path.join(path, only)) else []
    try:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _scan_local(root: str, recipe: str | None, host: str | None) -> dict[str, bytes | Unreadable | None]:
    """Every ``root/RECIPE/HOST/SNAPSHOT/manifest.json`` of a local folder with its bytes, and the
    ``manifest.sig`` beside each (None when absent): what ``glob`` then ``cat_many`` return, in
    one walk. A folder without a manifest (a run still writing, or killed) is left out."""
    if not stat.S_ISDIR(os.stat(root).st_mode):  # absent: FileNotFoundError (no snapshots yet)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), root)
    out: dict[str, bytes | Unreadable | None] = {}
    for r in _subdirs(root, recipe):
        for h in _subdirs(f"{root}/{r}", host):
            for s in _subdirs(f"{root}/{r}/{h}", None):
                base = f"{root}/{r}/{h}/{s}/"
                raw = _read_if_there(base + MANIFEST)
                if raw is not None:
                    out[base + MANIFEST] = raw
                    out[base + SIGNATURE] = _read_if_there(base + SIGNATURE)
    return out


class DamagedSnapshot(VerifyError):
    """The snapshot asked for (by id, prefix or as the latest) has a manifest that cannot be read."""

    def __init__(self, message: str, entry: str) -> None:
        super().__init__(message)
        self.entry = entry  # as in ``listed``'s damaged list: ``recipe/host/snapshot: reason``


def choose(
    found: list[Listed], damaged: list[str], snapshot: str, where: str, listing: str, latest: bool = True
) -> Listed:
    """The one snapshot whose id starts with ``snapshot``, or the newest for ``latest`` (when
    ``latest`` allows it), among ``found`` and the ``damaged`` entries of the same listing. A
    damaged one chosen is never passed over for another: ``DamagedSnapshot`` (exit 3) names it,
    as ``verify --all`` does. ``where`` ("of django@web1", "in URL") and ``listing`` (the
    command that lists them) word the errors."""
    bad = {entry.split(": ", 1)[0].rsplit("/", 1)[-1]: entry for entry in damaged}
    if latest and snapshot == "latest":
        newest = found[-1].snapshot_dir if found else ""
        late = max((sid for sid in bad if sid > newest), default=None)
        if late is not None:
            raise DamagedSnapshot(
                f"the latest snapshot {where} is damaged: {bad[late]} (damaged manifest); pass "
                f"--snapshot ID to use an older one explicitly (`{listing}` lists them)",
                bad[late],
            )
        if not found:
            raise RepositoryError(f"no snapshot {where}: run `{listing}` to see what is there")
        return found[-1]
    matches = [item for item in found if item.manifest.snapshot.startswith(snapshot)]
    broken = [sid for sid in bad if sid.startswith(snapshot)]
    if not matches and len(broken) == 1:
        raise DamagedSnapshot(f"{bad[broken[0]]} (damaged manifest)", bad[broken[0]])
    if not matches and not broken:
        raise RepositoryError(
            f"snapshot {snapshot!r} matches 0 snapshots {where}: run `{listing}` to see what is there"
        )
    if len(matches) + len(broken) > 1:  # the caller's input cannot pick one: a usage error
        raise ConfigError(
            f"snapshot {snapshot!r} matches {len(matches) + len(broken)} snapshots {where}: "
            f"give more of its id (`{listing}` lists them)"
        )
    return matches[0]


def url_passwords(url: str) -> tuple[str, ...]:
    """The password in ``url``'s user info (``ftp://me:PASSWORD@host``), to scrub from messages."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
        user, password = parts.username or "", parts.password
    except ValueError:
        return ()
    if not password:
        return ()
    # ``user:password`` whole always; the password alone only when too long to garble words
    return (f"{user}:{password}",) + ((password,) if len(password) >= 4 else ())


class Repository:
    """A repository at an fsspec URL (a plain path means a local folder)."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        import fsspec

        from recipes import arenas, storage

        expanded = os.path.expanduser(url) if "://" not in url else url
        self.url = url = masked(url)  # what messages show: a password in the URL as ***
        opts = dict(options or {})
        scheme = expanded.split("://", 1)[0] if "://" in expanded else "file"
        s3 = scheme in ("s3", "s3a")
        if s3 and not expanded.split("://", 1)[1].split("/", 1)[0]:
            raise ConfigError(f"repository {url}: no bucket in the URL; give s3://BUCKET/prefix")
        if "://" in expanded and not expanded.split("://", 1)[1].strip():  # file:// would be the cwd
            raise ConfigError(f"repository {url}: no path in the URL; give {scheme}:///absolute/path")
        if s3:  # timeouts and bounded retries by default; [repository] options override them
            opts = storage.s3_options(opts)
        try:
            fs, self.root = fsspec.core.url_to_fs(expanded, **opts)
        except (ImportError, ValueError, TypeError) as exc:
            reason = storage.scrub(str(exc), storage.secrets_of(opts) + url_passwords(expanded))
            raise ConfigError(f"repository {url}: {reason}") from exc
        except OSError as exc:  # a filesystem that connects as it is made (ftp://, sftp://)
            reason = storage.scrub(str(exc), storage.secrets_of(opts) + url_passwords(expanded))
            raise RepositoryError(f"repository {url}: cannot open it: {reason}") from exc
        except Exception as exc:  # any other fsspec filesystem refusing these arguments
            if scheme in TESTED:
                raise
            reason = storage.scrub(
                f"{type(exc).__name__}: {exc}", storage.secrets_of(opts) + url_passwords(expanded)
            )
            raise ConfigError(
                f"repository {url}: fsspec cannot open a {scheme}:// filesystem from it ({reason}); "
                "check the URL and [repository] options (tested: a local folder and s3://)"
            ) from exc
        self.root = self.root.rstrip("/")
        if s3:  # the S3 model and endpoints this program calls, not all of AWS (9 MB less RSS)
            storage.lean_session(fs)
            arenas.fewer_arenas()
        self.local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        secrets = storage.secrets_of(opts) + url_passwords(expanded)
        self.fs = storage.GuardedFS(fs, url, secrets)
        if s3:  # once per repository: never let a write create a mistyped bucket
            self.fs.check_bucket(self.root.split("/", 1)[0])

    def lock(
        self, recipe: str, host: str, purpose: str = "run"
    ) -> contextlib.AbstractContextManager[locks.Lease]:
        """Hold the lease of recipe@host for a block (see ``recipes.locks``); ``LockHeld`` when taken."""
        from recipes import locks

        return locks.hold(self, recipe, host, purpose)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def begin(self, recipe: str, host: str) -> SnapshotWriter:
        """Start writing a new snapshot; it is invisible until ``commit``."""
        base = self._path(safe_name(recipe), safe_name(host))
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        except FileNotFoundError:  # the first snapshot of this recipe and host
            names = []
        except OSError as exc:
            raise RepositoryError(f"cannot list repository {self.url}: {exc}") from exc
        # Only snapshot ids count: a stray "notes" or an S3 folder marker must not hide them.
        existing = [n for n in names if SNAPSHOT_ID.match(n)]
        sid = new_snapshot_id(after=max(existing, default=None))
        path = f"{base}/{sid}"
        try:
            self.fs.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise RepositoryError(f"cannot write to repository {self.url}: {exc}") from exc
        return SnapshotWriter(self, path, sid)

    def writer_for(self, m: mf.Manifest) -> SnapshotWriter:
        """A writer for a copy of snapshot ``m`` under its own id (``recipes copy``)."""
        path = self._path(safe_name(m.recipe), safe_name(m.host), m.snapshot)
        try:
            self.fs.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise RepositoryError(f"cannot write to repository {self.url}: {exc}") from exc
        return SnapshotWriter(self, path, m.snapshot)

    def listed(
        self, recipe: str | None = None, host: str | None = None, damaged: list[str] | None = None
    ) -> list[Listed]:
        """Every committed snapshot, oldest first, with its signature; directories without a
        manifest are skipped (aborted or running), damaged manifests with a warning (and named
        in ``damaged`` when given: ``recipe/host/snapshot: reason``)."""
        pattern = self._path(
            safe_name(recipe) if recipe else "*", safe_name(host) if host else "*", "*", MANIFEST
        )
        blobs: dict[str, bytes | Unreadable | None]
        try:
            if self.local:  # one scandir walk and plain reads: fsspec's glob costs 10x more
                blobs = self.fs.call(
                    f"list {pattern}",
                    lambda: _scan_local(
                        self.root, safe_name(recipe) if recipe else None, safe_name(host) if host else None
                    ),
                )
                paths = sorted((p for p in blobs if p.endswith("/" + MANIFEST)), key=_listing_order)
            else:
                paths = sorted(self.fs.glob(pattern), key=_listing_order)
                # Every manifest and signature in one call: S3 fetches them concurrently.
                wanted = [p for path in paths for p in (path, _beside(path, SIGNATURE))]
                blobs = dict(self.fs.cat_many(wanted)) if wanted else {}
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise RepositoryError(f"cannot list repository {self.url}: {exc}") from exc
        found = []
        for path in paths:
            item = self._parse_listed(path, blobs[path], blobs[_beside(path, SIGNATURE)], damaged)
            if item is not None:
                found.append(item)
        return found

    def manifests(
        self, recipe: str | None = None, host: str | None = None, damaged: list[str] | None = None
    ) -> list[mf.Manifest]:
        """The manifests of ``listed`` (not yet checked: see ``trust.Trust``)."""
        return [item.manifest for item in self.listed(recipe, host, damaged)]

    def _read_listed(self, path: str, damaged: list[str] | None = None) -> Listed | None:
        """One snapshot's manifest and signature; None (with a warning) when it is damaged."""
        raw = self._read_bytes(path)
        if raw is None:
            return None
        return self._parse_listed(path, raw, self._read_bytes(_beside(path, SIGNATURE)), damaged)

    def _parse_listed(
        self,
        path: str,
        raw: bytes | Unreadable | None,
        signature: bytes | Unreadable | None,
        damaged: list[str] | None,
    ) -> Listed | None:
        """A snapshot from its manifest's and signature's bytes (None: no manifest, or damaged)."""
        if raw is None:  # removed between the listing and the read
            return None
        recipe_dir, host_dir, snapshot_dir = path.rsplit("/", 4)[-4:-1]
        try:
            if isinstance(raw, Unreadable):
                raise ValueError(raw.reason)
            if isinstance(signature, Unreadable):
                raise ValueError(signature.reason)
            manifest = mf.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            where = f"{recipe_dir}/{host_dir}/{snapshot_dir}"
            log.warning("skipping damaged snapshot %s: %s", where, str(exc).splitlines()[0][:200])
            if damaged is not None:
                damaged.append(f"{where}: {str(exc).splitlines()[0][:200]}")
            return None
        return Listed(manifest, raw, signature, recipe_dir, host_dir, snapshot_dir)

    def _read_bytes(self, path: str) -> bytes | Unreadable | None:
        """A manifest's or signature's bytes (None: absent; ``Unreadable``: a folder in its place)."""
        try:
            if self.local:  # as the listing reads it
                return self.fs.call(f"read {path}", lambda: _read_if_there(path))
            with self.fs.open(path, "rb") as fh:
                data: bytes = fh.read()
                return data
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RepositoryError(f"cannot read {path}: {exc}") from exc

    def load_listed(self, recipe: str, host: str, snapshot: str) -> Listed | None:
        """One committed snapshot by its full id, or None when it has no (readable) manifest."""
        return self._read_listed(self._path(safe_name(recipe), safe_name(host), snapshot, MANIFEST))

    def load(self, recipe: str, host: str, snapshot: str) -> mf.Manifest | None:
        item = self.load_listed(recipe, host, snapshot)
        return item.manifest if item is not None else None

    def find_listed(self, recipe: str, host: str | None, snapshot: str = "latest") -> Listed:
        """The snapshot of recipe (at host, or any host) with this id or unique prefix, or the
        latest; ``DamagedSnapshot`` when that is one whose manifest cannot be read."""
        damaged: list[str] = []
        found = self.listed(recipe, host, damaged)
        where = f"{recipe}@{host}" if host else recipe
        if not found and not damaged:
            raise RepositoryError(
                f"no snapshot of {where} in {self.url}: run `recipes snapshots` to see what is there"
            )
        return choose(found, damaged, snapshot, f"of {where}", f"recipes snapshots {recipe}")

    def find(self, recipe: str, host: str, snapshot: str = "latest") -> mf.Manifest:
        """The manifest of ``find_listed`` (not yet checked: see ``trust.Trust``)."""
        return self.find_listed(recipe, host, snapshot).manifest

    def verify_objects(
        self, m: mf.Manifest, objects: list[mf.StoredObject], stopped: Callable[[], bool] | None = None
    ) -> None:
        """Every object is present with its recorded size and sha256 (read once, written nowhere).

        A restore runs this before anything reaches a host, so a damaged or swapped object
        cannot leave a half-written target that looks restored.
        """
        from recipes import readahead

        self.check_sizes(m, objects)
        for obj in objects:
            h = hashlib.sha256()
            with self.open_object(m, obj, block_size=8 << 20) as fh:
                # the next GET overlaps hashing this chunk; a stop ends the reads early, and the
                # digest of what was read then never matches (``stopped``: verify's abort)
                for chunk in readahead.chunks(fh, stopped=stopped or (lambda: False)):
                    h.update(chunk)
            if h.hexdigest() != obj.sha256:
                raise VerifyError(
                    f"snapshot {m.snapshot}: {obj.path} does not match its manifest (sha256 differs: "
                    "damaged or replaced); nothing was written"
                )

    def check_sizes(self, m: mf.Manifest, objects: list[mf.StoredObject]) -> None:
        """Every object is present with its recorded size (cheap, before a restore writes anything)."""
        for obj in objects:
            path = self._path(safe_name(m.recipe), safe_name(m.host), m.snapshot, obj.path)
            try:
                size = self.fs.size(path)
            except FileNotFoundError:
                raise VerifyError(f"snapshot {m.snapshot} is missing {obj.path}") from None
            if size != obj.size:
                raise VerifyError(
                    f"snapshot {m.snapshot}: {obj.path} is {size} bytes, the manifest says {obj.size} "
                    "(truncated or replaced)"
                )

    def unfinished_uploads(self, path: str) -> list[tuple[str, str]]:
        """The multipart uploads pending under ``path`` (a killed run's; none on a local folder),
        as (path, upload id): invisible, but billed until aborted."""
        if self.local:
            return []
        bucket, prefix, _ = self.fs.fs.split_path(path)
        found: list[tuple[str, str]] = []
        markers: dict[str, str] = {}
        while True:
            try:
                page = self._list_uploads(path, bucket, prefix, markers)
            except FileNotFoundError:  # rclone answers NoSuchUpload when there are none
                return found
            except RepositoryError as exc:  # e.g. no s3:ListBucketMultipartUploads permission
                log.warning("%s; a bucket lifecycle rule can abort them instead", exc)
                return found
            found += [(f"{bucket}/{u['Key']}", str(u["UploadId"])) for u in page.get("Uploads", [])]
            if not page.get("IsTruncated"):
                return found
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    def _list_uploads(self, path: str, bucket: str, prefix: str, markers: dict[str, str]) -> Any:
        return self.fs.call(
            f"list the unfinished uploads under {path}",
            functools.partial(
                self.fs.fs.call_s3,
                "list_multipart_uploads",
                Bucket=bucket,
                Prefix=prefix.rstrip("/") + "/",
                **markers,
            ),
        )

    def abort_uploads(self, path: str) -> int:
        """Abort every multipart upload pending under ``path``; how many there were."""
        uploads = self.unfinished_uploads(path)
        for key, upload_id in uploads:
            bucket, name, _ = self.fs.fs.split_path(key)
            with contextlib.suppress(FileNotFoundError):  # finished or aborted meanwhile
                self.fs.call(
                    f"abort the unfinished upload of {key}",
                    functools.partial(
                        self.fs.fs.call_s3,
                        "abort_multipart_upload",
                        Bucket=bucket,
                        Key=name,
                        UploadId=upload_id,
                    ),
                    retry=not self.fs.down,
                )
        return len(uploads)

    @contextlib.contextmanager
    def open_object(
        self, m: mf.Manifest, obj: mf.StoredObject, block_size: int = 1 << 22
    ) -> Iterator[BinaryIO]:
        """One stored object for reading; ``block_size``: the bytes of each ranged GET on S3."""
        path = self._path(safe_name(m.recipe), safe_name(m.host), m.snapshot, obj.path)
        try:
            fh = self.fs.open(path, "rb", block_size=block_size)
        except FileNotFoundError as exc:  # a signed snapshot without it is damaged: exit 3
            raise VerifyError(f"object missing from snapshot {m.snapshot}: {obj.path}") from exc
        except RepositoryError:
            if self.local:  # a folder in its place: the same verdict (exit 3) as its size gives
                self.check_sizes(m, [obj])
            raise
        with fh:
            yield fh


class SnapshotWriter:
    """Writes the objects of one snapshot, then its manifest; ``abort`` removes the leftovers."""

    def __init__(self, repo: Repository, path: str, snapshot: str) -> None:
        self.repo = repo
        self.path = path
        self.snapshot = snapshot
        self.manifest_sent = False
        """The manifest's write began: it may be there even if it failed (an answer lost)."""

    @contextlib.contextmanager
    def open(self, relpath: str) -> Iterator[BinaryIO]:
        """A new object of the snapshot; storage failures (disk full, S3 down) are one-line errors,
        and an object whose writing failed is discarded, never committed half-written."""
        full = f"{self.path}/{relpath}"
        if self.repo.local:
            self.repo.fs.makedirs(full.rsplit("/", 1)[0], exist_ok=True)
            with self.repo.fs.open(full, "wb") as fh:
                yield fh
            return
        from recipes import storage

        upload = storage.S3Upload(self.repo.fs, full)
        try:
            yield upload  # type: ignore[misc]
        except BaseException:
            upload.abort()
            raise
        upload.close()

    def commit(self, manifest: mf.Manifest, sign: Callable[[bytes], bytes]) -> None:
        """Write the signature, then the manifest, last; on a local folder via rename, so each
        appears whole. ``sign`` turns the manifest's exact bytes into an sshsig signature."""
        text = mf.dumps(manifest).encode()
        self.commit_raw(text, sign(text))

    def commit_raw(self, manifest: bytes, signature: bytes | None) -> None:
        """The signature (when there is one), then the manifest's exact bytes, last (a copy keeps
        them as they were signed)."""
        if signature is not None:
            self._put(SIGNATURE, signature)
        self.manifest_sent = True
        self._put(MANIFEST, manifest)

    def _put(self, name: str, data: bytes) -> None:
        final = f"{self.path}/{name}"
        fs = self.repo.fs
        if self.repo.local:
            tmp = f"{self.path}/.{name}.partial"
            with fs.open(tmp, "wb") as fh:
                fh.write(data)
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise RepositoryError(f"cannot write {final}: {exc.strerror or exc}") from exc
        else:
            fs.pipe_file(final, data)  # one PUT, atomic (and retried: it is idempotent)

    def abort(self) -> None:
        """Remove what was written; the snapshot never had a manifest, so it was never listed.

        Best effort (one try when the storage already failed); what stays is invisible anyway,
        unless the manifest's write failed only in its answer: then the manifest goes first (the
        snapshot is unlisted before anything else goes), and if it cannot, the warning says so.
        """
        unlisted = not self.manifest_sent
        try:
            if self.manifest_sent:
                with contextlib.suppress(FileNotFoundError):
                    self.repo.fs.rm_file(f"{self.path}/{MANIFEST}")
                unlisted = True
            self.repo.fs.rm(self.path, recursive=True)
        except FileNotFoundError:
            pass
        except Exception as exc:
            maybe = (
                f"; its manifest may have been written all the same (the answer to it was lost): "
                f"if `recipes snapshots` lists {self.snapshot}, check it with `recipes verify "
                f"{self.snapshot}` (a verified snapshot is complete) or remove {self.path}"
                if not unlisted
                else ""
            )
            log.warning("could not remove the unfinished snapshot %s: %s%s", self.path, exc, maybe)
