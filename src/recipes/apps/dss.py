"""Dataiku DSS (seed 001): the data directory (DATA_DIR) with DSS stopped, plus Govern's PostgreSQL.

The seed's full backup is "Make sure you don't have any job running, then stop DSS:
``DATA_DIR/bin/dss stop``", ``tar`` of DATA_DIR, then ``DATA_DIR/bin/dss start``. Its "What Can
Be Excluded From The Backup" lists are the ``exclude`` categories below, and its warning "For
Govern nodes ... Each time you make a Govern backup, you should also ensure that you have a
matching PostgreSQL backup" is the Govern dump, taken while DSS is stopped.

Every DSS command runs as ``user`` through ``run_as`` (see ``RUN_AS``): directly when the SSH
login is that user, through ``sudo -n -u`` otherwise (root, or an admin allowed to).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from recipes import fssnap
from recipes.databases import postgresql as pg_db
from recipes.model import Command, sh
from recipes.recipe import DrillCheck, FieldError, absolute_path, one_of, param, user_name
from recipes.steps import (
    SNAPSHOT_ROOT,
    Archive,
    Extract,
    Fact,
    FsSnapshot,
    ManualStep,
    MoveAside,
    Quiesce,
    RefuseOlder,
    Run,
    Step,
)


@attrs.frozen
class Category:
    """One of the seed's "What Can Be Excluded From The Backup" lists: folders of DATA_DIR."""

    folders: tuple[str, ...]
    reason: str
    """The seed's words on why the folders can be left out."""


# The seed, "What Can Be Excluded From The Backup", section by section, folders in its order.
TEMPORARY = Category(
    ("tmp", "caches", "data-catalog"),
    "they only contain temporary data which can be rebuilt",
)
LOGS = Category(
    ("run", "jobs", "scenarios", "diagnosis"),
    "they only contain log data, which you might want to exclude from backup",
)
IGNORABLE = Category(
    ("exports", "prepared_bundles", "apinode-packages"),
    "data exports made by users, automation bundles already exported, apinode packages already exported",
)
DATA = Category(
    ("managed_datasets", "analysis_data", "saved_models"),
    "data built by DSS: it can generally be rebuilt, but caution should be exercised",
)
CATEGORIES: dict[str, Category] = {
    "temporary": TEMPORARY,
    "logs": LOGS,
    "ignorable": IGNORABLE,
    "data": DATA,
}
"""``exclude`` category -> the folders of DATA_DIR it leaves out."""


JOBS_INSTRUCTION = "Make sure you don't have any job running, then stop DSS"
"""The seed's words before ``DATA_DIR/bin/dss stop``."""
GOVERN_WARNING = (
    "Each time you make a Govern backup, you should also ensure that you have a matching PostgreSQL backup"
)


def categories(_: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    """attrs validator: every ``exclude`` item is one of the seed's categories."""
    for item in value:
        if item not in CATEGORIES:
            raise FieldError(
                attribute,
                f"unknown category {item!r}: valid categories are {', '.join(CATEGORIES)}",
            )


def one_line(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """attrs validator: a non-empty one-line command (it is quoted in one-line messages)."""
    if value is not None and (not value.strip() or "\n" in value or "\0" in value):
        raise FieldError(attribute, f"must be a non-empty command on one line, got {value!r}")


@attrs.frozen
class DssParams:
    """Parameters of the ``dss`` recipe."""

    data_dir: str = param(
        "/home/dataiku/dss_data",
        "the DSS data directory (DATA_DIR) backed up; it must exist",
        validator=absolute_path,
        chain=True,
    )
    install_dir: str | None = param(
        None,
        "the DSS installation directory (INSTALL_DIR); needed only to restore elsewhere",
        validator=absolute_path,
    )
    user: str = param("dataiku", "the account DSS runs as; every DSS command runs as it", validator=user_name)
    snapshot: str = param(
        "none",
        "filesystem snapshot while DSS is stopped: none, btrfs, lvm or auto",
        validator=one_of(*fssnap.KINDS),
    )
    jobs_check: str | None = param(
        None,
        "command run as user before the stop, exiting non-zero while jobs run (e.g. a dsscli "
        "or API query); unset: check by hand that no job runs",
        validator=one_line,
    )
    exclude: tuple[str, ...] = param(
        ("temporary",),
        "folders left out, by the seed's categories: temporary, logs, ignorable, data",
        validator=categories,
        content=True,
    )
    govern_postgres: bool | pg_db.Params = param(
        False,
        "Govern node: dump its PostgreSQL database too: a table (or true: local socket, whole cluster)",
    )
    include_config: bool = param(
        True,
        "also /etc/dataiku/<installid>/ and /etc/dataiku-security/<installid>/ when they exist",
        content=True,
    )
    etc_dir: str = param(
        "/etc",
        "where the dataiku and dataiku-security configuration folders live (include_config)",
        validator=absolute_path,
    )

    def excluded(self) -> tuple[str, ...]:
        """The folders of DATA_DIR left out, category by category in the seed's order."""
        return tuple(f for name, cat in CATEGORIES.items() if name in self.exclude for f in cat.folders)

    def govern(self) -> pg_db.Connection | None:
        if self.govern_postgres is False:
            return None
        if self.govern_postgres is True:
            return pg_db.Connection()
        return self.govern_postgres.connection()


MODES = ("pristine", "elsewhere")


@attrs.frozen
class DssRestoreOptions:
    """Options of a ``dss`` restore (``recipes restore dss --set mode=elsewhere``)."""

    mode: str = param(
        "pristine",
        "pristine: same machine, location and version; stop DSS, move the current DATA_DIR "
        "content aside (kept), extract, start. elsewhere: another machine, location or newer "
        "version; extract into an empty DATA_DIR, replay INSTALL_DIR/installer.sh -d DATA_DIR -u",
        validator=one_of(*MODES),
    )


# The seed's steps after the installer, for a data dir on another machine or location.
INTEGRATIONS = (
    "rebuild the Python environment (the seed: 'If you installed the data dir on a different machine "
    "or in a different location, you need to rebuild the Python environment'; see DSS's "
    "'Migrating the data directory' documentation)",
    "replay the R integration setup script, if this DSS used R",
    "replay the Hadoop integration setup script, if this DSS used Hadoop",
    "replay the Spark integration setup script, if this DSS used Spark",
)
VERSION_SED = r"""sed -n 's/.*"product_version"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p'"""


def run_as(user: str) -> str:
    """A shell function ``run_as ARGV...`` running ARGV as ``user``: directly when the login is
    that user (sudo would ask it for a password), else ``sudo -n -u`` from ``/`` (the login's
    home may be closed to the user)."""
    u = sh(user)
    return f'run_as() {{ if [ "$(id -un)" = {u} ]; then "$@"; else (cd / && sudo -n -u {u} -- "$@"); fi; }}; '


def fail(message: str) -> str:
    """Shell: print one line to stderr and exit 1 (the Run step's error line quotes it)."""
    return f"{{ echo {sh(message)} >&2; exit 1; }}"


class Dss:
    """Seed 001: stop DSS, tar DATA_DIR minus the chosen categories, dump Govern, start DSS."""

    name: ClassVar[str] = "dss"
    summary: ClassVar[str] = "Dataiku DSS: DATA_DIR with DSS stopped, plus the Govern PostgreSQL database"
    seed: ClassVar[str] = "001_700252c58385ca0c.txt"
    Params: ClassVar[type[Any]] = DssParams
    RestoreOptions: ClassVar[type[Any]] = DssRestoreOptions
    MODES: ClassVar[tuple[str, ...]] = MODES
    MODE_EXAMPLES: ClassVar[dict[str, dict[str, Any]]] = {"elsewhere": {"install_dir": "/opt/dataiku-dss"}}

    def dss(self, p: DssParams, verb: str) -> str:
        """``DATA_DIR/bin/dss VERB`` as the DSS user."""
        return f"{run_as(p.user)}run_as {sh(p.data_dir + '/bin/dss', verb)}"

    def preflight(self, p: DssParams) -> Run:
        """Before anything is stopped: DATA_DIR is a DSS data directory, and we can act as user."""
        d, u = p.data_dir, p.user
        where = "set data_dir to the DATA_DIR on this host (--set data_dir=PATH or [recipes.dss] data_dir)"
        script = (
            f"test -d {sh(d)} || {fail(f'DSS data directory {d} does not exist: {where}')}; "
            f"test -f {sh(d + '/install.ini')} || "
            f"{fail(f'{d} is not a DSS data directory (no install.ini): {where}')}; "
            f"id -u {sh(u)} >/dev/null 2>&1 || "
            f"{fail(f'user {u} does not exist on this host: set user to the account DSS runs as')}; "
            f"{run_as(u)}run_as true 2>/dev/null || "
            f"{fail(f'cannot run commands as {u}: log in as root or {u}, or allow sudo -n -u {u}')}"
        )
        return Run(
            name="check-data-dir",
            command=Command(script),
            about=f"DATA_DIR {d} must be a DSS data directory and {u} able to run its bin/dss; "
            "checked before anything is stopped (exit 1 with one line if not)",
        )

    def jobs(self, p: DssParams, check: str) -> Run:
        """``jobs_check`` as user while DSS runs; a non-zero exit refuses the backup, one line."""
        d = p.data_dir
        message = (
            f"jobs_check %s exited %s (%s): jobs are running or the check failed, so DSS was not "
            f"stopped and nothing was backed up; let the jobs finish (the seed: {JOBS_INSTRUCTION}) "
            "or fix jobs_check\\n"
        )
        script = (
            f"{run_as(p.user)}"
            f"if run_as {sh(d + '/bin/dss', 'status')} >/dev/null 2>&1; then "
            f"out=$(run_as bash -c {sh(f'cd {sh(d)} && {check}')} 2>&1 </dev/null); rc=$?; "
            'if [ "$rc" -ne 0 ]; then '
            "last=$(printf '%s\\n' \"$out\" | tr -d '\\r' | grep -v '^[[:space:]]*$' | tail -n 1); "
            f'printf {sh(message)} {sh(check)} "$rc" "${{last:-no output}}" >&2; exit 1; '
            "fi; fi"
        )
        return Run(
            name="no-running-jobs",
            command=Command(script),
            about=f"the seed: {JOBS_INSTRUCTION!r}: jobs_check runs as {p.user} in DATA_DIR while DSS "
            "runs (a stopped DSS runs no job); a non-zero exit refuses the backup before anything "
            "is stopped",
        )

    def version(self, p: DssParams) -> Fact:
        path = sh(p.data_dir + "/dss-version.json")
        return Fact(
            "dss_version",
            Command(f"{VERSION_SED} {path} | head -n 1"),
            about="product_version from DATA_DIR/dss-version.json: a restore refuses an older DSS",
        )

    def config_members(self, p: DssParams) -> str:
        """Shell printing ``dataiku/<installid>`` and ``dataiku-security/<installid>`` (relative to
        etc_dir) when they exist; installid is ``[general] installid`` of DATA_DIR/install.ini."""
        ini = sh(p.data_dir + "/install.ini")
        etc = sh(p.etc_dir)
        return (
            f"id=$(sed -n 's/^[[:space:]]*installid[[:space:]]*=[[:space:]]*//p' {ini} "
            "| head -n 1 | tr -d '\\r'); "
            f'for d in dataiku dataiku-security; do if [ -n "$id" ] && [ -d {etc}/"$d/$id" ]; then '
            f'echo "$d/$id"; fi; done'
        )

    def backup_steps(self, p: DssParams) -> list[Step]:
        steps: list[Step] = [self.preflight(p), self.version(p)]
        if p.jobs_check is None:
            steps.append(
                ManualStep(
                    "no-running-jobs",
                    f"the seed: {JOBS_INSTRUCTION!r}: DSS has no instance-wide list of running jobs "
                    "and no jobs_check is set, so check in DSS that no job runs (stopping DSS aborts them)",
                )
            )
        if p.jobs_check is not None:
            steps.append(self.jobs(p, p.jobs_check))
            before = "no job runs (jobs_check), then stop DSS"
        else:
            before = (
                f"the seed: {JOBS_INSTRUCTION!r}: no jobs_check is set, so check by hand in DSS "
                "that no job runs before this backup (stopping DSS aborts running jobs)"
            )
        steps.append(
            Quiesce(
                name="dss",
                check=Command(self.dss(p, "status")),
                stop=Command(self.dss(p, "stop")),
                start=Command(self.dss(p, "start")),
                about=f"{before}: `DATA_DIR/bin/dss stop` as {p.user} if it runs; "
                "`DATA_DIR/bin/dss start` again however the backup ends",
            )
        )
        if (conn := p.govern()) is not None:
            dump = pg_db.dump(conn, "govern")
            steps.append(
                attrs.evolve(
                    dump,
                    about=f"Govern database, while DSS is stopped (the seed: {GOVERN_WARNING!r}): "
                    + dump.about,
                )
            )
        root = p.data_dir
        if p.snapshot != "none":
            steps.append(
                FsSnapshot(
                    "data-dir",
                    p.data_dir,
                    p.snapshot,
                    release="start dss",
                    about=f"{p.snapshot} snapshot of DATA_DIR while DSS is stopped; DSS starts again "
                    "at once and the archive reads the read-only snapshot",
                )
            )
            root = SNAPSHOT_ROOT
        steps.append(
            Archive(
                root=root,
                excludes=p.excluded(),
                about=self.archive_about(p),
                from_snapshot=p.snapshot != "none",
            )
        )
        if p.include_config:
            steps.append(
                Archive(
                    root=p.etc_dir,
                    name="config",
                    object="config.tar",
                    incremental=False,
                    members=self.config_members(p),
                    about=f"configuration outside DATA_DIR: {p.etc_dir}/dataiku/<installid>/ and "
                    f"{p.etc_dir}/dataiku-security/<installid>/ when they exist (many installs have neither)",
                )
            )
        return steps

    def archive_about(self, p: DssParams) -> str:
        left_out = "; ".join(
            f"{name} ({', '.join(cat.folders)}: {cat.reason})"
            for name, cat in CATEGORIES.items()
            if name in p.exclude
        )
        return f"the seed: 'Compress your data directory': tar of DATA_DIR {p.data_dir}" + (
            f", leaving out {left_out}" if left_out else ", nothing left out"
        )

    def drill_checks(self, p: DssParams) -> list[DrillCheck]:
        """After a drill's restore: the restored DSS started and says so (``dss status``)."""
        return [DrillCheck("dss status", Command(self.dss(p, "status")), about="DATA_DIR/bin/dss status")]

    def restore_steps(self, p: DssParams, options: Any = None) -> list[Step]:
        o: DssRestoreOptions = options or DssRestoreOptions()
        d = p.data_dir
        dss = sh(d + "/bin/dss")
        if o.mode == "elsewhere" and not p.install_dir:
            from recipes.errors import ConfigError

            raise ConfigError(
                "dss restore --set mode=elsewhere needs install_dir (the DSS installation on the target "
                "whose installer.sh reattaches DATA_DIR): --set install_dir=PATH or [recipes.dss] install_dir"
            )
        pristine = o.mode == "pristine"
        version_file = sh(
            d + "/dss-version.json" if pristine else (p.install_dir or "") + "/dss-version.json"
        )
        probe = f"if [ -e {version_file} ]; then {VERSION_SED} {version_file} | head -n 1; fi"
        steps: list[Step] = [
            RefuseOlder(
                "dss-version",
                Command(probe),
                "dss_version",
                "DSS",
                hint="the seed: 'You can only restore a backup on a newer DSS version, not on an older one'",
                about="the target's DSS (DATA_DIR's dss-version.json for pristine, INSTALL_DIR's for "
                "elsewhere) must be the snapshot's version or newer",
                missing_ok=pristine,
            )
        ]
        if o.mode == "pristine":
            steps += [
                Quiesce(
                    name="dss",
                    check=Command(f"{run_as(p.user)}[ -x {dss} ] && run_as {dss} status >/dev/null 2>&1"),
                    stop=Command(f"{run_as(p.user)}run_as {dss} stop"),
                    start=Command(
                        f"{run_as(p.user)}run_as {dss} status >/dev/null 2>&1 || run_as {dss} start"
                    ),
                    about="the seed: 'If applicable, stop the currently running DSS'",
                ),
                MoveAside(
                    "data-dir",
                    d,
                    about="the seed: '... and move away the current content of the DATA_DIR' (kept "
                    "beside it; moved back if the restore fails)",
                ),
                Extract(
                    root=d,
                    must_be_empty=False,
                    about=f"the seed: 'Restore the backup': the files back into DATA_DIR {d}",
                ),
            ]
        else:
            steps.append(
                Extract(
                    root=d,
                    about=f"the seed: 'Restore the backup files' into an empty DATA_DIR {d}",
                )
            )
        steps += self._config_and_govern(p)
        if o.mode == "elsewhere":
            installer = sh((p.install_dir or "") + "/installer.sh")
            steps.append(
                Run(
                    "installer-upgrade",
                    Command(f"{run_as(p.user)}run_as {installer} -d {sh(d)} -u"),
                    about='the seed: \'Replay the installer in "upgrade" mode: this will "reattach" '
                    "the restored datadir to the installation directory'",
                )
            )
        steps.append(
            Run(
                name="start-dss",
                command=Command(self.start_unless_running(p)),
                about=f"the seed: 'Restart DSS': `DATA_DIR/bin/dss start` as {p.user}",
            )
        )
        if o.mode == "elsewhere":
            steps += [ManualStep(f"integration-{i}", text) for i, text in enumerate(INTEGRATIONS, 1)]
        return steps

    def exclude_reasons(self, p: DssParams) -> dict[str, str]:
        """Why each left-out folder may go (the seed's words per category), for runbooks."""
        return {
            f: f"the seed's {name!r} category: {cat.reason}"
            for name, cat in CATEGORIES.items()
            if name in p.exclude
            for f in cat.folders
        }

    def start_unless_running(self, p: DssParams) -> str:
        dss = sh(p.data_dir + "/bin/dss")
        return f"{run_as(p.user)}run_as {dss} status >/dev/null 2>&1 || run_as {dss} start"

    def _config_and_govern(self, p: DssParams) -> list[Step]:
        steps: list[Step] = []
        if p.include_config:
            steps.append(
                Extract(
                    root=p.etc_dir,
                    name="config",
                    object="config.tar",
                    must_be_empty=False,
                    incremental=False,
                    about=f"the configuration folders back under {p.etc_dir}",
                )
            )
        if (conn := p.govern()) is not None:
            load = pg_db.load(conn, "govern")
            steps.append(
                attrs.evolve(load, about=f"Govern database, the matching PostgreSQL backup: {load.about}")
            )
        return steps

    def drill_rewrites(self, p: DssParams) -> tuple[str, ...]:
        """For drills: DATA_DIR/run/ (when backed up), where the restored DSS writes its logs and
        pid files as it starts, so its archived files there are appended to."""
        return () if "run" in p.excluded() else (p.data_dir.rstrip("/") + "/run/",)
