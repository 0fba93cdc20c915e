"""Restore one snapshot: checks before the host is touched, then its chain streamed into the host."""

from __future__ import annotations

import logging
import time
from typing import Any

from recipes import chain, stream
from recipes import manifest as mf
from recipes.compression import ZSTD_FACT, Compression
from recipes.errors import ConfigError, RepositoryError, StepFailed
from recipes.hosts import FAILED_WAIT, Host, Process, check, key_values, last_line, run
from recipes.interrupts import interrupts_as_exceptions
from recipes.model import Command
from recipes.placement import resolve_zstd
from recipes.plan import Plan, kind
from recipes.repository import Repository
from recipes.steps import Extract, Load, Run, Step
from recipes.trust import Trust

log = logging.getLogger("recipes")


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
