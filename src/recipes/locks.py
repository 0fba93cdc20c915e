"""A lease per recipe@host in the repository, so two runs never quiesce the same application.

The lock is one small JSON object at ``<repo>/locks/<recipe>@<host>``: who holds it (user,
controller hostname, pid), since when, when it was last renewed, and a random token. A
background thread renews it every ``RENEW_SECONDS`` while the run lives. A lock is stale when
it was not renewed for ``LEASE_SECONDS`` (10 min, ten renewal intervals): its run is gone (a
SIGKILL, a power cut), and the next run takes it over with a warning. A live run renews it,
so a backup may take as long as it needs. On the controller whose run died, the next run need
not wait: the lease names the controller (its machine-id, hashed) and the holder's process
(pid and start time), and a holder that no longer exists there is taken over at once.

Taking the lock must be atomic:

* local folder: the lease is written to a temporary file and hard-linked to its name
  (``link`` fails when the name exists: an O_EXCL create of a complete file); taking over a
  stale lock (read, judge, delete, create) happens under an ``flock`` of the locks folder, so
  two runs judging the same stale lease cannot both delete and take it;
* S3 (any server: many ignore ``If-None-Match``): the same read, judge, delete and create run
  under a *claim*, a mutual exclusion made of unique objects. A run writes
  ``locks/.claims/<recipe>@<host>/<token>``, lists that folder, and goes on only when it sees no
  other live claim; a run that sees one deletes its own, waits a random moment and tries again.
  Of two runs, the one that lists second sees the other's claim (its PUT completed before the
  first run listed, which was before the second run's own PUT completed), so at most one goes
  on; both may back off, never both proceed. This needs read-after-write and list-after-write
  consistency, which AWS S3 (since December 2020), MinIO, Ceph RGW and ``rclone serve s3`` give.
  It replaced a write, a two-second settle wait and a read back, which still let two runs win.
  A claim left by a killed run is ignored once its process is gone from this controller, or
  when the server stamped it ``CLAIM_SECONDS`` (a lease's time) before the new claim.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import getpass
import json
import logging
import os
import random
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import attrs

from recipes.errors import RepositoryError

if TYPE_CHECKING:
    from recipes.repository import Repository

log = logging.getLogger("recipes")

LEASE_SECONDS = 600
RENEW_SECONDS = 60
LOCKS = "locks"
CLAIMS = ".claims"
CLAIM_SECONDS = LEASE_SECONDS
"""A claim is held for a few requests (each with its bounded retries); one the server stamped
this long before ours was left by a run that died elsewhere (as long as a lease: no faster)."""
CLAIM_TRIES = 6
TIME = "%Y-%m-%dT%H:%M:%SZ"

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _text(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime(TIME)


def _time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, TIME).replace(tzinfo=dt.UTC)


class LockHeld(RepositoryError):
    """Another run holds recipe@host (exit 1); nothing was done on the host."""


@attrs.frozen
class Lease:
    """One holder of one recipe@host lock, as stored in the repository."""

    recipe: str
    host: str
    purpose: str
    owner: str
    controller: str
    pid: int
    started: str
    renewed: str
    token: str
    lease_seconds: int = LEASE_SECONDS
    machine: str = ""
    """A derived id of the controller (its /etc/machine-id hashed; host names can repeat)."""
    pid_start: str = ""
    """The holder process's start time (field 22 of /proc/PID/stat): a reused pid is not it."""

    @classmethod
    def new(cls, recipe: str, host: str, purpose: str, now: dt.datetime) -> Lease:
        try:
            owner = getpass.getuser()
        except (KeyError, OSError):
            owner = str(os.getuid())
        return cls(
            recipe=recipe,
            host=host,
            purpose=purpose,
            owner=owner,
            controller=socket.gethostname(),
            pid=os.getpid(),
            started=_text(now),
            renewed=_text(now),
            token=secrets.token_hex(16),
            machine=_machine(),
            pid_start=_process_start(os.getpid()),
        )

    def holder(self) -> str:
        """``user@controller pid N since TIME`` for messages."""
        return f"{self.owner}@{self.controller} pid {self.pid} since {self.started}"

    def stale(self, now: dt.datetime) -> bool:
        """Not renewed for longer than its lease: its run is gone."""
        return (now - _time(self.renewed)).total_seconds() > max(self.lease_seconds, RENEW_SECONDS * 3)

    def gone_from_here(self) -> bool:
        """Its holder ran on this very controller and that process no longer exists (a SIGKILL,
        a crash): no need to wait for the lease to run out."""
        if not self.machine or self.machine != _machine() or not self.pid_start:
            return False
        return _process_start(self.pid) != self.pid_start

    def renew(self, now: dt.datetime) -> Lease:
        return attrs.evolve(self, renewed=_text(now))

    def dumps(self) -> bytes:
        return (json.dumps({"format": 1, **attrs.asdict(self)}, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def loads(cls, data: bytes) -> Lease:
        """Parse a stored lease; ValueError when it is not one."""
        try:
            raw = json.loads(data.decode())
            if not isinstance(raw, dict) or raw.pop("format", None) != 1:
                raise ValueError("not a recipes lock (format 1)")
            lease = cls(**raw)
            _time(lease.renewed)
            return lease
        except (TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(str(exc)) from exc


class Store:
    """The few lock operations, atomic where each kind of storage allows it."""

    def __init__(self, repo: Repository, backoff: float = 0.2) -> None:
        self.repo = repo
        self.fs = repo.fs
        self.backoff = backoff

    def path(self, recipe: str, host: str) -> str:
        from recipes.repository import safe_name

        return f"{self.repo.root}/{LOCKS}/{safe_name(recipe)}@{safe_name(host)}"

    def read(self, path: str) -> bytes | None:
        try:
            if self.repo.local:
                return self.fs.call(f"read {path}", lambda: _read_local(path), retry=False)
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def replace(self, path: str, data: bytes) -> None:
        """Overwrite (renewal): a rename on a local folder, a PUT on S3; both atomic."""
        if self.repo.local:
            self.fs.call(f"write {path}", lambda: _write_local(path, data, exclusive=False), retry=False)
        else:
            self.fs.pipe_file(path, data)

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.repo.local:
                self.fs.call(f"remove {path}", lambda: os.unlink(path), retry=False)
            else:
                self.fs.rm_file(path)

    @contextlib.contextmanager
    def exclusive(self, path: str, lease: Lease) -> Iterator[None]:
        """Hold, for the block, the right to read, judge, delete and create the lock at ``path``:
        an ``flock`` of the lock's folder on a local folder, a claim on S3 (see the module)."""
        if not self.repo.local:
            with self._claim(path, lease):
                yield
            return
        folder = os.path.dirname(path)
        fd = self.fs.call(f"lock {folder}", lambda: _open_folder(folder), retry=False)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # a file system without flock: the link alone guards creation
                log.debug("cannot flock %s: %s", folder, exc)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _claim(self, path: str, lease: Lease) -> Iterator[None]:
        """Our claim object, alone among live ones in its folder, for the block."""
        folder = f"{os.path.dirname(path)}/{CLAIMS}/{os.path.basename(path)}"
        body = attrs.evolve(lease, purpose=f"claim for {lease.purpose}").dumps()
        rival: str | None = None
        for attempt in range(CLAIM_TRIES):
            own = f"{folder}/{lease.token}-{attempt}"  # an earlier try's late delete spares it
            try:
                self.fs.pipe_file(own, body)
                rival = self._live_rival(folder, own)
            except BaseException:
                self._drop(own)  # a PUT that landed although its answer was lost, too
                raise
            if rival is None:
                break
            self._drop(own)
            time.sleep(random.uniform(0.5, 1.5) * self.backoff * (attempt + 1))
        else:
            raise LockHeld(
                f"{lease.recipe}@{lease.host}: {rival or 'another run'} is taking its lock at this moment: "
                "wait for that run, or try again"
            )
        try:
            yield
        finally:
            self._drop(own)

    def _live_rival(self, folder: str, own: str) -> str | None:
        """Who holds another live claim in ``folder`` (None: ours is alone); a dead one is removed
        on the way. Dead: its process is gone from this controller, or the server stamped it
        ``CLAIM_SECONDS`` before ours (server times only: controllers' clocks may differ). A
        claim that cannot be read is a rival until then (a newer version may have written it)."""
        entries = self.fs.ls(folder, detail=True, refresh=True)
        stamps = {str(e["name"]).rstrip("/"): e.get("LastModified") or e.get("mtime") for e in entries}
        mine = stamps.get(own.rstrip("/"))
        for name in sorted(stamps):
            if name.rsplit("/", 1)[-1] == own.rsplit("/", 1)[-1]:
                continue
            old = _older_by(stamps[name], mine, CLAIM_SECONDS)
            data = self.read(name)
            if data is None:  # released while we listed
                continue
            try:
                claim: Lease | None = Lease.loads(data)
            except ValueError:
                claim = None
            if (claim is not None and claim.gone_from_here()) or old:
                who = claim.holder() if claim is not None else f"an unreadable claim {name}"
                log.warning("removing the lock claim of %s, left by a run that is gone", who)
                self._drop(name)
                continue
            return claim.holder() if claim is not None else f"the run that wrote {name}"
        return None

    def _drop(self, path: str) -> None:
        """Delete a claim; a failure is a warning (a dead claim is ignored after CLAIM_SECONDS)."""
        try:
            self.delete(path)
        except RepositoryError as exc:
            log.warning(
                "could not remove the lock claim %s (%s): ignored after %ds",
                path,
                exc,
                CLAIM_SECONDS,
            )

    def create(self, path: str, lease: Lease) -> bool:
        """Write ``lease`` only if no lock exists; True when it is ours afterwards. On S3 this
        runs under ``exclusive`` (the claim), which makes the check and the write one step."""
        data = lease.dumps()
        if self.repo.local:
            try:
                self.fs.call(f"write {path}", lambda: _write_local(path, data, exclusive=True), retry=False)
                return True
            except FileExistsError:
                return False
        if self.read(path) is not None:
            return False
        self.fs.pipe_file(path, data)
        return True


def _older_by(theirs: object, mine: object, seconds: float) -> bool:
    """Whether a listing's time ``theirs`` is more than ``seconds`` before ``mine`` (both the
    server's; False when either is missing or unreadable: then nothing is judged dead by age)."""

    def stamp(x: object) -> float | None:
        if isinstance(x, dt.datetime):
            return x.timestamp()
        if isinstance(x, (int, float)):
            return float(x)
        return None

    t, m = stamp(theirs), stamp(mine)
    return t is not None and m is not None and m - t > seconds


def _machine() -> str:
    """This controller's id: its machine-id, hashed (the id itself should stay private)."""
    try:
        with open("/etc/machine-id", "rb") as fh:
            raw = fh.read().strip()
    except OSError:
        return ""
    import hashlib

    return hashlib.sha256(b"recipes controller " + raw).hexdigest()[:16] if raw else ""


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), or "" when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _makedirs(folder: str) -> None:
    """``folder`` and its parents; a file in the place of one is ENOTDIR, said as such by
    ``storage.classify`` (never EEXIST, which ``create`` takes for a lock already held)."""
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder) from None


def _open_folder(folder: str) -> int:
    _makedirs(folder)
    return os.open(folder, os.O_RDONLY | os.O_DIRECTORY)


def _read_local(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _write_local(path: str, data: bytes, exclusive: bool) -> None:
    """A complete file under a temporary name, then linked (exclusive) or renamed into place."""
    folder = os.path.dirname(path)
    _makedirs(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lock-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # EEXIST when a lock is there: atomic, even on NFS
        else:
            os.replace(tmp, path)
            tmp = ""
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def acquire(
    repo: Repository,
    recipe: str,
    host: str,
    purpose: str = "run",
    *,
    clock: Clock = utcnow,
    store: Store | None = None,
) -> Lease:
    """Take the lock of recipe@host, taking over a stale one; ``LockHeld`` when a live run has it."""
    store = store or Store(repo)
    path = store.path(recipe, host)
    lease = Lease.new(recipe, host, purpose, clock())
    with store.exclusive(path, lease):
        return _acquire(store, path, lease, recipe, host, clock)


def _acquire(store: Store, path: str, lease: Lease, recipe: str, host: str, clock: Clock) -> Lease:
    """``acquire`` under the folder lock: create, else judge the holder and take over a stale one."""
    for _ in range(3):  # a lock released or taken over between our steps: look again
        if store.create(path, lease):
            return lease
        data = store.read(path)
        if data is None:
            continue
        try:
            held = Lease.loads(data)
        except ValueError:
            raise LockHeld(
                f"{recipe}@{host} is locked by an unreadable lock file {path}: "
                "remove it if no backup of it is running"
            ) from None
        if held.token == lease.token:
            return lease
        gone = held.gone_from_here()
        if not gone and not held.stale(clock()):
            raise LockHeld(
                f"{recipe}@{host} is locked by {held.holder()} ({held.purpose}, renewed {held.renewed}): "
                f"wait for that run to finish; a lock not renewed for {held.lease_seconds // 60} min "
                "is taken over"
            )
        log.warning(
            "taking over the stale lock of %s@%s held by %s (%s)",
            recipe,
            host,
            held.holder(),
            "its process is gone from this controller" if gone else f"not renewed since {held.renewed}",
        )
        again = store.read(path)  # delete only the stale lease we judged, never a fresh one
        if again is not None and again != data:
            continue
        store.delete(path)
    raise LockHeld(f"{recipe}@{host}: could not take its lock at {path} (other runs are racing for it)")


def release(repo: Repository, lease: Lease, store: Store | None = None) -> None:
    """Remove our lock; never someone else's. Failures are warnings: the lease runs out anyway."""
    store = store or Store(repo)
    path = store.path(lease.recipe, lease.host)
    try:
        data = store.read(path)
        if data is None:
            log.warning("the lock of %s@%s was already gone", lease.recipe, lease.host)
            return
        try:
            current = Lease.loads(data)
        except ValueError:
            current = None
        if current is None or current.token != lease.token:
            holder = current.holder() if current else "an unreadable lock file"
            log.warning(
                "the lock of %s@%s was taken over by %s: left to it",
                lease.recipe,
                lease.host,
                holder,
            )
            return
        store.delete(path)
    except RepositoryError as exc:
        minutes = lease.lease_seconds // 60
        log.warning("could not release the lock %s (%s): it is stale after %d min", path, exc, minutes)


class Renewer:
    """Renews a lease in the background while its run lives."""

    def __init__(self, store: Store, lease: Lease, every: float, clock: Clock) -> None:
        self.store = store
        self.lease = lease
        self.every = every
        self.clock = clock
        self.stop = threading.Event()
        self.lost: str | None = None
        self.thread = threading.Thread(target=self._loop, name="recipes-lock", daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            self.renew_once()

    def renew_once(self) -> None:
        path = self.store.path(self.lease.recipe, self.lease.host)
        try:
            data = self.store.read(path)
            current = Lease.loads(data) if data is not None else None
            if current is None or current.token != self.lease.token:
                self.lost = current.holder() if current else "nobody (it was removed)"
                log.error("lost the lock of %s@%s to %s", self.lease.recipe, self.lease.host, self.lost)
                self.stop.set()
                return
            if self.stop.is_set():  # the run ended while we read: release owns the lock now
                return
            self.lease = self.lease.renew(self.clock())
            self.store.replace(path, self.lease.dumps())
        except (RepositoryError, ValueError) as exc:
            log.warning("could not renew the lock %s: %s", path, exc)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=self.every + 60)


@contextlib.contextmanager
def hold(
    repo: Repository,
    recipe: str,
    host: str,
    purpose: str = "run",
    *,
    renew_every: float = RENEW_SECONDS,
    clock: Clock = utcnow,
    store: Store | None = None,
) -> Iterator[Lease]:
    """Hold the lock of recipe@host for the block: renewed meanwhile, released on every exit."""
    store = store or Store(repo)
    lease = acquire(repo, recipe, host, purpose, clock=clock, store=store)
    renewer = Renewer(store, lease, renew_every, clock)
    try:
        renewer.start()
        yield lease
    finally:
        renewer.close()
        release(repo, renewer.lease, store)
