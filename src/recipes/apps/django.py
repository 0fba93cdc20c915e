"""A Django server (seed 002): the whole root minus an exclude list, plus database dumps.

The seed runs duply with ``SOURCE=/`` and a ``pre`` script that dumps PostgreSQL
(``pg_dumpall`` as ``postgres``) and each SQLite database (``.dump``). Here the
dumps stream straight into the repository instead of ``/var/backups``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from recipes.databases import mysql as mysql_db
from recipes.databases import postgresql as pg_db
from recipes.databases import sqlite as sqlite_db
from recipes.recipe import absolute_path, param
from recipes.steps import Archive, Extract, Step, under

# The seed's /etc/duply/main/exclude, in order.
DEFAULT_EXCLUDES = (
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/var/lock",
    "/var/run",
    "/lost+found",
    "/boot",
    "/tmp",
    "/var/tmp",
    "/media",
    "/mnt",
    "/var/cache",
    "/var/crash",
    "/var/swap",
    "/var/swapfile",
    "/var/swap.img",
    "/var/lib/mysql",
    "/var/lib/postgresql",
)
# "if you feel confident also exclude /bin, /lib, /sbin and /usr"
SYSTEM_EXCLUDES = ("/bin", "/lib", "/sbin", "/usr")

# The seed's reason for each exclude, in a few words (for runbooks).
_KERNEL = "the kernel's view of devices, processes and hardware, not files on disk"
_RUNTIME = "process ids and locks of running services, emptied at every boot"
EXCLUDE_REASONS = {
    "/dev": _KERNEL,
    "/proc": _KERNEL,
    "/sys": _KERNEL,
    "/run": _RUNTIME,
    "/var/lock": _RUNTIME,
    "/var/run": _RUNTIME,
    "/lost+found": "orphans fsck finds after filesystem corruption; a legacy directory",
    "/boot": "the boot loader and kernel, made by the installer",
    "/tmp": "temporary files, deleted at reboot",
    "/var/tmp": "temporary files",
    "/media": "mount points of removable and other disks",
    "/mnt": "mount points of removable and other disks",
    "/var/cache": "cached data: anything in it can be recreated",
    "/var/crash": "kernel crash dumps",
    "/var/swap": "swap space",
    "/var/swapfile": "swap space",
    "/var/swap.img": "swap space",
    "/var/lib/mysql": "live database files: the databases are dumped instead",
    "/var/lib/postgresql": "live database files: the databases are dumped instead",
    "/bin": "system programs, reinstalled with the system (exclude_system)",
    "/lib": "system libraries, reinstalled with the system (exclude_system)",
    "/sbin": "system programs, reinstalled with the system (exclude_system)",
    "/usr": "system programs, reinstalled with the system (exclude_system)",
}


@attrs.frozen
class DjangoParams:
    """Parameters of the ``django`` recipe."""

    root: str = param(
        "/",
        "the directory backed up (SOURCE=/ in the seed); every path is under it",
        validator=absolute_path,
        chain=True,
    )
    excludes: tuple[str, ...] = param(
        DEFAULT_EXCLUDES,
        "paths left out (the seed's exclude file); GNU tar wildcards: * ? [ match, \\ escapes",
        content=True,
    )
    extra_excludes: tuple[str, ...] = param(
        (), "more paths left out, added to excludes (wildcards as in excludes)", content=True
    )
    exclude_system: bool = param(False, "also leave out /bin /lib /sbin /usr", content=True)
    postgres: bool | pg_db.Params = param(
        False, "dump PostgreSQL with pg_dumpall: true (local socket) or a table"
    )
    sqlite: tuple[str, ...] = param(
        (),
        "SQLite databases to dump consistently (paths under root)",
        validator=absolute_path,
        content=True,
    )
    mysql: bool | mysql_db.Params = param(False, "dump MySQL/MariaDB: true (local socket) or a table")

    def all_excludes(self) -> tuple[str, ...]:
        extra = SYSTEM_EXCLUDES if self.exclude_system else ()
        return (*self.excludes, *extra, *self.extra_excludes)

    def pg(self) -> pg_db.Connection | None:
        if self.postgres is False:
            return None
        return pg_db.Connection() if self.postgres is True else self.postgres.connection()

    def my(self) -> mysql_db.Connection | None:
        if self.mysql is False:
            return None
        return mysql_db.Connection() if self.mysql is True else self.mysql.connection()


class Django:
    """Seed 002: whole root with an exclude list, PostgreSQL/SQLite/MySQL dumps, tested recovery."""

    name: ClassVar[str] = "django"
    summary: ClassVar[str] = "Django server: root minus excludes, plus PostgreSQL/SQLite/MySQL dumps"
    seed: ClassVar[str] = "002_32c4ab30ae1b088c.txt"
    Params: ClassVar[type[Any]] = DjangoParams

    def backup_steps(self, p: DjangoParams) -> list[Step]:
        steps: list[Step] = []
        if (pg := p.pg()) is not None:
            steps.append(pg_db.dump(pg))
        if (my := p.my()) is not None:
            steps.append(mysql_db.dump(my))
        steps += [sqlite_db.dump(under(p.root, db), sqlite_db.object_name(db)) for db in p.sqlite]
        steps.append(
            Archive(
                root=p.root,
                excludes=p.all_excludes(),
                about=f"everything under {p.root} except the excludes",
            )
        )
        return steps

    def exclude_reasons(self, p: DjangoParams) -> dict[str, str]:
        """The seed's reason for each excluded path, for runbooks (extra_excludes: yours)."""
        return {
            path: EXCLUDE_REASONS.get(path, "extra_excludes in the configuration")
            for path in p.all_excludes()
        }

    def drill_rewrites(self, p: DjangoParams) -> tuple[str, ...]:
        """Each SQLite file is rebuilt from its dump after the files are extracted."""
        return tuple(under(p.root, db) for db in p.sqlite)

    def restore_steps(self, p: DjangoParams, options: Any = None) -> list[Step]:
        steps: list[Step] = [Extract(root=p.root, about=f"put the files back under {p.root}")]
        if (pg := p.pg()) is not None:
            steps.append(pg_db.load(pg))
        if (my := p.my()) is not None:
            steps.append(mysql_db.load(my))
        # After the files: the dump replaces whatever copy of the live file the tar held.
        steps += [sqlite_db.load(under(p.root, db), sqlite_db.object_name(db)) for db in p.sqlite]
        return steps
