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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recipes import manifest as mf
from recipes import stream
from recipes.errors import RecipeError, StepFailed
from recipes.hosts import Host, last_line, quote, run
from recipes.model import Command
from recipes.repository import Repository, safe_name

log = logging.getLogger("recipes")

CHUNK = 1 << 20
STATE_FILE = "state.snar"
# Cached states kept per recipe@host: the newest is the next parent; one more covers a run
# whose snapshot was committed but whose successor was interrupted.
KEEP = 2


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
        path = self._dir(m.recipe, m.host) / m.snapshot / name
        if obj is None or not path.is_file():
            return None
        if obj.content_sha256 and sha256_file(path) != obj.content_sha256:
            log.warning("cached tar state %s of %s does not match its manifest: ignored", name, m.snapshot)
            return None
        return path

    def staging(self, recipe: str, host: str, snapshot: str) -> Path:
        """A private directory for the states a running backup produces."""
        path = self._dir(recipe, host) / f".{snapshot}.partial"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        for p in (self.root, *self.root.parents[:2]):
            with contextlib.suppress(OSError):
                p.chmod(0o700)
        return path

    def commit(self, recipe: str, host: str, snapshot: str) -> None:
        """Make the staged states of a committed snapshot the next parent's; keep the newest few."""
        d = self._dir(recipe, host)
        os.replace(d / f".{snapshot}.partial", d / snapshot)
        done = sorted(p for p in d.iterdir() if not p.name.startswith("."))
        for old in done[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)

    def adopt(self, m: mf.Manifest, name: str, source: Path) -> Path:
        """Store a state read back from the repository as snapshot ``m``'s."""
        d = self._dir(m.recipe, m.host) / m.snapshot
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = d / name
        os.replace(source, path)
        return path


def fetch_from_repository(
    repo: Repository, m: mf.Manifest, name: str, identities: list[Any], dest: Path
) -> None:
    """Decrypt snapshot ``m``'s state ``name`` into ``dest`` (checked against the manifest)."""
    obj = m.object(name)
    assert obj is not None
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, repo.open_object(m, obj) as fh:
        stream.fetch(fh, out, identities, obj.sha256, obj.size)
    if obj.content_sha256 and sha256_file(dest) != obj.content_sha256:
        raise StepFailed(f"tar state {name} of {m.snapshot} does not match its manifest")


class RemoteState:
    """A private (0700) temp directory on the host holding tar's state file while tar runs."""

    def __init__(self, host: Host, directory: str) -> None:
        self.host = host
        self.dir = directory
        self.path = f"{directory}/{STATE_FILE}"
        self.removed = False

    @classmethod
    @contextlib.contextmanager
    def create(cls, host: Host, parent: Path | None) -> Iterator[RemoteState]:
        """Make the directory and fill the state with the parent's (empty: a level 0); always removed."""
        make = Command(
            'umask 077 && d=$(mktemp -d "${TMPDIR:-/tmp}/recipes-state.XXXXXXXX") && '
            f'cat > "$d/{STATE_FILE}" && printf "%s\\n" "$d"'
        )
        proc = host.start(make)
        try:
            if parent is not None:
                with open(parent, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        proc.write(chunk)
            proc.close_stdin()
            out = b""
            while chunk := proc.read(CHUNK):
                out += chunk
            status = proc.wait()
        except BaseException:
            proc.kill()
            raise
        directory = out.decode("utf-8", "replace").strip()
        if status != 0 or not directory.startswith("/"):
            raise StepFailed(
                f"could not put tar's state in a temp dir on {host.name} (exit {status}): "
                f"{last_line(proc.stderr())}"
            )
        state = cls(host, directory)
        try:
            yield state
        finally:
            state.remove()

    def read_into(self, dest: Path) -> str:
        """Copy the state tar left behind to ``dest`` (0600) and remove the directory; return its sha256."""
        proc = self.host.start(
            Command(f"cat -- {quote(self.path)}; s=$?; rm -rf -- {quote(self.dir)}; exit $s")
        )
        h = hashlib.sha256()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            proc.close_stdin()
            with os.fdopen(fd, "wb") as out:
                while chunk := proc.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
            status = proc.wait()
        except BaseException:
            proc.kill()
            raise
        self.removed = True
        if status != 0:
            raise StepFailed(
                f"could not read tar's state back from {self.host.name} (exit {status}): "
                f"{last_line(proc.stderr())}"
            )
        return h.hexdigest()

    def remove(self) -> None:
        """Best effort: a dropped connection leaves a 0700 directory in the host's temp dir."""
        if self.removed:
            return
        self.removed = True
        with contextlib.suppress(RecipeError):
            result = run(self.host, Command(f"rm -rf -- {quote(self.dir)}"))
            if result.exit_status != 0:
                log.warning("could not remove %s on %s: %s", self.dir, self.host.name, result.stderr)
