"""Runs a Plan on a Host into (or out of) a Repository, with compensation for every quiesce."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from recipes import __version__, chain, signing, stream
from recipes import manifest as mf
from recipes.compression import ZSTD_FACT, Compression
from recipes.errors import ConfigError, HostError, RecipeError, RepositoryError, StepFailed
from recipes.guard import (
    DEADMAN_SECONDS,
    GUARD_GONE,
    TAKEN_BY_GUARD,
    Entry,
    Fired,
    Guard,
    Tracked,
    Undo,
)
from recipes.hosts import FAILED_WAIT, Host, Process, check, key_values, last_line, run
from recipes.model import Command
from recipes.plan import Plan, kind
from recipes.repository import Repository, SnapshotWriter
from recipes.steps import Archive, Dump, Extract, Load, Quiesce, Run, Step
from recipes.tarstate import RemoteState, StateCache, default_cache_dir, sha256_file
from recipes.trust import Trust

log = logging.getLogger("recipes")

# GNU tar exits 1 when a file changed while it was read: a warning on a live system.
TAR_WARNING_EXIT = 1
# duply's MAX_FULLBKP_AGE default in recipes.toml: a new full every three months.
DEFAULT_FULL_EVERY = chain.parse_duration("3M")


@attrs.frozen
class Chaining:
    """How backups chain: when a new full starts, where tar states are cached, and the identity
    (optional) that may read a parent's state from the repository when the cache lacks it."""

    full_every: dt.timedelta = DEFAULT_FULL_EVERY
    cache_dir: Path | None = None
    identity_file: str | None = None


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Set by the handler below: age's Rust code turns an exception raised inside its callbacks into
# an EncryptError ("encryption failed: KeyboardInterrupt"), so the stream code asks this instead.
_signalled = threading.Event()


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP (and SIGINT, unless ignored) into KeyboardInterrupt so every ``finally``
    (the undo) runs, and remember that one came (``_signalled``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        _signalled.set()
        raise KeyboardInterrupt(f"signal {signum}")

    _signalled.clear()
    wanted = [signal.SIGTERM, signal.SIGHUP]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        wanted.append(signal.SIGINT)
    old = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# Undo retries after a lost connection wait 1, 2, 4, 8 s..., all of them within this budget (s).
UNDO_BUDGET = 60.0


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM/SIGHUP during a run, with what could not be started again (empty: all was)."""

    def __init__(self, still_stopped: tuple[str, ...]) -> None:
        super().__init__("; ".join(still_stopped) or "everything that was stopped was started again")
        self.still_stopped = still_stopped


class Compensation:
    """One host's undo list: every entry goes to the host's guard (the dead-man's switch) *before*
    what it compensates runs; the controller runs the list newest first at the end, and the guard
    runs whatever is left if the controller falls silent for ``deadman`` seconds."""

    def __init__(self, host: Host, deadman: float = DEADMAN_SECONDS) -> None:
        self.host = host
        self.deadman = deadman
        self.guard: Guard | None = None
        self.pending: list[Entry] = []
        self.entries: list[Entry] = []
        self.still_stopped: list[str] = []
        """One line per undo that did not run: what, where, and what happens next."""
        self.by_guard: list[str] = []
        """Undos the host's guard ran itself (the controller was silent): the snapshot is void."""
        self.interrupted = False
        self._reported: set[int] = set()

    def register(self, undo: Undo) -> None:
        """Arm the guard (first time) and hand it ``undo``; raises if it did not take it."""
        if self.guard is None:
            self.guard = Guard.arm(self.host, self.deadman)
            self.guard.on_lost = self.host.close
        entry = self.guard.push(undo)
        self.entries.append(entry)
        self.pending.append(entry)

    @property
    def lost(self) -> bool:
        return self.guard is not None and self.guard.lost.is_set()

    def run_all(self) -> None:
        """Run every pending undo, newest first, then disarm the guard if nothing is left stopped.

        Never raises for an undo that failed: ``still_stopped`` and ``by_guard`` say what happened.
        A KeyboardInterrupt stops the retries; what did not run is in ``still_stopped``.
        """
        if self.guard is not None:
            self.guard.on_lost = None  # from here on a lost host is the undo's to retry
        try:
            while self.pending:
                entry = self.pending[-1]
                self._undo(entry)
                self.pending.pop()
            if self.guard is not None and not self.still_stopped:
                self._disarm(self.guard)
        except KeyboardInterrupt:
            self.interrupted = True
            self.still_stopped += [self._left(e, "interrupted") for e in reversed(self.pending)]
            self.pending.clear()
        finally:
            if self.guard is not None and not self.guard.closed.is_set():
                self.guard.close()  # the guard stays armed and undoes what is left

    def _left(self, entry: Entry, why: str) -> str:
        """The line for an undo that did not run: still stopped, where, and who starts it."""
        undo = entry.undo
        state = undo.state or f"{undo.what} has not run"
        if self.guard is not None:
            then = f"the host's guard ({self.guard.dir}) will {undo.what} within {self.deadman + 2:g}s"
        else:
            then = f"run by hand: {undo.command.masked()}"
        return f"{state} on {self.host.name} ({why}): {then}"

    def _undo(self, entry: Entry) -> None:
        assert self.guard is not None
        command = self.guard.claimed(entry)
        what = entry.undo.what
        # Once the host hears nothing for ``deadman`` seconds its guard runs the undo itself:
        # retrying much longer would only delay saying so.
        budget = min(UNDO_BUDGET, 3 * self.deadman + 10)
        deadline = time.monotonic() + budget
        wait = 1.0
        attempt = 1
        while True:
            try:
                result = run(self.host, command)
                break
            except HostError as exc:
                left = deadline - time.monotonic()
                if left < wait:
                    self.still_stopped.append(self._left(entry, f"{exc}; gave up after {attempt} tries"))
                    log.error("undo %s on %s FAILED: %s", what, self.host.name, exc)
                    return
                log.warning(
                    "undo %s on %s: %s; retry %d in %gs (%.0fs of %gs left)",
                    what,
                    self.host.name,
                    exc,
                    attempt,
                    wait,
                    left,
                    budget,
                )
                time.sleep(wait)
                wait = min(wait * 2, 8.0)
                attempt += 1
        if result.exit_status == 0:
            log.info("undo %s on %s: done", what, self.host.name)
        elif result.exit_status == TAKEN_BY_GUARD:
            when, _, status = result.stdout.decode("utf-8", "replace").strip().partition(" exit=")
            self._guard_ran(entry, Fired(entry.id, when or "(it is running it now)", status))
        elif result.exit_status == GUARD_GONE:
            self.still_stopped.append(
                f"{what} on {self.host.name}: the host's guard directory {self.guard.dir} is gone "
                f"(it fired and gave up waiting, or the directory was cleaned): check, and if needed "
                f"run by hand: {entry.undo.command.masked()}"
            )
        else:
            self.still_stopped.append(
                f"{what} failed on {self.host.name} (exit {result.exit_status}: "
                f"{last_line(result.stderr)}): run it by hand: {entry.undo.command.masked()}"
            )

    def _disarm(self, guard: Guard) -> None:
        try:
            fired = guard.disarm()
        except RecipeError as exc:
            self.by_guard.append(f"could not disarm the guard on {self.host.name} ({exc})")
            return
        entries = {e.id: e for e in self.entries}
        for f in fired:
            if f.id not in self._reported and f.id in entries:
                self._guard_ran(entries[f.id], f)
        log.info("guard on %s disarmed", self.host.name)

    def _guard_ran(self, entry: Entry, fired: Fired) -> None:
        self._reported.add(entry.id)
        status = f" (exit {fired.status})" if fired.status not in ("", "0") else ""
        self.by_guard.append(
            f"the host's guard on {self.host.name} already ran {entry.undo.what} at {fired.when}{status}"
        )
        log.warning("undo %s on %s: its guard ran it at %s", entry.undo.what, self.host.name, fired.when)

    def failure(self, cause: BaseException | None) -> BaseException | None:
        """The exception the run ends with, given the undo's outcome and the first ``cause``."""
        why = f" (first error: {cause})" if isinstance(cause, RecipeError) else ""
        if self.interrupted or isinstance(cause, KeyboardInterrupt):
            return Interrupted(tuple(self.still_stopped))
        if self.still_stopped:
            return StepFailed("; ".join(self.still_stopped) + why)
        if self.by_guard:
            return StepFailed(
                "; ".join(self.by_guard)
                + f" (the controller was silent for {self.deadman:g}s): nothing was stored{why}"
            )
        return cause


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
            if _signalled.is_set():  # Ctrl-C inside age's callbacks: act now, do not drain the stream
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


def resolve_zstd(host: Host, compression: Compression, has: bool) -> bool:
    """Where zstd runs, given whether the host has it; ``remote`` without it is a config error."""
    if compression.mode == "controller":
        return False
    if not has and compression.mode == "remote":
        raise ConfigError(
            f'compression = "remote" but {host.name} has no zstd: install zstd there, '
            'or set compression = "auto" or "controller"'
        )
    if not has:
        log.info("%s has no zstd: compressing on the controller", host.name)
    return has


def check_recipients(recipients: list[str]) -> None:
    """Every recipient parses as an age or ssh public key (ConfigError naming the bad one)."""
    if not recipients:
        raise ConfigError(
            "no age recipients configured: run `recipes init` or set [repository] recipients in recipes.toml"
        )
    for r in recipients:
        try:
            stream._recipient(r)
        except Exception as exc:
            raise ConfigError(
                f"[repository] recipients: {r[:12]}... is not an age or ssh public key ({exc})"
            ) from exc


def backup(
    plan: Plan,
    host: Host,
    repo: Repository,
    recipients: list[str],
    *,
    full: bool = False,
    chaining: Chaining | None = None,
    signer: signing.SigningKey | None = None,
    trust: Trust | None = None,
    deadman_seconds: float = DEADMAN_SECONDS,
) -> mf.Manifest:
    """``_backup`` under the lock of recipe@host: taken before the host is touched, released last."""
    check_recipients(recipients)
    if signer is None:
        from recipes.config import DEFAULT_SIGNING_KEY

        signer = signing.load_signing_key(os.path.expanduser(DEFAULT_SIGNING_KEY))
    with repo.lock(plan.recipe, plan.host, "run"):
        return _backup(
            plan,
            host,
            repo,
            recipients,
            full=full,
            chaining=chaining,
            signer=signer,
            trust=trust,
            deadman_seconds=deadman_seconds,
        )


def _backup(
    plan: Plan,
    host: Host,
    repo: Repository,
    recipients: list[str],
    *,
    full: bool,
    chaining: Chaining | None,
    signer: signing.SigningKey,
    trust: Trust | None,
    deadman_seconds: float,
) -> mf.Manifest:
    """Run a backup plan; the snapshot exists only if every step and every undo succeeded.

    It is an incremental on the latest snapshot of recipe@host when ``chain.choose`` allows, the
    parent's chain is signed by a key ``trust`` names (default: the signer's own) and the parent's
    tar state is at hand (cache, or the repository with an identity); else a full. The manifest
    is signed with ``signer`` (default: the key in ``~/.config/recipes/signing_key``).
    """
    if trust is None:
        trust = Trust((signer.public,))
    chaining = chaining or Chaining()
    host.connect_soon()
    started = _now()
    cache = StateCache(chaining.cache_dir or default_cache_dir(), repo.url)
    decision, parent_states = _decide(plan, repo, recipients, full, chaining, cache, trust)
    writer = repo.begin(plan.recipe, plan.host)
    staging, cached = _staging(cache, plan, writer.snapshot)
    job = Backup(plan, host, writer, recipients, plan.compression, parent_states, staging)
    comp = Compensation(host, deadman_seconds)
    committed = False
    try:
        with interrupts_as_exceptions():
            try:
                job.prepare()
                if decision.parent is not None and _other_machine(decision.parent, job.versions):
                    decision = chain.Decision(
                        0,
                        None,
                        f"full: {host.name} is not the machine snapshot {decision.parent.snapshot} "
                        "was taken from (its /etc/machine-id differs)",
                    )
                    job.start_over_as_full()
                log.info("%s", decision.reason)
                job.execute(comp)
            except BaseException as exc:
                comp.run_all()
                error = comp.failure(exc)
                if error is exc or error is None:
                    raise
                raise error from exc
            comp.run_all()  # and, before anything is committed, whether the host's guard fired
            if (error := comp.failure(None)) is not None:
                raise error
            job.collect_states()
            manifest = mf.Manifest(
                snapshot=writer.snapshot,
                recipe=plan.recipe,
                host=plan.host,
                started=started,
                finished=_now(),
                params=plan.params,
                objects=tuple(job.objects),
                steps=tuple(job.records),
                versions={"recipes": __version__, **job.versions},
                level=decision.level,
                parent=decision.parent.snapshot if decision.parent else None,
                recipients=tuple(recipients),
            )
            writer.commit(manifest, lambda data: signer.sign(data, signing.MANIFEST_NAMESPACE))
            committed = True
    finally:
        job.cleanup()
        if not committed:
            writer.abort()
            shutil.rmtree(staging, ignore_errors=True)
    if cached:
        try:
            cache.commit(plan.recipe, plan.host, writer.snapshot)
        except OSError as exc:
            log.warning("could not cache tar state in %s (%s): next backup may be a full", cache.root, exc)
    else:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _other_machine(parent: mf.Manifest, versions: dict[str, str]) -> bool:
    """True when both snapshots know their host's id and the ids differ (a host name re-pointed
    to another machine, a reinstall): tar's times and inodes from the parent mean nothing there."""
    before, now = parent.versions.get("host-id"), versions.get("host-id")
    return bool(before and now and before != now)


def _staging(cache: StateCache, plan: Plan, snapshot: str) -> tuple[Path, bool]:
    """Where this run's tar states go: the cache, or a temp dir when the cache is not writable."""
    try:
        return cache.staging(plan.recipe, plan.host, snapshot), True
    except OSError as exc:
        log.warning("cannot write the state cache %s (%s): the next backup will be a full", cache.root, exc)
        return Path(tempfile.mkdtemp(prefix="recipes-state-")), False


def _decide(
    plan: Plan,
    repo: Repository,
    recipients: list[str],
    full: bool,
    chaining: Chaining,
    cache: StateCache,
    trust: Trust,
) -> tuple[chain.Decision, dict[str, Path]]:
    """Full or incremental, and the parent's tar states (plain files on the controller).

    Only a chain whose every manifest ``trust`` believes can carry an incremental: an unsigned
    or badly signed parent means a full, said in the log.
    """
    states = [s.state_object for s in plan.steps if isinstance(s, Archive) and s.state_object]
    listed = [] if full or not states else repo.listed(plan.recipe, plan.host)
    previous = [item.manifest for item in listed]
    if listed and (problem := trust.problem(listed[-1])) is not None:
        return chain.Decision(0, None, f"full: the latest snapshot {previous[-1].snapshot}: {problem}"), {}
    decision = chain.choose(
        previous,
        params=plan.chain_params,
        recipients=recipients,
        states=states,
        full_every=chaining.full_every,
        now=dt.datetime.now(dt.UTC),
        force_full=full,
    )
    if decision.parent is None:
        return decision, {}
    parent = decision.parent
    by_id = {item.manifest.snapshot: item for item in listed}
    try:
        chain.resolve(parent, trust.lookup(by_id.get))
    except (RecipeError, ValueError) as exc:
        return chain.Decision(0, None, f"full: the chain of {parent.snapshot} cannot be trusted: {exc}"), {}
    found: dict[str, Path] = {}
    for name in states:
        path = cache.get(parent, name) or _state_from_repository(repo, parent, name, chaining, cache)
        if isinstance(path, str):
            reason = (
                f"full: the tar state of {parent.snapshot} is not in this controller's cache "
                f"({cache.root}) and {path}"
            )
            return chain.Decision(0, None, reason), {}
        found[name] = path
    return decision, found


def _state_from_repository(
    repo: Repository, parent: mf.Manifest, name: str, chaining: Chaining, cache: StateCache
) -> Path | str:
    """Decrypt the parent's state into the cache with the configured identity; else why not."""
    if not chaining.identity_file:
        return "no identity file is configured to read it from the repository"
    try:
        identities = stream.load_identities(chaining.identity_file)
    except OSError as exc:
        return f"the identity file {chaining.identity_file} cannot be read ({exc.strerror})"
    if not identities:
        return f"the identity file {chaining.identity_file} holds no age identity"
    try:
        return cache.fetch(repo, parent, name, identities)
    except (RecipeError, OSError) as exc:
        return f"reading it from the repository failed ({exc})"


def restore(
    plan: Plan,
    host: Host,
    repo: Repository,
    manifest: mf.Manifest,
    identities: list[Any],
    force: bool = False,
    trust: Trust | None = None,
) -> list[mf.StepRecord]:
    """Restore one snapshot: archives from its chain's full up to it, dumps from it alone.

    Before any command runs on the host: every manifest of the chain must be one ``trust``
    believes (signed by a trusted key, lying where it says) and every dump the snapshot holds
    must have a load step. Then a read-only probe refuses a non-empty target unless forced, and
    before anything is written every object the plan reads must have the sha256 its manifest
    records.
    """
    trust = trust or Trust()

    def fetch(sid: str) -> Any:
        return repo.load_listed(manifest.recipe, manifest.host, sid)

    item = fetch(manifest.snapshot)
    if item is None:
        raise RepositoryError(f"snapshot {manifest.snapshot} is not in {repo.url}")
    manifest = trust.check(item)
    snapshots = chain.resolve(manifest, trust.lookup(fetch))
    needed: list[tuple[mf.Manifest, str]] = []
    for step in plan.steps:
        if isinstance(step, Extract):
            needed += [(m, step.object) for m in snapshots]
        elif isinstance(step, Load):
            needed.append((manifest, step.object))
    missing = sorted({f"{name} (in {m.snapshot})" for m, name in needed if m.object(name) is None})
    if missing:
        raise RepositoryError(
            f"snapshot {manifest.snapshot} has no {', '.join(missing)}: the restore parameters "
            f"ask for data that was not backed up (backed up: "
            f"{', '.join(o.name for o in manifest.objects)})"
        )
    loaded = {name for m, name in needed if m is manifest}
    unloaded = [o for o in manifest.objects if o.kind == "dump" and o.name not in loaded]
    if unloaded:
        o = unloaded[0]
        raise ConfigError(
            f"snapshot {manifest.snapshot} holds {o.name} ({o.engine} dump) but nothing on "
            f"{host.name} would load it: configure the target's {o.engine} connection in "
            f"[recipes.{plan.recipe}] or with --set (see `recipes show {plan.recipe}`)"
        )
    if not identities:
        raise ConfigError(
            "no age identity: pass --identity FILE or set [repository] "
            "identity_file (the secret key from `recipes init`)"
        )
    with interrupts_as_exceptions():
        # The probe only reads (is the target empty, has it zstd): a refusal costs no hashing.
        host_zstd = _restore_checks(host, plan, force)
        for m in snapshots:
            objects = [obj for n, name in needed if n is m and (obj := m.object(name)) is not None]
            log.info("verify %d objects of %s", len(objects), m.snapshot)
            repo.verify_objects(m, objects)
        records: list[mf.StepRecord] = []
        for step in plan.steps:
            started = time.monotonic()
            log.info("step %s %s", kind(step), step.name)
            outcome = "ok"
            try:
                if isinstance(step, Extract):
                    for m in snapshots:
                        command = step.command if m.level == 0 else step.incremental_command
                        obj = m.object(step.object)
                        assert obj is not None
                        log.info("extract %s of %s (level %d)", step.object, m.snapshot, m.level)
                        _feed(step, command, host, repo, m, obj, identities, host_zstd)
                    if len(snapshots) > 1:
                        outcome = f"ok (a full and {len(snapshots) - 1} incrementals)"
                elif isinstance(step, Load):
                    obj = manifest.object(step.object)
                    assert obj is not None
                    _feed(step, step.command, host, repo, manifest, obj, identities, host_zstd)
                elif isinstance(step, Run):
                    check(host, step.command, step.name)
                else:
                    raise StepFailed(f"a restore cannot run a {kind(step)} step ({step.name})")
            except StepFailed as exc:
                if records:
                    raise StepFailed(f"{exc}; {_partial_state(plan, records, step)}") from exc
                raise
            seconds = round(time.monotonic() - started, 3)
            records.append(mf.StepRecord(step.name, kind(step), seconds, outcome))
        return records


def _partial_state(plan: Plan, done: list[mf.StepRecord], failed: Step) -> str:
    """What a restore that failed part way left on the target, for its error line."""
    names = [s.name for s in plan.steps]
    rest = names[names.index(failed.name) + 1 :]
    return (
        f"the target is PARTLY restored: done {', '.join(f'{r.kind} {r.name}' for r in done)}; "
        f"failed {kind(failed)} {failed.name}"
        + (f"; not run {', '.join(rest)}" if rest else "")
        + " (fix the cause and restore again with --force)"
    )


def _restore_checks(host: Host, plan: Plan, force: bool) -> bool:
    """One command before a restore writes anything: is every target empty (unless forced), and
    does the host have zstd. Returns whether zstd runs on the host."""
    targets = [] if force else [s for s in plan.steps if isinstance(s, Extract)]
    script = "; ".join(
        [ZSTD_FACT]
        + [
            f"if {s.empty_check.script}; then echo empty{i}=yes; else echo empty{i}=no; fi"
            for i, s in enumerate(targets)
        ]
    )
    result = run(host, Command(script))
    facts = key_values(result.stdout)
    if result.exit_status != 0 or "zstd" not in facts:
        raise StepFailed(
            f"could not check {host.name} before restoring (exit {result.exit_status}): "
            f"{last_line(result.stderr)}"
        )
    for i, step in enumerate(targets):
        if facts.get(f"empty{i}") != "yes":
            raise ConfigError(
                f"target {step.root} on {host.name} is not empty: pass --force to restore over it"
            )
    return resolve_zstd(host, plan.compression, facts["zstd"] == "yes")


def _feed(
    step: Extract | Load,
    command: Command,
    host: Host,
    repo: Repository,
    manifest: mf.Manifest,
    obj: mf.StoredObject,
    identities: list[Any],
    host_zstd: bool,
) -> None:
    """Stream one stored object into ``command`` and judge its exit and stderr.

    When the host has zstd the compressed bytes cross the wire and the host decompresses
    them (several times fewer bytes through SSH); otherwise the controller decompresses.
    """
    if host_zstd:
        command = Compression.decompress_on_host(command)
    proc: Process = host.start(command)
    try:
        with repo.open_object(manifest, obj) as fh:
            stream.fetch(fh, proc, identities, obj.sha256, obj.size, decompress=not host_zstd)
    except StepFailed:
        status = proc.wait(timeout=FAILED_WAIT)
        raise StepFailed(
            f"{kind(step)} {step.name} failed on {host.name} (exit {status}): {last_line(proc.stderr())}"
        ) from None
    except BaseException:
        proc.kill()
        raise
    status = proc.wait()
    errors = step.errors(proc.stderr()) if isinstance(step, Load) else []
    if status != 0 or errors:
        detail = errors[0] if errors else last_line(proc.stderr())
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        raise StepFailed(f"{kind(step)} {step.name} failed on {host.name} (exit {status}): {detail}{more}")
    if isinstance(step, Load) and step.check is not None:
        check(host, step.check, f"check after loading {step.name}")
