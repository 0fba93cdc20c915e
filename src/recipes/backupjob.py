"""One backup run's steps: quiesce under the undo list, archives and dumps streamed into the
snapshot, tar's new states brought back."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from recipes import buckets, facts, keystore, progress, stream
from recipes import manifest as mf
from recipes.compression import Compression
from recipes.errors import StepFailed
from recipes.execute import Interpreter
from recipes.hosts import FAILED_WAIT, Host, Process, last_line
from recipes.interrupts import signalled
from recipes.model import Command
from recipes.ops import Bucket, DuplicityCollection, HostCommand, KeyStore, SnapshotObject, Transfer
from recipes.placement import resolve_zstd
from recipes.plan import Plan
from recipes.repository import SnapshotWriter
from recipes.steps import (
    MAX_WARNINGS,
    SOCKET_IGNORED,
    STATE_PLACEHOLDER,
    TAR_WARNING_EXIT,
    real_warnings,
)
from recipes.tarstate import PendingSession, RemoteState, sha256_file

log = logging.getLogger("recipes")
STATE_FLAG = f"--listed-incremental={STATE_PLACEHOLDER}"

__all__ = ["TAR_WARNING_EXIT", "Backup"]


class Backup:
    """One backup run: executes the plan's steps into a snapshot writer."""

    def __init__(
        self,
        plan: Plan,
        host: Host,
        writer: SnapshotWriter,
        recipients: list[str],
        compression: Compression,
        parent_states: dict[str, Path],
        staging: Path,
        control: PendingSession | None = None,
    ):
        self.plan = plan
        self.host = host
        self.writer = writer
        self.recipients = recipients
        self.compression = compression
        self.parent_states = parent_states
        self.staging = staging
        self.zstd_on_host = False
        self.versions: dict[str, str] = {}
        self.remote: RemoteState | None = None
        self.control = control
        """The control session started early (``PendingSession``), until ``prepare`` takes it."""
        self.states: list[str] = []
        self.objects: list[mf.StoredObject] = []
        self.external: list[mf.StoredObject] = []
        self.records: list[mf.StepRecord] = []
        self.expected = progress.Expected()
        """Expected stored size and file count per object name (earlier snapshots), for progress."""
        self.interp: Interpreter
        self.background: list[tuple[threading.Thread, list[BaseException], Process]] = []

    def prepare(self) -> None:
        """Open the control session before any step: version facts, whether the host has zstd, and
        a private temp dir on the host holding the parents' tar states (see ``RemoteState``).

        Every command costs a session on the host (here ~0.2 s, most of it the login shell's rc
        files), so facts, states in and states out all go through this one long-lived session.
        """
        control, self.control = self.control, None
        self.remote = RemoteState.open(self.host, self.parent_states, self.staging, control)
        facts = self.remote.facts
        self.zstd_on_host = resolve_zstd(self.host, self.compression, facts.get("zstd") == "yes")
        self.versions = {k: v.strip() for k, v in facts.items() if k in ("kernel", "tar") and v.strip()}
        if machine := facts.get("machine-id", "").strip():
            # systemd asks that the id itself stay private: the manifest keeps a derived one.
            self.versions["host-id"] = hashlib.sha256(f"recipes host-id {machine}".encode()).hexdigest()[:16]

    def start_over_as_full(self) -> None:
        """The parent turned out unusable once the host answered: a fresh session, no parent."""
        if self.remote is not None:
            self.remote.close()
        self.parent_states = {}
        self.prepare()

    def collect_states(self) -> None:
        """After the steps (and the undo): bring tar's new states back and store them encrypted."""
        if self.remote is None:
            return
        for name, local in self.remote.collect(self.states, self.staging).items():
            started = time.monotonic()
            path = f"{name}.zst.age"
            level = self.compression.level
            with open(local, "rb") as src, self.writer.open(path) as fh:
                stored = stream.store(src, fh, self.recipients, compressed=False, level=level)
            self.objects.append(
                mf.StoredObject(
                    name=name,
                    kind="state",
                    path=path,
                    size=stored.size,
                    sha256=stored.sha256,
                    content_sha256=sha256_file(local),
                    compressed_on="controller",
                    seconds=round(time.monotonic() - started, 3),
                )
            )

    def cleanup(self) -> None:
        if self.control is not None:
            self.control.discard()
            self.control = None
        if self.remote is not None:
            self.remote.close()

    def interpreter(self, roles: dict[str, list[Host]], deadman: float, run_id: str) -> Interpreter:
        """The interpreter for this run: ``main`` is the backed-up host, other roles as bound."""
        from recipes import duplicity

        offsite = duplicity.Backer()
        self.interp = Interpreter(
            {**roles, "main": [self.host]},
            {
                (HostCommand, SnapshotObject): self._store,
                (HostCommand, KeyStore): self._to_key_store,
                (HostCommand, DuplicityCollection): offsite.push,
                (Bucket, SnapshotObject): self._from_bucket,
            },
            run_id=run_id,
            deadman=deadman,
        )
        offsite.facts = self.interp.facts  # the manifest points at what went into the collection
        return self.interp

    def execute(self) -> None:
        try:
            self.interp.reach()
            self.interp.run_steps(self.plan.steps)
        except BaseException:
            self.join_background(failed=True)
            raise
        self.join_background()
        self.records = self.interp.records

    def _store(self, host: Host, op: Transfer) -> str:
        """A host command's stdout into a snapshot object (tar's state in the private temp dir)."""
        src, dst = op.src, op.dst
        assert isinstance(src, HostCommand) and isinstance(dst, SnapshotObject)
        command = src.command
        if src.state is not None and self.remote is not None:
            command = Command(
                command.script.replace(
                    f"--listed-incremental={STATE_PLACEHOLDER}",
                    f"--listed-incremental={self.remote.path(src.state)}",
                ),
                command.secrets,
                command.user,
            )
            self.states.append(src.state)
        if op.background:
            return self._start_background(host, command, dst, op, src.warn_exits)
        self._stream(host, command, dst.name, dst.kind, dst.engine, op.what, src.warn_exits)
        return "ok"

    def _start_background(
        self, host: Host, command: Command, dst: SnapshotObject, op: Transfer, warn_exits: tuple[int, ...]
    ) -> str:
        """Start the command and wait for its first byte (a pg_dump has taken its snapshot by
        then), then store the rest in a thread: the run goes on (a filesystem snapshot, the
        application started again) and waits for it before anything is committed."""
        on_host = self.zstd_on_host and host.name == self.host.name
        proc = host.start(self.compression.on_host(command) if on_host else command)
        try:
            proc.close_stdin()
            first = proc.read(stream.CHUNK)
        except BaseException:
            proc.kill()
            raise
        box: list[BaseException] = []

        def work() -> None:
            try:
                self._stream(
                    host, command, dst.name, dst.kind, dst.engine, op.what, warn_exits, (proc, first)
                )
            except BaseException as exc:
                box.append(exc)

        thread = threading.Thread(target=work, name=f"store-{dst.name}", daemon=True)
        thread.start()
        self.background.append((thread, box, proc))
        log.info("%s: begun, stored in the background", op.what)
        return "begun (stored while the run went on)"

    def join_background(self, failed: bool = False) -> None:
        """Wait for every background transfer; after a failure kill them first. Raises the first
        error a background transfer had."""
        for _, _, proc in self.background:
            if failed:
                proc.kill()
        errors: list[BaseException] = []
        for thread, box, _ in self.background:
            thread.join()
            errors += box
        self.background.clear()
        if errors and not failed:
            raise errors[0]

    def _from_bucket(self, host: Host, op: Transfer) -> str:
        """Every object of a bucket into one snapshot object (``buckets.py``), with the keys the
        interpreter captured on ``host``."""
        assert isinstance(op.src, Bucket) and isinstance(op.dst, SnapshotObject)
        keys = self.interp.secrets.get(host.name, {})
        level = self.compression.level
        obj = buckets.store(op.src, keys, op.dst.name, self.writer, self.recipients, level, op.what)
        self.objects.append(obj)
        return f"ok ({obj.facts['objects']} objects)"

    def _to_key_store(self, host: Host, op: Transfer) -> str:
        """A key file from the host, age-encrypted, into a store apart from the repository."""
        src, dst = op.src, op.dst
        assert isinstance(src, HostCommand) and isinstance(dst, KeyStore)
        url = dst.location(self.plan.recipe, self.plan.host, self.writer.snapshot)
        proc = host.start(src.command)
        try:
            proc.close_stdin()
            stored = keystore.put(url, proc, self.recipients)
        except BaseException:
            proc.kill()
            raise
        status = proc.wait()
        if status != 0:
            keystore.remove(url)
            raise StepFailed(f"{op.what} failed on {host.name} (exit {status}): {last_line(proc.stderr())}")
        log.info("stored %s in the key store: %d bytes", dst.name, stored.size)
        self.external.append(
            mf.StoredObject(name=dst.name, kind="key", path=url, size=stored.size, sha256=stored.sha256)
        )
        return "stored in the key store"

    def _stream(
        self,
        host: Host,
        command: Command,
        name: str,
        what: str,
        engine: str | None,
        step_name: str,
        warn_exits: tuple[int, ...],
        begun: tuple[Process, bytes] | None = None,
    ) -> None:
        """Store one command's stdout; ``begun``: the command already runs and sent these bytes."""
        started = time.monotonic()
        path = f"{name}.zst.age"
        on_host = self.zstd_on_host and host.name == self.host.name
        # An archive's facts need its plain bytes: free when zstd runs here; when the host
        # compressed it, a decompression in the taps' own thread (overlapping encryption), paid
        # because drills check every archive's counts and content sample against them.
        taps = facts.taps_for(what, engine)
        watch = self.interp.progress
        meter = watch.meter(name, self.expected.sizes.get(name), self.expected.files.get(name))
        meter.count_files(taps)
        if begun is None:
            proc = host.start(self.compression.on_host(command) if on_host else command)
            raw: stream.Readable = proc
        else:
            proc, first = begun
            raw = _Prefixed(first, proc)
        try:
            proc.close_stdin()
            source = raw if on_host else progress.CountingReader(raw, watch.raw(name))
            with self.writer.open(path) as fh:
                stored = stream.store(
                    source,
                    progress.CountingWriter(fh, meter),
                    self.recipients,
                    compressed=on_host,
                    level=self.compression.level,
                    taps=taps,
                )
        except StepFailed as exc:
            if signalled.is_set():  # Ctrl-C inside age's callbacks: act now, do not drain the stream
                proc.kill()
                raise KeyboardInterrupt("interrupted while storing") from None
            status = proc.wait(timeout=FAILED_WAIT)
            raise StepFailed(
                f"{step_name} failed on {host.name} (exit {status}): "
                f"{last_line(proc.stderr()) if status else exc}"
            ) from exc
        except BaseException:
            proc.kill()
            raise
        status = proc.wait()
        warnings: tuple[str, ...] = ()
        if status != 0:
            if status in warn_exits:
                warnings = _kept([line.strip() for line in proc.stderr().splitlines() if line.strip()])
                log.warning(
                    "%s: %d warning(s), e.g. %s",
                    step_name,
                    len(warnings),
                    warnings[0] if warnings else "",
                )
            else:
                raise StepFailed(
                    f"{step_name} failed on {host.name} (exit {status}): {last_line(proc.stderr())}"
                )
        elif warn_exits:
            warnings = _warned_at_exit_0(step_name, proc.stderr())
        seconds = round(time.monotonic() - started, 3)
        log.info("stored %s: %d bytes in %.1fs", path, stored.size, seconds)
        self.objects.append(
            mf.StoredObject(
                name=name,
                kind=what,
                path=path,
                size=stored.size,
                sha256=stored.sha256,
                engine=engine,
                compressed_on="host" if on_host else "controller",
                seconds=seconds,
                warnings=warnings,
                facts=_merged(taps),
            )
        )


SKIPPED = re.compile(r"\[\.\.\. \d+ bytes of stderr skipped \.\.\.\]$")
"""The mark ``hosts._Tail`` leaves where it dropped the middle of a long stderr."""


def _warned_at_exit_0(step_name: str, stderr: str) -> tuple[str, ...]:
    """What GNU tar said while exiting 0, kept with the object: a member that could not be read
    under ``--ignore-failed-read`` ("Cannot open: Permission denied") is left out of the archive
    at exit 0. A socket tar leaves out ("socket ignored": a service makes it again) is recorded
    at info level, so a nightly ``-q`` run does not mail about it every night."""
    said = _kept(
        [line.strip() for line in stderr.splitlines() if line.startswith("tar: ") or SKIPPED.match(line)]
    )
    if real_warnings(said):
        log.warning("%s: %d warning(s), e.g. %s", step_name, len(said), said[0])
    elif said:
        log.info(
            "%s: tar left out %d socket(s) (an archive cannot hold one), e.g. %s",
            step_name,
            len(said),
            said[0],
        )
    return said


def _kept(lines: list[str]) -> tuple[str, ...]:
    """At most ``MAX_WARNINGS`` of tar's lines, real ones first: sockets left out never crowd
    out the line that says a file was not read whole (the mark of a stderr cut short is real)."""
    real = real_warnings(lines)
    # at most MAX_WARNINGS - 1 sockets: a full list of them marks an older snapshot (restore)
    sockets = [line for line in lines if line.endswith(SOCKET_IGNORED)][: MAX_WARNINGS - 1]
    return tuple((real + sockets)[:MAX_WARNINGS])


def _merged(taps: list[facts.Tap]) -> dict[str, Any]:
    """The taps' results as one JSON-safe dict (a tap's own ``error`` is kept, never raised)."""
    out: dict[str, Any] = {}
    for tap in taps:
        out.update(tap.result())
    return out


class _Prefixed:
    """A process's stdout with the bytes already read from it put back in front."""

    def __init__(self, first: bytes, proc: Process) -> None:
        self._first = first
        self._proc = proc

    def read(self, n: int = -1, /) -> bytes:
        if self._first:
            out, self._first = self._first, b""
            return out
        return self._proc.read(n)
