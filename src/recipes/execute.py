"""THE interpreter: one dispatch table from op to executor, roles bound to hosts, one undo list
per host (each on that host's dead-man's guard), for backups and restores alike.

Transfers are executed by whoever owns their endpoints (``backupjob.py`` writes snapshot objects,
``restore.py`` reads them): they register a handler per (source, sink) endpoint type.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs

from recipes import interrupts, ops, progress, undo
from recipes import manifest as mf
from recipes.compression import ZSTD_FACT
from recipes.errors import ConfigError, StepFailed
from recipes.guard import DEADMAN_SECONDS, Tracked
from recipes.guard import Undo as GuardUndo
from recipes.hosts import Host, key_values, last_line, run
from recipes.model import Command
from recipes.render import kind
from recipes.undo import Compensation

log = logging.getLogger("recipes")


class HasOps(Protocol):
    """A step: a name, a sentence, and the ops it compiles to."""

    @property
    def name(self) -> str: ...

    @property
    def about(self) -> str: ...

    def ops(self) -> list[ops.Op]: ...


TransferHandler = Callable[[Host, ops.Transfer], str]


class Interpreter:
    """Runs steps' ops on the hosts bound to their roles; ``finish`` runs the undo lists."""

    def __init__(
        self,
        roles: dict[str, list[Host]],
        transfers: dict[tuple[type, type], TransferHandler],
        *,
        run_id: str,
        deadman: float = DEADMAN_SECONDS,
        force: bool = False,
        snapshot_facts: dict[str, str] | None = None,
    ) -> None:
        self.roles = {role: list(hosts) for role, hosts in roles.items()}
        self.transfers = transfers
        self.deadman = deadman
        self.force = force
        self.snapshot_facts = snapshot_facts or {}
        self.progress = progress.current()
        """Who watches this run (the CLI's progress bars): transfers hand it byte counters."""
        self.globals = {"run": run_id}
        self.values: dict[str, dict[str, str]] = {}
        self.facts: dict[str, str] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        """Per host, captured secrets (``Exec(secret=True)``): memory only, read by transfers."""
        self.comps: dict[str, Compensation] = {}
        self.records: list[mf.StepRecord] = []
        self.warnings: list[str] = []
        """``warning:`` lines commands printed on stderr (a .deploying marker left out...)."""
        self.judged: dict[ops.Guard, list[str]] = {}
        self._stopped: dict[tuple[str, str], float] = {}
        self._down: dict[tuple[str, int], str] = {}
        self.table: dict[type, Callable[[Any], str]] = {
            ops.Exec: self._exec,
            ops.Undo: self._undo,
            ops.Release: self._release,
            ops.Manual: self._manual,
            ops.Guard: self._guard,
            ops.Transfer: self._transfer,
        }

    # ---- hosts and values

    def hosts(self, role: str) -> list[Host]:
        hosts = self.roles.get(role)
        if not hosts:
            raise ConfigError(f"no host is bound to role {role!r}: set it in the recipe's parameters")
        return hosts

    def _values(self, host: Host) -> dict[str, str]:
        return {**self.globals, **self.values.get(host.name, {})}

    def fill(self, command: Command, host: Host) -> Command:
        return ops.fill(command, self._values(host))

    def _wanted(self, host: Host, when: str | None) -> bool:
        return when is None or self.values.get(host.name, {}).get(when) == "yes"

    def _track(self, name: str, comp: Compensation) -> None:
        """From the first undo on, every new command on that host is recorded with its guard."""
        for hosts in self.roles.values():
            for i, h in enumerate(hosts):
                if h.name == name and not isinstance(h, Tracked) and comp.guard is not None:
                    hosts[i] = Tracked(h, comp.guard)

    # ---- the loop

    def preflight(self, steps: Iterable[HasOps], probe_zstd: bool = False) -> dict[str, bool]:
        """Every guard's probe, batched into one read-only command per host, before anything is
        written; a refusal raises ConfigError. Returns, per host, whether zstd runs there."""
        guards = [op for step in steps for op in step.ops() if isinstance(op, ops.Guard)]
        by_host: dict[str, tuple[Host, list[ops.Guard]]] = {}
        for g in guards:
            for h in self.hosts(g.role):
                by_host.setdefault(h.name, (h, []))[1].append(g)
        if probe_zstd:
            for h in self.hosts("main"):
                by_host.setdefault(h.name, (h, []))
        zstd: dict[str, bool] = {}
        for name, (host, mine) in by_host.items():
            parts = [ZSTD_FACT] if probe_zstd else []
            for i, g in enumerate(mine):
                probe = self.fill(g.probe, host).script
                rc = f"echo @@rc{i}=${{PIPESTATUS[0]}}"
                parts.append(f"echo @@guard{i}; ( {probe} ) 2>&1 | sed 's/^/@@out{i} /'; {rc}")
            result = run(host, Command("\n".join(parts) or "true"))
            text = result.stdout.decode("utf-8", "replace")
            facts = key_values(result.stdout)
            if result.exit_status != 0 or (probe_zstd and "zstd" not in facts):
                raise StepFailed(
                    f"could not check {name} before restoring (exit {result.exit_status}): "
                    f"{last_line(result.stderr)}"
                )
            zstd[name] = facts.get("zstd") == "yes"
            for i, g in enumerate(mine):
                out = "\n".join(
                    line.removeprefix(f"@@out{i} ")
                    for line in text.splitlines()
                    if line.startswith(f"@@out{i} ")
                )
                status = int(facts.get(f"@@rc{i}", "1") or 1)
                refusal = g.verdict.judge(out, status, self.snapshot_facts, self.force)
                if refusal is not None:
                    raise ConfigError(f"{refusal} (on {name})")
                self.judged.setdefault(g, []).append(name)
        return zstd

    def reach(self) -> None:
        """Before the first op: every host of the other roles answers (a node that cannot be
        reached fails the run here, before anything anywhere is stopped)."""
        seen = {h.name for h in self.roles.get("main", [])}
        for role, hosts in self.roles.items():
            for h in hosts:
                if h.name in seen:
                    continue
                seen.add(h.name)
                result = run(h, Command("true"))
                if result.exit_status != 0:
                    raise StepFailed(
                        f"{role} host {h.name} does not run commands (exit {result.exit_status}): "
                        f"{last_line(result.stderr)}; nothing was stopped"
                    )

    def run_steps(self, steps: Iterable[HasOps]) -> None:
        """Every op of every step, in order; one record per step."""
        for step in steps:
            started = time.monotonic()
            log.info("step %s %s", kind(step), step.name)
            self.progress.step(kind(step), step.name)
            outcome = "ok"
            for op in step.ops():
                said = self.table[type(op)](op)
                if said:
                    outcome = said
            record = mf.StepRecord(step.name, kind(step), round(time.monotonic() - started, 3), outcome)
            self.records.append(record)
            self.progress.step_done(record)

    def finish(self, succeeded: bool, abandon: bool = False) -> None:
        """Run every host's undo list, newest host first; never raises (see ``failure``).
        ``abandon`` (the run was interrupted or timed out): first end, on every guarded host,
        what the run started there and still runs, so a hung stop does not outlive its undo."""
        # Under --timeout the undo gets its own time (a start is never cut at the deadline, even
        # after a success); once that runs out, no further host's undo runs: the guards do it.
        interrupts.unwinding()
        if abandon:
            try:
                for comp in self.comps.values():
                    comp.abandon()
            except KeyboardInterrupt:  # interrupted again: the undo matters more
                log.warning("interrupted while ending the run's commands: running the undo")
        for comp in reversed(list(self.comps.values())):
            if interrupts.unwind_cut.is_set():
                comp.give_up(
                    f"the unwind ran out of its {interrupts.UNWIND_SECONDS:g}s (--timeout)", succeeded
                )
            else:
                comp.run_all(succeeded=succeeded)
        if succeeded:
            interrupts.resume()  # the rest of the run is under the deadline again, if any of it is left

    def undone(self) -> list[str]:
        """The failure-only undos that ran (``move DATA_DIR back``): what a failed run took back;
        not those that found nothing to undo (a move aside that never happened)."""
        return [
            f"{e.undo.what} on {name}"
            for name, comp in self.comps.items()
            for e in comp.entries
            if e.id in comp.failure_only and e.id in comp.finished and e.id not in comp.idle
        ]

    def restarted(self) -> list[tuple[str, str]]:
        """(name, host) of each stopped thing its undo started again (``looker``, ``bench``)."""
        return [
            (when.removeprefix("running "), host)
            for (host, entry_id), when in self._down.items()
            if entry_id in self.comps[host].succeeded
        ]

    def only_not_started(self) -> bool:
        """Whether the undo's only trouble is undos that ran and failed (a start exiting non-zero):
        then no guard fired anywhere, so the data taken while stopped is whole. An undo that could
        not run (a host unreachable, its guard's directory gone, a guard lost during the steps) or
        an interrupt leaves that unknown: the snapshot is void."""
        comps = list(self.comps.values())
        return any(c.ran_and_failed for c in comps) and all(
            not (c.by_guard or c.interrupted or c.lost) and c.still_stopped == c.ran_and_failed for c in comps
        )

    def failure(self, cause: BaseException | None) -> BaseException | None:
        """The exception the run ends with, given every host's undo outcome (``undo.failure``)."""
        return undo.failure(list(self.comps.values()), cause)

    # ---- executors

    def _exec(self, op: ops.Exec) -> str:
        outcome = ""
        for host in self.hosts(op.role):
            if not self._wanted(host, op.when):
                log.info("%s on %s: skipped", op.what, host.name)
                outcome = outcome or op.skipped
                continue
            if op.when is not None:
                self._stopped.setdefault((host.name, op.when), time.monotonic())
            stdin = op.stdin.encode() if op.stdin is not None else b""
            result = run(host, self.fill(op.command, host), stdin)
            ok = op.ok_exits is None or result.exit_status in op.ok_exits
            what = ops.fill_text(op.what, self._values(host))
            if not ok:
                raise StepFailed(
                    f"{what} failed on {host.name} (exit {result.exit_status}): {last_line(result.stderr)}"
                )
            for line in result.stderr.splitlines():
                if line.strip().lower().startswith("warning:"):
                    log.warning("%s on %s: %s", what, host.name, line.strip())
                    self.warnings.append(f"{what} on {host.name}: {line.strip()}")
            mine = self.values.setdefault(host.name, {})
            if op.sets:
                mine[op.sets] = "yes" if result.exit_status == 0 else "no"
            if op.capture and op.secret:
                value = result.stdout.decode("utf-8", "replace").strip()
                if not value:
                    raise StepFailed(f"{op.what} printed nothing on {host.name}: the secret is not set there")
                self.secrets.setdefault(host.name, {})[op.capture] = value
            elif op.capture and op.keys:
                for key, val in key_values(result.stdout).items():
                    mine[f"{op.capture}_{key.strip()}"] = val.strip()
            elif op.capture:
                value = result.stdout.decode("utf-8", "replace").strip()
                mine[op.capture] = value
                if op.fact:
                    main = [h.name for h in self.roles.get("main", [])][:1]
                    key = op.capture if host.name in main else f"{op.capture}@{host.name}"
                    self.facts[key] = value
            outcome = op.done
        return outcome

    def _undo(self, op: ops.Undo) -> str:
        for host in self.hosts(op.role):
            if not self._wanted(host, op.when):
                continue
            comp = self.comps.get(host.name)
            if comp is None:
                comp = self.comps[host.name] = Compensation(host, self.deadman)
            entry = comp.register(GuardUndo(op.what, self.fill(op.command, host), op.state), on=op.on)
            if op.when is not None:
                self._down[(host.name, entry.id)] = op.when
            self._track(host.name, comp)
        return ""

    def _release(self, op: ops.Release) -> str:
        for host in self.hosts(op.role):
            comp = self.comps.get(host.name)
            if comp is not None:
                comp.run_now(op.what)
        return ""

    def downtime(self) -> dict[str, float]:
        """Seconds from each conditional stop to the undo that started it again, per
        ``<value>@<host>`` (``running looker@web1``)."""
        out: dict[str, float] = {}
        for (host, entry_id), when in self._down.items():
            began = self._stopped.get((host, when))
            ended = self.comps[host].finished.get(entry_id)
            if began is not None and ended is not None:
                out[f"{when.removeprefix('running ')}@{host}"] = round(ended - began, 3)
        return out

    def _manual(self, op: ops.Manual) -> str:
        log.warning("manual step (not run, yours to do): %s", op.text)
        return "manual: not run"

    def _guard(self, op: ops.Guard) -> str:
        done = set(self.judged.get(op, []))
        for host in self.hosts(op.role):
            if host.name in done:
                continue
            result = run(host, self.fill(op.probe, host))
            out = result.stdout.decode("utf-8", "replace")
            refusal = op.verdict.judge(out, result.exit_status, self.snapshot_facts, self.force)
            if refusal is not None:
                raise ConfigError(f"{refusal} (on {host.name})")
        return ""

    def _transfer(self, op: ops.Transfer) -> str:
        handler = self.transfers.get((type(op.src), type(op.dst)))
        if handler is None:
            raise StepFailed(
                f"cannot {op.what}: no way to move bytes from {op.src.describe()} to {op.dst.describe()}"
            )
        role = (
            op.src.role
            if isinstance(op.src, ops.HostCommand | ops.Bucket)
            else getattr(op.dst, "role", "main")
        )
        outcome = ""
        for host in self.hosts(role):
            outcome = handler(
                host, attrs.evolve(op, src=self._filled(op.src, host), dst=self._filled(op.dst, host))
            )
        return outcome

    def _filled(self, end: ops.Endpoint, host: Host) -> ops.Endpoint:
        if isinstance(end, ops.HostCommand):
            return attrs.evolve(
                end,
                command=self.fill(end.command, host),
                incremental=None if end.incremental is None else self.fill(end.incremental, host),
            )
        return end
