"""Prove the server harness: SSH hosts, per-host PostgreSQL/MariaDB sockets, bind mounts."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import uuid

import paramiko
import pytest

from tests import servers

pytestmark = pytest.mark.integration


def ssh_run(host: servers.SshHost, command: str, timeout: float = 30) -> tuple[int, str, str]:
    """Run command on host over SSH (paramiko, strict host key) and return (rc, stdout, stderr)."""
    keytype, b64 = host.host_public_key.split()[:2]
    assert keytype == "ssh-ed25519"
    client = paramiko.SSHClient()
    client.get_host_keys().add(
        f"[{host.address}]:{host.port}", keytype, paramiko.Ed25519Key(data=base64.b64decode(b64))
    )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.address,
        port=host.port,
        username=host.user,
        key_filename=host.key_file,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out, err = stdout.read().decode(), stderr.read().decode()
        return stdout.channel.recv_exit_status(), out, err
    finally:
        client.close()


def ok(host: servers.SshHost, command: str) -> str:
    """Run command on host, assert exit 0, return stdout."""
    rc, out, err = ssh_run(host, command)
    assert rc == 0, f"{command!r} on {host.name} exited {rc}: {err}"
    return out


def test_ssh_root_login(ssh_source: servers.SshHost) -> None:
    assert ok(ssh_source, "id -un").strip() == "root"


def test_openssh_client_strict_host_key_and_aes128_gcm(
    ssh_source: servers.SshHost, tmp_path: os.PathLike[str]
) -> None:
    known_hosts = os.path.join(tmp_path, "known_hosts")
    with open(known_hosts, "w") as f:
        f.write(ssh_source.known_hosts_line() + "\n")
    res = subprocess.run(
        [
            "ssh",
            "-F",
            "none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-c",
            "aes128-gcm@openssh.com",
            "-i",
            ssh_source.key_file,
            "-p",
            str(ssh_source.port),
            f"root@{ssh_source.address}",
            "echo ok",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert (res.returncode, res.stdout) == (0, "ok\n"), res.stderr


@pytest.mark.parametrize("name", ["source", "target"])
def test_default_pg_socket_reaches_own_cluster(request: pytest.FixtureRequest, name: str) -> None:
    host: servers.SshHost = request.getfixturevalue(f"ssh_{name}")
    pg: servers.Postgres = request.getfixturevalue(f"pg_{name}")
    assert ok(host, "cd / && sudo -n -u postgres psql -X -At -c 'select 1'").strip() == "1"
    assert ok(host, "cd / && sudo -n -u postgres psql -X -At -c 'SHOW port'").strip() == str(pg.port)
    explicit = "cd / && sudo -n -u postgres psql -X -At -h /var/run/postgresql -p 5432 -c 'SHOW port'"
    assert ok(host, explicit).strip() == str(pg.port)


def test_pg_dumpall_in_source_only(
    ssh_source: servers.SshHost, ssh_target: servers.SshHost, fresh_pg_db: str
) -> None:
    dump = ok(ssh_source, "cd / && sudo -n -u postgres pg_dumpall")
    assert f"CREATE DATABASE {fresh_pg_db} " in dump
    listing = ok(ssh_target, "cd / && sudo -n -u postgres psql -X -At -c 'select datname from pg_database'")
    assert fresh_pg_db not in listing.split()


def test_pg_tcp_needs_scram_password(pg_source: servers.Postgres, pg_target: servers.Postgres) -> None:
    psql = [f"{servers.PG_BIN}/psql", "-X", "-At", "-c", "select current_setting('port')"]
    for pg in (pg_source, pg_target):
        env = {**os.environ, **pg.dsn_env()}
        res = subprocess.run(psql, env=env, capture_output=True, text=True, check=True)
        assert res.stdout.strip() == str(pg.port)
        env["PGPASSWORD"] = "wrong"
        bad = subprocess.run(psql, env=env, capture_output=True, text=True)
        assert bad.returncode != 0 and "password authentication failed" in bad.stderr
    assert pg_source.port != pg_target.port
    assert (
        pg_source.psql(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'postgres'"
        ).strip()
        == "t"
    )


def test_site_bind_is_per_host(ssh_source: servers.SshHost, ssh_target: servers.SshHost) -> None:
    name = f"marker-{uuid.uuid4().hex[:8]}.txt"
    with open(os.path.join(ssh_source.binds["/srv/site"], name), "w") as f:
        f.write("hello from source\n")
    assert ok(ssh_source, f"cat /srv/site/{name}") == "hello from source\n"
    rc, _, _ = ssh_run(ssh_target, f"test -e /srv/site/{name}")
    assert rc == 1
    assert not os.path.exists(os.path.join(ssh_target.binds["/srv/site"], name))


def test_sftp_into_bound_dir(ssh_target: servers.SshHost) -> None:
    transport = paramiko.Transport((ssh_target.address, ssh_target.port))
    try:
        transport.connect(
            username="root", pkey=paramiko.Ed25519Key.from_private_key_file(ssh_target.key_file)
        )
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        with sftp.open("/srv/site/uploaded.bin", "wb") as f:
            f.write(b"\x00\x01payload")
    finally:
        transport.close()
    with open(os.path.join(ssh_target.binds["/srv/site"], "uploaded.bin"), "rb") as g:
        assert g.read() == b"\x00\x01payload"


def test_mariadb_tcp_needs_password(mariadb_source: servers.MariaDB, mariadb_target: servers.MariaDB) -> None:
    for db in (mariadb_source, mariadb_target):
        res = subprocess.run(
            [
                "mariadb",
                "--no-defaults",
                *db.client_args(tcp=True),
                "-NBe",
                "select current_user(), @@port",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert res.stdout.split() == ["root@127.0.0.1", str(db.port)]
        nopw = subprocess.run(
            [
                "mariadb",
                "--no-defaults",
                "--protocol=tcp",
                "-h127.0.0.1",
                f"-P{db.port}",
                "-uroot",
                "-NBe",
                "select 1",
            ],
            capture_output=True,
            text=True,
        )
        assert nopw.returncode != 0 and "Access denied" in nopw.stderr


@pytest.mark.parametrize("name", ["source", "target"])
def test_default_mariadb_socket_reaches_own_server(request: pytest.FixtureRequest, name: str) -> None:
    host: servers.SshHost = request.getfixturevalue(f"ssh_{name}")
    db: servers.MariaDB = request.getfixturevalue(f"mariadb_{name}")
    # Debian's /etc/mysql/my.cnf points at /run/mysqld/mysqld.sock; root gets in via unix_socket.
    assert ok(host, "mariadb -NBe 'select @@port'").strip() == str(db.port)
    assert ok(host, "mariadb --no-defaults -uroot -NBe 'select @@port'").strip() == str(db.port)


def test_mysqldump_through_bound_socket(
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    mariadb_source: servers.MariaDB,
    fresh_mariadb_db: str,
) -> None:
    mariadb_source.sql(
        f"CREATE TABLE `{fresh_mariadb_db}`.t (x int); INSERT INTO `{fresh_mariadb_db}`.t VALUES (42)"
    )
    pw = mariadb_source.root_password
    dump = ok(
        ssh_source,
        f"mysqldump --no-defaults -uroot -p{pw} --single-transaction --databases {fresh_mariadb_db}",
    )
    assert "INSERT INTO `t` VALUES\n(42);" in dump  # mysqldump 10.11.19 breaks the line here
    rc, _, err = ssh_run(ssh_target, f"mysqldump --no-defaults -uroot --databases {fresh_mariadb_db}")
    assert rc != 0 and "Unknown database" in err


def test_start_stop_leaves_nothing(tmp_path: os.PathLike[str]) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root: run ./scripts/test as root, as CI does")
    src, mnt = os.path.join(tmp_path, "src"), os.path.join(tmp_path, "mnt")
    os.mkdir(src)
    with open(os.path.join(src, "f"), "w") as f:
        f.write("inside\n")
    host = servers.start_sshd("scratch", binds={mnt: src})
    pid, port, d = host.pid, host.port, host.dir
    assert ok(host, f"cat {mnt}/f") == "inside\n"
    assert os.listdir(mnt) == []  # the mount exists only in the sshd's namespace
    host.stop()
    assert host.proc is not None and host.proc.poll() is not None
    assert not os.path.exists(f"/proc/{pid}")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not os.path.exists(d)
