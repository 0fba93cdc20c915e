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
from pathlib import Path
from typing import Any, cast

from recipes import manifest as mf
from recipes import stream
from recipes.errors import RecipeError, StepFailed
from recipes.hosts import Host, last_line, quote, run
from recipes.model import Command
from recipes.repository import Repository, safe_name

log = logging.getLogger("recipes")

CHUNK = 1 << 20
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
        """Make the staged states of a committed snapshot the next parent's; keep the newest few."""
        d = self._dir(recipe, host)
        os.replace(d / f".{snapshot}.partial", d / snapshot)
        done = sorted(p for p in d.iterdir() if not p.name.startswith("."))
        for old in done[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)

    def adopt(self, m: mf.Manifest, name: str, source: Path) -> Path:
        """Store a state read back from the repository as snapshot ``m``'s."""
        path = self._private(self._dir(m.recipe, m.host) / m.snapshot) / name
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


def _file_name(state: str) -> str:
    """A state object's file name in the host's temp dir and in staging (``files.snar``)."""
    return state.replace("/", "_")


# Appended to the host-facts command when the backup archives incrementally: a private temp dir
# filled from a tar stream of the parents' states on stdin (an empty stream for a full).
MAKE_STATE_DIR = (
    'umask 077 && d=$(mktemp -d "${TMPDIR:-/tmp}/recipes-state.XXXXXXXX") && '
    '{ tar -x -f - -C "$d" || { rm -rf -- "$d"; exit 1; }; } && printf "state=%s\\n" "$d"'
)


def send_states(sink: Any, parents: dict[str, Path]) -> None:
    """Write the parents' plain states to ``sink`` (the host's stdin) as one tar stream."""
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.GNU_FORMAT) as tf:
        for name, path in parents.items():
            info = tf.gettarinfo(str(path), arcname=_file_name(name))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as fh:
                tf.addfile(info, fh)


class RemoteState:
    """The private (0700) temp directory on the host where tar keeps its states during a backup."""

    def __init__(self, host: Host, directory: str) -> None:
        self.host = host
        self.dir = directory
        self.removed = False

    def path(self, state: str) -> str:
        """Where tar reads and writes ``state`` (``files.snar``) on the host."""
        return f"{self.dir}/{_file_name(state)}"

    def collect(self, states: list[str], staging: Path) -> dict[str, Path]:
        """Bring the states tar left behind into ``staging`` (0600) and remove the directory, in one
        command; return the local file of each."""
        proc = self.host.start(
            Command(f"tar -c -f - -C {quote(self.dir)} . ; s=$?; rm -rf -- {quote(self.dir)}; exit $s")
        )
        wanted = {_file_name(s): s for s in states}
        found: dict[str, Path] = {}
        try:
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
        except BaseException:
            proc.kill()
            raise
        self.removed = True
        missing = sorted(set(states) - set(found))
        if status != 0 or missing:
            raise StepFailed(
                f"could not read tar's state back from {self.host.name} (exit {status}"
                f"{', missing ' + ', '.join(missing) if missing else ''}): {last_line(proc.stderr())}"
            )
        return found

    def remove(self) -> None:
        """Best effort: a dropped connection leaves a 0700 directory in the host's temp dir."""
        if self.removed:
            return
        self.removed = True
        with contextlib.suppress(RecipeError):
            result = run(self.host, Command(f"rm -rf -- {quote(self.dir)}"))
            if result.exit_status != 0:
                log.warning("could not remove %s on %s: %s", self.dir, self.host.name, result.stderr)
