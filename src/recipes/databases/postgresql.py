"""PostgreSQL: ``pg_dumpall`` of the whole cluster and ``psql`` to load it back."""

from __future__ import annotations

import attrs

from recipes.model import Command, Secret, sh
from recipes.steps import Dump, Load

ENGINE = "postgresql"
# pg_dumpall always creates the role it runs as; on a fresh cluster that role exists.
BENIGN = (r'role "[^"]+" already exists',)
ERROR = r"(^|: )(ERROR|FATAL):"


@attrs.frozen
class Connection:
    """How to reach a cluster: the ``postgres`` OS user over the local socket, or TCP with a password."""

    host: str | None = None
    """Server address; unset means the local socket as the ``os_user`` through sudo."""
    port: int | None = None
    user: str = "postgres"
    """Database role to connect as."""
    password_env: str | None = None
    """Controller environment variable holding the password (sent on stdin, never argv)."""
    os_user: str = "postgres"
    """OS user that owns the cluster, used with the local socket."""

    def _client(self, program: str, *args: str) -> Command:
        words = [program]
        if self.host:
            words += [f"--host={self.host}"]
        if self.port:
            words += [f"--port={self.port}"]
        if self.host or self.user != "postgres":
            words += [f"--username={self.user}"]
        secrets: tuple[tuple[str, Secret], ...] = ()
        if self.password_env:
            secrets = (("PGPASSWORD", Secret(self.password_env)),)
        if self.host:
            words += ["--no-password"]
        script = sh(*words, *args)
        return Command(script, secrets=secrets, user=None if self.host else self.os_user)

    def dump_command(self) -> Command:
        return self._client("pg_dumpall")

    def restore_command(self) -> Command:
        return self._client("psql", "-X", "-q", "--dbname=postgres", "--file=-")

    def check_command(self) -> Command:
        return self._client("psql", "-X", "-A", "-t", "--dbname=postgres", "--command=SELECT 1")


def dump(conn: Connection, name: str = "postgresql") -> Dump:
    """Dump every database, role and tablespace of the cluster."""
    return Dump(
        name=name,
        engine=ENGINE,
        command=conn.dump_command(),
        about="pg_dumpall: every database, role and grant of the cluster",
    )


def load(conn: Connection, name: str = "postgresql") -> Load:
    """Load a ``pg_dumpall`` script into the target cluster; only known-benign errors pass."""
    return Load(
        name=name,
        engine=ENGINE,
        command=conn.restore_command(),
        error_pattern=ERROR,
        benign=BENIGN,
        check=conn.check_command(),
        about="psql replays the pg_dumpall script into the target cluster",
    )
