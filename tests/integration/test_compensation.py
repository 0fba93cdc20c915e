"""What was stopped is started again: on a failed step, on SIGTERM, on a dropped connection."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipes import apps, cli
from tests import servers
from tests.integration.fakes import Svc
from tests.integration.world import World

LAUNCH = (
    "import recipes.apps as a; from tests.integration.fakes import Svc; "
    "a.RECIPES = a.RECIPES + (Svc,); from recipes.cli import main; main()"
)


def running_service(ssh_source: servers.SshHost) -> Iterator[tuple[str, Path]]:
    """A running 'service' on host source: (its dir inside the host, the same dir from outside);
    stopped and removed afterwards. The body of every service fixture."""
    name = f"svc-{uuid.uuid4().hex[:8]}"
    outside = Path(ssh_source.binds["/srv/site"]) / name
    outside.mkdir()
    _start(outside)
    yield f"/srv/site/{name}", outside
    if pid := _pid(outside):
        subprocess.run(["kill", str(pid)], check=False)
    subprocess.run(["rm", "-rf", str(outside)], check=False)


@pytest.fixture
def svc(ssh_source: servers.SshHost) -> Iterator[tuple[str, Path]]:
    """A running 'service' on host source."""
    yield from running_service(ssh_source)


def _start(outside: Path) -> None:
    proc = subprocess.Popen(
        ["setsid", "sleep", "100000"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    (outside / "svc.pid").write_text(f"{proc.pid}\n")


def _pid(outside: Path) -> int | None:
    try:
        return int((outside / "svc.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def running(outside: Path) -> bool:
    pid = _pid(outside)
    if pid is None:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def state_dirs() -> set[str]:
    """tar's private state directories on the hosts (their /tmp is the machine's)."""
    return set(glob.glob("/tmp/recipes-state.*"))


def starts(outside: Path) -> int:
    log = outside / "starts.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture(autouse=True)
def own_home(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process CLI runs (and the subprocesses they launch) use the test's HOME and cache."""
    world.home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HOME", str(world.home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(world.cache))


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apps, "RECIPES", (*apps.RECIPES, Svc))


def _svc_run(world: World, inside: str, *extra: str) -> list[str]:
    """CLI arguments backing up the fake service in ``inside`` on host ``source``."""
    return [
        "--config",
        str(world.config),
        "run",
        "svc-test",
        "--host",
        "source",
        "--set",
        f"dir={inside}",
        *extra,
    ]


def test_failed_step_after_quiesce_starts_the_service_again(
    world: World,
    svc: tuple[str, Path],
    registered: None,
) -> None:
    inside, outside = svc
    before = _pid(outside)
    result = CliRunner().invoke(cli.main, _svc_run(world, inside, "--set", "then=fail"))
    assert result.exit_code == 1
    assert "simulated failure" in result.output
    assert starts(outside) == 1
    assert running(outside) and _pid(outside) != before  # stopped, then started again
    assert not list(world.repo.glob("svc-test/source/*"))


def test_a_start_that_fails_after_the_data_fails_the_run_but_keeps_the_whole_snapshot(
    world: World,
    svc: tuple[str, Path],
    registered: None,
) -> None:
    """The data was taken while the service was stopped, then its start failed: the run fails
    (exit 1, naming what is still stopped) and says the snapshot is committed, because it is
    whole: throwing away the freshest consistent backup helps nobody."""
    inside, outside = svc
    result = CliRunner().invoke(cli.main, _svc_run(world, inside, "--set", "start=fail"))
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("recipes: error: start svc failed on source (exit 4"), line
    assert "start: simulated failure" in line, line
    (snap,) = [p.name for p in world.repo.glob("svc-test/source/*")]
    assert f"snapshot {snap} is committed all the same" in line, line
    assert not running(outside)
    checked = CliRunner().invoke(cli.main, ["--config", str(world.config), "verify", snap])
    assert checked.exit_code == 0, checked.output


def test_success_restarts_and_a_stopped_service_stays_stopped(
    world: World,
    svc: tuple[str, Path],
    registered: None,
) -> None:
    inside, outside = svc
    args = ["--json", *_svc_run(world, inside)]
    ok = CliRunner().invoke(cli.main, args)
    assert ok.exit_code == 0, ok.output
    assert running(outside) and starts(outside) == 1
    steps = {s["name"]: s["outcome"] for s in json.loads(ok.stdout)["steps"]}
    assert steps["svc"] == "stopped"

    subprocess.run(["kill", str(_pid(outside))], check=True)
    (outside / "svc.pid").unlink()
    again = CliRunner().invoke(cli.main, args)
    assert again.exit_code == 0, again.output
    assert not running(outside) and starts(outside) == 1  # was not running: left alone
    assert {s["name"]: s["outcome"] for s in json.loads(again.stdout)["steps"]}["svc"] == "not running"


def _launch(world: World, inside: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            LAUNCH,
            *_svc_run(world, inside, "--set", "then=hang"),
        ],
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _wait_for(cond: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_sigterm_mid_backup_starts_the_service_again(
    world: World,
    svc: tuple[str, Path],
) -> None:
    inside, outside = svc
    before = state_dirs()
    proc = _launch(world, inside)
    _wait_for(lambda: not running(outside))  # quiesced, now inside the hanging dump
    assert state_dirs() - before, "the control session made its private state dir"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert running(outside) and starts(outside) == 1
    assert not list(world.repo.glob("svc-test/source/*"))
    _wait_for(lambda: state_dirs() <= before)  # nothing of tar's state survives on the host


def test_dropped_connection_mid_backup_reconnects_to_start_the_service(
    world: World,
    svc: tuple[str, Path],
    ssh_source: servers.SshHost,
) -> None:
    inside, outside = svc
    before = state_dirs()
    proc = _launch(world, inside)
    _wait_for(lambda: not running(outside))
    assert state_dirs() - before, "the control session made its private state dir"
    time.sleep(0.5)
    # Kill the per-connection sshd processes (not the listener): the TCP connection drops.
    kids = subprocess.run(["pgrep", "-P", str(ssh_source.pid)], capture_output=True, text=True).stdout
    assert kids.split(), "expected a per-connection sshd child"
    for kid in kids.split():
        os.kill(int(kid), signal.SIGKILL)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err
    assert "connection" in err.lower()
    assert running(outside) and starts(outside) == 1
    assert not list(world.repo.glob("svc-test/source/*"))
    # the control session saw its stdin end with the connection and removed its directory
    _wait_for(lambda: state_dirs() <= before)
