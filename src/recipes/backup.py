"""``backup()``: the lock, full or incremental, the job under the undo list, the manifest last."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
from pathlib import Path

from recipes import __version__, chain, progress, signing, stream
from recipes import manifest as mf
from recipes.backupjob import Backup
from recipes.errors import ConfigError, StepFailed
from recipes.guard import DEADMAN_SECONDS
from recipes.hosts import Host
from recipes.interrupts import interrupts_as_exceptions
from recipes.parents import Chaining, decide, other_machine
from recipes.plan import Plan
from recipes.repository import Repository
from recipes.tarstate import PendingSession, StateCache, default_cache_dir
from recipes.trust import Trust
from recipes.verified import VerifiedManifests

log = logging.getLogger("recipes")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    roles: dict[str, list[Host]] | None = None,
    control: PendingSession | None = None,
) -> mf.Manifest:
    """``_backup`` under the lock of recipe@host: taken before the application is touched,
    released last. ``control``: the host's control session, already started by the caller (the
    CLI starts it before opening the repository); else it starts here, while the lock is taken.
    Before the lock it only reads facts and makes its private temp dir, which it removes when
    it ends (here, whenever the run fails before its steps)."""
    check_recipients(recipients)
    if signer is None:
        from recipes.config import DEFAULT_SIGNING_KEY

        signer = signing.load_signing_key(os.path.expanduser(DEFAULT_SIGNING_KEY))
    host.connect_soon()  # key exchange and login overlap taking the lock
    control = control or PendingSession(host)
    try:
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
                roles=roles,
                control=control,
            )
    finally:
        control.discard()  # not taken by the job (a failure before its steps): end it now


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
    roles: dict[str, list[Host]] | None = None,
    control: PendingSession | None = None,
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
    started = _now()
    cache = StateCache(chaining.cache_dir or default_cache_dir(), repo.url)
    if trust.verified is None:  # the chain decision reads every manifest: skip known signatures
        trust = trust.remembering(VerifiedManifests(chaining.cache_dir or default_cache_dir(), repo.url))
    decision, parent_states = decide(plan, repo, recipients, full, chaining, cache, trust)
    writer = repo.begin(plan.recipe, plan.host)
    staging, cached = _staging(cache, plan, writer.snapshot)
    job = Backup(plan, host, writer, recipients, plan.compression, parent_states, staging, control)
    job.expected = progress.expected(decision.parent, decision.previous)
    interp = job.interpreter(roles or {}, deadman_seconds, writer.snapshot)
    committed = False
    try:
        with interrupts_as_exceptions():
            try:
                job.prepare()
                if decision.parent is not None and other_machine(decision.parent, job.versions):
                    decision = chain.Decision(
                        0,
                        None,
                        f"full: {host.name} is not the machine snapshot {decision.parent.snapshot} "
                        "was taken from (its /etc/machine-id differs)",
                    )
                    job.start_over_as_full()
                    job.expected = progress.Expected()  # the parent's sizes say nothing of a full here
                log.info("%s", decision.reason)
                job.execute()
            except BaseException as exc:
                interp.finish(succeeded=False, abandon=isinstance(exc, KeyboardInterrupt))
                error = interp.failure(exc)
                if error is exc or error is None:
                    raise
                raise error from exc
            interp.finish(succeeded=True)  # and, before anything is committed, whether a guard fired
            if (error := interp.failure(None)) is not None and not interp.only_not_started():
                raise error
            # an application that does not start again fails the run (exit 1), but the snapshot
            # of what was taken while it was stopped is whole: it is committed, then said
            not_started = error
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
                facts=dict(interp.facts),
                external=tuple(job.external),
                downtime=interp.downtime(),
                warnings=tuple(interp.warnings),
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
    if not_started is not None:
        raise StepFailed(
            f"{not_started}; snapshot {manifest.snapshot} is committed all the same: its data was "
            "taken whole before that failed"
        ) from not_started
    return manifest


def _staging(cache: StateCache, plan: Plan, snapshot: str) -> tuple[Path, bool]:
    """Where this run's tar states go: the cache, or a temp dir when the cache is not writable."""
    try:
        return cache.staging(plan.recipe, plan.host, snapshot), True
    except OSError as exc:
        log.warning("cannot write the state cache %s (%s): the next backup will be a full", cache.root, exc)
        return Path(tempfile.mkdtemp(prefix="recipes-state-")), False
