"""duplicity + GnuPG on the controller: the executor of ``ops.DuplicityCollection`` transfers.

A collection written by GOV.UK's offsite job (seed 004) is a restore source that is not our
repository. duplicity and gpg run here, on the controller, in a private temporary directory
(mode 0700) holding a temporary ``GNUPGHOME`` (the user's keyring is never read or written),
duplicity's archive dir and temp dir, and what it restored; the directory and the gpg-agent
started for it are removed on every exit path. The passphrase and the AWS credentials are read
from the named controller environment variables into duplicity's environment only: never an
argv entry, a log line, a plan or a file. What reaches the host is a stream into its command:
each chosen automysqlbackup dump into ``mysql``, or the restored directory as a tar stream.
"""

from __future__ import annotations

import bz2
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from typing import IO, BinaryIO

import attrs

from recipes.errors import ConfigError, StepFailed, VerifyError
from recipes.facts import TarFacts
from recipes.hosts import FAILED_WAIT, Host, Process, last_line
from recipes.model import MASK, Secret
from recipes.ops import DuplicityCollection, HostCommand, Transfer

log = logging.getLogger("recipes")

BAD_PASSPHRASE_EXIT = 31
"""duplicity's exit when gpg cannot decrypt (``Bad passphrase``, ``No secret key``)."""
CHUNK = 1 << 20
ARCHIVE_NAME = "recipes"
RESTORED = "restored"
UNPACK_DUMPS = "automysqlbackup"
UNPACK_TREE = "tree"

# automysqlbackup: ``<period>_<db>_<YYYY-MM-DD>_<HHhMMm>[_<weekday>].sql[.bz2]``.
DUMP_NAME = re.compile(
    r"^(?P<period>daily|weekly|monthly)_(?P<db>.+?)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<time>\d{2}h\d{2}m)"
    r"(?:[._][A-Za-z]+)?\.sql(?P<bz2>\.bz2)?$"
)
_PREFER = {"daily": 2, "weekly": 1, "monthly": 0}
"""At the same timestamp the daily dump is taken (the weekly/monthly one is the same data)."""
MAX_GNUPGHOME = 80
"""Longer GNUPGHOME paths cannot hold gpg-agent's sockets (108 bytes with the socket name)."""
SHORT_TMP = "/tmp"
GNUPG_PREFIX = "recipes-gnupg-"
USE_LINE = re.compile(rb"^USE `((?:[^`]|``)+)`;", re.MULTILINE)
PEEK = 64 * 1024
SIGNED_BY = re.compile(r"Volume was signed by key (?P<by>\S+), not (?P<want>\S+)")
"""duplicity's refusal with ``--sign-key``: a volume signed by another key, or unsigned."""
UNKNOWN_SIGNER = "Can't check signature: No public key"
SIGNED_USING = re.compile(r"gpg: +using \S+ key (?P<key>[0-9A-Fa-f]+)")


class BeforeHost(StepFailed):
    """A failure on the controller before anything was sent to the host (exit 1)."""


def _plain(value: str) -> str:
    return value.strip("/")


def options(src: DuplicityCollection, work: str) -> list[str]:
    """duplicity options shared by every command: private archive/temp dirs, S3 endpoint, key."""
    out = ["--archive-dir", f"{work}/cache", "--name", ARCHIVE_NAME, "--tempdir", f"{work}/tmp"]
    if src.s3_endpoint_url:
        out += ["--s3-endpoint-url", src.s3_endpoint_url]
    if src.sign_key:
        out += ["--sign-key", src.sign_key]
    return out


def env_words(src: DuplicityCollection) -> list[str]:
    """The environment duplicity gets, masked (as plans show it)."""
    words = ["GNUPGHOME=$TMP/gnupg", f"PASSPHRASE={MASK}"]
    if src.aws_key_env:
        words.append(f"AWS_ACCESS_KEY_ID={MASK}")
    if src.aws_secret_env:
        words.append(f"AWS_SECRET_ACCESS_KEY={MASK}")
    return words


def status_argv(src: DuplicityCollection, work: str) -> list[str]:
    return ["duplicity", "collection-status", *options(src, work), src.url]


def restore_argv(
    src: DuplicityCollection, target: str, masked: bool = False, work: str = "$TMP"
) -> list[str]:
    """``duplicity restore --file-to-restore F [--time T] URL TARGET`` (the target is the path
    itself: a file for ``latest.tbz2``, a directory for assets)."""
    at = ["--time", src.time] if src.time else []
    argv = [
        "duplicity",
        "restore",
        "--file-to-restore",
        _plain(src.file_to_restore),
        *at,
        *options(src, work),
        src.url,
        target,
    ]
    return [*env_words(src), *argv] if masked else argv


def plan_lines(src: DuplicityCollection) -> list[str]:
    """What the executor does on the controller, for plans and runbooks (no secret values)."""
    env = " ".join(env_words(src))
    out = [
        "on the controller, in TMP=$(mktemp -d) (mode 0700; your ~/.gnupg is never used):",
        f"$ GNUPGHOME=$TMP/gnupg gpg --batch --import {src.gpg_key_file}",
        f"$ {env} {' '.join(status_argv(src, '$TMP'))}",
        f"$ {' '.join(restore_argv(src, f'$TMP/{RESTORED}', masked=True))}",
    ]
    if not src.sign_key:
        out.append(
            "warning: the collection is encrypted but not signed (GOV.UK's job never signed it): "
            "its origin is not checked, as with --allow-unsigned; set sign_key to require a signature"
        )
    if src.unpack == UNPACK_DUMPS:
        which = ", ".join(src.databases) if src.databases else "every database found"
        out += [
            f"extract latest/ of $TMP/{RESTORED} (bzip2 tar) on the controller; for {which}: the newest "
            "of daily_/weekly_/monthly_<db>_<date>_<time>.sql.bz2 (one dump per database)",
        ]
        for db in src.databases:
            out.append(
                f"  latest/<newest of daily|weekly|monthly>_{db}_<date>_<time>.sql.bz2 -> database {db}"
            )
        out.append(
            "  every chosen dump is read through first: one cut short or damaged refuses the restore "
            "before anything is loaded"
        )
        out.append(
            "  each dump is streamed (bunzip2 on the controller) into the command below, after "
            "CREATE DATABASE IF NOT EXISTS and USE of its database (its own USE line wins)"
        )
    else:
        out.append(f"$TMP/{RESTORED} streamed as a tar into the command below")
    out.append("always, however it ends: GNUPGHOME=$TMP/gnupg gpgconf --kill all; rm -rf $TMP")
    return out


# ---- automysqlbackup's latest/ -------------------------------------------------------------


@attrs.frozen
class DumpFile:
    """One automysqlbackup dump in ``latest/``."""

    member: str
    period: str
    database: str
    date: str
    time: str

    @property
    def file(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    def order(self) -> tuple[str, str, int]:
        return (self.date, self.time, _PREFER[self.period])


def parse(member: str) -> DumpFile | None:
    """The dump a ``latest/`` member is, or None (another file)."""
    parts = member.strip("/").split("/")
    if len(parts) < 2 or parts[-2] != "latest":
        return None
    m = DUMP_NAME.match(parts[-1])
    if m is None:
        return None
    return DumpFile(member, m["period"], m["db"], m["date"], m["time"])


def choose(members: list[str], databases: tuple[str, ...] = ()) -> list[DumpFile]:
    """The newest dump per database (sorted by database); ``databases`` limits it and must all
    be found."""
    newest: dict[str, DumpFile] = {}
    for name in members:
        dump = parse(name)
        if dump is None:
            continue
        if dump.database not in newest or dump.order() > newest[dump.database].order():
            newest[dump.database] = dump
    if databases:
        missing = [d for d in databases if d not in newest]
        if missing:
            found = ", ".join(sorted(newest)) or "none"
            raise BeforeHost(
                f"no dump of {', '.join(missing)} in latest/ of the restored backup (databases found: "
                f"{found}): fix the databases parameter"
            )
        newest = {d: newest[d] for d in databases}
    if not newest:
        raise BeforeHost(
            "the restored backup has no latest/<daily|weekly|monthly>_<db>_<date>_<time>.sql.bz2: "
            "is file_to_restore automysqlbackup's latest.tbz2?"
        )
    return [newest[d] for d in sorted(newest)]


def use_database(head: bytes) -> str | None:
    """The database a dump's own ``USE `db`;`` line switches to, if it has one."""
    m = USE_LINE.search(head)
    return m.group(1).decode("utf-8", "replace").replace("``", "`") if m else None


def _ident(name: str) -> str:
    if "\n" in name or "\0" in name:
        raise StepFailed(f"database name {name!r} from the dump cannot be used")
    return "`" + name.replace("`", "``") + "`"


def header(database: str) -> bytes:
    """SQL sent before a dump: the seed's ``mysql < foo.sql`` creates the database if needed."""
    q = _ident(database)
    return f"CREATE DATABASE IF NOT EXISTS {q};\nUSE {q};\n".encode()


# ---- the workspace and the executor ---------------------------------------------------------


class Workspace:
    """The private temporary directory on the controller (0700): GNUPGHOME, duplicity's
    archive and temp dirs, what it restored. ``close`` kills its gpg-agent and removes it."""

    def __init__(self, src: DuplicityCollection, sign: bool = False) -> None:
        self.src = src
        self.env = _environment(src)  # secrets checked before anything is made
        if sign:
            self.env["SIGN_PASSPHRASE"] = self.env["PASSPHRASE"]
        self.dir = tempfile.mkdtemp(prefix="recipes-duplicity-")
        self.gnupg = os.path.join(self.dir, "gnupg")
        self.own_gnupg = len(self.gnupg) > MAX_GNUPGHOME
        try:
            if self.own_gnupg:
                # gpg-agent's sockets live in GNUPGHOME (no /run/user/<uid>): a long path cannot
                # hold a socket, and the secret key import fails.
                self.gnupg = tempfile.mkdtemp(prefix=GNUPG_PREFIX, dir=SHORT_TMP)
            else:
                os.mkdir(self.gnupg, 0o700)
            for sub in ("cache", "tmp"):
                os.mkdir(os.path.join(self.dir, sub), 0o700)
        except BaseException:
            self._remove()
            raise
        self.env["GNUPGHOME"] = self.gnupg

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the gpg-agent of the temporary GNUPGHOME and remove everything; never raises."""
        env = {**os.environ, "GNUPGHOME": self.gnupg}
        for argv in (["gpgconf", "--kill", "all"], ["gpgconf", "--remove-socketdir"]):
            if not os.path.isdir(self.gnupg):
                break
            try:
                subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("%s for %s: %s", " ".join(argv), self.gnupg, exc)
        self._remove()

    def _remove(self) -> None:
        for d in (self.gnupg, self.dir) if self.own_gnupg else (self.dir,):
            shutil.rmtree(d, ignore_errors=True)
            if os.path.exists(d):
                log.warning("could not remove %s on the controller: remove it by hand", d)

    def run(self, argv: list[str], what: str) -> subprocess.CompletedProcess[bytes]:
        log.info("$ %s (on the controller)", " ".join(argv))
        try:
            return subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL, capture_output=True)
        except OSError as exc:
            raise ConfigError(f"cannot run {argv[0]} on the controller for {what}: {exc}") from None

    def import_key(self) -> None:
        key = self.src.gpg_key_file
        if not os.path.isfile(key):
            raise ConfigError(
                f"gpg_key_file {key} is not a file on the controller: give the armored secret key"
            )
        done = self.run(["gpg", "--batch", "--import", key], "importing the key")
        if done.returncode != 0:
            raise StepFailed(
                f"gpg could not import {key} into the temporary keyring (exit {done.returncode}): "
                f"{last_line(done.stderr.decode('utf-8', 'replace'))}"
            )

    def status(self) -> None:
        done = self.run(status_argv(self.src, self.dir), "collection-status")
        if done.returncode != 0:
            raise StepFailed(self._why("duplicity collection-status", done))
        for line in done.stdout.decode("utf-8", "replace").splitlines():
            if line.strip():
                log.info("collection-status: %s", line.rstrip())

    def restore(self) -> str:
        target = os.path.join(self.dir, RESTORED)
        done = self.run(restore_argv(self.src, target, work=self.dir), "restore")
        if done.returncode != 0:
            self._signature(done)
            raise StepFailed(self._why("duplicity restore", done))
        if not os.path.lexists(target):
            raise StepFailed(
                f"duplicity restored nothing for {_plain(self.src.file_to_restore)} from {self.src.url}: "
                f"{_last(done)} (check file_to_restore with duplicity list-current-files)"
            )
        return target

    def _signature(self, done: subprocess.CompletedProcess[bytes]) -> None:
        """duplicity's own check with ``--sign-key`` ("Volume was signed by key X, not Y") is a
        verification failure (exit 3): the collection is not the signer's."""
        if not self.src.sign_key:
            return
        text = (done.stderr + b"\n" + done.stdout).decode("utf-8", "replace")
        m = SIGNED_BY.search(text)
        unknown = UNKNOWN_SIGNER in text
        if m is not None or unknown:
            if m is not None:
                by = "no key (unsigned)" if m["by"] == "None" else f"key {m['by']}"
            else:  # gpg stops first: the signer's key is not even in the temporary keyring
                made = SIGNED_USING.search(text)
                by = f"key {made['key'] if made else '(unknown)'}, which is not in gpg_key_file,"
            raise VerifyError(
                f"duplicity refused {self.src.url}: a volume is signed by {by}, not sign_key "
                f"{self.src.sign_key}; nothing was restored or changed on the host (check who wrote "
                "the collection, or unset sign_key for GOV.UK's unsigned ones)"
            )

    def _why(self, what: str, done: subprocess.CompletedProcess[bytes], restore: bool = True) -> str:
        tail = "; nothing was changed on the host" if restore else ""
        text = (done.stderr + b"\n" + done.stdout).decode("utf-8", "replace")
        if "Bad passphrase" in text or "No secret key" in text:
            cause = "bad passphrase" if "Bad passphrase" in text else "no matching secret key"
            return (
                f"{what} could not decrypt {self.src.url} (exit {done.returncode}, {cause}): check "
                f"${self.src.passphrase_env} and gpg_key_file {self.src.gpg_key_file}{tail}"
            )
        gpg = [ln.strip() for ln in text.splitlines() if ln.startswith("gpg: ")]
        detail = gpg[-1] if done.returncode == BAD_PASSPHRASE_EXIT and gpg else _last(done)
        return f"{what} failed on the controller (exit {done.returncode}): {detail}{tail}"


def _last(done: subprocess.CompletedProcess[bytes]) -> str:
    lines = [
        ln.strip()
        for ln in (done.stderr + b"\n" + done.stdout).decode("utf-8", "replace").splitlines()
        if ln.strip() and not ln.startswith("=====")
    ]
    errors = [ln for ln in lines if re.search(r"error|fail|not found|does not exist", ln, re.I)]
    return (errors or lines or ["(no output)"])[-1]


def _environment(src: DuplicityCollection) -> dict[str, str]:
    """duplicity's environment: the controller's, the passphrase and the AWS credentials (read
    from the named variables; a missing one is a ConfigError before anything runs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PASSPHRASE", "SIGN_PASSPHRASE")}
    env["PASSPHRASE"] = Secret(src.passphrase_env).reveal()
    if src.aws_key_env:
        env["AWS_ACCESS_KEY_ID"] = Secret(src.aws_key_env).reveal()
    if src.aws_secret_env:
        env["AWS_SECRET_ACCESS_KEY"] = Secret(src.aws_secret_env).reveal()
    return env


def check_tools() -> None:
    """duplicity and gpg on the controller (the seed's ``apt-get install duplicity``)."""
    for tool in ("duplicity", "gpg", "gpgconf"):
        if shutil.which(tool) is None:
            raise ConfigError(
                f"{tool} is not installed on the controller: apt-get install duplicity gnupg "
                "python3-boto3 (duplicity and GnuPG run on the controller, never on the host)"
            )


def precheck(src: DuplicityCollection) -> None:
    """Before anything runs anywhere: tools, key file, secrets' variables (ConfigError, exit 2)."""
    check_tools()
    if not os.path.isfile(src.gpg_key_file):
        raise ConfigError(
            f"gpg_key_file {src.gpg_key_file} is not a file on the controller: give the armored secret key"
        )
    _environment(src)
    if src.time is not None and (not src.time.strip() or src.time.startswith("-")):
        raise ConfigError(f"--snapshot {src.time!r} is not a duplicity time (e.g. 2024-01-31T06:00:00 or 3D)")


class Restorer:
    """Transfer executor: a DuplicityCollection into a host command."""

    def __init__(self) -> None:
        self.warned = False

    def feed(self, host: Host, op: Transfer) -> str:
        src, dst = op.src, op.dst
        assert isinstance(src, DuplicityCollection) and isinstance(dst, HostCommand)
        precheck(src)
        if not src.sign_key and not self.warned:
            self.warned = True
            log.warning(
                "%s is encrypted but not signed (GOV.UK's job never signed it): its origin is not "
                "checked, as with --allow-unsigned",
                src.url,
            )
        with Workspace(src) as work:
            try:
                work.import_key()
                work.status()
                restored = work.restore()
            except StepFailed as exc:
                raise BeforeHost(str(exc)) from None
            if src.unpack == UNPACK_DUMPS:
                name = os.path.basename(_plain(src.file_to_restore))
                return _load_dumps(host, dst, restored, src.databases, op.what, name)
            return _stream_tree(host, dst, restored, op.what)


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for info in tar:
        if info.isfile():
            yield info


def _load_dumps(
    host: Host, dst: HostCommand, path: str, databases: tuple[str, ...], what: str, name: str = "latest.tbz2"
) -> str:
    """Every chosen dump of ``latest/`` into ``dst`` (one process each), first error stops.

    Each chosen dump is read through once before the first is loaded: a dump cut short in the
    collection (automysqlbackup ran out of disk, a half-written ``latest.tbz2``) would otherwise
    reach mysql as far as it goes, after its ``DROP TABLE``, and fail there as a syntax error."""
    with contextlib.ExitStack() as stack:
        try:
            tar = stack.enter_context(tarfile.open(path, "r:*"))
            infos = {i.name: i for i in _members(tar)}
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BeforeHost(
                f"cannot read the restored {name} as a tar.bz2 ({_one_line(exc)}): the collection holds "
                "a damaged copy; nothing was changed on the host; restore an older backup set with "
                "--snapshot TIME"
            ) from None
        chosen = choose(list(infos), databases)
        for dump in chosen:
            _read_through(tar, infos[dump.member], dump, name)
        loaded: list[str] = []
        try:
            for dump in chosen:
                fh = tar.extractfile(infos[dump.member])
                assert fh is not None
                reader: IO[bytes] = bz2.BZ2File(fh) if dump.file.endswith(".bz2") else fh
                head = reader.read(PEEK)
                database = use_database(head) or dump.database
                log.info("load %s into database %s", dump.file, database)
                try:
                    _feed(host, dst, [header(database), head], reader, f"{what} {dump.file}")
                except StepFailed as exc:
                    before = f"; loaded before it: {', '.join(loaded)}" if loaded else ""
                    raise StepFailed(f"{exc}{before}") from None
                loaded.append(f"{dump.file} -> {database}")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise StepFailed(f"cannot read the restored {name} as a tar.bz2: {_one_line(exc)}") from None
    return f"ok ({'; '.join(loaded)})"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_through(tar: tarfile.TarFile, info: tarfile.TarInfo, dump: DumpFile, name: str) -> None:
    """Decompress one dump to its end (nothing kept); a damaged one is refused naming it."""
    try:
        fh = tar.extractfile(info)
        assert fh is not None
        reader: IO[bytes] = bz2.BZ2File(fh) if dump.file.endswith(".bz2") else fh
        while reader.read(CHUNK):
            pass
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BeforeHost(
            f"{dump.file} in the restored {name} is cut short or damaged ({_one_line(exc)}): the "
            "collection holds a bad copy of it; nothing was loaded and nothing was changed on the host; "
            "restore an older backup set with --snapshot TIME"
        ) from None


@contextlib.contextmanager
def _into(host: Host, dst: HostCommand, what: str) -> Iterator[Process]:
    """``dst`` started on the host, its stdin for the block to write; then its exit and stderr
    judged. A write the command stopped reading is its failure, quoted from its stderr."""
    proc: Process = host.start(dst.command)
    try:
        yield proc
        proc.close_stdin()
    except (OSError, EOFError) as exc:
        status = proc.wait(timeout=FAILED_WAIT)
        raise StepFailed(
            f"{what} failed on {host.name} (exit {status}): {last_line(proc.stderr()) or exc}"
        ) from None
    except BaseException:
        proc.kill()
        raise
    _judge(host, dst, proc, what)


def _feed(host: Host, dst: HostCommand, first: list[bytes], rest: BinaryIO | IO[bytes], what: str) -> None:
    with _into(host, dst, what) as proc:
        for data in first:
            proc.write(data)
        while chunk := rest.read(CHUNK):
            proc.write(chunk)


def _judge(host: Host, dst: HostCommand, proc: Process, what: str) -> None:
    status = proc.wait()
    errors = dst.errors(proc.stderr())
    if status != 0 or errors:
        detail = errors[0] if errors else last_line(proc.stderr())
        raise StepFailed(f"{what} failed on {host.name} (exit {status}): {detail}")


class _ToProcess:
    """A write-only file object onto a process's stdin (for ``tarfile`` streaming)."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc

    def write(self, data: bytes) -> int:
        self.proc.write(bytes(data))
        return len(data)


def _stream_tree(host: Host, dst: HostCommand, path: str, what: str) -> str:
    """The restored directory as a GNU tar stream into ``dst`` (numeric owners kept)."""
    if not os.path.isdir(path):
        raise StepFailed(
            f"{what}: duplicity restored a file, not a directory (is file_to_restore a directory?)"
        )
    count = 0
    with (
        _into(host, dst, what) as proc,
        tarfile.open(fileobj=_ToProcess(proc), mode="w|", format=tarfile.GNU_FORMAT) as tar,  # type: ignore[call-overload]
    ):
        for name in sorted(os.listdir(path)):
            tar.add(os.path.join(path, name), arcname=name)
            count += 1
    return f"ok ({count} top-level entries)"


# ---- the backup side: a host command's stdout into the collection ----------------------------


def backup_argv(src: DuplicityCollection, encrypt_key: str, tree: str, work: str = "$TMP") -> list[str]:
    """``duplicity`` (full if the collection has no chain yet, else incremental), encrypted to
    ``encrypt_key`` and, with ``sign_key``, signed: GOV.UK's job never signed its sets."""
    return [
        "duplicity",
        "--encrypt-key",
        encrypt_key,
        "--allow-source-mismatch",
        # The temporary keyring holds only the key the operator named: no web of trust to ask.
        "--gpg-options=--trust-model=always",
        *options(src, work),
        tree,
        src.url,
    ]


def backup_plan_lines(src: DuplicityCollection) -> list[str]:
    """What the backup executor does on the controller (no secret values)."""
    env = " ".join([*env_words(src), *([f"SIGN_PASSPHRASE={MASK}"] if src.sign_key else [])])
    where = f"$TMP/tree/{_plain(src.file_to_restore)}"
    how = "as a directory (tar stream unpacked)" if src.unpack == UNPACK_TREE else "as a file"
    argv = backup_argv(src, src.encrypt_key or "<encrypt_key>", "$TMP/tree")
    return [
        "on the controller, in TMP=$(mktemp -d) (mode 0700; your ~/.gnupg is never used):",
        f"$ GNUPGHOME=$TMP/gnupg gpg --batch --import {src.gpg_key_file}",
        f"the command's stdout -> {where} {how}",
        f"$ {env} {' '.join(argv)}",
        "always, however it ends: GNUPGHOME=$TMP/gnupg gpgconf --kill all; rm -rf $TMP",
    ]


class Backer:
    """Transfer executor: a host command's stdout into a DuplicityCollection (backup side).

    ``facts`` is the run's facts (the interpreter's): the collection, the file and, for a
    ``latest.tbz2``, the dump files it holds and their ``rows``; for a directory, ``tree``: the
    ``facts.TarFacts`` of the tar stream pulled from the host (JSON: files, bytes, sample), so the
    manifest points at what was written and a drill can measure a restore against it.
    """

    def __init__(self) -> None:
        self.facts: dict[str, str] = {}

    def push(self, host: Host, op: Transfer) -> str:
        src, dst = op.src, op.dst
        assert isinstance(src, HostCommand) and isinstance(dst, DuplicityCollection)
        if not dst.encrypt_key:
            raise ConfigError(
                "set encrypt_key (the GnuPG key id the collection is encrypted to) to back up into a "
                "duplicity collection"
            )
        precheck(dst)
        with Workspace(dst, sign=bool(dst.sign_key)) as work:
            work.import_key()
            tree = os.path.join(work.dir, "tree")
            target = os.path.join(tree, _plain(dst.file_to_restore))
            os.makedirs(os.path.dirname(target) if dst.unpack != UNPACK_TREE else target, mode=0o700)
            tap = TarFacts() if dst.unpack == UNPACK_TREE else None
            size = _pull(host, src, target, dst.unpack == UNPACK_TREE, op.what, tap)
            if tap is not None:
                self.facts["tree"] = json.dumps(tap.result(), sort_keys=True, separators=(",", ":"))
            if dst.unpack == UNPACK_DUMPS:
                rows = count_rows(target)
                self.facts["dumps"] = " ".join(rows)
                self.facts["rows"] = json.dumps(rows, sort_keys=True, separators=(",", ":"))
            done = work.run(backup_argv(dst, dst.encrypt_key, tree, work.dir), "backup")
            if done.returncode != 0:
                raise StepFailed(work._why("duplicity backup", done, restore=False))
            for line in done.stdout.decode("utf-8", "replace").splitlines():
                if line.strip():
                    log.info("duplicity: %s", line.rstrip())
        self.facts["collection"] = dst.url
        self.facts["collection_file"] = _plain(dst.file_to_restore)
        self.facts["signed"] = "yes" if dst.sign_key else "no"
        return f"ok ({size} bytes into {dst.url})"


def count_rows(path: str) -> dict[str, dict[str, int]]:
    """Rows per table of every automysqlbackup dump in the ``latest.tbz2`` at ``path``, by file
    name (``facts.RowCounter``, streamed: bunzip2 in chunks, nothing held whole). A manifest's
    facts are strings, so the run records this as the JSON text of its ``rows`` fact."""

    out: dict[str, dict[str, int]] = {}
    try:
        _count_into(out, path)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise StepFailed(f"cannot read {os.path.basename(path)} from the host as a tar.bz2: {exc}") from None
    return dict(sorted(out.items()))


def _count_into(out: dict[str, dict[str, int]], path: str) -> None:
    from recipes.facts import RowCounter

    with tarfile.open(path, "r|*") as tar:  # one pass, in the archive's order
        for info in tar:
            dump = parse(info.name) if info.isfile() else None
            if dump is None:
                continue
            fh = tar.extractfile(info)
            assert fh is not None
            reader: IO[bytes] = bz2.BZ2File(fh) if dump.file.endswith(".bz2") else fh
            counter = RowCounter("mysql")
            while chunk := reader.read(CHUNK):
                counter.feed(chunk)
            result = counter.result()
            if "error" in result:
                raise StepFailed(f"{dump.file} in {os.path.basename(path)} is cut short: {result['error']}")
            out[dump.file] = dict(result["rows"])


def choose_all(members: list[str]) -> list[DumpFile]:
    """Every automysqlbackup dump among ``members`` (sorted by file name)."""
    return sorted((d for m in members if (d := parse(m)) is not None), key=lambda d: d.file)


def _pull(
    host: Host, src: HostCommand, target: str, tree: bool, what: str, tap: TarFacts | None = None
) -> int:
    """The host command's stdout to ``target`` (a file, or unpacked as a tar into a directory).
    ``tap`` is fed every chunk as it is read (the tar stream's facts, nothing buffered); the
    stream is read to its end, past tar's end-of-archive blocks, so the tap sees them."""
    proc: Process = host.start(src.command)
    reader = _FromProcess(proc, tap)
    try:
        proc.close_stdin()
        if tree:
            with tarfile.open(fileobj=reader, mode="r|*") as tar:  # type: ignore[call-overload]
                tar.extractall(target, numeric_owner=True, filter="tar")
            while reader.read(CHUNK):  # tarfile stops at the first zero block: the rest too
                pass
        else:
            with open(target, "wb") as out:
                while chunk := reader.read(CHUNK):
                    out.write(chunk)
    except (tarfile.TarError, OSError) as exc:
        status = proc.wait(timeout=FAILED_WAIT)
        raise StepFailed(
            f"{what} failed on {host.name} (exit {status}): {last_line(proc.stderr()) or exc}"
        ) from None
    except BaseException:
        proc.kill()
        raise
    status = proc.wait()
    if status != 0:
        raise StepFailed(f"{what} failed on {host.name} (exit {status}): {last_line(proc.stderr())}")
    return reader.count


class _FromProcess:
    """A read-only file object on a process's stdout, counting bytes and feeding ``tap``."""

    def __init__(self, proc: Process, tap: TarFacts | None = None) -> None:
        self.proc = proc
        self.count = 0
        self.tap = tap

    def read(self, n: int = -1, /) -> bytes:
        data = self.proc.read(n)
        self.count += len(data)
        if self.tap is not None and data:
            self.tap.feed(data)
        return data
