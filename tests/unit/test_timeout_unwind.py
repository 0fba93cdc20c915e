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
from pathlib import Path
from types import SimpleNamespace

import pytest

from recipes import guard, interrupts, undo
from recipes.errors import HostError, StepFailed


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
