"""Looker, customer-hosted (seed 000): the Looker user's home with its hidden directories, by the
seed's table, the files outside it, and the external MySQL database of a clustered Looker.

The seed: "you can create a backup of a basic Looker installation simply by making a copy of the
Looker user's home directory (including all normal and hidden subdirectories)"; "restoring a basic
Looker installation just requires restoring the files and starting up Looker". Looker is stopped
for the copy (step 1 of the keystore-independent procedure: ``cd looker; ./looker stop``) so its
internal database in ``looker/.db`` is read at rest, and started again afterwards.
"""

from __future__ import annotations

import re
import shlex
from typing import Any, ClassVar

import attrs

from recipes import fssnap
from recipes.databases import mysql as mysql_db
from recipes.model import Command, sh
from recipes.recipe import DrillCheck, FieldError, absolute_path, one_of, param, user_name
from recipes.steps import (
    SNAPSHOT_ROOT,
    Archive,
    Extract,
    FetchKeyFile,
    FsSnapshot,
    KeyFile,
    ManualStep,
    Quiesce,
    Run,
    Step,
)

# The seed's "Directory structure" table: what is never needed ("Backup Required: No").
ALWAYS_EXCLUDED = (
    "looker/.cache",  # "Temporary cache files"
    "looker/.tmp",  # "Temporary files"
    "looker/.snapshots",  # "A backup copy of the Looker jar and .db directory ... during updates"
    "looker/models",  # "Production models, copied from the source repository (usually GitHub)"
    "looker/.db/looker.lck",  # "some customers have reported issues if they include ... looker.lck"
    # Looker's startup script refuses to start while this marker exists: a restored copy
    # carrying it would never come up.
    "looker/.deploying",
    # A restored keystore-independent copy's key file (KEY_NAME): a secret, never in a snapshot.
    "looker/looker-backup.key",
)
LOG_DIR = "looker/log"  # "Maybe": "only needed if required by your retention policies"
SSL_DIR = "looker/.ssl"  # "Maybe": "if you store ... SSL certificates signed by a certificate authority"
DEPLOYING = ".deploying"
EXCLUDE_REASONS = {
    "looker/.cache": 'the seed\'s table: "Temporary cache files" (Backup Required: No)',
    "looker/.tmp": 'the seed\'s table: "Temporary files" (Backup Required: No)',
    "looker/.snapshots": "the seed's table: \"A backup copy of the Looker jar and .db directory ... "
    'during updates" (Backup Required: No)',
    "looker/models": "the seed's table: \"Production models, copied from the source repository "
    '(usually GitHub)" (Backup Required: No)',
    "looker/.db/looker.lck": 'the seed: "some customers have reported issues if they include ... looker.lck"',
    "looker/.deploying": "Looker's startup script refuses to start while it exists: a restored copy "
    "carrying it would never come up",
    "looker/looker-backup.key": "a keystore-independent backup's key file: a secret, kept in the key "
    "store, never in a snapshot",
    LOG_DIR: 'the seed\'s table, "Maybe": "only needed if required by your retention policies" '
    "(include_logs = false)",
    SSL_DIR: 'the seed\'s table, "Maybe": needed only for SSL certificates signed by a certificate '
    "authority (include_ssl = false)",
}
"""Why each path of ``LookerParams.excludes`` is left out, for runbooks."""
# The key file generate_keyfile_for_backup writes (seed step 3), and where a restore puts it.
KEY_NAME = "looker-backup.key"

QUIESCE_MODES = ("stop", "none")
# Characters an extra path may not hold: they would be glob syntax in tar's exclude patterns.
_GLOB = re.compile(r"[*?\[\]\\]")


def extra_path(_: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    """attrs validator: absolute paths below / without glob characters, no two with one object name."""
    absolute_path(_, attribute, value)
    seen: dict[str, str] = {}
    for item in value:
        if item.strip("/") == "":
            raise FieldError(attribute, "must name files or directories below /, got '/'")
        if _GLOB.search(item):
            raise FieldError(attribute, f"must not contain * ? [ ] or \\, got {item!r}")
        name = extra_object(item)
        if name in seen and seen[name] != item:
            raise FieldError(attribute, f"{seen[name]!r} and {item!r} would share the object {name}")
        seen[name] = item


def nonempty(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """attrs validator: a string that is not blank (None allowed: unset)."""
    if value is not None and not value.strip():
        raise FieldError(attribute, "must not be empty")


def host_names(_: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    """attrs validator: host names or aliases without blanks."""
    for item in value:
        if not item or any(c.isspace() for c in item):
            raise FieldError(attribute, f"must be host names without blanks, got {item!r}")


def extra_object(path: str) -> str:
    """The object holding one extra path: ``/etc/init.d/looker`` is ``extra/etc-init.d-looker.tar``."""
    return "extra/" + path.strip("/").replace("/", "-") + ".tar"


def only_member(name: str) -> tuple[str, ...]:
    """Exclude patterns that keep only ``name`` (and what is below it) of a directory's entries.

    The Archive step tars ``.`` of its root; to take one file of ``/etc/init.d`` and not its
    neighbours, every other first path component is excluded: names whose first differing
    character is another one (``[!l]*``, ``l[!o]*`` ...), longer names (``looker[!/]*``) and the
    shorter prefixes (``l``, ``lo`` ...). GNU tar matches exclusion wildcards across ``/``.
    """
    out = [f"{name[:i]}[!{name[i]}]*" for i in range(len(name))]
    out.append(f"{name}[!/]*")
    out += [name[:i] for i in range(1, len(name))]
    return tuple(out)


@attrs.frozen
class LookerParams:
    """Parameters of the ``looker`` recipe."""

    home: str = param(
        "/home/looker",
        "the Looker user's home directory (the seed: usually /home/looker); the app is in {home}/looker",
        validator=absolute_path,
        chain=True,
    )
    user: str = param("looker", "the OS user Looker runs as; ./looker runs as this user", validator=user_name)
    quiesce: str = param(
        "stop",
        "stop: ./looker stop before the copy and start after (only if it was running); none: copy it live",
        validator=one_of(*QUIESCE_MODES),
    )
    snapshot: str = param(
        "none",
        "filesystem snapshot while stopped, so Looker starts again at once: none, btrfs, lvm or auto",
        validator=one_of(*fssnap.KINDS),
    )
    include_logs: bool = param(
        False, "also back up looker/log (the seed: only if your retention policies require it)", content=True
    )
    include_ssl: bool = param(
        True,
        "back up looker/.ssl (the seed: needed when it holds more than the self-signed certificate)",
        content=True,
    )
    extra_paths: tuple[str, ...] = param(
        ("/etc/init.d/looker",),
        "files outside the home backed up too: the startup script, CA-signed SSL certificates",
        validator=extra_path,
        content=True,
    )
    nodes: tuple[str, ...] = param(
        (),
        "the other hosts of a Looker cluster: stopped before the copy, started after",
        validator=host_names,
    )
    health_check: str = param(
        "./looker status",
        "command run as user in {home}/looker after a restore; exit 0 means Looker is up",
        validator=nonempty,
    )
    mysql: bool | mysql_db.Params = param(
        False, "the external MySQL database of a clustered Looker: a table (host, port, user, ...)"
    )
    keystore_independent: bool = param(
        False,
        "make a keystore-independent backup (seed steps 1-5): needs master_key_file and key_store",
        content=True,
    )
    master_key_file: str | None = param(
        None,
        "path on the host of the CMK file (given to Looker as LKR_MASTER_KEY_FILE)",
        validator=absolute_path,
    )
    key_store: str | None = param(
        None,
        "fsspec URL where the generated backup key file is stored, apart from the repository",
        validator=nonempty,
    )

    def __attrs_post_init__(self) -> None:
        if self.keystore_independent and self.quiesce != "stop":
            raise ValueError(
                'keystore_independent = true needs quiesce = "stop": the seed\'s step 1 stops Looker '
                "before the key file is made"
            )
        if self.keystore_independent and (self.master_key_file is None or self.key_store is None):
            missing = " and ".join(n for n in ("master_key_file", "key_store") if getattr(self, n) is None)
            raise ValueError(
                f"keystore_independent = true needs {missing}: set the CMK file's path on the host "
                "and an fsspec URL apart from the repository for the backup key file"
            )

    @property
    def key_dest(self) -> str:
        """Where a restore of a keystore-independent snapshot puts the key file (0600, user's)."""
        return f"{self.app}/{KEY_NAME}"

    @property
    def app(self) -> str:
        """``{home}/looker``, where ``./looker`` runs."""
        return f"{self.home.rstrip('/')}/looker"

    def excludes(self) -> tuple[str, ...]:
        """The seed's "No" rows, plus the "Maybe" rows the parameters leave out."""
        out = list(ALWAYS_EXCLUDED)
        if not self.include_logs:
            out.append(LOG_DIR)
        if not self.include_ssl:
            out.append(SSL_DIR)
        return tuple(out)

    def my(self) -> mysql_db.Connection | None:
        if self.mysql is False:
            return None
        return mysql_db.Connection() if self.mysql is True else self.mysql.connection()


def in_app(p: LookerParams, body: str) -> Command:
    """``body`` run in ``{home}/looker`` where ``$as`` runs a command as ``user`` with HOME={home}.

    Looker's script works in ``$HOME/looker``, so HOME must be the Looker home whoever logs in:
    logged in as the user it runs directly, as anyone else (root) through ``sudo -n -u user``.
    """
    u = shlex.quote(p.user)
    return Command(
        f"cd {sh(p.app)} && "
        f'if [ "$(id -un)" = {u} ]; then as=(env); else as=(sudo -n -u {u} -- env); fi && {body}'
    )


def looker(p: LookerParams, *args: str) -> str:
    """The shell words running ``./looker ARGS`` inside ``in_app``."""
    return f'"${{as[@]}}" HOME={sh(p.home)} {sh("./looker", *args)}'


def still_running(p: LookerParams, why: str) -> str:
    """Shell: fail with ``why`` when ./looker status says Looker runs."""
    return f"if {looker(p, 'status')} >/dev/null; then echo {sh('looker: ' + why)} >&2; exit 1; fi"


class Looker:
    """Seed 000: the Looker home and its hidden directories by the seed's table, stopped, plus MySQL."""

    name: ClassVar[str] = "looker"
    summary: ClassVar[str] = (
        "Looker (customer-hosted): the Looker user's home by the seed's table, stopped, plus cluster MySQL"
    )
    seed: ClassVar[str] = "000_2684c6cf9cff883a.txt"
    Params: ClassVar[type[Any]] = LookerParams

    def exclude_reasons(self, p: LookerParams) -> dict[str, str]:
        """Why each path of the home is left out, for runbooks."""
        return {path: EXCLUDE_REASONS[path] for path in p.excludes() if path in EXCLUDE_REASONS}

    def roles(self, p: LookerParams) -> dict[str, tuple[str, ...]]:
        """``nodes``: the other hosts of a cluster, as ``--host`` takes them."""
        return {"nodes": p.nodes}

    def backup_steps(self, p: LookerParams) -> list[Step]:
        steps: list[Step] = [self._deploying(p)]
        if p.nodes:
            steps.append(self._deploying(p, "nodes"))
        if p.quiesce == "stop":
            if p.nodes:
                # "make sure to stop every node before proceeding": the nodes first, then main.
                steps += self._stop(p, "nodes", "looker-nodes")
            steps += self._stop(p, "main", "looker")
        if p.keystore_independent:
            steps.append(self._key_file(p))
        if (my := p.my()) is not None:
            dump = mysql_db.dump(my)
            steps.append(
                attrs.evolve(
                    dump,
                    about='the seed: "Clustered Lookers store their application configuration, user '
                    "accounts, and other data in an external MySQL database ... creating a backup of "
                    f'this database at the same time as the Looker application": {dump.about}',
                )
            )
        root = p.home
        if p.snapshot != "none":
            if p.quiesce != "stop":
                from recipes.errors import ConfigError

                raise ConfigError(
                    f"looker: snapshot={p.snapshot} needs quiesce=stop (the snapshot is taken while "
                    "Looker is stopped, which is what makes it consistent)"
                )
            steps.append(
                FsSnapshot(
                    "home",
                    p.home,
                    p.snapshot,
                    release="start looker",
                    also_release=(("start looker-nodes", "nodes"),) if p.nodes else (),
                    about=f"{p.snapshot} snapshot of {p.home} while Looker is stopped"
                    + (" and its MySQL dump is taken" if p.my() is not None else "")
                    + "; Looker starts again at once (every node) and the archive reads the snapshot",
                )
            )
            root = SNAPSHOT_ROOT
        steps.append(
            Archive(
                root=root,
                from_snapshot=p.snapshot != "none",
                excludes=p.excludes(),
                about="the seed: \"a copy of the Looker user's home directory (including all normal "
                'and hidden subdirectories)", without the rows its table marks "No"'
                + ("" if p.include_logs else " and looker/log")
                + ("" if p.include_ssl else " and looker/.ssl")
                + " (and never looker/.deploying)",
            )
        )
        steps += [self._extra_archive(path) for path in p.extra_paths]
        return steps

    def drill_checks(self, p: LookerParams) -> list[DrillCheck]:
        """After a drill's restore: Looker answers ``./looker status`` and the health_check."""
        return [
            DrillCheck("looker status", in_app(p, looker(p, "status")), about="./looker status says running"),
            DrillCheck(
                "health_check",
                in_app(p, f'"${{as[@]}}" HOME={sh(p.home)} bash -c {sh(p.health_check)}'),
                about=f"health_check as {p.user} in {p.app}",
            ),
        ]

    def restore_steps(self, p: LookerParams, options: Any = None) -> list[Step]:
        installed = f"test -e {sh(p.app + '/looker')} && "
        steps: list[Step] = [
            Quiesce(
                name="looker",
                check=Command(installed + in_app(p, looker(p, "status") + " >/dev/null").script),
                stop=in_app(p, looker(p, "stop")),
                start=in_app(p, f"{{ {looker(p, 'status')} >/dev/null || {looker(p, 'start')}; }}"),
                about=f"stop Looker here if it runs (./looker stop as {p.user}); no Looker yet is fine; "
                "started again however the restore ends",
            ),
            Run(
                name="looker-stopped",
                command=Command(
                    f"test ! -e {sh(p.app + '/looker')} || {{ "
                    + in_app(
                        p,
                        still_running(p, "still running after ./looker stop: not restoring over a live home"),
                    ).script
                    + "; }"
                ),
                about="./looker status must say stopped before the home is written",
            ),
            Extract(
                root=p.home,
                owner=p.user,
                about=f'the seed: "restoring a basic Looker installation just requires restoring the '
                f'files": the home {p.home}',
            ),
        ]
        for path in p.extra_paths:
            parent, _, _ = path.rstrip("/").rpartition("/")
            steps.append(Extract(root=parent or "/", object=extra_object(path), about=f"put {path} back"))
        if (my := p.my()) is not None:
            steps.append(mysql_db.load(my))
        if p.keystore_independent:
            steps += self._fetch_key_file(p)
        steps += [
            Run(
                name="start-looker",
                command=in_app(p, looker(p, "start")),
                about=f'the seed: "and starting up Looker": ./looker start as {p.user} in {p.app}',
            ),
            Run(
                name="health-check",
                command=in_app(p, f'"${{as[@]}}" HOME={sh(p.home)} bash -c {sh(p.health_check)}'),
                about=f"health_check as {p.user} in {p.app} proves Looker came up",
            ),
        ]
        return steps

    @staticmethod
    def _stop(p: LookerParams, role: str, name: str) -> list[Step]:
        """Stop Looker on every host of ``role`` (only where it runs; started again however the
        backup ends, on the host it ran on), then check it is really down there."""
        nodes = ", ".join(p.nodes)
        where = f"on every node of the cluster (nodes: {nodes})" if role == "nodes" else "here"
        seed = (
            '"If Looker is clustered, make sure to stop every node before proceeding"'
            if role == "nodes"
            else '"Stop Looker: cd looker; ./looker stop"'
        )
        return [
            Quiesce(
                name=name,
                check=in_app(p, looker(p, "status") + " >/dev/null"),
                stop=in_app(p, looker(p, "stop")),
                start=in_app(p, f"{{ {looker(p, 'status')} >/dev/null || {looker(p, 'start')}; }}"),
                about=f"the seed: {seed}: ./looker stop as {p.user} in {p.app} {where} "
                "(only if ./looker status says it runs; started again however the backup ends)",
                role=role,
            ),
            Run(
                name=f"{name}-stopped",
                command=in_app(
                    p, still_running(p, "still running after ./looker stop: not reading a live home")
                ),
                about=f"./looker status must say stopped {where} before the home is read",
                role=role,
            ),
        ]

    @staticmethod
    def _key_file(p: LookerParams) -> KeyFile:
        """Seed steps 2-4 with Looker stopped: the CMK through LKR_MASTER_KEY_FILE (its path, never
        the key), a new key file, the KEK re-encrypted with it in .db; then the file goes to the
        key store and off the host."""
        assert p.master_key_file is not None and p.key_store is not None
        path = KeyFile.path_for(KEY_NAME)

        def lk(*args: str) -> Command:
            return in_app(
                p,
                f'"${{as[@]}}" HOME={sh(p.home)} LKR_MASTER_KEY_FILE={sh(p.master_key_file or "")} '
                + sh("./looker", *args),
            )

        return KeyFile(
            name=KEY_NAME,
            generate=(lk("generate_keyfile_for_backup", path), lk("keystore_independent_recrypt", path)),
            store=p.key_store,
            owner=p.user,
            about='the seed\'s "keystore-independent backup", Looker stopped: LKR_MASTER_KEY_FILE names '
            f"the CMK file {p.master_key_file}; ./looker generate_keyfile_for_backup, then "
            "./looker keystore_independent_recrypt re-encrypts the KEK in .db with the new key (before "
            "the copy); the key file goes encrypted to the key store, never into the repository",
        )

    @staticmethod
    def _fetch_key_file(p: LookerParams) -> list[Step]:
        """The key file of a keystore-independent snapshot onto the target, and what it is for."""
        assert p.key_store is not None
        return [
            FetchKeyFile(
                name=KEY_NAME,
                store=p.key_store,
                dest=p.key_dest,
                owner=p.user,
                about=f"the key file this snapshot's KEK was re-encrypted with, to {p.key_dest} (0600)",
            ),
            ManualStep(
                name="use-key-file",
                text='the seed: "To restore this keystore-independent backup, you will need the new key '
                f"file created earlier\": it is at {p.key_dest} (mode 0600, owner {p.user}). This copy's "
                "KEK is also encrypted with it, so Looker here does not need the original CMK: give this "
                "key file to Looker as the seed's Restoring backups page says (or to Looker when moving "
                "to a Looker-hosted instance), keep it secret, and remove it once Looker runs",
            ),
        ]

    @staticmethod
    def _deploying(p: LookerParams, role: str = "main") -> Run:
        """Refuse to stop a running Looker that its own script would not start again; else warn."""
        marker = sh(f"{p.app}/{DEPLOYING}")
        if p.quiesce == "stop":
            body = (
                f"if test -e {marker}; then "
                + still_running(
                    p,
                    f"{p.app}/{DEPLOYING} exists and Looker runs: its startup script would refuse "
                    "to start it again after the backup; back up after the deploy or remove the stale marker",
                )
                + f"; echo {sh(f'warning: {p.app}/{DEPLOYING} exists: left out of the snapshot')} >&2; fi"
            )
            about = (
                "a looker/.deploying marker makes Looker's startup script refuse to start: "
                "refuse to stop a running Looker while it exists (it would stay down); never copied"
            )
        else:
            body = (
                f"if test -e {marker}; then "
                f"echo {sh(f'warning: {p.app}/{DEPLOYING} exists: left out of the snapshot')} >&2; fi"
            )
            about = "a looker/.deploying marker is never copied (Looker would not start from the copy)"
        return Run(
            name="deploying" if role == "main" else "deploying-nodes",
            command=Command(f"test ! -e {sh(p.app)} || {{ {in_app(p, body).script}; }}"),
            about=about + (" (on every node)" if role == "nodes" else ""),
            role=role,
        )

    @staticmethod
    def _extra_archive(path: str) -> Archive:
        """One file or directory outside the home, as its own object (a full copy each time)."""
        parent, _, name = path.rstrip("/").rpartition("/")
        return Archive(
            root=parent or "/",
            excludes=only_member(name),
            object=extra_object(path),
            incremental=False,
            about=f'the seed: "Files outside of the Looker home directory, which should be added to '
            f'your backup": {path} (only it: the excludes leave out every other entry of {parent or "/"})',
        )
