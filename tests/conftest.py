"""Session-scoped real servers for integration tests: two SSH "hosts", source and target.

Each host is an sshd on 127.0.0.1 running in its own private mount namespace, with
bind mounts so that inside its SSH sessions:

* ``/var/run/postgresql`` (really ``/run/postgresql``) is that host's PostgreSQL socket
  dir, holding ``.s.PGSQL.<tcp port>`` plus a symlink ``.s.PGSQL.5432`` to it, so a plain
  ``sudo -n -u postgres psql`` / ``pg_dumpall`` reaches that host's cluster;
* ``/run/mysqld`` is that host's MariaDB socket dir (``mysqld.sock``), so ``mysqldump`` /
  ``mariadb`` with no socket option reach that host's server (OS root: unix_socket auth,
  or ``-uroot -p<root_password>``);
* ``/srv/site`` is a fresh directory, ``ssh_<host>.binds["/srv/site"]`` on the controller.

From the controller every database is also reachable over TCP on 127.0.0.1 with a
password (PostgreSQL: scram-sha-256, ``pg.dsn_env()``; MariaDB: ``db.client_args()``).
Servers start lazily once per session and are stopped by PID at session end.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator

import pytest

try:
    from tests import servers
except ImportError:  # e.g. --import-mode=importlib without the repo root on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests import servers

SITE_PATH = "/srv/site"
_NEEDED = (
    "/usr/sbin/sshd",
    "ssh-keygen",
    "unshare",
    "runuser",
    "sudo",
    f"{servers.PG_BIN}/initdb",
    "mariadbd",
    "mariadb-install-db",
    "mariadb",
)


def _require_servers() -> None:
    """Fail (never skip) unless running as root with the server binaries installed.

    A test that skips because a server is missing would hide a broken CI; the README's
    test command (scripts/test) installs everything these need.
    """
    if os.geteuid() != 0:
        pytest.fail("integration servers need root: run ./scripts/test as root")
    missing = [tool for tool in _NEEDED if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"integration servers need {', '.join(missing)}: run ./scripts/install-test-deps")


def _postgres() -> Iterator[servers.Postgres]:
    """Yield a cluster on a free TCP port whose socket dir also answers as port 5432."""
    _require_servers()
    pg = servers.start_postgres(tcp=True, socket_alias_port=5432)
    try:
        yield pg
    finally:
        pg.stop()


def _mariadb() -> Iterator[servers.MariaDB]:
    """Yield a MariaDB server on a free TCP port plus its own socket dir."""
    _require_servers()
    db = servers.start_mariadb()
    try:
        yield db
    finally:
        db.stop()


def _host(name: str, pg: servers.Postgres, db: servers.MariaDB) -> Iterator[servers.SshHost]:
    """Yield an sshd whose sessions see pg's and db's sockets and a fresh /srv/site."""
    site = tempfile.mkdtemp(prefix=f"site-{name}-")
    os.chmod(site, 0o755)
    try:
        host = servers.start_sshd(
            name,
            binds={
                "/var/run/postgresql": pg.socket_dir,
                "/run/mysqld": db.socket_dir,
                SITE_PATH: site,
            },
        )
        try:
            yield host
        finally:
            host.stop()
    finally:
        shutil.rmtree(site, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_source() -> Iterator[servers.Postgres]:
    """PostgreSQL 15 cluster of host "source"."""
    yield from _postgres()


@pytest.fixture(scope="session")
def pg_target() -> Iterator[servers.Postgres]:
    """PostgreSQL 15 cluster of host "target"."""
    yield from _postgres()


@pytest.fixture(scope="session")
def mariadb_source() -> Iterator[servers.MariaDB]:
    """MariaDB server of host "source"."""
    yield from _mariadb()


@pytest.fixture(scope="session")
def mariadb_target() -> Iterator[servers.MariaDB]:
    """MariaDB server of host "target"."""
    yield from _mariadb()


@pytest.fixture(scope="session")
def ssh_source(pg_source: servers.Postgres, mariadb_source: servers.MariaDB) -> Iterator[servers.SshHost]:
    """sshd of host "source" (root, key auth) seeing pg_source, mariadb_source, its /srv/site."""
    yield from _host("source", pg_source, mariadb_source)


@pytest.fixture(scope="session")
def ssh_target(pg_target: servers.Postgres, mariadb_target: servers.MariaDB) -> Iterator[servers.SshHost]:
    """sshd of host "target" (root, key auth) seeing pg_target, mariadb_target, its /srv/site."""
    yield from _host("target", pg_target, mariadb_target)


@pytest.fixture
def fresh_pg_db(pg_source: servers.Postgres) -> Iterator[str]:
    """Create a uniquely named database on pg_source, yield its name, drop it afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_source.psql(f'CREATE DATABASE "{name}";')
    try:
        yield name
    finally:
        pg_source.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);')


@pytest.fixture
def fresh_mariadb_db(mariadb_source: servers.MariaDB) -> Iterator[str]:
    """Create a uniquely named database on mariadb_source, yield its name, drop it afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    mariadb_source.sql(f"CREATE DATABASE `{name}`")
    try:
        yield name
    finally:
        mariadb_source.sql(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[servers.S3Server]:
    """``rclone serve s3`` on 127.0.0.1 with its own random key pair, shared by the session."""
    server = servers.start_s3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: servers.S3Server) -> str:
    """A fresh, empty bucket on s3_server (thawed, in case an earlier test left it frozen)."""
    s3_server.thaw()
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.make_bucket(name)
    return name


@pytest.fixture(scope="session")
def btrfs() -> Iterator[servers.Btrfs]:
    """A 256 MiB btrfs on a loop device (subvolume ``data``), shared by the session.

    Hosts see it only through ``btrfs.mount_on(host, path)`` (their mount namespaces are private).
    """
    if os.geteuid() != 0:
        pytest.fail("a loop-device btrfs needs root: run ./scripts/test as root")
    missing = [tool for tool in ("losetup", "mkfs.btrfs", "btrfs", "mount") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"a loop-device btrfs needs {', '.join(missing)}: run ./scripts/install-test-deps")
    vol = servers.start_btrfs()
    try:
        yield vol
    finally:
        vol.stop()
