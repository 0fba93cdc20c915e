"""Nothing stopped stays stopped: the host's guard (dead-man's switch) starts the service again
when the controller is SIGKILLed, the network freezes or the host cannot be reached during the
undo; it kills what the controller left running; and a snapshot whose service the guard had to
start again is never committed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipes import apps, cli, engine, guard
from tests import servers
from tests.integration.fakes import Svc, hang_marker
from tests.integration.world import World
from tests.proxy import Proxy

# Short, so the tests are quick; a loaded machine still answers a beat within it.
DEADMAN = 4
# How long after the controller went silent the service must be running again: the guard wakes
# every second, kills what the controller left behind (TERM, up to 2 s, then KILL) and starts it.
SLACK = 6
LAUNCH = (
    "import recipes.apps as a; from tests.integration.fakes import Svc; "
    "a.RECIPES = a.RECIPES + (Svc,); from recipes.cli import main; main()"
)
ROOT = Path(__file__).parents[2]


def _config(world: World, port: int | None = None, deadman: float = DEADMAN) -> Path:
    """The world's recipes.toml with a short deadman, host ``source`` optionally at ``port``."""
    text = world.config.read_text()
    if port is not None:
        text = re.sub(r"(\[hosts\.source\][^\[]*?port = )\d+", rf"\g<1>{port}", text)
    path = world.config.with_name(f"deadman-{uuid.uuid4().hex[:6]}.toml")
    path.write_text(f"{text}\n[engine]\ndeadman_seconds = {deadman}\n")
    return path


@pytest.fixture
def svc(ssh_source: servers.SshHost) -> Iterator[tuple[str, Path]]:
    """A running 'service' on host source: (its dir inside the host, the same dir from outside)."""
    name = f"svc-{uuid.uuid4().hex[:8]}"
    outside = Path(ssh_source.binds["/srv/site"]) / name
    outside.mkdir()
    inside = f"/srv/site/{name}"
    proc = subprocess.Popen(["setsid", "sleep", "100000"], stdin=subprocess.DEVNULL)
    (outside / "svc.pid").write_text(f"{proc.pid}\n")
    yield inside, outside
    for pid in [_pid(outside), *_orphans(inside)]:
        if pid:
            subprocess.run(["kill", "-KILL", str(pid)], check=False)
    proc.wait()
    subprocess.run(["rm", "-rf", str(outside)], check=False)


@pytest.fixture
def proxy(ssh_source: servers.SshHost) -> Iterator[Proxy]:
    p = Proxy((ssh_source.address, ssh_source.port))
    yield p
    p.close()


def _pid(outside: Path) -> int | None:
    try:
        return int((outside / "svc.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def running(outside: Path) -> bool:
    pid = _pid(outside)
    try:
        return pid is not None and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def starts(outside: Path) -> int:
    log = outside / "starts.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _orphans(inside: str) -> list[int]:
    """Processes of the hanging dump or stop of the service in ``inside`` (the host's are ours)."""
    out = subprocess.run(["pgrep", "-f", hang_marker(inside)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_for(cond: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> float:
    """Poll until ``cond()``; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if cond():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached within {timeout:g}s")


_RUNS: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_run_outlives_its_test() -> Iterator[None]:
    yield
    while _RUNS:
        proc = _RUNS.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Run:
    """The real CLI in a child process, its stderr in a file the test reads while it runs."""

    def __init__(self, config: Path, inside: str, tmp: Path, *sets: str, extra: tuple[str, ...] = ()) -> None:
        self.log = tmp / f"run-{uuid.uuid4().hex[:6]}.log"
        args = [
            "--config",
            str(config),
            "run",
            "svc-test",
            "--host",
            "source",
            "--set",
            f"dir={inside}",
            *extra,
        ]
        for s in sets:
            args += ["--set", s]
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, *args],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={"XDG_CACHE_HOME": str(tmp / "cache"), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
                # as at an operator's terminal: a test suite started in the background (`cmd &`
                # in a script) inherits SIGINT ignored, and recipes then rightly ignores Ctrl-C
                preexec_fn=_default_sigint,
            )
        _RUNS.append(self.proc)

    def stderr(self) -> str:
        return self.log.read_text()

    def guard_dir(self) -> Path:
        found = re.search(r"guard armed on source \((/[^)]+)\)", self.stderr())
        assert found, self.stderr()
        return Path(found.group(1))

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def last_line(self) -> str:
        return self.stderr().strip().splitlines()[-1]


def _snapshots(world: World) -> list[Path]:
    """Committed snapshots (a SIGKILLed run may leave a staging folder; it has no manifest)."""
    return list(world.repo.glob("svc-test/source/*/manifest.json"))


def test_sigkill_while_stopped_the_hosts_guard_starts_it_again(
    world: World, svc: tuple[str, Path], tmp_path: Path
) -> None:
    inside, outside = svc
    config = _config(world)
    run = Run(config, inside, tmp_path, "then=hang")
    wait_for(lambda: not running(outside) and _orphans(inside), what="stopped, dump hanging")
    gdir = run.guard_dir()
    assert gdir.is_dir() and oct(gdir.stat().st_mode & 0o777) == "0o700"
    run.proc.kill()
    run.wait()
    wait_for(lambda: running(outside), DEADMAN + SLACK, "the guard started the service again")
    assert starts(outside) == 1
    wait_for(lambda: not _orphans(inside), 5, "the hung dump was killed")
    wait_for(lambda: not gdir.exists(), 3 * DEADMAN + SLACK, "the guard removed its directory")
    assert not _snapshots(world)

    again = Run(config, inside, tmp_path)
    assert again.wait() == 0, again.stderr()
    assert running(outside) and starts(outside) == 2  # stopped and started by this run
    assert len(_snapshots(world)) == 1
    assert not again.guard_dir().exists()  # disarmed


def test_sigkill_during_a_hanging_stop_still_starts_it_again(
    world: World, svc: tuple[str, Path], tmp_path: Path
) -> None:
    """The undo is on the host before the stop runs: a controller killed while the stop command
    still runs (the service already down) leaves nothing stopped."""
    inside, outside = svc
    run = Run(_config(world), inside, tmp_path, "stop=hang")
    wait_for(lambda: not running(outside) and _orphans(inside), what="stopped, stop command hanging")
    run.proc.kill()
    run.wait()
    wait_for(lambda: running(outside), DEADMAN + SLACK, "the guard started the service again")
    assert starts(outside) == 1
    wait_for(lambda: not _orphans(inside), 5, "the hanging stop command was killed")


def test_frozen_network_the_guard_starts_it_and_the_controller_says_so(
    world: World, svc: tuple[str, Path], tmp_path: Path, proxy: Proxy
) -> None:
    inside, outside = svc
    run = Run(_config(world, proxy.port), inside, tmp_path, "then=hang")
    wait_for(lambda: not running(outside) and _orphans(inside), what="stopped, dump hanging")
    gdir = run.guard_dir()
    proxy.freeze()  # no byte flows and no socket closes: sshd notices nothing
    wait_for(lambda: running(outside), DEADMAN + SLACK, "the guard started the service again")
    assert starts(outside) == 1
    wait_for(lambda: not _orphans(inside), 5, "the hung dump was killed")
    assert run.wait() == 1, run.stderr()
    line = run.last_line()
    assert line.startswith("recipes: error: svc is still stopped on source"), run.stderr()
    assert f"the host's guard ({gdir}) will start svc within" in line
    assert "Traceback" not in run.stderr()
    assert not _snapshots(world)
    wait_for(lambda: not gdir.exists(), 3 * DEADMAN + SLACK, "the guard removed its directory")


def test_host_unreachable_during_the_undo_names_what_is_still_stopped(
    world: World, svc: tuple[str, Path], tmp_path: Path, proxy: Proxy
) -> None:
    inside, outside = svc
    run = Run(_config(world, proxy.port), inside, tmp_path, "then=hang")
    wait_for(lambda: not running(outside) and _orphans(inside), what="stopped, dump hanging")
    gdir = run.guard_dir()
    proxy.cut()  # the connection drops and every reconnect is refused
    assert run.wait() == 1, run.stderr()
    err = run.stderr()
    assert re.search(r"undo start svc on source: .*; retry 1 in 1s \(\d+s of \d+s left\)", err), err
    line = run.last_line()
    assert line.startswith("recipes: error: svc is still stopped on source ("), err
    assert f"the host's guard ({gdir}) will start svc within" in line
    wait_for(lambda: running(outside), DEADMAN + SLACK, "the guard started the service again")
    assert starts(outside) == 1
    assert not _snapshots(world)


def test_sigterm_during_undo_retries_does_not_claim_all_was_started(
    world: World, svc: tuple[str, Path], tmp_path: Path, proxy: Proxy
) -> None:
    inside, outside = svc
    run = Run(_config(world, proxy.port), inside, tmp_path, "then=hang")
    wait_for(lambda: not running(outside) and _orphans(inside), what="stopped, dump hanging")
    proxy.cut()
    wait_for(lambda: "retry 1 in" in run.stderr(), 30, "the undo retries")
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait(30) == 130, run.stderr()
    line = run.last_line()
    assert "everything that was stopped was started again" not in run.stderr()
    assert line.startswith("recipes: interrupted: svc is still stopped on source (interrupted)"), line
    assert "the host's guard" in line and "will start svc within" in line
    wait_for(lambda: running(outside), DEADMAN + SLACK, "the guard started the service again")
    assert starts(outside) == 1


@pytest.mark.parametrize("hangs", ["then=hang", "stop=hang"])
def test_timeout_ends_what_hangs_and_starts_the_service_again(
    world: World, svc: tuple[str, Path], tmp_path: Path, hangs: str
) -> None:
    """``--timeout``: a dump (or the stop itself) that hangs while the service is stopped is ended
    on the host before the undo, the service is started again by the run itself (the guard's
    deadman is far off), and the run fails (exit 1) saying why."""
    inside, outside = svc
    run = Run(_config(world, deadman=600), inside, tmp_path, hangs, extra=("--timeout", "8s"))
    wait_for(lambda: not running(outside) and _orphans(inside), what="stopped, something hanging")
    assert run.wait(60) == 1, run.stderr()
    assert run.last_line() == (
        "recipes: error: timed out after 8s (--timeout 8s); everything that was stopped was started again"
    ), run.stderr()
    assert running(outside) and starts(outside) == 1
    assert not _orphans(inside)  # ended before the run said it was done
    assert not _snapshots(world)
    assert "Traceback" not in run.stderr()


def test_an_undo_cut_short_is_not_said_to_be_the_guards_to_run(
    world: World, svc: tuple[str, Path], tmp_path: Path
) -> None:
    """SIGTERM while the undo's start runs on the host: its claim took it from the guard, so the
    line must not promise the guard will start it; it says the start may not have finished."""
    inside, outside = svc
    run = Run(_config(world), inside, tmp_path, "then=fail", "start=hang")
    wait_for(lambda: starts(outside) == 1 and _orphans(inside), what="the undo's start hanging")
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait(30) == 130, run.stderr()
    line = run.last_line()
    assert line.startswith(
        "recipes: interrupted: start svc on source was interrupted while it ran there (svc is still "
        "stopped, unless it finished; the host's guard does not run it again): check, and if needed "
        "run by hand: "
    ), line
    assert "will start svc within" not in line
    assert running(outside) and starts(outside) == 1


def test_a_snapshot_is_not_committed_when_the_guard_fired(
    world: World, svc: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller is alive but silent (its heartbeats blocked) for longer than the deadman:
    the guard starts the service in the middle of the backup, so the snapshot is void."""
    inside, outside = svc
    monkeypatch.setattr(apps, "RECIPES", (*apps.RECIPES, Svc))
    monkeypatch.setattr(guard.Guard, "send_beat", lambda self: None)
    execute = engine.Backup.execute

    def slow(self: engine.Backup) -> None:
        execute(self)
        wait_for(lambda: running(outside), DEADMAN + SLACK, "the guard started the service again")

    monkeypatch.setattr(engine.Backup, "execute", slow)
    args = ["--config", str(_config(world)), "run", "svc-test", "--host", "source", "--set", f"dir={inside}"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert re.match(
        r"recipes: error: the host's guard on source already ran start svc at \S+Z \(the controller was "
        rf"silent for {DEADMAN}s\): nothing was stored",
        last,
    ), result.output
    assert running(outside) and starts(outside) == 1  # the guard's start, and no second one
    assert not _snapshots(world)


def test_ctrl_c_during_a_long_stream_acts_at_once(
    world: World, svc: tuple[str, Path], tmp_path: Path
) -> None:
    inside, outside = svc
    run = Run(_config(world), inside, tmp_path, "then=stream")
    wait_for(lambda: "step dump d" in run.stderr() and not running(outside), what="streaming")
    time.sleep(1)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(15) == 130, run.stderr()  # was 83 s: the rest of the stream was drained
    assert run.last_line() == "recipes: interrupted (everything that was stopped was started again)"
    assert running(outside) and starts(outside) == 1
    assert not _snapshots(world)


def test_a_command_started_while_the_guard_disarms_gets_its_own_answer(ssh_source: servers.SshHost) -> None:
    """A command started by another thread just before the guard is disarmed asks the guard to
    record it; disarming waits for that answer instead of taking it (it used to end the run with
    "the guard's session ended (track)" once starting a command became fast)."""
    import threading

    from recipes import hosts
    from recipes.model import Command

    host = hosts.open_host(ssh_source.spec())
    try:
        g = guard.Guard.arm(host, 60)
        asked, go = threading.Event(), threading.Event()
        answer = g._answer

        def held(what: str, *wanted: str) -> str:  # hold the track's answer until disarming began
            if what == "track":
                asked.set()
                go.wait(10)
            return answer(what, *wanted)

        g._answer = held  # type: ignore[method-assign]
        errors: list[BaseException] = []
        procs: list[hosts.Process] = []

        def start() -> None:
            try:
                procs.append(guard.Tracked(host, g).start(Command("sleep 30")))
            except BaseException as exc:
                errors.append(exc)

        def disarm() -> None:
            try:
                g.disarm()
            except BaseException as exc:
                errors.append(exc)

        starter = threading.Thread(target=start)
        starter.start()
        assert asked.wait(20)
        disarming = threading.Thread(target=disarm)
        disarming.start()
        disarming.join(timeout=2)  # with the answers shared, disarm is done by now
        go.set()
        starter.join(timeout=30)
        disarming.join(timeout=30)
        assert not errors, errors
        assert not starter.is_alive() and not disarming.is_alive()
        for proc in procs:
            proc.kill()
    finally:
        host.close()
