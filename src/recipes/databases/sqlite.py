"""SQLite: a consistent copy of a live database (``.backup``), dumped as SQL; loaded into a fresh file."""

from __future__ import annotations

import functools
import re

from recipes.model import Command, sh
from recipes.steps import Dump, Load

ENGINE = "sqlite"


def object_name(path: str) -> str:
    """A stable object name for a database path: ``/var/opt/p/p.db`` -> ``sqlite-var-opt-p-p.db``."""
    return "sqlite-" + re.sub(r"[^A-Za-z0-9._]+", "-", path.strip("/"))


def dump(path: str, name: str | None = None) -> Dump:
    """``.backup`` to a private temporary copy, then ``.dump`` that copy; a missing file fails."""
    db = sh(path)
    script = (
        f"test -f {db} || {{ echo 'sqlite database not found: '{db} >&2; exit 1; }}; "
        "t=$(mktemp -d) && trap 'rm -rf \"$t\"' EXIT && "
        f'sqlite3 -bail {db} ".backup \'$t/copy.db\'" && sqlite3 -bail "$t/copy.db" .dump'
    )
    return Dump(
        name=name or object_name(path),
        engine=ENGINE,
        command=Command(script),
        about=f"consistent copy of {path} with .backup, then .dump",
    )


def count_command(path: str, tables: tuple[str, ...]) -> Command:
    """For drills: ``<table>\t<rows>`` for each table of the database file, one ``count(*)``
    each (a missing table is a missing line). Opened read-only."""
    lines = []
    for table in tables:
        literal = table.replace("'", "''")
        name = '"' + table.replace('"', '""') + '"'
        query = f"SELECT '{literal}', count(*) FROM {name};"
        lines.append(f"sqlite3 -readonly -separator '\t' {sh(path)} {sh(query)} 2>/dev/null")
    return Command("; ".join([*lines, "true"]))


def load(path: str, name: str | None = None) -> Load:
    """Build a new database file from the dump and swap it in (keeping owner and mode)."""
    db = sh(path)
    new = sh(path + ".recipes-new")
    script = (
        f'mkdir -p "$(dirname {db})" && rm -f {new} && sqlite3 -bail {new} && '
        f"{{ test ! -e {db} || {{ chown --reference={db} {new} && chmod --reference={db} {new}; }}; }} && "
        f"rm -f {sh(path + '-wal')} {sh(path + '-shm')} {sh(path + '-journal')} && mv -f {new} {db}"
    )
    check = Command(f"sqlite3 -bail {db} 'PRAGMA integrity_check' | grep -qx ok")
    return Load(
        name=name or object_name(path),
        engine=ENGINE,
        command=Command(script),
        check=check,
        count=functools.partial(count_command, path),
        about=f"rebuild {path} from its dump",
    )
