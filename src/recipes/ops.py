"""The few primitive operations every step compiles to, and the endpoints bytes move between.

A step (``steps.py``) is data that yields ops; ``execute.py`` runs ops (one dispatch table, for
backup and restore alike) and ``render.py`` turns the same ops into plan and runbook text, so
what is shown cannot drift from what runs. Ops read no host and hold no secret values.
"""

from __future__ import annotations

import re
from typing import Protocol, TypeAlias

import attrs

from recipes.model import Command, sh

# Run-time values in commands read ``{{name}}``: the interpreter fills them in (the run's id,
# a captured path), plans show the placeholder so they still read no host.
RUN_ID = "{{run}}"
_VALUE = re.compile(r"\{\{([a-z_][a-z0-9_]*)\}\}")


def fill(command: Command, values: dict[str, str]) -> Command:
    """``command`` with every ``{{name}}`` known in ``values`` replaced by its value."""

    def sub(m: re.Match[str]) -> str:
        return values.get(m.group(1), m.group(0))

    script = _VALUE.sub(sub, command.script)
    return command if script == command.script else attrs.evolve(command, script=script)


@attrs.frozen
class Exec:
    """A command on every host bound to ``role``.

    ``ok_exits`` are the exits that count as success (``None``: any exit, for probes).
    ``sets`` names a yes/no value (exit 0 = yes) later ops test with ``when``; ``capture``
    keeps stdout (stripped) as a value, and ``fact`` puts it into the manifest's facts.
    """

    command: Command
    what: str
    role: str = "main"
    ok_exits: tuple[int, ...] | None = (0,)
    sets: str | None = None
    capture: str | None = None
    keys: bool = False
    """With ``capture``: stdout is ``key=value`` lines, kept as ``<capture>_<key>``."""
    secret: bool = False
    """With ``capture``: stdout is a secret (a gateway key): held in the interpreter's secrets
    map only, never a value commands are filled with, never logged, never a fact."""
    stdin: str | None = None
    """Text fed to the command on stdin (a script for ``manage.py shell``); not a secret."""
    fact: bool = False
    when: str | None = None
    """Run only on hosts where the value of this name is ``yes`` (set by an earlier probe)."""
    done: str = "ok"
    skipped: str = "skipped"
    """The step's outcome in the manifest when this op ran / was skipped by ``when``."""


@attrs.frozen
class Undo:
    """Registered on the host's undo list (and its dead-man's guard) *before* what it compensates.

    ``on="always"`` runs at the end of every run (start what was stopped, remove a temp file);
    ``on="failure"`` only when the run fails (move a moved-aside directory back).
    """

    command: Command
    what: str
    state: str
    """What is true while it has not run, for error lines (``looker is still stopped``)."""
    role: str = "main"
    on: str = "always"
    when: str | None = None


@attrs.frozen
class Release:
    """Run the pending undo called ``what`` now instead of at the end (start the application
    again as soon as its filesystem snapshot exists)."""

    what: str
    role: str = "main"


@attrs.frozen
class Manual:
    """A step a person does (an integration to rebuild, a command to run by hand): never run."""

    text: str
    shell: str | None = None


class Verdict(Protocol):
    """How a guard judges its probe: a refusal line, or None to go on."""

    def judge(self, output: str, status: int, facts: dict[str, str], force: bool) -> str | None: ...

    def describe(self) -> str: ...


@attrs.frozen
class MustBeEmpty:
    """The target directory is missing or empty, unless ``--force``."""

    path: str

    def judge(self, output: str, status: int, facts: dict[str, str], force: bool) -> str | None:
        if status == 0 or force:
            return None
        return f"target {self.path} is not empty: pass --force to restore over it"

    def describe(self) -> str:
        return f"refuse unless {self.path} is missing or empty (or --force)"


@attrs.frozen
class NotMountPoint:
    """The directory a restore moves aside is not a mount point holding files (a mount point
    cannot be renamed: ``mv`` says "Device or resource busy")."""

    path: str

    def judge(self, output: str, status: int, facts: dict[str, str], force: bool) -> str | None:
        said = next((line for line in output.splitlines() if line.split()[:1] == ["mount-point"]), None)
        if said is None:
            return None
        target = said[len("mount-point ") :].strip() or self.path
        where = (
            self.path if target == self.path.rstrip("/") else f"{self.path} is a symlink to {target}, which"
        )
        return (
            f"{where} is a mount point holding files, so the restore cannot move it aside: move its "
            "content elsewhere on that volume yourself (that is what is kept), then restore again"
        )

    def describe(self) -> str:
        return f"refuse if {self.path} is a mount point holding files (it cannot be moved aside)"


def fill_text(text: str, values: dict[str, str]) -> str:
    """``text`` (an op's ``what``) with every ``{{name}}`` known in ``values`` replaced."""
    return _VALUE.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:4])


@attrs.frozen
class NotOlder:
    """The target's version (the probe's stdout) is not older than the snapshot's fact."""

    fact: str
    what: str
    hint: str = ""
    missing_ok: bool = False
    """An empty probe output (nothing installed there yet) lets the restore go on."""

    def judge(self, output: str, status: int, facts: dict[str, str], force: bool) -> str | None:
        wanted = facts.get(self.fact, "")
        found = output.strip()
        if not wanted or not _version(wanted):
            return None  # the snapshot recorded no version: nothing to compare
        if self.missing_ok and status == 0 and not found:
            return None
        if status != 0 or not _version(found):
            return f"cannot read the {self.what} version on the target (exit {status}): {self.hint}".rstrip(
                ": "
            )
        if _version(found) < _version(wanted):
            return (
                f"the snapshot is from {self.what} {wanted} but the target has {found}: a restore "
                f"only goes onto the same or a newer version; {self.hint}".rstrip("; ")
            )
        return None

    def describe(self) -> str:
        return f"refuse a target older than the snapshot's {self.what} version (fact {self.fact})"


@attrs.frozen
class Guard:
    """Refuse early with one line: ``probe`` runs before anything is written (read-only)."""

    probe: Command
    verdict: Verdict
    role: str = "main"


# ---- endpoints: where bytes come from and go to ---------------------------------------------


@attrs.frozen
class HostCommand:
    """A command on a host: its stdout is the source, or its stdin the sink.

    ``warn_exits`` are exits that store with warnings (GNU tar's 1, "file changed as we read
    it"); ``incremental`` is the command for an incremental of a chain (restore);
    ``state`` names the object holding tar's listed-incremental state the command uses.
    ``error_pattern``/``benign``: stderr lines that fail a load even at exit 0.
    """

    command: Command
    role: str = "main"
    warn_exits: tuple[int, ...] = ()
    incremental: Command | None = None
    state: str | None = None
    error_pattern: str = ""
    benign: tuple[str, ...] = ()
    check: Command | None = None

    def errors(self, stderr: str) -> list[str]:
        """The stderr lines that are real errors."""
        if not self.error_pattern:
            return []
        return [
            line.strip()
            for line in stderr.splitlines()
            if re.search(self.error_pattern, line) and not any(re.search(b, line) for b in self.benign)
        ]

    def describe(self) -> str:
        return f"$ {self.command.masked()}"


@attrs.frozen
class SnapshotObject:
    """An object of the snapshot: ``<name>.zst.age`` (with ``chain``: of every snapshot of the
    chain, its full first)."""

    name: str
    kind: str
    engine: str | None = None
    chain: bool = False

    def describe(self) -> str:
        return f"{self.name}.zst.age"


@attrs.frozen
class KeyStore:
    """A store apart from the repository (any fsspec URL) for a key file, encrypted with age:
    ``<url>/<recipe>/<host>/<snapshot>/<name>.zst.age``."""

    url: str
    name: str
    role: str = "main"

    def location(self, recipe: str, host: str, snapshot: str) -> str:
        return f"{self.url.rstrip('/')}/{recipe}/{host}/{snapshot}/{self.name}.zst.age"

    def describe(self) -> str:
        return self.location("<recipe>", "<host>", "<snapshot>") + " (zstd + age, apart from the repository)"


@attrs.frozen
class DuplicityCollection:
    """A duplicity + GnuPG collection (``file://``, ``boto3+s3://``...) read ON THE CONTROLLER:
    a restore source that is not our repository (GOV.UK's offsite backups).

    duplicity runs on the controller with a temporary ``GNUPGHOME`` holding ``gpg_key_file``;
    the passphrase and AWS credentials are read from the named controller environment
    variables into duplicity's environment only. ``unpack`` says what reaches the host's
    command: ``automysqlbackup`` (the newest dump per database of the restored ``latest.tbz2``'s
    ``latest/``, each fed to the command) or ``tree`` (the restored directory as a tar stream).
    The executor is ``recipes.duplicity``.
    """

    url: str
    file_to_restore: str
    gpg_key_file: str
    passphrase_env: str
    unpack: str = "tree"
    databases: tuple[str, ...] = ()
    s3_endpoint_url: str | None = None
    aws_key_env: str | None = None
    aws_secret_env: str | None = None
    sign_key: str | None = None
    encrypt_key: str | None = None
    """Backup side: the GnuPG key id duplicity encrypts to."""
    time: str | None = None
    """duplicity's ``--time`` (``--snapshot TIME``); None: the newest backup set."""

    def describe(self) -> str:
        at = f"as of --time {self.time}" if self.time else "its newest backup set"
        return f"duplicity {self.url} {self.file_to_restore} ({at}; duplicity + GnuPG on the controller)"


@attrs.frozen
class Bucket:
    """Every object of ``bucket`` on an S3 API at ``gateway``; the access key and secret key are
    the secrets the interpreter captured under ``key_values`` (never in plans or manifests)."""

    gateway: str
    bucket: str
    key_values: tuple[str, str] = ("gw_access", "gw_secret")
    role: str = "main"
    create: bool = False
    """As a sink: create the bucket first (one that already exists is fine)."""

    def describe(self) -> str:
        access, secret = self.key_values
        return f"s3://{self.bucket} on {self.gateway} (keys {{{{{access}}}}}, {{{{{secret}}}}})"


Endpoint: TypeAlias = HostCommand | SnapshotObject | KeyStore | Bucket | DuplicityCollection


@attrs.frozen
class Transfer:
    """Stream bytes from ``src`` to ``dst`` in constant memory (zstd, age, sha256 on the way)."""

    src: Endpoint
    dst: Endpoint
    what: str
    background: bool = False
    """Go on once the first byte arrived (the source is consistent from then on); the run
    waits for the rest before it ends."""


Op: TypeAlias = Exec | Undo | Release | Manual | Guard | Transfer


def as_user(user: str, directory: str, script: str, home: str | None = None) -> Command:
    """``script`` run in ``directory`` as ``user`` whether the SSH login is root or that user."""
    env = f"HOME={sh(home)} " if home else ""
    inner = f"cd {sh(directory)} && {script}"
    return Command(
        f'if [ "$(id -un)" = {sh(user)} ]; then {env}bash -c {sh(inner)}; '
        f"else sudo -n -u {sh(user)} -- env {env}bash -c {sh(inner)}; fi"
    )
