"""GNU tar's listed-incremental state (``.snar``): in a private temp directory on the host while tar
runs, encrypted in each snapshot, and in plain text in the controller's cache for the next backup.

Nothing survives on the host. The next backup reads its parent's state from the cache; when the
cache lacks it (another controller, a wiped cache) it decrypts the snapshot's copy if an identity
is configured, and otherwise takes a full: the controller never needs the secret key to back up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, cast

from recipes import manifest as mf
from recipes import stream
from recipes.compression import ZSTD_FACT
from recipes.errors import RecipeError, StepFailed
from recipes.hosts import FAILED_WAIT, Host, Process, key_values, last_line
from recipes.model import Command
from recipes.repository import Repository, safe_name
from recipes.stream import CHUNK

log = logging.getLogger("recipes")

# Cached states kept per recipe@host: the newest is the next parent; one more covers a run
# whose snapshot was committed but whose successor was interrupted.
KEEP = 2
# Staging directories older than this belong to runs that died (seconds).
STALE_STAGING = 86400


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/recipes`` (``~/.cache/recipes``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "recipes"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class StateCache:
    """Plain-text tar states of recent snapshots, per repository, recipe and host (0700)."""

    def __init__(self, root: Path, repo_url: str) -> None:
        key = hashlib.sha256(repo_url.encode()).hexdigest()[:16]
        self.root = root / "state" / key

    def _dir(self, recipe: str, host: str) -> Path:
        return self.root / safe_name(recipe) / safe_name(host)

    def get(self, m: mf.Manifest, name: str) -> Path | None:
        """The cached state ``name`` of snapshot ``m``, if present and matching its manifest."""
        obj = m.object(name)
        path = self._dir(m.recipe, m.host) / m.snapshot / _file_name(name)
        try:
            if obj is None or not path.is_file():
                return None
            if obj.content_sha256 and sha256_file(path) != obj.content_sha256:
                log.warning("cached tar state %s of %s differs from its manifest: ignored", name, m.snapshot)
                return None
        except OSError as exc:
            log.warning("cannot read the cached tar state %s (%s): ignored", path, exc)
            return None
        return path

    def staging(self, recipe: str, host: str, snapshot: str) -> Path:
        """A private directory for the states a running backup produces."""
        return self._private(self._dir(recipe, host) / f".{snapshot}.partial")

    def _private(self, path: Path) -> Path:
        """Make ``path`` and the directories between it and ``<cache>/state`` with mode 0700.

        The cache directory itself may be shared (``/var/cache``): only what lies under our own
        ``state`` directory is created private; file names in a tar state are not for everyone.
        """
        top = self.root.parent
        top.parent.mkdir(parents=True, exist_ok=True)
        for d in [*reversed(path.relative_to(top).parents), path.relative_to(top)]:
            (top / d).mkdir(mode=0o700, exist_ok=True)
        return path

    def commit(self, recipe: str, host: str, snapshot: str) -> None:
        """Make the staged states of a committed snapshot the next parent's; keep the newest few.

        Staging left by a run that died more than a day ago goes too (a running backup's is
        younger than that), so no plain tar state lingers in the cache forever.
        """
        d = self._dir(recipe, host)
        os.replace(d / f".{snapshot}.partial", d / snapshot)
        done = sorted(p for p in d.iterdir() if not p.name.startswith("."))
        stale = [p for p in d.glob(".*.partial") if p.stat().st_mtime < time.time() - STALE_STAGING]
        for old in [*done[:-KEEP], *stale]:
            shutil.rmtree(old, ignore_errors=True)

    def fetch(self, repo: Repository, m: mf.Manifest, name: str, identities: list[Any]) -> Path:
        """Decrypt snapshot ``m``'s state ``name`` from the repository into the cache.

        It is written next to where it belongs and renamed into place once its sha256 matches
        the manifest, so nothing half-written or plain is left elsewhere (raises StepFailed).
        """
        obj = m.object(name)
        assert obj is not None
        d = self._private(self._dir(m.recipe, m.host) / m.snapshot)
        final = d / _file_name(name)
        partial = d / f".{final.name}.partial"
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out, repo.open_object(m, obj) as fh:
                stream.fetch(fh, out, identities, obj.sha256, obj.size)
            if obj.content_sha256 and sha256_file(partial) != obj.content_sha256:
                raise StepFailed(f"tar state {name} of {m.snapshot} does not match its manifest")
            os.replace(partial, final)
        except OSError as exc:
            raise StepFailed(f"cannot read tar state {name} of {m.snapshot}: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return final


def _file_name(state: str) -> str:
    """A state object's file name in the host's temp dir and in staging (``files.snar``)."""
    return state.replace("/", "_")


# The control session: one command that lives for the whole backup. It prints the host's facts
# as key=value lines, makes a private temp dir, fills it with the parents' states (a tar stream of
# the size announced on the first stdin line; a ``head -c`` that reads ahead (busybox, BSD)
# finds nothing past it, since ``go`` is sent only after ``ready``), says ``ready``,
# then waits. ``go`` makes it send the directory back as a tar stream; anything else, or the end
# of stdin (the controller or the connection is gone), makes it exit. The directory goes on exit.
CONTROL = (
    # bash's read obeys TMOUT, which hardened hosts export: the session must wait as long as
    # the backup takes. ``unset`` works here even when the login shell made TMOUT readonly.
    "unset TMOUT; "
    'echo "kernel=$(uname -srm)"; echo "tar=$(tar --version | head -n 1)"; '
    'echo "machine-id=$(cat /etc/machine-id 2>/dev/null)"; '
    f"{ZSTD_FACT}; "
    'umask 077 && d=$(mktemp -d "${TMPDIR:-/tmp}/recipes-state.XXXXXXXX") || exit 1; '
    "trap 'rm -rf -- \"$d\"' EXIT; trap 'exit 1' HUP INT TERM PIPE; "
    'IFS= read -r n || exit 1; case "$n" in *[!0-9]*|"") exit 1;; esac; '
    'if [ "$n" -gt 0 ]; then head -c "$n" | tar -x -f - -C "$d" || exit 1; fi; '
    'printf "state=%s\\nready\\n" "$d"; '
    'IFS= read -r go || exit 0; [ "$go" = go ] || exit 0; tar -c -f - -C "$d" .'
)


def _states_tarball(parents: dict[str, Path], scratch: Path) -> Path:
    """The parents' plain states as one tar file (its size goes first on the control session)."""
    path = scratch / ".parents.tar"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, src in parents.items():
            info = tf.gettarinfo(str(src), arcname=_file_name(name))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(src, "rb") as fh:
                tf.addfile(info, fh)
    return path


class PendingSession:
    """The control session's command, started in a thread while the controller reads the
    repository (the chain decision): the session's login and facts overlap that work. It only
    prints facts and makes its private temp dir until ``RemoteState.open`` talks to it."""

    def __init__(self, host: Host) -> None:
        self._proc: Process | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._discarded = False
        self._thread = threading.Thread(target=self._start, args=(host,), name="control-session", daemon=True)
        self._thread.start()

    def _start(self, host: Host) -> None:
        try:
            proc = host.start(Command(CONTROL))
        except BaseException as exc:  # raised again by take(), in the caller's thread
            self._error = exc
            return
        with self._lock:
            late = self._discarded
            if not late:
                self._proc = proc
        if late:  # discarded while it started: end it here
            proc.kill()

    def take(self) -> Process:
        """The started session (once); the error of starting it, raised here."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        with self._lock:
            proc, self._proc = self._proc, None
            self._discarded = True
        if proc is None:
            raise StepFailed("the control session was already taken")
        return proc

    def discard(self) -> None:
        """Not needed after all (the run failed before using it): end it, the host cleans up.
        Never waits for a session still starting (a slow host): it ends itself once started."""
        with self._lock:
            self._discarded = True
            proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()


class RemoteState:
    """The control session on the host and its private (0700) temp dir of tar states.

    Opened before any step; tar reads and writes its states there; ``collect`` brings them back
    after the steps. If the controller dies or the connection drops, the session sees the end
    of its stdin and removes the directory itself: nothing survives on the host.
    """

    def __init__(self, host: Host, proc: Process, facts: dict[str, str], directory: str) -> None:
        self.host = host
        self.proc = proc
        self.facts = facts
        self.dir = directory
        self.closed = False

    @classmethod
    def open(
        cls, host: Host, parents: dict[str, Path], scratch: Path, pending: PendingSession | None = None
    ) -> RemoteState:
        """Start the control session (or take the ``pending`` one), hand it the parents' states,
        and read the host's facts."""
        try:
            tarball = _states_tarball(parents, scratch) if parents else None
        except OSError as exc:
            if pending is not None:
                pending.discard()
            raise StepFailed(f"cannot read the parent's tar state on the controller: {exc}") from exc
        proc = pending.take() if pending is not None else host.start(Command(CONTROL))
        try:
            size = tarball.stat().st_size if tarball else 0
            proc.write(f"{size}\n".encode())
            if tarball is not None:
                with open(tarball, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        proc.write(chunk)
            facts = _read_facts(proc)
        except BaseException:
            proc.kill()
            raise
        finally:
            if tarball is not None:
                tarball.unlink(missing_ok=True)
        directory = facts.pop("state", "")
        if not directory.startswith("/"):
            status = proc.wait(timeout=FAILED_WAIT)
            raise StepFailed(
                f"could not prepare a temp dir for tar's state on {host.name} (exit {status}): "
                f"{last_line(proc.stderr())}"
            )
        return cls(host, proc, facts, directory)

    def path(self, state: str) -> str:
        """Where tar reads and writes ``state`` (``files.snar``) on the host."""
        return f"{self.dir}/{_file_name(state)}"

    def collect(self, states: list[str], staging: Path) -> dict[str, Path]:
        """Bring the states tar left behind into ``staging`` (0600); the session then ends and
        removes the directory. Returns the local file of each state."""
        self.closed = True
        proc = self.proc
        wanted = {_file_name(s): s for s in states}
        found: dict[str, Path] = {}
        try:
            proc.write(b"go\n")
            proc.close_stdin()
            with tarfile.open(fileobj=cast(Any, proc), mode="r|") as tf:
                for member in tf:
                    name = os.path.basename(member.name)
                    src = tf.extractfile(member) if member.isfile() and name in wanted else None
                    if src is None:
                        continue
                    dest = staging / name
                    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
                    found[wanted[name]] = dest
            status = proc.wait()
        except tarfile.TarError as exc:
            proc.kill()
            raise StepFailed(f"tar's state from {self.host.name} is unreadable: {exc}") from exc
        except OSError as exc:  # the controller's cache: full disk, removed directory
            proc.kill()
            raise StepFailed(f"cannot keep tar's state in {staging}: {exc}") from exc
        except BaseException:
            proc.kill()
            raise
        missing = sorted(set(states) - set(found))
        if status != 0 or missing:
            raise StepFailed(
                f"could not read tar's state back from {self.host.name} (exit {status}"
                f"{', missing ' + ', '.join(missing) if missing else ''}): {last_line(proc.stderr())}"
            )
        return found

    def close(self) -> None:
        """End the session without collecting (a failed backup): the host removes the directory."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(RecipeError, OSError):
            self.proc.write(b"stop\n")
            self.proc.close_stdin()
            self.proc.wait(timeout=FAILED_WAIT)
        self.proc.kill()


def _read_facts(proc: Process) -> dict[str, str]:
    """key=value lines up to ``ready`` (the session writes nothing more until told to)."""
    buf = b""
    while not (buf.endswith(b"ready\n") and (len(buf) == 6 or buf[-7:-6] == b"\n")):
        chunk = proc.read(1 << 16)
        if not chunk:
            break
        buf += chunk
        if len(buf) > (1 << 20):
            raise StepFailed("the host's control session printed more than its facts")
    return key_values(buf)
