"""Step kinds: data that yields commands. The engine executes them; plan and runbook render them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TypeAlias

import attrs

from recipes.model import Command, sh


def tar_excludes(excludes: tuple[str, ...]) -> list[str]:
    """Turn absolute-looking exclude paths into GNU tar's anchored ``./path`` patterns."""
    words = ["--anchored"]
    for item in excludes:
        rel = item.strip().lstrip("/").rstrip("/")
        if rel:
            words.append(f"--exclude=./{rel}")
    return words


def under(root: str, path: str) -> str:
    """``path`` read under ``root`` (``/var/opt/x.db`` under ``/srv/r`` is ``/srv/r/var/opt/x.db``)."""
    return "/" + "/".join(p for p in (root.strip("/"), path.strip("/")) if p)


@attrs.frozen
class Run:
    """Run one command on the host; a non-zero exit fails the step."""

    name: str
    command: Command
    about: str = ""

    def commands(self) -> Iterator[Command]:
        yield self.command


@attrs.frozen
class Quiesce:
    """Stop something for the backup; its start is registered before the stop runs.

    ``check`` exits 0 when the thing is running now: only what was running is
    stopped, and only what was stopped is started again.
    """

    name: str
    check: Command
    stop: Command
    start: Command
    about: str = ""

    def commands(self) -> Iterator[Command]:
        yield self.check
        yield self.stop


# What plans show for the state file; the engine puts a private temp path in its place.
STATE_PLACEHOLDER = "$STATE"


@attrs.frozen
class Archive:
    """Stream a GNU tar of ``root`` (excludes applied) into the object ``files.tar``.

    With ``incremental`` tar keeps its listed-incremental state in ``state``; the engine fills
    that file with the parent snapshot's state (empty for a full) and stores what tar leaves
    there as ``files.snar``, for the next backup.
    """

    root: str
    excludes: tuple[str, ...] = ()
    object: str = "files.tar"
    about: str = ""
    incremental: bool = True
    state: str = STATE_PLACEHOLDER

    @property
    def name(self) -> str:
        return "files"

    @property
    def state_object(self) -> str | None:
        """The snapshot object holding tar's state after this archive (``files.snar``)."""
        if not self.incremental:
            return None
        return self.object.removesuffix(".tar") + ".snar"

    def with_state(self, path: str) -> Archive:
        return attrs.evolve(self, state=path)

    @property
    def command(self) -> Command:
        return Command(self._tar("--file=-"))

    def _tar(self, *output: str) -> str:
        state = [f"--listed-incremental={self.state}"] if self.incremental else []
        return sh(
            "tar",
            "--create",
            *output,
            "--format=gnu",
            *state,
            "--numeric-owner",
            "--acls",
            "--xattrs",
            f"--directory={self.root}",
            *tar_excludes(self.excludes),
            ".",
        )

    def measure_command(self, sample: int) -> Command:
        """Prints ``raw=`` the bytes a full archive would be (GNU tar writing to /dev/null reads
        no file data) and ``sample=``/``zstd=`` the first ``sample`` bytes of the archive and
        their zstd -1 size, for ``recipes estimate``."""
        full = attrs.evolve(self, incremental=False)
        totals = full._tar("--file=/dev/null", "--totals")
        head = f"{full._tar('--file=-')} 2>/dev/null | head -c {sample}"
        return Command(
            f"echo raw=$({totals} 2>&1 >/dev/null | sed -n 's/^Total bytes written: \\([0-9]*\\).*/\\1/p'); "
            f"echo sample=$({head} | wc -c); "
            f"if command -v zstd >/dev/null; then echo zstd=$({head} | zstd -1 -q -c | wc -c); fi"
        )

    def commands(self) -> Iterator[Command]:
        yield self.command


@attrs.frozen
class Dump:
    """Stream a database dump into the object ``dumps/<name>.sql``; empty output fails."""

    name: str
    engine: str
    command: Command
    about: str = ""

    @property
    def object(self) -> str:
        return f"dumps/{self.name}.sql"

    def commands(self) -> Iterator[Command]:
        yield self.command


@attrs.frozen
class Extract:
    """Restore ``files.tar`` under ``root``; refuses a non-empty root unless forced."""

    root: str
    object: str = "files.tar"
    about: str = ""

    @property
    def name(self) -> str:
        return "files"

    @property
    def empty_check(self) -> Command:
        """Exits 0 when the target root is missing or empty."""
        q = sh("ls", "-A", self.root)
        return Command(f'test ! -e {sh(self.root)} || test -z "$({q} 2>/dev/null)"')

    def _tar(self, *extra: str) -> Command:
        return Command(
            f"mkdir -p {sh(self.root)} && "
            + sh(
                "tar",
                "--extract",
                "--file=-",
                *extra,
                "--numeric-owner",
                "--preserve-permissions",
                "--acls",
                "--xattrs",
                f"--directory={self.root}",
            )
        )

    @property
    def command(self) -> Command:
        """Extracts a full (level 0) archive; files already in the target stay."""
        return self._tar()

    @property
    def incremental_command(self) -> Command:
        """Extracts an incremental on top: also deletes what was gone when it was made."""
        return self._tar("--listed-incremental=/dev/null")

    def commands(self) -> Iterator[Command]:
        yield self.empty_check
        yield self.command
        yield self.incremental_command


@attrs.frozen
class Load:
    """Feed a stored dump to a database client on the host.

    Error lines on stderr that match ``error_pattern`` fail the step unless
    they also match one of ``benign`` (for example ``role "postgres" already exists``).
    """

    name: str
    engine: str
    command: Command
    error_pattern: str = ""
    benign: tuple[str, ...] = ()
    check: Command | None = None
    about: str = ""

    @property
    def object(self) -> str:
        return f"dumps/{self.name}.sql"

    def errors(self, stderr: str) -> list[str]:
        """The stderr lines that are real errors."""
        if not self.error_pattern:
            return []
        found = []
        for line in stderr.splitlines():
            if re.search(self.error_pattern, line) and not any(re.search(b, line) for b in self.benign):
                found.append(line.strip())
        return found

    def commands(self) -> Iterator[Command]:
        yield self.command
        if self.check is not None:
            yield self.check


Step: TypeAlias = Run | Quiesce | Archive | Dump | Extract | Load
