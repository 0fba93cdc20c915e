"""How a run ends when it is given up: every host's undo outcome counts, an unwind that began
before the deadline keeps its own time, and the host's guard keeps questions and answers paired
and records nothing of the operator's own login when the host is the controller itself."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from recipes import guard, interrupts, undo
from recipes.errors import HostError, StepFailed
from recipes.model import Command


def _comp(name: str, *left: str, interrupted: bool = False) -> undo.Compensation:
    comp = undo.Compensation(SimpleNamespace(name=name))  # type: ignore[arg-type]
    comp.still_stopped = list(left)
    comp.interrupted = interrupted
    return comp


def test_an_interrupt_names_what_every_host_left_stopped() -> None:
    """A cluster: the first host was started again, the second not. The line must not say that
    everything was started again (it said so from the first host's list alone)."""
    err = undo.failure(
        [_comp("node1"), _comp("main", "looker is still stopped on main (interrupted): …")],
        interrupts.TimedOut("timed out"),
    )
    assert isinstance(err, undo.Interrupted)
    assert err.still_stopped == ("looker is still stopped on main (interrupted): …",)


def test_a_failure_names_what_every_host_left_stopped() -> None:
    err = undo.failure(
        [_comp("node1", "a is still stopped on node1: …"), _comp("main", "b is still stopped on main: …")],
        StepFailed("dump failed"),
    )
    assert isinstance(err, StepFailed)
    assert str(err) == (
        "a is still stopped on node1: …; b is still stopped on main: … (first error: dump failed)"
    )


def test_a_failed_run_whose_unwind_ran_out_of_time_stays_that_failure() -> None:
    """The run had failed (a full disk); only its undo was then cut short by --timeout's unwind
    time: exit 1 with the first error and what is still stopped, not `interrupted` (130)."""
    interrupts.unwind_cut.set()
    try:
        err = undo.failure(
            [_comp("main", "svc is still stopped on main (interrupted): …", interrupted=True)],
            StepFailed("No space left on device"),
        )
    finally:
        interrupts.unwind_cut.clear()
    assert isinstance(err, StepFailed)
    assert "svc is still stopped on main" in str(err) and "(first error: No space left on device)" in str(err)


UNWIND_FIRST = """
import os, signal, time
from recipes import interrupts
interrupts.UNWIND_SECONDS = 3
with interrupts.interrupts_as_exceptions():
    interrupts.arm_deadline(interrupts.Deadline(1.0, "1s"))
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except interrupts.TimedOut:
        print("timed out")
    except KeyboardInterrupt:
        interrupts.unwinding()  # what Interpreter.finish does first
        try:
            time.sleep(1.5)  # an undo that takes longer than what was left of the deadline
            print("unwound")
        except KeyboardInterrupt as exc:
            print("cut:", exc)
print("expired" if interrupts.expired.is_set() else "not expired")
"""


def test_an_unwind_that_began_before_the_deadline_gets_its_own_time() -> None:
    """SIGTERM came first: its undo must not be cut at the deadline, nor the exit called a
    timeout (it was an interrupt, 130)."""
    out = subprocess.run([sys.executable, "-c", UNWIND_FIRST], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["unwound", "not expired"]


def test_an_embedding_programs_own_timer_survives() -> None:
    import signal

    from recipes.interrupts import interrupts_as_exceptions

    fired: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30)
        with interrupts_as_exceptions():
            pass
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25 < left <= 30
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class _Feeder:
    """A feeder session on a pipe: the test says what the host answers."""

    def __init__(self, *stale: str) -> None:
        self.lines: queue.Queue[bytes] = queue.Queue()
        for line in stale:
            self.lines.put(line.encode() + b"\n")
        self.sent: list[str] = []

    def read(self, _n: int = -1) -> bytes:
        return self.lines.get()

    def write(self, data: bytes) -> int:
        line = data.decode().strip()
        self.sent.append(line)
        if line == "abandon":
            threading.Timer(0.2, self.lines.put, (b"abandoned\n",)).start()
        return len(data)

    def kill(self) -> None:
        self.lines.put(b"")


def test_a_leftover_answer_is_never_taken_for_the_next_questions() -> None:
    """A `track` cut short by an interrupt leaves its `tracked` behind: `abandon` must wait for
    its own answer (it returned at once, while the host was still ending the commands)."""
    feeder = _Feeder("tracked")
    g = guard.Guard(SimpleNamespace(name="web1"), feeder, {"dir": "/tmp/g"}, deadman=1000)  # type: ignore[arg-type]
    try:
        g.abandon()
        assert feeder.sent == ["abandon"]
        assert g._answers.empty()  # "abandoned" was taken by abandon itself
    finally:
        g.closed.set()
        feeder.kill()


def test_a_session_that_ended_fails_every_later_question_at_once() -> None:
    feeder = _Feeder()
    g = guard.Guard(SimpleNamespace(name="web1"), feeder, {"dir": "/tmp/g"}, deadman=1000)  # type: ignore[arg-type]
    feeder.kill()
    for _ in range(2):
        with pytest.raises(HostError, match="session on web1 ended"):
            g.track()
    g.closed.set()


LOCAL_ARM = """
from recipes import guard
from recipes.hosts import LocalHost
g = guard.Guard.arm(LocalHost(), 60)
print("dir", g.dir)
import os
print("sessions", sorted(os.listdir(g.dir + "/sessions")))
g.abandon()
g.disarm()
"""


def test_a_local_guard_records_and_ends_nothing_of_the_operators_login(tmp_path: Path) -> None:
    """--host local run from an SSH login: the walk up from the feeder reaches the login's sshd.
    Its sessions (the operator's other channels) are not the run's: nothing is recorded, and an
    abandon ends none of them."""
    fake = tmp_path / "sshd"  # a process named sshd above the controller, as in an SSH login
    shutil.copy("/bin/bash", fake)
    script = tmp_path / "arm.py"
    script.write_text(LOCAL_ARM)
    pidfile = tmp_path / "other.pid"
    # another channel of the login: a session of its own under the same "sshd"
    other_channel = "setsid sleep 60 </dev/null >/dev/null 2>&1 &"
    line = f"{other_channel} echo $! > {pidfile}; {sys.executable} {script}; true"
    out = subprocess.run(
        [str(fake), "-c", line],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    other = int(pidfile.read_text())
    try:
        assert out.returncode == 0, out.stderr
        assert "sessions []" in out.stdout, out.stdout
        assert Path(f"/proc/{other}").exists(), "the login's other channel was killed"
    finally:
        subprocess.run(["kill", str(other)], check=False)


def _local_comp(deadman: float = 3) -> undo.Compensation:
    from recipes.hosts import LocalHost

    return undo.Compensation(LocalHost(), deadman=deadman)


def _slow_start(marker: Path, seconds: float = 1.0) -> guard.Undo:
    return guard.Undo(
        "start svc", Command(f"sleep {seconds}; echo started >> {marker}"), state="svc is still stopped"
    )


def test_a_release_start_cut_short_is_said_not_dropped(tmp_path: Path) -> None:
    """A snapshot's early start (``run_now``) interrupted while it ran: the unwind neither drops
    it (the line said everything was started again) nor runs it a second time beside the
    first (which may still run on the host): it says it was cut short, to check by hand."""
    import signal

    marker = tmp_path / "started"
    comp = _local_comp()
    comp.register(_slow_start(marker))

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            comp.run_now("start svc")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    comp.run_all()
    (line,) = comp.still_stopped
    assert line.startswith("start svc on local was interrupted while it ran there (svc is still stopped"), (
        line
    )
    assert "check, and if needed run by hand: " in line
    assert not marker.exists()  # not run again (here the first was killed with the controller)


def _interp(*comps: undo.Compensation) -> object:
    from recipes.execute import Interpreter

    interp = Interpreter({}, {}, run_id="t")
    for i, comp in enumerate(comps):
        interp.comps[f"h{i}"] = comp
    return interp


def test_after_a_success_the_start_is_not_cut_at_the_deadline(tmp_path: Path) -> None:
    """Every step succeeded and the deadline comes while the service starts again: the start
    gets the unwind's own time instead of being killed half-way (nobody would start it)."""
    marker = tmp_path / "started"
    comp = _local_comp()
    comp.register(_slow_start(marker))
    interp = _interp(comp)
    with interrupts.interrupts_as_exceptions():
        interrupts.arm_deadline(interrupts.Deadline(0.4, "0.4s"))
        interp.finish(succeeded=True)  # type: ignore[attr-defined]
    assert marker.read_text().splitlines() == ["started"]
    assert not comp.still_stopped and not comp.interrupted


def test_the_unwinds_time_bounds_every_hosts_undo_not_only_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts whose starts hang: once the unwind's time is out, the next host's undo is not
    run (it is left to that host's guard, and said so); the run ends instead of waiting."""
    import time

    monkeypatch.setattr(interrupts, "UNWIND_SECONDS", 0.5)
    first, second = _local_comp(), _local_comp()
    first.register(_slow_start(tmp_path / "a", 3))
    second.register(_slow_start(tmp_path / "b", 3))
    interp = _interp(first, second)
    began = time.monotonic()
    with interrupts.interrupts_as_exceptions():
        interrupts.arm_deadline(interrupts.Deadline(60, "60s"))
        interp.finish(succeeded=False)  # type: ignore[attr-defined]
    assert time.monotonic() - began < 2.5
    (line,) = first.still_stopped
    assert "ran out of its 0.5s (--timeout)" in line and "will start svc within" in line, line
    assert second.interrupted


def test_an_undo_whose_attempt_reached_the_host_is_not_promised_to_the_guard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection dropped while the start ran, and no retry got through: its claim may
    have taken it from the guard, so the line must not promise the guard will run it."""

    class Lost:
        def write(self, _data: bytes) -> int:
            return 0

        def close_stdin(self) -> None: ...

        def read(self, _n: int = -1) -> bytes:
            raise HostError("connection lost while reading: reset")

        def kill(self) -> None: ...

    host = SimpleNamespace(name="web1", start=lambda _c: Lost())
    comp = undo.Compensation(host, deadman=60)  # type: ignore[arg-type]
    comp.guard = SimpleNamespace(  # type: ignore[assignment]
        claimed=lambda e: e.undo.command,
        closed=threading.Event(),
        dir="/tmp/g",
        lost=threading.Event(),
        close=lambda: None,
        on_lost=None,
    )
    entry = guard.Entry(1, guard.Undo("start svc", Command("svc start"), state="svc is still stopped"))
    comp.entries.append(entry)
    comp.pending.append(entry)
    monkeypatch.setattr(undo, "UNDO_BUDGET", 0.1)  # give up after the first try
    comp.run_all()
    (line,) = comp.still_stopped
    assert "an attempt of start svc reached the host and may have taken it from the host's guard" in line
    assert "will start svc within" not in line


def test_guard_lines_are_kept_beside_what_is_still_stopped() -> None:
    fired = _comp("node1")
    fired.by_guard = ["the host's guard on node1 already ran start looker at 2026-11-24T10:00:00Z"]
    err = undo.failure([fired, _comp("main", "start looker failed on main (exit 4: boom): …")], None)
    assert isinstance(err, StepFailed)
    assert str(err) == (
        "start looker failed on main (exit 4: boom): …; the host's guard on node1 already ran start "
        "looker at 2026-11-24T10:00:00Z (the controller was silent for 60s): nothing was stored"
    )


CUT_UNWIND = """
import os, signal, time
import click
from recipes import cli, interrupts
from recipes.errors import StepFailed
interrupts.UNWIND_SECONDS = 0.3

@click.group(cls=cli.Group)
def main() -> None: ...

@main.command()
def go() -> None:
    interrupts.arm_deadline(interrupts.Deadline(60, "60s"))
    try:
        {cause}
    finally:
        interrupts.unwinding()
        time.sleep(3)  # a clean-up that hangs past the unwind's time (an abort on a hung S3)

main(["go"])
"""


def _cut_unwind(cause: str) -> subprocess.CompletedProcess[str]:
    """A CLI command that fails with ``cause``, then outlasts its unwind's time."""
    script = CUT_UNWIND.format(cause=cause)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)


def test_a_failed_run_whose_clean_up_outlasts_the_unwind_is_that_failure() -> None:
    out = _cut_unwind('raise StepFailed("No space left on device")')
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip() == (
        "recipes: error: No space left on device; its clean-up then took over 0.3s (--timeout)"
    )


def test_a_stale_record_of_a_session_number_is_renewed_for_the_runs_new_session(tmp_path: Path) -> None:
    """The run's own new session got a number it had recorded for an earlier one: track renews
    the record, so a hung command in it is still ended (the old start time spared it)."""
    from tests.unit.test_guard import _bash, _guard_dir, one_session_under_a_fake_sshd

    d = _guard_dir(tmp_path)
    with one_session_under_a_fake_sshd() as (sshd, kid):
        (d / "sessions" / kid).write_text("999\n")  # an earlier session of the run had this number
        _bash(d, f"{guard.TRACK}\n{guard.KILL}", "track; kill_sessions", sshd=str(sshd))
        deadline = time.monotonic() + 5
        while Path(f"/proc/{kid}").exists() and Path(f"/proc/{kid}/stat").read_text().split()[2] != "Z":
            assert time.monotonic() < deadline, "the run's hung command was spared"
            time.sleep(0.05)


def test_a_signal_whose_unwind_runs_out_of_time_is_still_an_interrupt() -> None:
    """SIGTERM came first (systemd stopping the job): the exit stays 130 however its unwind
    ends, never the 'run's end took over' failure of a --timeout (scheduled jobs have both)."""
    out = _cut_unwind("os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)")
    assert out.returncode == 130, out.stderr
    assert out.stderr.strip() == "recipes: interrupted"


def test_after_a_success_a_failure_only_undo_left_to_the_guard_is_taken_back_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step of a restore succeeded; the unwind's time runs out on another host: a 'move
    the old content back' undo must not be left to its guard, which would undo the restore."""
    monkeypatch.setattr(interrupts, "UNWIND_SECONDS", 0.5)
    moved_back = tmp_path / "moved-back"
    restored, hanging = _local_comp(deadman=1), _local_comp()
    restored.register(guard.Undo("move data back", Command(f"echo yes > {moved_back}")), on="failure")
    hanging.register(_slow_start(tmp_path / "started", 3))
    interp = _interp(restored, hanging)  # the newest host (hanging) is undone first
    with interrupts.interrupts_as_exceptions():
        interrupts.arm_deadline(interrupts.Deadline(60, "60s"))
        interp.finish(succeeded=True)  # type: ignore[attr-defined]
    assert restored.interrupted and not restored.still_stopped
    time.sleep(4)  # the restored host's guard has fired by now (deadman 1 s)
    assert not moved_back.exists(), "the guard moved the old content back over the restore"


class _Done:
    """A command that ran and exited 0."""

    def write(self, _data: bytes) -> int:
        return 0

    def close_stdin(self) -> None: ...

    def read(self, _n: int = -1) -> bytes:
        return b""

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def stderr(self) -> str:
        return ""

    def kill(self) -> None: ...


class _Hangs(_Done):
    def read(self, _n: int = -1) -> bytes:
        time.sleep(10)
        return b""


def _fake_guard(**kw: object) -> SimpleNamespace:
    base: dict[str, object] = {
        "claimed": lambda e: e.undo.command,
        "closed": threading.Event(),
        "dir": "/tmp/g",
        "lost": threading.Event(),
        "close": lambda: None,
        "disarm": lambda: [],
        "on_lost": None,
    }
    return SimpleNamespace(**{**base, **kw})


def _alarm_in(seconds: float) -> object:
    import signal

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return old


def _alarm_off(old: object) -> None:
    import signal

    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)  # type: ignore[arg-type]


def test_an_early_start_that_never_reached_the_host_is_run_by_the_unwind() -> None:
    """Interrupted while waiting to retry a start that never reached the host: it is not
    'cut short while it ran' (which left it to nobody): the unwind runs it."""
    tries: list[int] = []

    def start(_command: Command) -> _Done:
        tries.append(1)
        if len(tries) == 1:
            raise HostError("cannot start a command on web1: connection reset")
        return _Done()

    comp = undo.Compensation(SimpleNamespace(name="web1", start=start), deadman=60)  # type: ignore[arg-type]
    comp.guard = _fake_guard()  # type: ignore[assignment]
    entry = guard.Entry(1, guard.Undo("start svc", Command("svc start"), state="svc is still stopped"))
    comp.entries.append(entry)
    comp.pending.append(entry)
    old = _alarm_in(0.3)  # during the 1 s wait before the retry
    try:
        with pytest.raises(KeyboardInterrupt):
            comp.run_now("start svc")
    finally:
        _alarm_off(old)
    comp.run_all()
    assert len(tries) == 2 and comp.succeeded == {1} and not comp.still_stopped


def test_a_not_needed_undo_cut_short_is_never_said_to_be_run_by_hand() -> None:
    """After a success the feeder is gone, so the move-back is withdrawn by a claimed `true`;
    an interrupt then must not tell the operator to run the move-back (it undoes the run)."""

    def withdraw(_entry: object) -> bool:
        raise HostError("the guard's session on web1 ended (withdraw)")

    comp = undo.Compensation(SimpleNamespace(name="web1", start=lambda _c: _Hangs()), deadman=60)  # type: ignore[arg-type]
    comp.guard = _fake_guard(withdraw=withdraw)  # type: ignore[assignment]
    entry = guard.Entry(1, guard.Undo("move /srv/data back", Command("mv /srv/data.before /srv/data")))
    comp.entries.append(entry)
    comp.pending.append(entry)
    comp.failure_only.add(1)
    old = _alarm_in(0.3)
    try:
        comp.run_all(succeeded=True)
    finally:
        _alarm_off(old)
    (line,) = comp.still_stopped
    assert "is not needed (the run succeeded) and must not run" in line, line
    assert "mv /srv/data.before" not in line and "run by hand" not in line
