"""The guard's controller half without a host: what it refuses, and the [engine] config."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from recipes import config, guard
from recipes.errors import ConfigError, StepFailed
from recipes.model import Command, Secret


class NoHost:
    """A host that must never be reached (the refusal comes first)."""

    name = "web1"

    def start(self, command: Command) -> None:
        raise AssertionError("the host was reached")


def test_an_undo_with_secrets_is_refused_before_anything_stops() -> None:
    g = guard.Guard.__new__(guard.Guard)
    g.host = NoHost()  # type: ignore[assignment]
    undo = guard.Undo("start x", Command("start-x", secrets=(("PW", Secret("PW")),)))
    with pytest.raises(StepFailed, match=r"start x on web1 needs secrets \(PW\).*nothing was stopped"):
        g.push(undo)


def test_claimed_command_runs_the_undo_only_after_its_claim() -> None:
    g = guard.Guard.__new__(guard.Guard)
    g.dir = "/tmp/recipes-guard.X"
    entry = guard.Entry(7, guard.Undo("start x", Command("systemctl start x", user="app")))
    script = g.claimed(entry).script
    claim, _, rest = script.partition("fi; ")
    assert "mv -- /tmp/recipes-guard.X/undo/000007 /tmp/recipes-guard.X/ctl/000007" in claim
    assert f"exit {guard.TAKEN_BY_GUARD}" in claim and f"exit {guard.GUARD_GONE}" in claim
    assert rest.startswith("sudo -n -u app -- bash -c") and "systemctl start x" in rest


def test_engine_deadman_seconds() -> None:
    assert config.parse({}, "x.toml").engine.deadman_seconds == 60
    assert config.parse({"engine": {"deadman_seconds": 5}}, "x.toml").engine.deadman_seconds == 5
    for bad in (0, 100000):
        with pytest.raises(ConfigError, match=r"x.toml: engine.deadman_seconds must be 1 to 86400"):
            config.parse({"engine": {"deadman_seconds": bad}}, "x.toml")
    with pytest.raises(ConfigError, match="engine: unknown keys"):
        config.parse({"engine": {"deadman": 5}}, "x.toml")


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _guard_dir(tmp_path: Path) -> Path:
    d = tmp_path / "g"
    for sub in ("sessions", "spare"):
        (d / sub).mkdir(parents=True)
    return d


def _bash(d: Path, snippet: str, script: str, **env: str) -> None:
    done = subprocess.run(
        ["bash", "-c", f"{snippet}\n{script}"], env={"PATH": "/usr/bin:/bin", "d": str(d), **env}, timeout=30
    )
    assert done.returncode == 0


def test_a_recorded_session_number_now_used_by_another_session_is_not_killed(tmp_path: Path) -> None:
    """Session numbers are reused once a session is gone (pid_max 32768 wraps within minutes on
    a busy host): a guard firing, or an abandon, must not kill an unrelated session that got the
    number of one it recorded long ago. Its leader's start time tells them apart."""
    d = _guard_dir(tmp_path)
    other = subprocess.Popen(["setsid", "sleep", "60"])  # the unrelated session, number reused
    time.sleep(0.2)
    try:
        (d / "sessions" / str(other.pid)).write_text("1\n")  # recorded when another leader had it
        _bash(d, guard.KILL, "kill_sessions")
        assert _alive(other.pid), "an unrelated session was killed"
        (d / "sessions" / str(other.pid)).write_text(_start_time(other.pid) + "\n")  # it is ours
        _bash(d, guard.KILL, "kill_sessions")
        other.wait(timeout=10)
    finally:
        other.kill()


@contextlib.contextmanager
def one_session_under_a_fake_sshd() -> Iterator[tuple[int, str]]:
    """A parent standing for a connection's sshd, with one child leading its own session (a
    channel's command): (the parent's pid, the child's pid as text)."""
    parent = subprocess.Popen(["bash", "-c", "setsid sleep 60 & wait"])
    try:
        deadline = time.monotonic() + 10
        while not (kids := Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)  # setsid has exec'd sleep
        yield parent.pid, kids[0]
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()


def test_track_records_each_sessions_leader_with_its_start_time(tmp_path: Path) -> None:
    d = _guard_dir(tmp_path)
    with one_session_under_a_fake_sshd() as (sshd, kid):
        _bash(d, guard.TRACK, "track", sshd=str(sshd))
        assert (d / "sessions" / kid).read_text().strip() == _start_time(int(kid))


def test_a_spared_number_now_used_by_another_of_the_runs_sessions_is_killed(tmp_path: Path) -> None:
    """An undo's session is spared by number; once it is gone, a later session of the run (a
    hung dump) can get that number. The spare record's leader start time tells them apart."""
    d = _guard_dir(tmp_path)
    hung = subprocess.Popen(["setsid", "sleep", "60"])  # the run's, recorded by track
    time.sleep(0.2)
    try:
        (d / "sessions" / str(hung.pid)).write_text(_start_time(hung.pid) + "\n")
        (d / "spare" / str(hung.pid)).write_text(_start_time(hung.pid) + "\n")  # really spared
        _bash(d, guard.KILL, "kill_sessions")
        assert _alive(hung.pid), "a spared session was killed"
        (d / "spare" / str(hung.pid)).write_text("1\n")  # an undo that had the number long ago
        _bash(d, guard.KILL, "kill_sessions")
        hung.wait(timeout=10)
    finally:
        hung.kill()


def test_the_claim_and_the_feeder_spare_their_session_by_its_leaders_start_time(tmp_path: Path) -> None:
    d = _guard_dir(tmp_path)
    g = guard.Guard.__new__(guard.Guard)
    g.dir = str(d)
    (d / "undo").mkdir()
    (d / "ctl").mkdir()
    (d / "undo" / "000003").write_text("x")
    entry = guard.Entry(3, guard.Undo("start x", Command("cat /proc/$$/stat > leader")))
    done = subprocess.run(["setsid", "bash", "-c", g.claimed(entry).script], cwd=tmp_path, timeout=30)
    assert done.returncode == 0
    # bash -c's own process leads the new session: what /proc said of it while it ran
    stat = (tmp_path / "leader").read_text()
    leader, started = stat.split()[0], stat.rsplit(")", 1)[1].split()[19]
    # its own session, and its parent's (here this test's; sudo's on a host)
    parent_session = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[3]
    assert sorted(p.name for p in (d / "spare").iterdir()) == sorted({leader, parent_session})
    assert (d / "spare" / leader).read_text().strip() == started
    other = subprocess.Popen(["setsid", "sleep", "60"])
    time.sleep(0.2)
    try:
        _bash(d, guard.KILL, f"spare {other.pid}")
        assert (d / "spare" / str(other.pid)).read_text().strip() == _start_time(other.pid)
    finally:
        other.kill()


def test_a_leaderless_session_is_spared_only_by_the_record_of_the_session_tracked(tmp_path: Path) -> None:
    """A later session of the run with an old undo's number whose leader is gone (only its
    members hold the number) is not spared by that undo's record."""
    d = _guard_dir(tmp_path)
    leader = subprocess.Popen(
        ["setsid", "bash", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE, text=True
    )
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    leader.wait(timeout=10)  # the leader is gone; its member holds the session number
    try:
        (d / "sessions" / str(leader.pid)).write_text("123456\n")  # as track recorded it
        (d / "spare" / str(leader.pid)).write_text("123456\n")  # spared: that very session
        _bash(d, guard.KILL, "kill_sessions")
        assert _alive(member), "a spared session was killed"
        (d / "spare" / str(leader.pid)).write_text("1\n")  # an undo that had the number long ago
        _bash(d, guard.KILL, "kill_sessions")
        deadline = time.monotonic() + 10
        while _alive(member):
            assert time.monotonic() < deadline, "a session spared by a stale record"
            time.sleep(0.1)
    finally:
        subprocess.run(["kill", "-9", str(member)], check=False, capture_output=True)


def test_the_claim_spares_its_session_before_it_takes_the_entry(tmp_path: Path) -> None:
    """A guard firing between the claim's take and its spare record would kill the undo."""
    d = _guard_dir(tmp_path)
    g = guard.Guard.__new__(guard.Guard)
    g.dir = str(d)
    for sub in ("undo", "ctl"):
        (d / sub).mkdir()
    (d / "undo" / "000004").write_text("x")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "mv").write_text(
        '#!/bin/bash\ncase "$*" in *"/undo/"*) ls "$d/spare" > "$d/spare-at-claim";; esac\n'
        'exec /bin/mv "$@"\n'
    )
    (shim / "mv").chmod(0o755)
    entry = guard.Entry(4, guard.Undo("start x", Command("true")))
    done = subprocess.run(
        ["setsid", "bash", "-c", g.claimed(entry).script],
        env={"PATH": f"{shim}:/usr/bin:/bin", "d": str(d)},
        timeout=30,
    )
    assert done.returncode == 0
    assert (d / "ctl" / "000004").exists()
    spared = sorted(p.name for p in (d / "spare").iterdir())
    assert sorted((d / "spare-at-claim").read_text().split()) == spared
    assert len(spared) == 2  # the claim's session and its parent's


def test_a_claim_whose_guard_is_gone_says_nothing_but_its_exit(tmp_path: Path) -> None:
    g = guard.Guard.__new__(guard.Guard)
    g.dir = str(tmp_path / "gone")
    entry = guard.Entry(5, guard.Undo("start x", Command("true")))
    done = subprocess.run(["setsid", "bash", "-c", g.claimed(entry).script], capture_output=True, text=True)
    assert done.returncode == guard.GUARD_GONE
    assert done.stderr == ""


def test_track_keeps_the_record_of_a_session_gone_between_its_listing_and_its_stat(tmp_path: Path) -> None:
    """A kid reaped after sshd's children were listed must not turn its record into '-' (a
    leaderless session, which any old spare record with its number would then spare)."""
    d = _guard_dir(tmp_path)
    (d / "sessions" / "999999999").write_text("4242\n")  # recorded while it ran; now gone
    gone = 'kids_of_sshd() { kids="999999999"; }'  # listed, then gone before its stat is read
    _bash(d, guard.TRACK + "\n" + gone, "track", sshd="2")
    assert (d / "sessions" / "999999999").read_text().strip() == "4242"
    _bash(d, guard.TRACK + "\n" + gone.replace("999999999", "999999998"), "track", sshd="2")
    assert (d / "sessions" / "999999998").read_text().strip() == "-"  # never seen alive: '-'
