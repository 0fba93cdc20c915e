"""MySQL/MariaDB: ``mysqldump`` of every database (or one) with a 0600 defaults file removed afterwards."""

from __future__ import annotations

import attrs

from recipes.databases import database_name, omit_unset
from recipes.model import Command, Secret, sh
from recipes.recipe import env_name, param, port_number
from recipes.steps import Dump, Load

ENGINE = "mysql"
DUMP_OPTIONS = (
    "--all-databases",
    "--single-transaction",
    "--routines",
    "--events",
    "--flush-privileges",
)
# One database: its CREATE DATABASE and USE, without the server's accounts.
DATABASE_OPTIONS = ("--single-transaction", "--routines", "--events", "--databases")


@attrs.frozen
class Connection:
    """How to reach the server: the local socket as the OS user, or TCP with a password."""

    host: str | None = None
    """Server address; unset means the default local socket."""
    port: int | None = None
    user: str = "root"
    password_env: str | None = None
    """Controller environment variable holding the password (sent on stdin, never argv)."""
    database: str | None = None
    """One database (``mysqldump --databases``); unset means every database and the accounts."""

    def _client(self, program: str, *args: str) -> Command:
        lines = ["[client]"]
        fmt_args = []
        lines.append("user=%s")
        fmt_args.append(sh(self.user))
        if self.host:
            lines.append("host=%s")
            fmt_args.append(sh(self.host))
            lines.append("protocol=tcp")
        if self.port:
            lines.append("port=%s")
            fmt_args.append(str(self.port))
        secrets: tuple[tuple[str, Secret], ...] = ()
        if self.password_env:
            # printf is a bash builtin: the password never becomes an argv entry.
            lines.append('password="%s"')
            fmt_args.append('"$p"')
            secrets = (("MYSQL_PASSWORD", Secret(self.password_env)),)
        fmt = "\\n".join(lines) + "\\n"
        script = (
            "f=$(mktemp) && trap 'rm -f \"$f\"' EXIT && "
            'p=${MYSQL_PASSWORD:-}; p=${p//\\\\/\\\\\\\\}; p=${p//\\"/\\\\\\"}; '
            f"printf '{fmt}' {' '.join(fmt_args)} > \"$f\" && unset p MYSQL_PASSWORD && "
            f'{program} --defaults-extra-file="$f" {sh(*args) if args else ""}'
        )
        return Command(script.rstrip(), secrets=secrets)

    def dump_command(self) -> Command:
        if self.database is not None:
            return self._client("mysqldump", *DATABASE_OPTIONS, self.database)
        return self._client("mysqldump", *DUMP_OPTIONS)

    def restore_command(self) -> Command:
        return self._client("mysql")

    def check_command(self) -> Command:
        return self._client("mysql", "--batch", "--execute=SELECT 1")

    def count_command(self, tables: tuple[str, ...]) -> Command:
        """For drills: ``<table>\t<rows>`` for each ``db.table`` (as the dump's row facts name
        them; without a database part, ``database``), one ``SELECT COUNT(*)`` each with
        ``--force``, so a missing table is a missing line, not a stopped command. Reads only."""
        sql = []
        for key in tables:
            db, _, table = key.rpartition(".")
            db = db or self.database or ""
            name = (f"`{db.replace('`', '``')}`." if db else "") + f"`{table.replace('`', '``')}`"
            literal = key.replace("\\", "\\\\").replace("'", "\\'")
            sql.append(f"SELECT '{literal}', COUNT(*) FROM {name};")
        command = self._client(
            "mysql", "--batch", "--skip-column-names", "--force", f"--execute={' '.join(sql)}"
        )
        return attrs.evolve(command, script=f"{{ {command.script}; }} 2>/dev/null; true")


@attrs.frozen
class Params:
    """MySQL/MariaDB; ``mysql = true`` uses the local socket as the login user.

    The one parameter table every recipe reuses for a MySQL/MariaDB connection.
    """

    host: str | None = param(None, "server address; unset: the default local socket")
    port: int | None = param(None, "server port (default 3306)", validator=port_number)
    user: str = param("root", "account to connect as")
    password_env: str | None = param(
        None, "controller environment variable holding the password (sent on stdin)", validator=env_name
    )
    database: str | None = param(
        None, "one database to dump (mysqldump --databases); unset: every database", validator=database_name
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


def dump(conn: Connection, name: str = "mysql") -> Dump:
    """Dump every database (or ``conn.database``) with routines and events in one consistent transaction."""
    about = "mysqldump --all-databases --single-transaction --routines --events"
    if conn.database is not None:
        about = f"mysqldump --single-transaction --routines --events --databases {conn.database}"
    return Dump(name=name, engine=ENGINE, command=conn.dump_command(), about=about)


def load(conn: Connection, name: str = "mysql") -> Load:
    """Replay the dump with the mysql client; it stops at the first error (non-zero exit)."""
    return Load(
        name=name,
        engine=ENGINE,
        command=conn.restore_command(),
        count=conn.count_command,
        # No check with the same login afterwards: a full restore (--flush-privileges) brings
        # back the source's accounts, so the target's old password may no longer work.
        about="mysql replays the dump (accounts and passwords become the source's)"
        if conn.database is None
        else f"mysql replays the dump of database {conn.database} (its tables are replaced)",
    )
