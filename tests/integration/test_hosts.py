"""Reaching hosts the ways operators configure them: a non-root login with sudo, and a name
from ~/.ssh/config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import servers
from tests.integration.world import World

USER = "recipesop"
SUDOERS = Path(f"/etc/sudoers.d/{USER}")


@pytest.fixture(scope="module")
def operator(ssh_source: servers.SshHost) -> Iterator[str]:
    """A locked-down login user that may use sudo without a password (as on many servers)."""
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True)
    try:
        subprocess.run(["usermod", "-p", "*", USER], check=True)  # sshd refuses a locked '!' account
        shutil.copyfile(ssh_source.key_file + ".pub", os.path.join(ssh_source.dir, "keys", USER))
        os.chmod(os.path.join(ssh_source.dir, "keys", USER), 0o644)
        SUDOERS.write_text(f"{USER} ALL=(ALL) NOPASSWD:ALL\n")
        SUDOERS.chmod(0o440)
        yield USER
    finally:
        SUDOERS.unlink(missing_ok=True)
        # sshd may still be ending the user's sessions (spares included): userdel refuses then
        subprocess.run(["pkill", "-KILL", "-u", USER], check=False, capture_output=True)
        for _ in range(50):
            if subprocess.run(["userdel", "-r", USER], check=False, capture_output=True).returncode in (0, 6):
                break
            time.sleep(0.1)
        Path(os.path.join(ssh_source.dir, "keys", USER)).unlink(missing_ok=True)


def _add_host(world: World, name: str, ssh: servers.SshHost, user: str, sudo: bool) -> None:
    with world.config.open("a") as fh:
        fh.write(
            f'\n[hosts.{name}]\naddress = "127.0.0.1"\nuser = "{user}"\nport = {ssh.port}\n'
            f'key_file = "{ssh.key_file}"\nsudo = {"true" if sudo else "false"}\n'
            f'host_key = "{ssh.host_public_key}"\n'
        )


def test_non_root_login_reads_root_only_files_through_sudo(
    world: World, ssh_source: servers.SshHost, operator: str, tmp_path: Path
) -> None:
    name = f"op-{os.getpid()}"
    src = Path(ssh_source.binds["/srv/site"]) / name
    (src / "etc/ssl/private").mkdir(parents=True)
    secret = src / "etc/ssl/private/site.key"
    secret.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    secret.chmod(0o600)
    (src / "etc/ssl/private").chmod(0o700)
    _add_host(world, "op-sudo", ssh_source, operator, sudo=True)
    _add_host(world, "op-plain", ssh_source, operator, sudo=False)
    try:
        plain = world.cli("run", "django", "--host", "op-plain", "--set", f"root=/srv/site/{name}")
        assert plain.returncode == 1
        assert "Permission denied" in plain.stderr
        ok = world.cli("run", "django", "--host", "op-sudo", "--set", f"root=/srv/site/{name}")
        assert ok.returncode == 0, ok.stderr
        # the next run is an incremental: tar's state went to root's private dir through sudo
        secret.write_bytes(b"-----BEGIN PRIVATE KEY-----\nrotated\n")
        again = world.cli("--json", "run", "django", "--host", "op-sudo", "--set", f"root=/srv/site/{name}")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["level"] == 1
        out = tmp_path / "out"
        out.mkdir()
        restore = world.cli(
            "restore", "django", "--host", "local", "--from", "op-sudo", "--set", f"root={out}"
        )
        assert restore.returncode == 0, restore.stderr
        got = out / "etc/ssl/private/site.key"
        assert got.read_bytes() == secret.read_bytes()
        assert got.stat().st_mode & 0o777 == 0o600
    finally:
        shutil.rmtree(src, ignore_errors=True)


def test_host_name_from_ssh_config(world: World, ssh_source: servers.SshHost) -> None:
    home = world.home  # the HOME of every CLI run of this test
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/config").write_text(
        f"Host backup-alias\n  HostName 127.0.0.1\n  Port {ssh_source.port}\n  User root\n"
        f"  IdentityFile {ssh_source.key_file}\n"
    )
    # not in [hosts]: no pin, so the host's key comes from ~/.ssh/known_hosts as for ssh(1)
    (home / ".ssh/known_hosts").write_text(ssh_source.known_hosts_line() + "\n")
    name = f"alias-{os.getpid()}"
    src = Path(ssh_source.binds["/srv/site"]) / name
    (src / "etc").mkdir(parents=True)
    (src / "etc/motd").write_text("hello\n")
    try:
        proc = world.cli(
            "--json",
            "run",
            "django",
            "--host",
            "backup-alias",
            "--set",
            f"root=/srv/site/{name}",
        )
        assert proc.returncode == 0, proc.stderr
        assert list(world.repo.glob("django/backup-alias/*/manifest.json"))
        bad = world.cli("run", "django", "--host", "no-such-alias.invalid", "--set", "root=/x")
        assert bad.returncode == 1
        assert bad.stderr.splitlines()[-1].startswith(
            "recipes: error: cannot connect to no-such-alias.invalid"
        )
    finally:
        shutil.rmtree(src, ignore_errors=True)


@pytest.mark.parametrize("config", [b"Host *\n  Port abc\n", b"\xff\xfe\n"], ids=["bad-port", "not-utf8"])
def test_a_damaged_ssh_client_config_is_one_line(world: World, config: bytes) -> None:
    (world.home / ".ssh").mkdir(parents=True, exist_ok=True)
    (world.home / ".ssh/config").write_bytes(config)
    try:
        # no port given: the config's Port applies (and is read before any connection)
        out = world.cli("run", "django", "--host", "root@127.0.0.1", "--set", "root=/x")
    finally:
        (world.home / ".ssh/config").unlink()
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "the SSH client configuration (~/.ssh/config" in out.stderr.splitlines()[-1]


def test_a_host_name_with_an_empty_label_is_one_line(world: World) -> None:
    out = world.cli("run", "django", "--host", "me@web1..example.com", "--set", "root=/x")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert "'web1..example.com' is not a valid host name" in out.stderr.splitlines()[-1]


def test_a_key_file_that_is_not_a_key_is_one_line(
    world: World, ssh_source: servers.SshHost, tmp_path: Path
) -> None:
    junk = tmp_path / "junk_key"
    junk.write_bytes(bytes(range(256)))
    with world.config.open("a") as fh:
        fh.write(
            f'\n[hosts.junkkey]\naddress = "127.0.0.1"\nuser = "root"\nport = {ssh_source.port}\n'
            f'key_file = "{junk}"\nhost_key = "{ssh_source.host_public_key}"\n'
        )
    out = world.cli("run", "django", "--host", "junkkey", "--set", "root=/x")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"junkkey: {junk} is not an SSH private key" in out.stderr.splitlines()[-1]


def test_bad_input_is_reported_at_once_while_the_host_is_still_being_connected(world: World) -> None:
    """``run`` connects to the host while it opens the repository; a repository refused for bad
    input is reported without waiting out a host that accepts TCP and never speaks SSH."""
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    port = silent.getsockname()[1]
    try:
        began = time.monotonic()
        out = world.cli("run", "django", "--host", f"root@127.0.0.1:{port}", "--repo", "nosuchproto://x")
        took = time.monotonic() - began
        assert out.returncode == 2, out.stderr
        assert "repository nosuchproto://x" in out.stderr and "Traceback" not in out.stderr
        assert took < 10, f"waited {took:.1f}s for a host that never answers (its banner timeout is 15 s)"
    finally:
        silent.close()


def _waiting_spares() -> set[int]:
    """Pids of shells on this machine waiting in SPARE for their command: the topmost ancestor
    of a ``dd bs=1 count=12`` whose command line is SPARE's (a command substitution may fork one)."""

    def parent_of(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    found: set[int] = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[:3] != [b"dd", b"bs=1", b"count=12"]:
                continue
            shell = parent_of(int(cmdline.parent.name))
            while b"dd bs=1 count=12" in Path(f"/proc/{parent_of(shell)}/cmdline").read_bytes():
                shell = parent_of(shell)
        except (OSError, IndexError, ValueError):
            continue
        found.add(shell)
    return found


def _new_spares(before: set[int], count: int) -> set[int]:
    """The ``count`` spare shells that appeared since ``before`` (waits for their logins)."""
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        new = _waiting_spares() - before
        if len(new) >= count:
            assert len(new) == count, new
            return new
        time.sleep(0.02)
    raise AssertionError(f"{count} spare sessions did not start on the host")


def test_commands_run_in_the_spare_session_started_ahead_of_them(ssh_source: servers.SshHost) -> None:
    """A host starts the next command's login shell ahead of need: the command runs in that
    shell (not a session of its own), with its own stdin, stdout, exit status and quoting; two
    are ready as the connection comes up, and taking the last one opens the next."""
    from recipes import hosts
    from recipes.model import Command

    before = _waiting_spares()
    host = hosts.open_host(ssh_source.spec())
    try:
        host.connect_soon()
        ahead = _new_spares(before, hosts.SPARES)  # the control session's and the first command's
        # The spare shell execs the command (Command.wire's bash -c): it keeps the shell's pid
        first = hosts.run(host, Command('echo "$$"; exit 7'))
        assert first.exit_status == 7 and int(first.stdout) in ahead
        text = "two lines\nand 'quotes' \"too\" ünï\n"
        second = hosts.run(host, Command("echo \"$$\"\ncat\nprintf '%s' done"), stdin=text.encode())
        assert second.exit_status == 0, second.stderr
        assert second.stdout == f"{(ahead - {int(first.stdout)}).pop()}\n{text}done".encode()
        (third_spare,) = _new_spares(before | ahead, 1)  # opened when the last one was taken
        third = hosts.run(host, Command('echo "$$"'))
        assert third.stdout == f"{third_spare}\n".encode()
        big = "x" * 100_000  # several packets (a single argument may have 128 KiB at most)
        fourth = hosts.run(host, Command(f": {big}; echo ok"))
        assert (fourth.exit_status, fourth.stdout) == (0, b"ok\n")
    finally:
        host.close()


def test_a_command_that_did_not_arrive_whole_in_a_spare_is_not_run(
    ssh_source: servers.SshHost, tmp_path: Path
) -> None:
    """The spare runs a command only when its end marker came with it: a command cut short (the
    channel lost mid-send) fails with exit 125, never runs in part, never exits 0."""
    from recipes import hosts

    host = hosts.open_host(ssh_source.spec())
    marker = tmp_path / "ran"  # the sshd shares this machine's /tmp
    try:
        host.connect_soon()
        transport = host._transport()
        spare = host._take_spare(transport)
        assert spare is not None
        text = f"touch {marker}".encode()  # no SPARE_END: as if the rest never came
        spare.sendall(b"%012d" % len(text) + text)
        proc = hosts.SshProcess(spare, b"")
        proc.close_stdin()
        assert proc.read(1 << 16) == b""
        assert proc.wait(timeout=30) == 125
        assert "did not arrive whole" in proc.stderr()
        assert not marker.exists()
    finally:
        host.close()


def test_a_command_in_a_spare_does_not_log_in_again(ssh_source: servers.SshHost, operator: str) -> None:
    """The spare's shell read the login's rc files; the command it runs (Command.wire's own
    ``bash -c``) must not read them again: bash run by sshd does so below shell level 2, which
    cost each command another ~85 ms on a host with a heavy ~/.bashrc."""
    import attrs

    from recipes import hosts
    from recipes.model import Command

    rc = Path(f"/home/{operator}/.bashrc")
    rc.write_text('RC_READ_BY="$$"\n')  # not exported: only the bash that read it has it
    host = hosts.open_host(attrs.evolve(ssh_source.spec(), user=operator))
    try:
        host.connect_soon()
        for _ in range(3):
            out = hosts.run(host, Command('echo "${RC_READ_BY:-not read}"'))
            assert (out.exit_status, out.stdout) == (0, b"not read\n"), out
        plain = host._transport().open_session()  # an exec request, as ssh(1) sends it
        plain.exec_command('echo "${RC_READ_BY:-not read}"')
        assert plain.makefile("rb").read().strip().isdigit()  # the rc file does run at a login
        plain.close()
    finally:
        host.close()
        rc.unlink(missing_ok=True)
