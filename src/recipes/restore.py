"""Restore one snapshot: checks before the host is touched, then its ops run by the interpreter
(snapshot objects streamed into host commands, key files fetched from their store)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any, BinaryIO, cast

from recipes import buckets, chain, duplicity, keystore, progress, stream
from recipes import manifest as mf
from recipes.compression import Compression
from recipes.errors import ConfigError, RecipeError, RepositoryError, StepFailed
from recipes.execute import Interpreter
from recipes.guard import DEADMAN_SECONDS
from recipes.hosts import FAILED_WAIT, Host, Process, check, last_line
from recipes.interrupts import interrupts_as_exceptions
from recipes.ops import Bucket, DuplicityCollection, HostCommand, KeyStore, SnapshotObject, Transfer
from recipes.placement import resolve_zstd
from recipes.plan import Plan
from recipes.render import kind
from recipes.repository import Repository
from recipes.steps import MAX_WARNINGS, real_warnings
from recipes.trust import Trust
from recipes.undo import Interrupted

log = logging.getLogger("recipes")


def _reads(plan: Plan) -> list[SnapshotObject]:
    """Every snapshot object the plan's ops read."""
    return [op.src for op in plan.ops() if isinstance(op, Transfer) and isinstance(op.src, SnapshotObject)]


def restore(
    plan: Plan,
    host: Host,
    repo: Repository,
    manifest: mf.Manifest,
    identities: list[Any],
    force: bool = False,
    trust: Trust | None = None,
    roles: dict[str, list[Host]] | None = None,
    deadman_seconds: float = DEADMAN_SECONDS,
) -> list[mf.StepRecord]:
    """Restore one snapshot: archives from its chain's full up to it, dumps from it alone.

    Before any command runs on the host: every manifest of the chain must be one ``trust``
    believes (signed by a trusted key, lying where it says) and every dump the snapshot holds
    must have a load step. Then the guards' read-only probes (is the target empty, is its
    version new enough, has it zstd) run, and before anything is written every object the plan
    reads must have the sha256 its manifest records.
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
    for src in _reads(plan):
        needed += [(m, src.name) for m in snapshots] if src.chain else [(manifest, src.name)]
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
    job = _Restore(plan, host, repo, manifest, snapshots, identities)
    interp = Interpreter(
        {**(roles or {}), "main": [host]},
        {
            (SnapshotObject, HostCommand): job.feed,
            (KeyStore, HostCommand): job.fetch_key,
            (DuplicityCollection, HostCommand): duplicity.Restorer().feed,
            (SnapshotObject, Bucket): job.to_bucket,
        },
        run_id=f"{manifest.snapshot}-{secrets.token_hex(3)}",
        deadman=deadman_seconds,
        force=force,
        snapshot_facts=manifest.facts,
    )
    job.secrets = interp.secrets
    with interrupts_as_exceptions():
        # The probes only read (is the target empty, has it zstd): a refusal costs no hashing.
        interp.reach()
        zstd = interp.preflight(plan.steps, probe_zstd=True)
        job.host_zstd = resolve_zstd(host, plan.compression, zstd.get(host.name, False))
        for m in snapshots:
            objects = [obj for n, name in needed if n is m and (obj := m.object(name)) is not None]
            log.info("verify %d objects of %s", len(objects), m.snapshot)
            repo.verify_objects(m, objects)
        return _run(interp, plan)


def restore_external(
    plan: Plan,
    host: Host,
    force: bool = False,
    roles: dict[str, list[Host]] | None = None,
    deadman_seconds: float = DEADMAN_SECONDS,
) -> list[mf.StepRecord]:
    """Restore from a source that is not our repository (a duplicity collection, seed 004):
    no manifest to trust or verify; duplicity + GnuPG on the controller check what they read.

    Before any command runs on the host: the controller has duplicity and gpg, the key file
    exists and the secrets' variables are set; then the guards' read-only probes run.
    """
    for op in plan.ops():
        if isinstance(op, Transfer) and isinstance(op.src, DuplicityCollection):
            duplicity.precheck(op.src)
    interp = Interpreter(
        {**(roles or {}), "main": [host]},
        {(DuplicityCollection, HostCommand): duplicity.Restorer().feed},
        run_id=f"offsite-{secrets.token_hex(4)}",
        deadman=deadman_seconds,
        force=force,
    )
    with interrupts_as_exceptions():
        interp.reach()
        interp.preflight(plan.steps)
        return _run(interp, plan)


def _run(interp: Interpreter, plan: Plan) -> list[mf.StepRecord]:
    """Run the restore's steps. However it ends after the first step that writes to the target
    began (a failed step, an interrupt, a lost connection), the one line says what the target
    holds now and what was started again on it; before that, what was taken back."""
    try:
        interp.run_steps(plan.steps)
    except BaseException as exc:
        interp.finish(succeeded=False, abandon=isinstance(exc, KeyboardInterrupt))
        error = interp.failure(exc)
        undone = interp.undone()
        restarted = [f"{name} on {host}" for name, host in interp.restarted()]
        if isinstance(error, duplicity.BeforeHost):
            back = f"; taken back after the failure: {', '.join(undone)}" if undone else ""
            raise StepFailed(f"{error}{back}") from exc
        at = len(interp.records)
        if at < _first_write(plan):
            # Nothing reached the target: no partial state, only what was put back as it was.
            if isinstance(error, RecipeError) and undone:
                raise _said(error, f"{error}{_after(undone, (), 'the failure')}") from exc
            if error is exc or error is None:
                raise
            raise error from exc
        if isinstance(error, KeyboardInterrupt):
            state = _partial_state(plan, interp.records, at, undone, restarted, interrupted=True)
            raise Interrupted(tuple(getattr(error, "still_stopped", ())), state) from exc
        if isinstance(error, RecipeError):
            state = _partial_state(plan, interp.records, at, undone, restarted)
            raise _said(error, f"{error}; {state}") from exc
        if error is exc or error is None:
            raise  # a bug: its traceback, not a line
        raise error from exc
    interp.finish(succeeded=True)
    if (error := interp.failure(None)) is not None:
        raise error
    return interp.records


def _said(error: RecipeError, text: str) -> RecipeError:
    """``error``'s class (so its exit code) with ``text``; a StepFailed when that class takes
    more than a message."""
    try:
        return type(error)(text)
    except TypeError:
        return StepFailed(text)


def _first_write(plan: Plan) -> int:
    """Index of the first step that moves bytes onto the target (what runs before it only stops,
    checks or moves aside); every step counts when none does."""
    for i, step in enumerate(plan.steps):
        if any(isinstance(op, Transfer) for op in step.ops()):
            return i
    return 0


def _after(undone: Sequence[str], restarted: Sequence[str], why: str) -> str:
    """``; taken back after <why>: ...; started again after <why>: ...`` (what the undo did)."""
    return (f"; taken back after {why}: {', '.join(undone)}" if undone else "") + (
        f"; started again after {why}: {', '.join(restarted)}" if restarted else ""
    )


def _partial_state(
    plan: Plan,
    done: list[mf.StepRecord],
    failed_at: int,
    undone: Sequence[str] = (),
    restarted: Sequence[str] = (),
    interrupted: bool = False,
) -> str:
    """What a restore that stopped part way left on the target, for its error line: the steps
    done, the one under way, those not run (less a start step the undo did in its place),
    ``undone`` (a moved-aside DATA_DIR moved back) and ``restarted`` (what runs again on it)."""
    failed = plan.steps[failed_at] if failed_at < len(plan.steps) else plan.steps[-1]
    started = {r.split(" on ", 1)[0] for r in restarted}
    rest = [
        f"{kind(s)} {s.name}"
        for s in plan.steps[failed_at + 1 :]
        if s.name.removeprefix("start-") not in started
    ]
    why = "the interruption" if interrupted else "the failure"
    if undone:
        fix = " (what was there before is back; fix the cause and restore again)"
    elif restarted:
        fix = " (it runs on the partly restored files: fix the cause and restore again with --force)"
    else:
        fix = " (fix the cause and restore again with --force)"
    return (
        "the target is PARTLY restored: "
        + (f"done {', '.join(f'{r.kind} {r.name}' for r in done)}; " if done else "")
        + ("interrupted during" if interrupted else "failed")
        + f" {kind(failed)} {failed.name}"
        + (f"; not run {', '.join(rest)}" if rest else "")
        + _after(undone, restarted, why)
        + fix
    )


def _stored_with_warnings(manifest: mf.Manifest, obj: mf.StoredObject) -> None:
    """Say again what the backup warned about an object it stored (GNU tar's exit 1: a file that
    shrank while read is stored padded with zeros and comes back so): the restore writes it as
    stored, and the operator learns here, not from a log of the night it was made."""
    if obj.warnings:
        # a socket tar left out says nothing about the files: name a real difference first, and
        # only sockets are no difference worth a warning (their service makes them again); a
        # full list of sockets (kept in tar's order before 3e8f799, which keeps at most 49) may
        # have crowded a real line out, so it still warns
        real = real_warnings(obj.warnings)
        first = (real or list(obj.warnings))[0]
        more = f" (and {len(obj.warnings) - 1} more)" if len(obj.warnings) > 1 else ""
        (log.warning if real or len(obj.warnings) >= MAX_WARNINGS else log.info)(
            "%s of %s was stored with warnings and is restored as stored: %s%s",
            obj.name,
            manifest.snapshot,
            first,
            more,
        )


def _tar_warned(what: str, host: str, stderr: str, seen: set[str] | None = None) -> None:
    """GNU tar exits 0 after warnings that mean the files differ from the snapshot (a target
    filesystem without ACLs: "Cannot set POSIX ACLs ... Operation not supported"): say so.
    ``seen``: the lines named already by this step (each archive of a chain says the not-root
    line again): named once; only the line named counts as seen."""
    said = [line.strip() for line in stderr.splitlines() if line.startswith("tar: ")]
    if seen is not None:
        said = [line for line in said if line not in seen]
        seen.update(said[:1])
    if said:
        more = f" (and {len(said) - 1} more)" if len(said) > 1 else ""
        log.warning(
            "%s on %s: tar warned, so the files may differ from the snapshot: %s%s",
            what,
            host,
            said[0],
            more,
        )


class _Restore:
    """The restore's transfer executors: snapshot objects and key files into host commands."""

    def __init__(
        self,
        plan: Plan,
        host: Host,
        repo: Repository,
        manifest: mf.Manifest,
        snapshots: list[mf.Manifest],
        identities: list[Any],
    ) -> None:
        self.plan = plan
        self.host = host
        self.repo = repo
        self.manifest = manifest
        self.snapshots = snapshots
        self.identities = identities
        self.host_zstd = False
        self.secrets: dict[str, dict[str, str]] = {}
        """The interpreter's captured secrets (the new gateway's keys)."""

    def to_bucket(self, host: Host, op: Transfer) -> str:
        """A stored bucket tar back into the bucket (``buckets.py``), with the keys read on ``host``."""
        src, dst = op.src, op.dst
        assert isinstance(src, SnapshotObject) and isinstance(dst, Bucket)
        obj = self.manifest.object(src.name)
        assert obj is not None
        meter = progress.current().meter(obj.name, obj.size)

        def feed(sink: Any) -> None:
            with self.repo.open_object(self.manifest, obj) as fh:
                counted = cast(BinaryIO, progress.CountingReader(fh, meter))
                stream.fetch(counted, sink, self.identities, obj.sha256, obj.size, decompress=True)

        return buckets.restore(dst, self.secrets.get(host.name, {}), feed, obj, op.what)

    def feed(self, host: Host, op: Transfer) -> str:
        src, dst = op.src, op.dst
        assert isinstance(src, SnapshotObject) and isinstance(dst, HostCommand)
        if not src.chain:
            obj = self.manifest.object(src.name)
            assert obj is not None
            self._feed(op.what, dst, dst.command, host, self.manifest, obj)
            return "ok"
        said: set[str] = set()  # tar's lines warned about in this step (each archive says the not-root one)
        for m in self.snapshots:
            command = dst.command if m.level == 0 or dst.incremental is None else dst.incremental
            obj = m.object(src.name)
            assert obj is not None
            log.info("extract %s of %s (level %d)", src.name, m.snapshot, m.level)
            self._feed(op.what, dst, command, host, m, obj, said)
        if len(self.snapshots) > 1:
            return f"ok (a full and {len(self.snapshots) - 1} incrementals)"
        return "ok"

    def _feed(
        self,
        what: str,
        dst: HostCommand,
        command: Any,
        host: Host,
        manifest: mf.Manifest,
        obj: mf.StoredObject,
        said: set[str] | None = None,
    ) -> None:
        """Stream one stored object into ``command`` and judge its exit and stderr.

        When the host has zstd the compressed bytes cross the wire and the host decompresses
        them (several times fewer bytes through SSH); otherwise the controller decompresses.
        """
        on_host = self.host_zstd and host.name == self.host.name
        if on_host:
            command = Compression.decompress_on_host(command)
        _stored_with_warnings(manifest, obj)
        meter = progress.current().meter(obj.name, obj.size)
        proc: Process = host.start(command)
        try:
            with self.repo.open_object(manifest, obj) as fh:
                counted = cast(BinaryIO, progress.CountingReader(fh, meter))
                stream.fetch(counted, proc, self.identities, obj.sha256, obj.size, decompress=not on_host)
        except StepFailed:
            status = proc.wait(timeout=FAILED_WAIT)
            raise StepFailed(
                f"{what} failed on {host.name} (exit {status}): {last_line(proc.stderr())}"
            ) from None
        except BaseException:
            proc.kill()
            raise
        status = proc.wait()
        errors = dst.errors(proc.stderr())
        if status != 0 or errors:
            detail = errors[0] if errors else last_line(proc.stderr())
            more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
            raise StepFailed(f"{what} failed on {host.name} (exit {status}): {detail}{more}")
        if obj.kind == "files":
            _tar_warned(what, host.name, proc.stderr(), said)
        if dst.check is not None:
            check(host, dst.check, f"check after {what}")

    def fetch_key(self, host: Host, op: Transfer) -> str:
        """A key file from its store, checked against the manifest, then onto the host."""
        src, dst = op.src, op.dst
        assert isinstance(src, KeyStore) and isinstance(dst, HostCommand)
        rec = next((o for o in self.manifest.external if o.name == src.name), None)
        if rec is None:
            raise StepFailed(f"snapshot {self.manifest.snapshot} records no {src.name} in a key store")
        url = src.location(self.manifest.recipe, self.manifest.host, self.manifest.snapshot)
        data = keystore.get(url, rec.sha256, rec.size, self.identities)
        proc = host.start(dst.command)
        try:
            proc.write(data)
            proc.close_stdin()
        except BaseException:
            proc.kill()
            raise
        status = proc.wait()
        if status != 0:
            raise StepFailed(f"{op.what} failed on {host.name} (exit {status}): {last_line(proc.stderr())}")
        return "ok"
