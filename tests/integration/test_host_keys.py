"""SSH host keys are checked as OpenSSH checks them, against a real sshd: a changed key is
refused before any credential is sent (whatever StrictHostKeyChecking says), an unknown host
is refused unless the operator accepts it, and a ``host_key`` pin alone decides.

Each test gets its own sshd (LogLevel DEBUG1, so its log shows every ``userauth-request``) and
its own HOME; a "changed" key is a new host key file that sshd rereads on SIGHUP."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers
from tests.integration.world import World


@pytest.fixture
def sshd() -> Iterator[servers.SshHost]:
    host = servers.start_sshd("hostkeys")
    try:
        with open(os.path.join(host.dir, "sshd_config"), "a") as fh:
            fh.write("LogLevel DEBUG1\n")
        _restart(host)
        yield host
    finally:
        host.stop()


def _restart(host: servers.SshHost) -> None:
    """SIGHUP: sshd execs itself again, rereading its config and host key; wait until it listens."""
    before = Path(host.log_file).read_text().count("Server listening on")
    os.kill(host.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while Path(host.log_file).read_text().count("Server listening on") == before:
        assert time.monotonic() < deadline, "sshd did not restart after SIGHUP"
        time.sleep(0.02)


def _rekey(host: servers.SshHost) -> None:
    """Give the host a new host key, as a reinstalled server (or a man in the middle) has."""
    key = os.path.join(host.dir, "host_key")
    os.unlink(key)
    os.unlink(key + ".pub")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    host.host_public_key = Path(key + ".pub").read_text().strip()
    _restart(host)


def _fingerprint(public_key: str, tmp: Path) -> str:
    """The SHA256 fingerprint as ``ssh-keygen -l`` prints it."""
    path = tmp / "fp.pub"
    path.write_text(public_key + "\n")
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def _other_key(tmp: Path) -> str:
    """A fresh ed25519 public key: what known_hosts held before the host's key changed."""
    path = tmp / f"other-{os.urandom(4).hex()}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def _world(tmp_path: Path, keys: tuple[Path, str, Path], host: servers.SshHost, extra: str = "") -> World:
    """A recipes.toml with host ``web`` (no pin unless ``extra`` adds one) and a tiny site."""
    identity, recipient, signing_key = keys
    signer = Path(f"{signing_key}.pub").read_text().strip()
    config = tmp_path / "recipes.toml"
    config.write_text(
        f'[repository]\nurl = "{tmp_path / "repo"}"\nrecipients = ["{recipient}"]\n'
        f'identity_file = "{identity}"\nsigning_key = "{signing_key}"\nsigners = ["{signer}"]\n\n'
        f'[hosts.web]\naddress = "127.0.0.1"\nport = {host.port}\nuser = "root"\n'
        f'key_file = "{host.key_file}"\n{extra}'
    )
    (tmp_path / "site/etc").mkdir(parents=True)
    (tmp_path / "site/etc/motd").write_text("hello\n")
    world = World(
        config, tmp_path / "repo", identity, recipient, tmp_path / "cache", tmp_path / "home", signing_key
    )
    world.home.mkdir()
    return world


def _backup(
    world: World, host: servers.SshHost, target: str = "web"
) -> tuple[subprocess.CompletedProcess[str], str]:
    """One backup of the site on host ``target``; also what sshd logged meanwhile."""
    log = Path(host.log_file)
    mark = len(log.read_text()) if host.log_file else 0
    proc = world.cli("run", "django", "--host", target, "--set", f"root={world.config.parent / 'site'}")
    return proc, log.read_text()[mark:] if host.log_file else ""


def _error(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line (and there must be exactly one, and no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("recipes: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _no_auth(sshd_log: str) -> None:
    """The connection reached sshd and was dropped before the client asked to authenticate."""
    assert "Connection from 127.0.0.1" in sshd_log, sshd_log
    assert "userauth-request" not in sshd_log, sshd_log
    assert "Accepted publickey" not in sshd_log, sshd_log


def _known_hosts(world: World) -> Path:
    ssh = world.home / ".ssh"
    ssh.mkdir(exist_ok=True)
    return ssh / "known_hosts"


def test_changed_key_is_refused_before_authenticating_naming_the_line(
    tmp_path: Path, keys: tuple[Path, str, Path], sshd: servers.SshHost
) -> None:
    world = _world(tmp_path, keys, sshd)
    kh = _known_hosts(world)
    other = _other_key(tmp_path).split()
    kh.write_text(
        f"# hosts\n[127.0.0.1]:1 {other[0]} {other[1]}\n[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n"
    )
    proc, seen = _backup(world, sshd)
    assert proc.returncode == 3, proc.stderr
    line = _error(proc)
    assert "CHANGED" in line and "web" in line
    assert _fingerprint(sshd.host_public_key, tmp_path) in line
    assert f"{kh}:3" in line
    _no_auth(seen)
    assert not list(world.repo.glob("django/web/*"))

    # the same run with the right line authenticates (and sshd's log shows it): the log check works
    kh.write_text(sshd.known_hosts_line() + "\n")
    ok, seen = _backup(world, sshd)
    assert ok.returncode == 0, ok.stderr
    assert "userauth-request" in seen and "Accepted publickey" in seen


def test_changed_key_is_refused_even_with_strict_host_key_checking_no(
    tmp_path: Path, keys: tuple[Path, str, Path], sshd: servers.SshHost
) -> None:
    world = _world(tmp_path, keys, sshd, "accept_new_host_keys = true\n")
    kh = _known_hosts(world)
    (kh.parent / "config").write_text("Host *\n  StrictHostKeyChecking no\n")
    other = _other_key(tmp_path).split()
    kh.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    proc, seen = _backup(world, sshd)
    assert proc.returncode == 3, proc.stderr
    assert "CHANGED" in _error(proc) and f"{kh}:1" in _error(proc)
    _no_auth(seen)
    assert kh.read_text().count("\n") == 1  # nothing recorded over the known key


@pytest.mark.parametrize("hashed", [False, True], ids=["bracketed", "hashed"])
def test_known_key_in_bracketed_or_hashed_entry_is_accepted(
    tmp_path: Path, keys: tuple[Path, str, Path], sshd: servers.SshHost, hashed: bool
) -> None:
    world = _world(tmp_path, keys, sshd)
    kh = _known_hosts(world)
    stale = _other_key(tmp_path)  # an old line of the same type first: OpenSSH accepts any line that matches
    kh.write_text(
        f"127.0.0.1 {_other_key(tmp_path)}\n[127.0.0.1]:{sshd.port} {stale}\n{sshd.known_hosts_line()}\n"
    )
    if hashed:
        subprocess.run(["ssh-keygen", "-H", "-f", str(kh)], check=True, capture_output=True)
        assert "127.0.0.1" not in kh.read_text() and kh.read_text().startswith("|1|")
    proc, seen = _backup(world, sshd)
    assert proc.returncode == 0, proc.stderr
    assert "Accepted publickey" in seen


def test_user_known_hosts_file_from_ssh_config_is_used(
    tmp_path: Path, keys: tuple[Path, str, Path], sshd: servers.SshHost
) -> None:
    world = _world(tmp_path, keys, sshd)
    ssh = world.home / ".ssh"
    ssh.mkdir()
    (ssh / "config").write_text("Host 127.0.0.1\n  UserKnownHostsFile ~/pinned/hosts\n")
    pinned = world.home / "pinned/hosts"
    pinned.parent.mkdir()
    pinned.write_text(sshd.known_hosts_line() + "\n")
    ok, _ = _backup(world, sshd)
    assert ok.returncode == 0, ok.stderr
    assert not (ssh / "known_hosts").exists()

    other = _other_key(tmp_path).split()
    pinned.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    (ssh / "known_hosts").write_text(sshd.known_hosts_line() + "\n")  # not read: the config names another
    bad, seen = _backup(world, sshd)
    assert bad.returncode == 3, bad.stderr
    assert f"{pinned}:1" in _error(bad)
    _no_auth(seen)


def test_unknown_host_is_refused_with_the_fingerprint_and_how_to_accept_it(
    tmp_path: Path, keys: tuple[Path, str, Path], sshd: servers.SshHost
) -> None:
    world = _world(tmp_path, keys, sshd)
    proc, seen = _backup(world, sshd)
    assert proc.returncode == 3, proc.stderr
    line = _error(proc)
    assert "unknown" in line
    assert _fingerprint(sshd.host_public_key, tmp_path) in line
    assert '[hosts.web] host_key = "ssh-ed25519 AAAA' in line
    assert "accept_new_host_keys = true" in line and "[ssh]" in line
    _no_auth(seen)
    assert not (world.home / ".ssh").exists()  # nothing recorded


def test_strict_host_key_checking_yes_wins_over_accept_new(
    tmp_path: Path, keys: tuple[Path, str, Path], sshd: servers.SshHost
) -> None:
    world = _world(tmp_path, keys, sshd, "accept_new_host_keys = true\n")
    kh = _known_hosts(world)
    (kh.parent / "config").write_text("Host *\n  StrictHostKeyChecking yes\n")
    proc, seen = _backup(world, sshd)
    assert proc.returncode == 3, proc.stderr
    assert "StrictHostKeyChecking yes" in _error(proc)
    _no_auth(seen)
    assert not kh.exists()


@pytest.mark.parametrize("how", ["hosts-table", "ssh-table", "ssh-table-cli-host", "ssh-config-accept-new"])
def test_accepted_new_key_is_recorded_and_a_later_change_refused(
    tmp_path: Path, keys: tuple[Path, str, Path], sshd: servers.SshHost, how: str
) -> None:
    ssh_table = "\n[ssh]\naccept_new_host_keys = true\n"
    extra = {
        "hosts-table": "accept_new_host_keys = true\n",
        "ssh-table": ssh_table,
        "ssh-table-cli-host": ssh_table,
    }
    world = _world(tmp_path, keys, sshd, extra.get(how, ""))
    kh = world.home / ".ssh/known_hosts"
    target = "web"
    if how == "ssh-config-accept-new":
        kh.parent.mkdir()
        (kh.parent / "config").write_text("Host 127.0.0.1\n  StrictHostKeyChecking accept-new\n")
    if how == "ssh-table-cli-host":  # not in [hosts]: the [ssh] default applies
        target = f"root@127.0.0.1:{sshd.port}"
        kh.parent.mkdir()
        (kh.parent / "config").write_text(f"Host 127.0.0.1\n  IdentityFile {sshd.key_file}\n")
    first, seen = _backup(world, sshd, target)
    assert first.returncode == 0, first.stderr
    assert "Accepted publickey" in seen
    assert stat.S_IMODE(kh.stat().st_mode) == 0o600
    if how in ("hosts-table", "ssh-table"):
        assert stat.S_IMODE(kh.parent.stat().st_mode) == 0o700
    found = subprocess.run(
        ["ssh-keygen", "-F", f"[127.0.0.1]:{sshd.port}", "-f", str(kh)], capture_output=True, text=True
    )
    assert found.returncode == 0 and sshd.host_public_key.split()[1] in found.stdout
    recorded = kh.read_text()
    assert recorded.count("\n") == 1

    again, _ = _backup(world, sshd, target)
    assert again.returncode == 0, again.stderr
    assert kh.read_text() == recorded  # known now: not recorded twice

    _rekey(sshd)
    changed, seen = _backup(world, sshd, target)
    assert changed.returncode == 3, changed.stderr
    line = _error(changed)
    assert "CHANGED" in line and f"{kh}:1" in line
    assert _fingerprint(sshd.host_public_key, tmp_path) in line
    _no_auth(seen)
    assert kh.read_text() == recorded
    if target == "web":
        assert len(list(world.repo.glob("django/web/*/manifest.json"))) == 2


def test_pinned_host_key_alone_decides(
    tmp_path: Path, keys: tuple[Path, str, Path], sshd: servers.SshHost
) -> None:
    world = _world(tmp_path, keys, sshd, f'host_key = "{sshd.host_public_key}"\n')
    kh = _known_hosts(world)
    other = _other_key(tmp_path)
    kh.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")  # known_hosts disagrees: the pin decides
    ok, seen = _backup(world, sshd)
    assert ok.returncode == 0, ok.stderr
    assert "Accepted publickey" in seen

    text = world.config.read_text().replace(sshd.host_public_key, other)
    world.config.write_text(text + "accept_new_host_keys = true\n")
    kh.write_text(sshd.known_hosts_line() + "\n")  # known_hosts agrees with the host: the pin decides
    bad, seen = _backup(world, sshd)
    assert bad.returncode == 3, bad.stderr
    line = _error(bad)
    assert "hosts.web.host_key" in line and "recipes.toml" in line
    assert _fingerprint(sshd.host_public_key, tmp_path) in line
    _no_auth(seen)


@pytest.mark.parametrize(
    "pin",
    [
        "ssh-ed25519",
        "ssh-ed25519 not-base64!",
        "ssh-foo AAAAC3NzaC1lZDI1NTE5",
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5",
    ],
)
def test_malformed_pin_is_one_config_error_when_the_file_is_read(
    tmp_path: Path, keys: tuple[Path, str, Path], pin: str
) -> None:
    nowhere = servers.SshHost(name="nowhere", port=9, user="root", key_file="/nonexistent")
    world = _world(tmp_path, keys, nowhere, f'host_key = "{pin}"\n')
    proc = world.cli("plan", "django", "--host", "web")  # plan reads no host: the load refuses it
    assert proc.returncode == 2, proc.stderr
    assert "hosts.web.host_key" in _error(proc)


@pytest.mark.parametrize("jump_key", ["right", "changed", "unknown"])
def test_a_proxyjump_hosts_key_is_checked_like_any_host(
    tmp_path: Path,
    keys: tuple[Path, str, Path],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    jump_key: str,
) -> None:
    """``ProxyJump`` in ~/.ssh/config: Fabric connects the jump host itself; its key is checked
    against known_hosts too (it used to be accepted whatever it was)."""
    world = _world(tmp_path, keys, ssh_source)
    ssh_dir = world.home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "config").write_text(
        f"Host viajump\n  HostName 127.0.0.1\n  Port {ssh_source.port}\n  User root\n"
        f"  IdentityFile {ssh_source.key_file}\n  ProxyJump jumphost\n"
        f"Host jumphost\n  HostName 127.0.0.1\n  Port {ssh_target.port}\n  User root\n"
        f"  IdentityFile {ssh_target.key_file}\n"
    )
    lines = [ssh_source.known_hosts_line()]
    if jump_key == "right":
        lines.append(ssh_target.known_hosts_line())
    elif jump_key == "changed":
        lines.append(f"[127.0.0.1]:{ssh_target.port} {_other_key(tmp_path)}")
    (ssh_dir / "known_hosts").write_text("\n".join(lines) + "\n")
    proc, _ = _backup(world, ssh_source, target="viajump")
    if jump_key == "right":
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 3, proc.stderr
    line = _error(proc)
    assert "ProxyJump of viajump" in line
    assert _fingerprint(ssh_target.host_public_key, tmp_path) in line
    if jump_key == "changed":
        assert f"{ssh_dir / 'known_hosts'}:2" in line
    assert not list(world.repo.glob("django/viajump/*/manifest.json"))
