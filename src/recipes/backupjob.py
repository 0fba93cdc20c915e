"""One backup run's steps: quiesce under the undo list, archives and dumps streamed into the
snapshot, tar's new states brought back."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from recipes import manifest as mf
from recipes import stream
from recipes.compression import Compression
from recipes.errors import StepFailed
from recipes.guard import Tracked, Undo
from recipes.hosts import FAILED_WAIT, Host, check, last_line, run
from recipes.interrupts import signalled
from recipes.placement import resolve_zstd
from recipes.plan import Plan, kind
from recipes.repository import SnapshotWriter
from recipes.steps import Archive, Dump, Quiesce, Run, Step
from recipes.tarstate import RemoteState, sha256_file
from recipes.undo import Compensation

log = logging.getLogger("recipes")

# GNU tar exits 1 when a file changed while it was read: a warning on a live system.
TAR_WARNING_EXIT = 1


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
        self.states: list[str] = []
        self.objects: list[mf.StoredObject] = []
        self.records: list[mf.StepRecord] = []

    def prepare(self) -> None:
        """Open the control session before any step: version facts, whether the host has zstd, and
        a private temp dir on the host holding the parents' tar states (see ``RemoteState``).

        Every command costs a session on the host (here ~0.2 s, most of it the login shell's rc
        files), so facts, states in and states out all go through this one long-lived session.
        """
        self.remote = RemoteState.open(self.host, self.parent_states, self.staging)
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
        if self.remote is not None:
            self.remote.close()

    def execute(self, comp: Compensation) -> None:
        for step in self.plan.steps:
            started = time.monotonic()
            log.info("step %s %s", kind(step), step.name)
            outcome = self._step(step, comp)
            self.records.append(
                mf.StepRecord(step.name, kind(step), round(time.monotonic() - started, 3), outcome)
            )

    def _step(self, step: Step, comp: Compensation) -> str:
        if isinstance(step, Quiesce):
            if run(self.host, step.check).exit_status != 0:
                log.info("%s was not running: left alone", step.name)
                return "not running"
            comp.register(Undo(f"start {step.name}", step.start, f"{step.name} is still stopped"))
            if comp.guard is not None and not isinstance(self.host, Tracked):
                self.host = Tracked(self.host, comp.guard)  # the guard kills what we leave running
            check(self.host, step.stop, f"stop {step.name}")
            return "stopped"
        if isinstance(step, Run):
            check(self.host, step.command, step.name)
            return "ok"
        if isinstance(step, Archive):
            self._archive(step)
            return "ok"
        if isinstance(step, Dump):
            self._store(step, step.object, "dump", step.engine, warn_exit=None)
            return "ok"
        raise StepFailed(f"a backup cannot run a {kind(step)} step ({step.name})")

    def _archive(self, step: Archive) -> None:
        """tar, with its listed-incremental state in the host's private temp dir when it has one."""
        state = step.state_object
        if state is not None and self.remote is not None:
            step = step.with_state(self.remote.path(state))
            self.states.append(state)
        self._store(step, step.object, "files", None, warn_exit=TAR_WARNING_EXIT)

    def _store(
        self, step: Archive | Dump, name: str, what: str, engine: str | None, warn_exit: int | None
    ) -> None:
        started = time.monotonic()
        path = f"{name}.zst.age"
        on_host = self.zstd_on_host
        proc = self.host.start(self.compression.on_host(step.command) if on_host else step.command)
        try:
            proc.close_stdin()
            with self.writer.open(path) as fh:
                stored = stream.store(
                    proc, fh, self.recipients, compressed=on_host, level=self.compression.level
                )
        except StepFailed as exc:
            if signalled.is_set():  # Ctrl-C inside age's callbacks: act now, do not drain the stream
                proc.kill()
                raise KeyboardInterrupt("interrupted while storing") from None
            status = proc.wait(timeout=FAILED_WAIT)
            raise StepFailed(
                f"{what} {step.name} failed on {self.host.name} (exit {status}): "
                f"{last_line(proc.stderr()) if status else exc}"
            ) from exc
        except BaseException:
            proc.kill()
            raise
        status = proc.wait()
        warnings: tuple[str, ...] = ()
        if status != 0:
            if warn_exit is not None and status == warn_exit:
                warnings = tuple(line for line in proc.stderr().splitlines() if line.strip())[:50]
                log.warning(
                    "%s %s: %d warning(s), e.g. %s",
                    what,
                    step.name,
                    len(warnings),
                    warnings[0] if warnings else "",
                )
            else:
                raise StepFailed(
                    f"{what} {step.name} failed on {self.host.name} (exit {status}): "
                    f"{last_line(proc.stderr())}"
                )
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
            )
        )
