"""PostgreSQL: ``pg_dumpall`` of the whole cluster and ``psql`` to load it back."""

from __future__ import annotations

import attrs

from recipes.databases import database_name, omit_unset
from recipes.model import Command, Secret, sh
from recipes.recipe import env_name, param, port_number
from recipes.steps import Dump, Load

ENGINE = "postgresql"
ERROR = r"(^|: )(ERROR|FATAL):"
# pg_dumpall always emits ``CREATE ROLE <name>;`` for every role, the superuser it ran as
# included, and a target cluster usually has some of them. psql runs with ON_ERROR_STOP, so
# the first real error stops the load and is reported with its line number; only these lines
# of the roles section (up to ``-- Databases``) are rewritten, on the same line so numbers stay
# true, into a block that tolerates an existing role. bash's ``read`` takes a pipe byte by
# byte, so ``cat`` gets the rest of the stream untouched and at full speed.
ROLES_FILTER = (
    "{ while IFS= read -r l || [ -n \"$l\" ]; do case \"$l\" in 'CREATE ROLE '*';') "
    "printf 'DO $recipes$BEGIN %s EXCEPTION WHEN duplicate_object THEN NULL; END$recipes$;\\n' \"$l\";; "
    "*) printf '%s\\n' \"$l\";; esac; [ \"$l\" = '-- Databases' ] && break; done; cat; }"
)


def quote_ident(name: str) -> str:
    """An SQL identifier in double quotes (PostgreSQL, SQLite)."""
    return '"' + name.replace('"', '""') + '"'


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
    database: str | None = None
    """One database (``pg_dump --create``); unset means the whole cluster (``pg_dumpall``)."""

    def _client(self, program: str, *args: str) -> Command:
        words = [program]
        if self.host:
            words += [f"--host={self.host}"]
        if self.port:
            words += [f"--port={self.port}"]
        if self.host or self.user != "postgres":
            words += [f"--username={self.user}"]
        secrets: tuple[tuple[str, Secret], ...] = ()
        env = ""
        if self.password_env:
            # Read from stdin into a shell variable and handed to this one program only.
            secrets = (("PGPASSWORD", Secret(self.password_env)),)
            env = 'PGPASSWORD="$PGPASSWORD" '
        if self.host:
            words += ["--no-password"]
        script = env + sh(*words, *args)
        return Command(script, secrets=secrets, user=None if self.host else self.os_user)

    def dump_command(self) -> Command:
        if self.database is not None:
            # --create: the script makes the database and connects to it, like pg_dumpall's.
            return self._client("pg_dump", "--create", f"--dbname={self.database}")
        return self._client("pg_dumpall")

    def restore_command(self) -> Command:
        psql = self._client("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--dbname=postgres", "--file=-")
        if self.database is not None:
            return psql  # no CREATE ROLE in a pg_dump script: nothing to tolerate
        return attrs.evolve(psql, script=f"{ROLES_FILTER} | {psql.script}")

    def count_command(self, tables: tuple[str, ...]) -> Command:
        """For drills: ``<table>\t<rows>`` for each ``db.schema.table`` (as the dump's row facts
        name them; without a database part, ``database`` or ``postgres``), one ``SELECT count(*)``
        each, so a missing table is a missing line, not a failed command. Reads only."""
        by_db: dict[str, list[str]] = {}
        for key in tables:
            parts = key.split(".")
            if len(parts) >= 3:
                db, rest = parts[0], parts[1:]
            else:
                db, rest = self.database or "postgres", (["public", *parts] if len(parts) == 1 else parts)
            name = ".".join(quote_ident(p) for p in rest)
            literal = key.replace("'", "''")
            by_db.setdefault(db, []).append(f"SELECT '{literal}', count(*) FROM {name}")
        commands = [
            self._client(
                "psql", "-X", "-q", "-A", "-t", "-F", "\t", f"--dbname={db}", *(f"--command={q}" for q in sql)
            )
            for db, sql in by_db.items()
        ]
        first = commands[0] if commands else self._client("true")
        script = "; ".join(f"{c.script} 2>/dev/null" for c in commands) + "; true"
        return attrs.evolve(first, script=script)

    def check_command(self) -> Command:
        dbname = self.database or "postgres"
        return self._client("psql", "-X", "-A", "-t", f"--dbname={dbname}", "--command=SELECT 1")


@attrs.frozen
class Params:
    """PostgreSQL over TCP with a password; ``postgres = true`` uses the local socket instead.

    The one parameter table every recipe reuses for a PostgreSQL connection.
    """

    host: str | None = param(None, "server address; unset: local socket as the postgres user")
    port: int | None = param(None, "server port (default 5432)", validator=port_number)
    user: str = param("postgres", "role to connect as (a superuser, to dump every database)")
    password_env: str | None = param(
        None, "controller environment variable holding the password (sent on stdin)", validator=env_name
    )
    database: str | None = param(
        None, "one database to dump (pg_dump --create); unset: the whole cluster", validator=database_name
    )

    def connection(self) -> Connection:
        return Connection(
            host=self.host,
            port=self.port,
            user=self.user,
            password_env=self.password_env,
            database=self.database,
        )


omit_unset(Params, "database")


def dump(conn: Connection, name: str = "postgresql") -> Dump:
    """Dump every database, role and tablespace of the cluster, or the one ``conn.database``."""
    about = "pg_dumpall: every database, role and grant of the cluster"
    if conn.database is not None:
        about = f"pg_dump --create: database {conn.database} (its roles are not included)"
    # pg_dump writes a plain script only once it holds its snapshot and has read the catalog, so
    # its first byte means the dump is consistent from then on. pg_dumpall takes one snapshot per
    # database as it goes: it is waited for.
    return Dump(
        name=name,
        engine=ENGINE,
        command=conn.dump_command(),
        about=about,
        consistent_from_first_byte=conn.database is not None,
    )


def load(conn: Connection, name: str = "postgresql") -> Load:
    """Load a ``pg_dumpall`` script into the target cluster; the first real error stops it."""
    return Load(
        name=name,
        engine=ENGINE,
        command=conn.restore_command(),
        error_pattern=ERROR,
        check=conn.check_command(),
        count=conn.count_command,
        about=(
            "psql replays the pg_dumpall script into the target cluster, stopping at the first "
            "error (ON_ERROR_STOP); roles that already exist are kept"
            if conn.database is None
            else f"psql creates database {conn.database} from the pg_dump script, stopping at the "
            "first error (ON_ERROR_STOP; an existing database of that name is one)"
        ),
    )
