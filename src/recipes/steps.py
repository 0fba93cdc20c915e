"""Step kinds: data that compiles to ops (``ops.py``). The interpreter runs the ops; plan and
runbook render the same ops."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import attrs

from recipes.model import Command, sh
from recipes.ops import (
    RUN_ID,
    Bucket,
    DuplicityCollection,
    Exec,
    Guard,
    HostCommand,
    KeyStore,
    Manual,
    MustBeEmpty,
    NotMountPoint,
    NotOlder,
    Op,
    Release,
    SnapshotObject,
    Transfer,
    Undo,
)
from recipes.undo import NOTHING_TO_UNDO

# GNU tar exits 1 when a file changed while it was read: a warning on a live system, not a failure.
TAR_WARNING_EXIT = 1
# The end of what GNU tar says of a socket it leaves out (an archive cannot hold one).
SOCKET_IGNORED = "socket ignored"
# Lines of tar's stderr kept with an object (the manifest stays small).
MAX_WARNINGS = 50


def real_warnings(lines: tuple[str, ...] | list[str]) -> list[str]:
    """tar's lines that say the files differ from what was there: all but sockets left out."""
    return [line for line in lines if not line.endswith(SOCKET_IGNORED)]


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
    role: str = "main"
    stdin: str | None = None
    """A script fed on stdin (``manage.py shell <<EOF``); shown in plans, so never a secret."""
    ok_exits: tuple[int, ...] = (0,)

    def ops(self) -> list[Op]:
        return [Exec(self.command, self.name, self.role, ok_exits=self.ok_exits, stdin=self.stdin)]


@attrs.frozen
class ReadSecret:
    """Read a secret on the host (``deisctl config store get gateway/accessKey``): its stdout is
    held in memory as ``name`` for transfers, never logged, shown or stored."""

    name: str
    command: Command
    about: str = ""
    role: str = "main"

    def ops(self) -> list[Op]:
        return [Exec(self.command, f"read {self.name}", self.role, capture=self.name, secret=True)]


@attrs.frozen
class _BucketStep:
    """A step about one bucket: its name and the snapshot object that holds its objects."""

    bucket: Bucket
    about: str = ""

    @property
    def name(self) -> str:
        return f"bucket-{self.bucket.bucket}"

    @property
    def object(self) -> str:
        return f"buckets/{self.bucket.bucket}.tar"


@attrs.frozen
class CopyBucket(_BucketStep):
    """Every object of an S3 bucket into the object ``buckets/<bucket>.tar`` (``buckets.py``)."""

    def ops(self) -> list[Op]:
        return [
            Transfer(self.bucket, SnapshotObject(self.object, "bucket"), f"copy s3://{self.bucket.bucket}")
        ]


@attrs.frozen
class RestoreBucket(_BucketStep):
    """Create the bucket (an existing one is fine), then put the stored objects back."""

    def ops(self) -> list[Op]:
        sink = attrs.evolve(self.bucket, create=True)
        return [Transfer(SnapshotObject(self.object, "bucket"), sink, f"restore s3://{self.bucket.bucket}")]


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
    role: str = "main"
    """Every host bound to this role is stopped (``nodes``: every node of a cluster)."""

    def ops(self) -> list[Op]:
        running = f"running {self.name}"
        return [
            Exec(self.check, f"is {self.name} running", self.role, ok_exits=None, sets=running, done=""),
            Undo(
                self.start,
                f"start {self.name}",
                f"{self.name} is still stopped",
                self.role,
                when=running,
            ),
            Exec(
                self.stop,
                f"stop {self.name}",
                self.role,
                when=running,
                done="stopped",
                skipped="not running",
            ),
        ]


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
    name: str = "files"
    members: str | None = None
    """A shell fragment printing the paths (relative to ``root``) to archive, one per line;
    None archives all of ``root``. Paths it prints that do not exist are skipped."""
    role: str = "main"
    from_snapshot: bool = False
    """``root`` is inside a filesystem snapshot: each snapshot has a new device number, so GNU
    tar must not compare devices (``--no-check-device``) or every incremental is a full."""

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
        return Command(self._members_prefix(self._tar("--file=-")))

    def _tar(self, *output: str) -> str:
        state = [f"--listed-incremental={self.state}"] if self.incremental else []
        excludes = self.excludes
        if self.from_snapshot:
            from recipes import fssnap

            if self.incremental:
                state += fssnap.TAR_SNAPSHOT_FLAGS
            excludes = (*excludes, fssnap.SNAPSHOT_EXCLUDE)
        return sh(
            "tar",
            "--create",
            *output,
            "--format=gnu",
            *state,
            # Holes stay holes: a sparse file (/var/log/lastlog) is read and restored sparse,
            # not written out in full on the target.
            "--sparse",
            "--numeric-owner",
            "--acls",
            "--xattrs",
            f"--directory={self.root}",
            *tar_excludes(excludes),
            *(() if self.members is None else ("--ignore-failed-read", "--files-from=-")),
            *(() if self.members is not None else (".",)),
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

    def _members_prefix(self, tar: str) -> str:
        if self.members is None:
            return tar
        # A missing root holds none of the members: an empty archive, not tar's "Cannot open".
        empty = sh("tar", "--create", "--file=-", "--format=gnu", "--files-from=/dev/null")
        return f"if [ -d {sh(self.root)} ]; then {{ {self.members} ; }} | {tar}; else {empty}; fi"

    def ops(self) -> list[Op]:
        return [
            Transfer(
                HostCommand(
                    self.command,
                    self.role,
                    warn_exits=(TAR_WARNING_EXIT,),
                    state=self.state_object,
                ),
                SnapshotObject(self.object, "files"),
                f"archive {self.name}",
            )
        ]


@attrs.frozen
class Dump:
    """Stream a database dump into the object ``dumps/<name>.sql``; empty output fails."""

    name: str
    engine: str
    command: Command
    about: str = ""

    consistent_from_first_byte: bool = False
    """The dump's program has taken its consistent snapshot before it writes anything (pg_dump):
    the run goes on (an application may start again) once the first byte arrived."""

    @property
    def object(self) -> str:
        return f"dumps/{self.name}.sql"

    def ops(self) -> list[Op]:
        return [
            Transfer(
                HostCommand(self.command),
                SnapshotObject(self.object, "dump", self.engine),
                f"dump {self.name}",
                background=self.consistent_from_first_byte,
            )
        ]


def not_root(owner: str = "") -> str:
    """GNU tar run by another user than root extracts every file as that user (--no-same-owner
    is its default then), silently: a login without sudo = true loses the snapshot's owners.
    Said as a tar line, so the restore's check of tar's stderr reports it as a warning; not for
    a login as ``owner``, the application's own user, whose files are its own."""
    me = '$(n=$(id -un 2>/dev/null) || n=$(id -u); echo "$n")'  # GNU id prints the number, fails
    owned = f' || [ "{me}" = {sh(owner)} ]' if owner else ""
    return (
        f'{{ [ "$(id -u)" = 0 ]{owned} || echo "tar: warning: not root ({me}): files get that owner, '
        "not the snapshot's; log in as root or set sudo = true\" >&2; }"
    )


@attrs.frozen
class Extract:
    """Restore ``files.tar`` under ``root``; refuses a non-empty root unless forced."""

    root: str
    object: str = "files.tar"
    about: str = ""
    name: str = "files"
    must_be_empty: bool = True
    """Refuse a non-empty ``root`` unless ``--force`` (off for shared places such as /etc)."""
    role: str = "main"
    incremental: bool = True
    """False for an archive made whole in every snapshot: only the restored snapshot's is read."""
    options: tuple[str, ...] = ()
    """More GNU tar options for the extraction (``--same-owner``)."""
    owner: str = ""
    """The application's user, whose files these are: a login as it does not warn (not root)."""

    @property
    def empty_check(self) -> Command:
        """Exits 0 when the target root is missing or empty."""
        q = sh("ls", "-A", self.root)
        return Command(f'test ! -e {sh(self.root)} || test -z "$({q} 2>/dev/null)"')

    def _tar(self, *extra: str) -> Command:
        return Command(
            f"mkdir -p {sh(self.root)} && {not_root(self.owner)} && "
            + sh(
                "tar",
                "--extract",
                "--file=-",
                *extra,
                *self.options,
                "--numeric-owner",
                "--preserve-permissions",
                "--acls",
                "--xattrs",
                # Every namespace, as stored: by default GNU tar restores only user.*, and
                # security.capability (ping's cap_net_raw), trusted.* and SELinux labels go.
                "--xattrs-include=*",
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

    def ops(self) -> list[Op]:
        ops: list[Op] = []
        if self.must_be_empty:
            ops.append(Guard(self.empty_check, MustBeEmpty(self.root), self.role))
        inc = self.incremental_command if self.incremental else None
        ops.append(
            Transfer(
                SnapshotObject(self.object, "files", chain=self.incremental),
                HostCommand(self.command, self.role, incremental=inc),
                f"extract {self.name}",
            )
        )
        return ops


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
    count: Callable[[tuple[str, ...]], Command] | None = attrs.field(default=None, eq=False, repr=False)
    """For drills: a read-only command printing ``<table>\t<rows>`` for the given tables (keys as
    the dump's row facts name them); None when the loaded data is not a database to ask."""

    @property
    def object(self) -> str:
        return f"dumps/{self.name}.sql"

    def errors(self, stderr: str) -> list[str]:
        """The stderr lines that are real errors."""
        return self._sink().errors(stderr)

    def _sink(self) -> HostCommand:
        return HostCommand(
            self.command, error_pattern=self.error_pattern, benign=self.benign, check=self.check
        )

    def ops(self) -> list[Op]:
        return [Transfer(SnapshotObject(self.object, "dump", self.engine), self._sink(), f"load {self.name}")]


@attrs.frozen
class Fact:
    """Read a fact at backup time (an application version): stdout, stripped, goes into the
    manifest's ``facts`` under ``name``; guards and drills compare against it."""

    name: str
    command: Command
    about: str = ""
    role: str = "main"

    def ops(self) -> list[Op]:
        return [Exec(self.command, f"read {self.name}", self.role, capture=self.name, fact=True)]


@attrs.frozen
class ManualStep:
    """What a person must do (never run): shown in plans and runbooks, in order."""

    name: str
    text: str
    shell: str | None = None
    about: str = ""

    def ops(self) -> list[Op]:
        return [Manual(self.text, self.shell)]


@attrs.frozen
class RefuseOlder:
    """Before a restore writes anything: refuse a target whose version (``probe``'s stdout) is
    older than the snapshot's fact ``fact`` (one line, exit 2)."""

    name: str
    probe: Command
    fact: str
    what: str
    hint: str = ""
    about: str = ""
    role: str = "main"
    missing_ok: bool = False

    def ops(self) -> list[Op]:
        return [Guard(self.probe, NotOlder(self.fact, self.what, self.hint, self.missing_ok), self.role)]


@attrs.frozen
class MoveAside:
    """Move ``path`` aside (never delete it) before a restore writes there; if the restore fails,
    the undo puts it back. The aside copy is kept after a successful restore, for the operator.

    A ``path`` that is a symlink (a DATA_DIR on a volume of its own) stays one: the directory it
    resolves to is moved aside beside itself (a rename on its own filesystem) and made anew, so
    the restore writes where the link points, not into a new directory in the link's place."""

    name: str
    path: str
    about: str = ""
    role: str = "main"
    non_empty_only: bool = False
    """Leave a missing or empty ``path`` where it is (nothing to keep aside)."""

    @property
    def aside(self) -> str:
        return f"{self.path.rstrip('/')}.before-restore-{RUN_ID}"

    def _resolve(self) -> str:
        """Shell setting ``$r`` to path (through a symlink: what it resolves to) and ``$a`` to
        its aside name; a symlink that cannot be resolved fails with one line."""
        p = sh(self.path.rstrip("/") or "/")
        return (
            f"r={p}; if [ -L {p} ]; then r=$(readlink -f -- {p}) || "
            f"{{ echo {sh(f'cannot resolve the symlink {self.path}')} >&2; exit 1; }}; fi; "
            f'a="$r"{sh(f".before-restore-{RUN_ID}")}; '
        )

    def ops(self) -> list[Op]:
        p, link = sh(self.path), sh(self.path.rstrip("/") or "/")
        back = Command(
            f'{self._resolve()}if [ -e "$a" ]; then rm -rf -- "$r" && mv -T -- "$a" "$r"; '
            f"else echo {sh(NOTHING_TO_UNDO)}; fi"
        )
        full = '[ -n "$(ls -A -- "$r" 2>/dev/null)" ]'
        mounted = (
            '{ if command -v mountpoint >/dev/null 2>&1; then mountpoint -q -- "$r"; '
            'else [ "$(stat -c %d -- "$r")" != "$(stat -c %d -- "$r/..")" ]; fi; }'
        )
        probe = Command(
            f'{self._resolve()}if [ -e "$r" ] && {full} && {mounted}; then '
            'printf "mount-point %s\\n" "$r"; fi; true'
        )
        # An empty mount point stays where it is (it cannot be renamed; there is nothing to keep).
        test = (
            f"[ -e {p} ] && {full}" if self.non_empty_only else f"[ -e {p} ] && {{ {full} || ! {mounted}; }}"
        )
        said = (
            f'if [ "$r" != {link} ]; then printf '
            f"{sh('warning: %s is a symlink to %s: moved %s aside to %s; the restore writes into %s')}'\\n' "
            f'{link} "$r" "$r" "$a" "$r" >&2; fi; '
        )
        move = Command(
            f'{self._resolve()}if {test}; then mv -T -- "$r" "$a" && mkdir -- "$r" && '
            f'chown --reference="$a" -- "$r" && chmod --reference="$a" -- "$r" && {{ {said}}}; fi'
        )
        return [
            Guard(probe, NotMountPoint(self.path), self.role),
            Undo(
                back,
                f"move {self.path} back",
                f"{self.path} is moved aside to {self.aside}",
                self.role,
                "failure",
            ),
            Exec(move, f"move {self.path} aside to {self.aside}", self.role),
        ]


SNAPSHOT_ROOT = "{{snapshot_root}}"


@attrs.frozen
class FsSnapshot:
    """A read-only filesystem snapshot (btrfs, LVM) of ``path`` while the application is
    stopped; then the application starts again at once (``release``: the undo to run now) and
    archives read ``SNAPSHOT_ROOT``. Removing the snapshot is an undo (also on the guard)."""

    name: str
    path: str
    kind: str
    release: str | None = None
    about: str = ""
    role: str = "main"
    also_release: tuple[tuple[str, str], ...] = ()
    """More undos to run at once, as (what, role): the other nodes of a cluster."""

    def ops(self) -> list[Op]:
        from recipes import fssnap

        kind = fssnap.check_kind(self.kind)
        tag = f"{_TAG_TOKEN}-{self.name}"  # one tag per run and path: the run's id fills it in
        made = Exec(
            _with_run(fssnap.create(kind, self.path, tag)),
            f"{self.kind} snapshot of {self.path}",
            self.role,
            capture="snapshot",
            keys=True,
        )
        # Registered before the snapshot exists: it finds the snapshot from its inputs alone, so
        # a lost answer or a dead controller cannot leave one behind.
        remove = Undo(
            _with_run(fssnap.cleanup(kind, self.path, tag)),
            f"remove the snapshot of {self.path}",
            f"a snapshot of {self.path} is left on the host",
            self.role,
        )
        out: list[Op] = [remove, made]
        if self.release:
            out.append(Release(self.release, self.role))
        out += [Release(what, role) for what, role in self.also_release]
        return out


# fssnap checks tags strictly; the run's id is only known when the run starts.
_TAG_TOKEN = "Zq9RUNTAGq9Z"


def _with_run(command: Command) -> Command:
    return attrs.evolve(command, script=command.script.replace(_TAG_TOKEN, RUN_ID))


KEY_DIR = f"/tmp/recipes-key-{RUN_ID}"


@attrs.frozen
class KeyFile:
    """A key file ``generate`` writes on the host (at ``path``) goes, age-encrypted, to a store
    apart from the repository; it is removed from the host on every exit path."""

    name: str
    generate: tuple[Command, ...]
    store: str
    owner: str | None = None
    about: str = ""
    role: str = "main"

    @staticmethod
    def path_for(name: str) -> str:
        """Where ``generate`` must write the file (a private directory made for the run)."""
        return f"{KEY_DIR}/{name}"

    def ops(self) -> list[Op]:
        d = sh(KEY_DIR)
        own = f" && chown -- {sh(self.owner)} {d}" if self.owner else ""
        return [
            Undo(
                Command(f"rm -rf -- {d}"), f"remove {KEY_DIR}", f"{KEY_DIR} is still on the host", self.role
            ),
            Exec(Command(f"mkdir -m 700 -- {d}{own}"), f"make {KEY_DIR}", self.role),
            *(Exec(c, f"write {self.name}", self.role) for c in self.generate),
            Transfer(
                HostCommand(Command(sh("cat", "--", self.path_for(self.name))), self.role),
                KeyStore(self.store, self.name),
                f"store {self.name}",
            ),
        ]


@attrs.frozen
class FetchKeyFile:
    """Restore: the key file from its store onto the host at ``dest`` (mode 0600)."""

    name: str
    store: str
    dest: str
    owner: str | None = None
    about: str = ""
    role: str = "main"

    def ops(self) -> list[Op]:
        d = sh(self.dest)
        own = f" && chown -- {sh(self.owner)} {d}" if self.owner else ""
        write = Command(f"umask 077 && cat > {d}{own}")
        return [
            Transfer(KeyStore(self.store, self.name), HostCommand(write, self.role), f"fetch {self.name}")
        ]


@attrs.frozen
class Duplicity:
    """Bytes between a host command and a duplicity collection read or written on the
    controller (``recipes.duplicity``): a restore source that is not our repository.

    ``restore`` (default): what duplicity restores is streamed into ``command`` on the host;
    otherwise ``command``'s stdout is backed up into the collection. ``error_pattern`` /
    ``benign``: stderr lines that fail a load even at exit 0."""

    name: str
    collection: DuplicityCollection
    command: Command
    restore: bool = True
    error_pattern: str = ""
    benign: tuple[str, ...] = ()
    must_be_empty: str | None = None
    """Refuse (before anything runs) unless this directory is missing or empty, or --force."""
    about: str = ""
    role: str = "main"

    def ops(self) -> list[Op]:
        end = HostCommand(self.command, self.role, error_pattern=self.error_pattern, benign=self.benign)
        if self.restore:
            guard: list[Op] = []
            if self.must_be_empty:
                p = sh(self.must_be_empty)
                probe = Command(f'test ! -e {p} || test -z "$(ls -A {p} 2>/dev/null)"')
                guard.append(Guard(probe, MustBeEmpty(self.must_be_empty), self.role))
            return [*guard, Transfer(self.collection, end, f"restore {self.name}")]
        return [Transfer(end, self.collection, f"back up {self.name}")]


Step: TypeAlias = (
    Run
    | Quiesce
    | Archive
    | Dump
    | Extract
    | Load
    | Fact
    | ManualStep
    | RefuseOlder
    | MoveAside
    | KeyFile
    | FetchKeyFile
    | FsSnapshot
    | Duplicity
    | ReadSecret
    | CopyBucket
    | RestoreBucket
)
