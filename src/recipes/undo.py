"""One host's undo list: each undo armed on the host's guard before what it compensates runs."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence

import attrs

from recipes.errors import HostError, RecipeError, StepFailed
from recipes.guard import DEADMAN_SECONDS, GUARD_GONE, TAKEN_BY_GUARD, Entry, Fired, Guard, Undo
from recipes.hosts import Host, last_line, run
from recipes.interrupts import unwind_cut
from recipes.model import Command

log = logging.getLogger("recipes")

# Undo retries after a lost connection wait 1, 2, 4, 8 s..., all of them within this budget (s).
UNDO_BUDGET = 60.0
# The last stdout line of an undo that found nothing to undo (a move aside that never happened):
# it ran, but it is not said to have taken anything back.
NOTHING_TO_UNDO = "recipes-undo: nothing to undo"


class Interrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM/SIGHUP during a run, with what could not be started again (empty: all was)
    and, for a restore cut short after it began writing, what the target holds (``partial``)."""

    def __init__(self, still_stopped: tuple[str, ...], partial: str = "") -> None:
        said = "; ".join(still_stopped) or "everything that was stopped was started again"
        super().__init__(f"{said}; {partial}" if partial else said)
        self.still_stopped = still_stopped
        self.partial = partial


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
        self.ran_and_failed: list[str] = []
        """The ``still_stopped`` lines of undos that ran here and exited non-zero: the guard had
        not fired (the controller's claim took the entry), so nothing was started mid-run."""
        self.failure_only: set[int] = set()
        self.finished: dict[int, float] = {}
        """time.monotonic() when each undo that ran finished (for downtime)."""
        self.succeeded: set[int] = set()
        """Ids of the undos whose command exited 0 (what was really started again)."""
        self.idle: set[int] = set()
        """Ids of the undos that exited 0 saying ``NOTHING_TO_UNDO`` (what they undo never happened)."""
        self._reported: set[int] = set()
        self._running: int | None = None
        """The id of the undo whose command runs on the host right now (claimed there)."""
        self._reached: set[int] = set()
        self._cut: set[int] = set()
        """Ids of the undos interrupted while their command ran (``run_now``): never run again."""
        """Ids of the undos whose command was started on the host at least once."""

    def register(self, undo: Undo, on: str = "always") -> Entry:
        """Arm the guard (first time) and hand it ``undo``; raises if it did not take it.

        ``on="failure"``: the undo runs only when the run fails (a moved-aside directory moved
        back); after a success it is withdrawn from the guard without running."""
        if self.guard is None:
            self.guard = Guard.arm(self.host, self.deadman)
            self.guard.on_lost = self.host.close
        entry = self.guard.push(undo)
        if on == "failure":
            self.failure_only.add(entry.id)
        self.entries.append(entry)
        self.pending.append(entry)
        return entry

    def run_now(self, what: str) -> bool:
        """Run the newest pending undo called ``what`` now (an application started again as soon
        as its filesystem snapshot exists); False when there is none."""
        for entry in reversed(self.pending):
            if entry.undo.what == what:
                # still pending while it runs: an interrupt leaves it to the unwind (run_all),
                # which says it was cut short (it may still run on the host: not run twice)
                try:
                    self._undo(entry)
                except KeyboardInterrupt:
                    if self._running == entry.id and entry.id in self._reached:  # it ran there
                        self._cut.add(entry.id)
                    raise
                self.pending.remove(entry)
                if self.still_stopped or self.by_guard:
                    raise StepFailed("; ".join(self.still_stopped + self.by_guard))
                return True
        return False

    def abandon(self) -> None:
        """Have the host's guard end the commands this run started there (see ``Guard.abandon``);
        a host that cannot be reached is left to the undo's retries and its guard."""
        if self.guard is None or self.guard.closed.is_set() or self.lost:
            return
        try:
            self.guard.abandon()
            log.info("ended what the run still ran on %s", self.host.name)
        except RecipeError as exc:
            log.warning("could not end what the run still runs on %s: %s", self.host.name, exc)

    def give_up(self, why: str, succeeded: bool = False) -> None:
        """Run nothing more here (the unwind ran out of its time): what is pending is left to the
        host's guard, said in ``still_stopped``; after a success, failure-only undos are first
        taken back from it (the guard would move a restored directory's old content back)."""
        self.interrupted = True
        if succeeded:
            with contextlib.suppress(KeyboardInterrupt):
                self._withdraw_not_needed()
        self.still_stopped += [self._pending_line(e, why, succeeded) for e in reversed(self.pending)]
        self.pending.clear()
        if self.guard is not None and not self.guard.closed.is_set():
            self.guard.close()

    def _withdraw_not_needed(self) -> None:
        """After a success: take every failure-only undo back from the guard (one line each on
        the feeder, no command); one the guard cannot take back stays pending."""
        if self.guard is None or self.guard.closed.is_set():
            return
        for entry in [e for e in self.pending if e.id in self.failure_only]:
            try:
                withdrawn = self.guard.withdraw(entry)
            except (HostError, StepFailed) as exc:
                log.warning(
                    "could not withdraw %s from the guard on %s: %s", entry.undo.what, self.host.name, exc
                )
                continue
            self.pending.remove(entry)
            if withdrawn:
                log.info("%s: not needed (the run succeeded)", entry.undo.what)
            else:
                self._guard_ran(entry, Fired(entry.id, "(before it could be taken back)", ""))

    def _pending_line(self, entry: Entry, why: str, succeeded: bool) -> str:
        """The line for an undo left pending when the unwind stopped."""
        if succeeded and entry.id in self.failure_only and self.guard is not None:
            # never "run it by hand": after a success it would undo the run
            return (
                f"{entry.undo.what} on {self.host.name} is not needed (the run succeeded) and must "
                f"not run, but the host's guard may still hold it ({why}): if "
                f"{self.guard.dir}/undo/{entry.id:06d} is there, remove it now"
            )
        if entry.id in self._cut or entry.id == self._running:
            return self._cut_short(entry)
        return self._left(entry, why)

    @property
    def lost(self) -> bool:
        return self.guard is not None and self.guard.lost.is_set()

    def run_all(self, succeeded: bool = False) -> None:
        """Run every pending undo, newest first, then disarm the guard if nothing is left stopped.

        Never raises for an undo that failed: ``still_stopped`` and ``by_guard`` say what happened.
        A KeyboardInterrupt stops the retries; what did not run is in ``still_stopped``.
        """
        if self.guard is not None:
            self.guard.on_lost = None  # from here on a lost host is the undo's to retry
        try:
            if succeeded:
                self._withdraw_not_needed()  # first: an interrupt later must not leave them armed
            while self.pending:
                entry = self.pending[-1]
                if entry.id in self._cut:  # cut short while it ran: it may still run there
                    self.still_stopped.append(self._cut_short(entry))
                    self.pending.pop()
                    continue
                if succeeded and entry.id in self.failure_only:
                    # Withdrawn: claimed from the guard so it never runs, and nothing else done.
                    entry = Entry(entry.id, attrs.evolve(entry.undo, command=Command("true")))
                    log.info("%s: not needed (the run succeeded)", entry.undo.what)
                self._undo(entry)
                self.pending.pop()
            if self.guard is not None and not self.still_stopped:
                self._disarm(self.guard)
        except KeyboardInterrupt:
            self.interrupted = True
            self.still_stopped += [
                self._pending_line(e, "interrupted", succeeded) for e in reversed(self.pending)
            ]
            self.pending.clear()
        finally:
            if self.guard is not None and not self.guard.closed.is_set():
                self.guard.close()  # the guard stays armed and undoes what is left

    def _left(self, entry: Entry, why: str) -> str:
        """The line for an undo that did not run: still stopped, where, and who starts it."""
        undo = entry.undo
        state = undo.state or f"{undo.what} has not run"
        if entry.id in self._reached:  # its claim may have taken it from the guard
            return (
                f"{state} on {self.host.name} ({why}): an attempt of {undo.what} reached the host "
                "and may have taken it from the host's guard, which then does not run it: check, "
                f"and if needed run by hand: {undo.command.masked()}"
            )
        if self.guard is not None:
            then = f"the host's guard ({self.guard.dir}) will {undo.what} within {self.deadman + 2:g}s"
        else:
            then = f"run by hand: {undo.command.masked()}"
        return f"{state} on {self.host.name} ({why}): {then}"

    def _cut_short(self, entry: Entry) -> str:
        """The line for an undo interrupted while its command ran on the host: its claim took it
        from the guard, so the guard will not run it; whether it finished is unknown."""
        undo = entry.undo
        state = undo.state or f"{undo.what} has not run"
        return (
            f"{undo.what} on {self.host.name} was interrupted while it ran there ({state}, unless it "
            "finished; the host's guard does not run it again): check, and if needed run by hand: "
            f"{undo.command.masked()}"
        )

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
                self._running = entry.id
                result = run(self.host, command, started=lambda: self._reached.add(entry.id))
                break
            except HostError as exc:
                self._running = None
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
        self._running = None
        self.finished[entry.id] = time.monotonic()
        if result.exit_status == 0:
            self.succeeded.add(entry.id)
            if result.stdout.decode("utf-8", "replace").strip().endswith(NOTHING_TO_UNDO):
                self.idle.add(entry.id)
                log.info("undo %s on %s: nothing to undo", what, self.host.name)
            else:
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
            line = (
                f"{what} failed on {self.host.name} (exit {result.exit_status}: "
                f"{last_line(result.stderr)}): run it by hand: {entry.undo.command.masked()}"
            )
            self.still_stopped.append(line)
            self.ran_and_failed.append(line)

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


def failure(comps: Sequence[Compensation], cause: BaseException | None) -> BaseException | None:
    """The exception a run ends with, given every host's undo outcome and the first ``cause``:
    every host's lines, not the first host's alone (one host started again says nothing of the
    next). An interrupt, or an undo interrupted, is ``Interrupted``; except that a run which had
    already failed, and whose unwind alone ran out of its ``--timeout`` time, stays that failure."""
    if not comps:  # nothing was stopped or moved: the cause as it is
        return cause
    if isinstance(cause, RecipeError):
        why = f" (first error: {cause})"
    elif cause is not None and not isinstance(cause, KeyboardInterrupt):
        why = f" (first error: {type(cause).__name__}: {cause})"  # a bug: name it, not lose it
    else:
        why = ""
    left = [line for c in comps for line in c.still_stopped]
    only_unwind_cut = unwind_cut.is_set() and cause is not None and not isinstance(cause, KeyboardInterrupt)
    guard = [line for c in comps for line in c.by_guard]
    if guard:
        silent = max(c.deadman for c in comps)
        guard[-1] += f" (the controller was silent for {silent:g}s): nothing was stored"
    if (isinstance(cause, KeyboardInterrupt) or any(c.interrupted for c in comps)) and not only_unwind_cut:
        return Interrupted(tuple(left + guard))
    if left or guard:
        return StepFailed("; ".join(left + guard) + why)
    return cause
