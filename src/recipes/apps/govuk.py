"""GOV.UK offsite backups (seed 004): duplicity + GPG collections in S3 of automysqlbackup's
``latest.tbz2`` (``govuk-datastore``) and of asset directories (``govuk-assets``).

The restore source is the existing duplicity collection, not our repository. The seed's steps,
and where each one went:

- ``apt-get install duplicity python-pip python-boto mysql-server`` / ``pip install s3cmd``:
  duplicity and GnuPG run on the controller (checked before anything runs, one line if
  missing); the host needs only ``mysql`` (datastore) or ``tar`` (assets).
- ``export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...`` / ``s3cmd ls``: the parameters
  ``aws_key_env`` / ``aws_secret_env`` name controller variables copied into duplicity's
  environment only; ``duplicity collection-status`` (logged) shows the bucket is reachable.
- ``gpg --allow-secret-key-import --import <key>`` / ``gpg --list-secret-keys``: the key is
  imported into a temporary ``GNUPGHOME`` on the controller (``gpg --batch --import``), never
  the user's keyring; the passphrase (``passphrase_env``) reaches duplicity as ``PASSPHRASE``
  in its environment only.
- ``duplicity restore --file-to-restore ... latest.tbz2 ... /tmp/latest.tbz2``: the same,
  into the private temp dir; the seed's "Error '[Errno 1] Operation not permitted'" came from
  restoring over /tmp itself; here the target's directory is private and the restored file
  must exist afterwards or the step fails.
- ``tar xvjf latest.tbz2`` / ``bunzip2 latest/foo.sql.bz2`` / ``sudo mysql < foo.sql``: the
  controller reads ``latest/``, picks the newest dump per database, and streams it bunzipped
  into ``mysql`` on the host after ``CREATE DATABASE IF NOT EXISTS``/``USE`` (the seed: "to the
  database name that the dump was taken from, creating it if it doesn't exist").
- Assets: "change the owner of /mnt/uploads/whitehall ... temporarily, and remove any files
  that already exist": the restore runs as root, refuses a non-empty target unless ``--force``
  (then it is moved aside, kept, and moved back if the restore fails), streams the tree in,
  then sets ``owner``.
- "revert all the manual actions": a manual step in every plan says what was reverted and how.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import attrs

from recipes.databases import mysql as mysql_db
from recipes.model import Command, sh
from recipes.ops import DuplicityCollection
from recipes.recipe import FieldError, absolute_path, env_name, param
from recipes.steps import Duplicity, ManualStep, MoveAside, Run, Step

SEED = "004_20f518da0d2ed088.txt"
UNPACK_DUMPS = "automysqlbackup"
UNPACK_TREE = "tree"
MYSQL_ERRORS = r"^ERROR"


def duplicity_url(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """attrs validator: a duplicity backend URL (``boto3+s3://``, ``s3://``, ``file://``...)."""
    if not re.fullmatch(r"[a-z0-9+]+://\S+", value or ""):
        raise FieldError(
            attribute, f"must be a duplicity URL such as boto3+s3://bucket/prefix/, got {value!r}"
        )


def relative_path(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """attrs validator: a path inside the collection (duplicity strips leading/trailing /)."""
    parts = value.strip("/").split("/")
    if not value.strip("/") or ".." in parts or "\n" in value or "\0" in value:
        raise FieldError(
            attribute, f"must be a path inside the collection such as mnt/uploads/whitehall/, got {value!r}"
        )


def key_id(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """attrs validator: a GnuPG key id or fingerprint (it becomes a duplicity argument)."""
    if value is not None and not re.fullmatch(r"(0x)?[0-9A-Fa-f]{8,40}", value):
        raise FieldError(attribute, f"must be a GnuPG key id or fingerprint (hex), got {value!r}")


def owner_spec(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """attrs validator: ``user`` or ``user:group`` (names or numbers)."""
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?", value):
        raise FieldError(attribute, f"must be user or user:group, got {value!r}")


def day_in(low: int, high: int) -> Any:
    """attrs validator: a day number from ``low`` to ``high``."""

    def check(_: Any, attribute: attrs.Attribute[Any], value: int) -> None:
        if not low <= value <= high:
            raise FieldError(attribute, f"must be a day from {low} to {high}, got {value}")

    return check


def _common() -> dict[str, Any]:
    """The parameters both recipes share (the collection and its keys)."""
    return {
        "source": param(
            "boto3+s3://govuk-offsite-backups-production/govuk-datastores/",
            "the duplicity collection (duplicity URL: boto3+s3://bucket/prefix/, file:///path)",
            validator=duplicity_url,
        ),
        "s3_endpoint_url": param(None, "S3 endpoint URL (duplicity --s3-endpoint-url); unset: AWS"),
        "aws_key_env": param(
            None,
            "controller environment variable holding the AWS access key id (given to duplicity only)",
            validator=env_name,
        ),
        "aws_secret_env": param(
            None,
            "controller environment variable holding the AWS secret access key (given to duplicity only)",
            validator=env_name,
        ),
        "gpg_key_file": param(
            "/etc/recipes/govuk-offsite-secret-key.asc",
            "armored GnuPG secret key on the controller (backup::assets::backup_private_gpg_key); "
            "imported into a temporary GNUPGHOME only",
            validator=absolute_path,
        ),
        "passphrase_env": param(
            "GOVUK_OFFSITE_PASSPHRASE",
            "controller environment variable holding the key's passphrase "
            "(backup::assets::backup_private_gpg_key_passphrase)",
            validator=env_name,
        ),
        "sign_key": param(
            None,
            "GnuPG key id: restore requires every file signed by it, backup signs with it "
            "(duplicity --sign-key); unset: GOV.UK's unsigned collections, read with a warning",
            validator=key_id,
        ),
        "encrypt_key": param(
            None,
            "backup (recipes run): the GnuPG key id the collection is encrypted to (duplicity --encrypt-key)",
            validator=key_id,
        ),
    }


@attrs.frozen
class DatastoreParams:
    """Parameters of ``govuk-datastore``."""

    source: str = _common()["source"]
    s3_endpoint_url: str | None = _common()["s3_endpoint_url"]
    aws_key_env: str | None = _common()["aws_key_env"]
    aws_secret_env: str | None = _common()["aws_secret_env"]
    gpg_key_file: str = _common()["gpg_key_file"]
    passphrase_env: str = _common()["passphrase_env"]
    sign_key: str | None = _common()["sign_key"]
    encrypt_key: str | None = _common()["encrypt_key"]
    file_to_restore: str = param(
        "data/backups/whitehall-mysql-backup-1.backend.publishing.service.gov.uk/var/lib/automysqlbackup/latest.tbz2",
        "automysqlbackup's latest.tbz2 inside the collection",
        validator=relative_path,
    )
    mysql: mysql_db.Params = param(
        mysql_db.Params(), "the target MySQL/MariaDB (host, port, user, password_env); unset: local socket"
    )
    databases: tuple[str, ...] = param(
        (), "databases whose dumps are loaded (restore) or made (backup); default: every one"
    )
    backup_dir: str = param(
        "/var/lib/automysqlbackup",
        "backup (recipes run): where the host keeps automysqlbackup's daily/, weekly/, monthly/, "
        "latest/ and latest.tbz2",
        validator=absolute_path,
    )
    weekly_day: int = param(
        6,
        "backup: the day of the week (1 Monday .. 7 Sunday) a weekly_ dump is kept too "
        "(automysqlbackup's DOWEEKLY)",
        validator=day_in(1, 7),
    )
    monthly_day: int = param(
        1,
        "backup: the day of the month a monthly_ dump is kept too (automysqlbackup's DOMONTHLY)",
        validator=day_in(1, 31),
    )


@attrs.frozen
class AssetsParams:
    """Parameters of ``govuk-assets``."""

    source: str = param(
        "boto3+s3://govuk-offsite-backups-production/assets-whitehall/",
        "the duplicity collection (duplicity URL: boto3+s3://bucket/prefix/, file:///path)",
        validator=duplicity_url,
    )
    s3_endpoint_url: str | None = _common()["s3_endpoint_url"]
    aws_key_env: str | None = _common()["aws_key_env"]
    aws_secret_env: str | None = _common()["aws_secret_env"]
    gpg_key_file: str = _common()["gpg_key_file"]
    passphrase_env: str = _common()["passphrase_env"]
    sign_key: str | None = _common()["sign_key"]
    encrypt_key: str | None = _common()["encrypt_key"]
    file_to_restore: str = param(
        "mnt/uploads/whitehall/", "the directory inside the collection", validator=relative_path
    )
    target: str = param(
        "/mnt/uploads/whitehall", "where the directory goes on the host", validator=absolute_path
    )
    owner: str | None = param(
        None,
        "user[:group] the restored files get (unset: the owners duplicity recorded)",
        validator=owner_spec,
    )


@attrs.frozen
class OffsiteRestoreOptions:
    """Options of a restore from a duplicity collection."""

    time: str | None = param(
        None, "duplicity --time (what --snapshot TIME sets); unset (--snapshot latest): the newest backup set"
    )


def collection(
    p: DatastoreParams | AssetsParams, unpack: str, o: OffsiteRestoreOptions | None
) -> DuplicityCollection:
    return DuplicityCollection(
        url=p.source,
        file_to_restore=p.file_to_restore,
        gpg_key_file=p.gpg_key_file,
        passphrase_env=p.passphrase_env,
        unpack=unpack,
        databases=p.databases if isinstance(p, DatastoreParams) else (),
        s3_endpoint_url=p.s3_endpoint_url,
        aws_key_env=p.aws_key_env,
        aws_secret_env=p.aws_secret_env,
        sign_key=p.sign_key,
        encrypt_key=p.encrypt_key,
        time=o.time if o else None,
    )


SYSTEM_DATABASES = ("information_schema", "performance_schema", "mysql", "sys")


ROTATION = {"daily": 6, "weekly": 35, "monthly": 150}
"""Days each period's dumps are kept (automysqlbackup 3.0's CONFIG_rotation_* defaults)."""


def automysqlbackup(p: DatastoreParams) -> Command:
    """automysqlbackup's layout on the host: one dump per database as ``daily/<db>/daily_…``,
    also ``weekly/<db>/weekly_…`` on ``weekly_day`` and ``monthly/<db>/monthly_…`` on
    ``monthly_day``, older ones rotated away (``ROTATION`` days); ``latest/`` (replaced whole)
    holds this run's dumps, then ``latest.tbz2`` of it. The MySQL password reaches
    mysql/mysqldump through the connection's 0600 defaults file."""
    d = sh(p.backup_dir)
    skip = "|".join(SYSTEM_DATABASES)
    listing = (
        f"printf '%s\\n' {sh(*p.databases)}"
        if p.databases
        else 'mysql "$1" --batch --skip-column-names --execute="SHOW DATABASES"'
    )
    keep = (
        f'if [ "$dow" = {p.weekly_day} ]; then '
        'mkdir -p -- "$d/weekly/$db" && cp -p -- "$f" "$d/weekly/$db/weekly_${db}_${stamp}.sql.bz2" && '
        'cp -p -- "$f" "$d/latest.new/weekly_${db}_${stamp}.sql.bz2" || return 1; fi; '
        f'if [ "$dom" = {p.monthly_day} ]; then '
        'mkdir -p -- "$d/monthly/$db" && cp -p -- "$f" "$d/monthly/$db/monthly_${db}_${stamp}.sql.bz2" && '
        'cp -p -- "$f" "$d/latest.new/monthly_${db}_${stamp}.sql.bz2" || return 1; fi; '
    )
    rotate = "".join(
        f'if [ -d "$d/{period}" ]; then find "$d/{period}" -type f -name "{period}_*.sql.bz2" '
        f"-mtime +{days} -delete || return 1; fi; "
        for period, days in ROTATION.items()
    )
    function = (
        "automysqlbackup_run() { "
        f"d={d}; stamp=$(date +%Y-%m-%d_%Hh%Mm); dow=$(date +%u); dom=$(date +%-d); "
        'rm -rf -- "$d/latest.new" && mkdir -p -- "$d/latest.new" || return 1; '
        f"dbs=$({listing}) || return 1; "
        'for db in $dbs; do case "$db" in ' + skip + ") continue;; esac; "
        'f="$d/latest.new/daily_${db}_${stamp}.sql.bz2"; '
        'mysqldump "$1" --single-transaction --routines --events --databases "$db" '
        '| bzip2 > "$f" || return 1; '
        'mkdir -p -- "$d/daily/$db" && cp -p -- "$f" "$d/daily/$db/" || return 1; '
        + keep
        + "done; "
        + rotate
        + 'rm -rf -- "$d/latest" && mv -- "$d/latest.new" "$d/latest" && '
        'tar --create --bzip2 --file="$d/latest.tbz2.new" --directory="$d" latest && '
        'mv -- "$d/latest.tbz2.new" "$d/latest.tbz2"; }; '
    )
    client = p.mysql.connection()._client("automysqlbackup_run")
    return Command(function + client.script, secrets=client.secrets)


REVERT = (
    "the seed's 'revert all the manual actions you've taken': (1) the owner of the assets files: {owner}; "
    "(2) the secret key: never in a keyring of yours; it lived in a temporary GNUPGHOME on the "
    "controller, removed with its gpg-agent however the restore ended. If you imported it by hand "
    "the seed's way (gpg --allow-secret-key-import --import), delete it from that keyring"
)


def revert_step(owner: str) -> ManualStep:
    return ManualStep(
        "revert-manual-actions",
        REVERT.format(owner=owner),
        shell="gpg --list-secret-keys; gpg --delete-secret-key <key id>",
        about="the seed's closing list, as done by the restore and what is left to you",
    )


# The seed's controller-side lines both GOV.UK recipes honour the same way (their SEED_MAP opens with them).
_SHARED_SEED_MAP: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "apt-get install duplicity python-pip python-boto mysql-server",
        "controller: duplicity.check_tools (duplicity, gpg, gpgconf here; nothing installed on the host)",
        ("tests/unit/test_govuk.py::test_a_missing_secret_variable_is_a_config_error",),
    ),
    (
        "export AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=…",
        "parameters aws_key_env, aws_secret_env: duplicity's environment only",
        (
            "tests/integration/test_govuk.py::test_missing_passphrase_variable_is_a_config_error",
            "tests/unit/test_govuk.py::test_duplicity_argv_holds_no_secret_and_strips_slashes",
        ),
    ),
    (
        "gpg --allow-secret-key-import --import <key>; gpg --list-secret-keys",
        "controller: a temporary GNUPGHOME, ended with gpgconf --kill all and removed",
        (
            "tests/integration/test_govuk.py::test_closing_the_workspace_kills_its_gpg_agent",
            "tests/integration/test_govuk.py::test_wrong_passphrase_is_one_line_and_changes_nothing",
        ),
    ),
    (
        "duplicity list-current-files s3://…",
        "controller: duplicity collection-status (logged)",
        ("tests/integration/test_govuk.py::test_datastore_restore_loads_the_newest_dump_of_each_database",),
    ),
)


class GovukDatastore:
    """Seed 004, datastores: automysqlbackup's latest.tbz2 from a duplicity collection into MySQL."""

    name: ClassVar[str] = "govuk-datastore"
    summary: ClassVar[str] = (
        "GOV.UK offsite datastores: automysqlbackup latest.tbz2 from a duplicity + GPG collection into MySQL"
    )
    seed: ClassVar[str] = SEED
    Params: ClassVar[type[Any]] = DatastoreParams
    RestoreOptions: ClassVar[type[Any]] = OffsiteRestoreOptions
    external_restore: ClassVar[bool] = True
    """Restores read a duplicity collection, not a snapshot of our repository."""
    SEED_MAP: ClassVar[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
        *_SHARED_SEED_MAP,
        (
            "duplicity restore --file-to-restore …/automysqlbackup/latest.tbz2 s3://… /tmp/latest.tbz2",
            "restore latest.tbz2 (--snapshot TIME is --time; sign_key refuses other signers)",
            (
                "tests/integration/test_govuk.py::test_datastore_restore_loads_the_newest_dump_of_each_database",
                "tests/integration/test_govuk.py::test_snapshot_time_restores_the_full",
            ),
        ),
        (
            "tar xvjf latest.tbz2; bunzip2 latest/foo.sql.bz2",
            "restore latest.tbz2 (controller: the newest dump per database, streamed)",
            (
                "tests/unit/test_govuk.py::test_one_dump_per_database_the_newest",
                "tests/unit/test_govuk.py::test_the_dumps_use_line_names_the_database",
            ),
        ),
        (
            "sudo mysql < foo.sql",
            "restore check-mysql, latest.tbz2 (the first ERROR stops the load)",
            ("tests/integration/test_govuk.py::test_a_failing_load_stops_and_cleans_up",),
        ),
        (
            "revert all the manual actions you've taken",
            "restore revert-manual-actions (manual: printed)",
            ("tests/unit/test_govuk.py::test_restore_plans_list_the_seeds_revert_steps_as_manual",),
        ),
        (
            "(GOV.UK's job) automysqlbackup, then duplicity to the bucket",
            "backup automysqlbackup (daily/ weekly/ monthly/, rotated), latest.tbz2 (signed; rows as facts)",
            (
                "tests/integration/test_govuk.py::test_run_adds_a_signed_incremental_that_plain_duplicity_restores",
            ),
        ),
    )
    """Each seed command, the step that runs or prints it, the test that proves it (docgen's table)."""

    def backup_steps(self, p: DatastoreParams) -> list[Step]:
        return [
            Run(
                "automysqlbackup",
                automysqlbackup(p),
                about="on the host, automysqlbackup's layout: daily/<db>/daily_<db>_<date>_<time>.sql.bz2 "
                "per database (mysqldump --single-transaction --routines --events --databases), a "
                "weekly_/monthly_ copy on weekly_day/monthly_day, rotation after "
                + ", ".join(f"{k} {v}" for k, v in ROTATION.items())
                + " days; this run's dumps in latest/, then latest.tbz2",
            ),
            Duplicity(
                "latest.tbz2",
                collection(p, UNPACK_DUMPS, None),
                Command(f"cat -- {sh(p.backup_dir + '/latest.tbz2')}"),
                restore=False,
                about="pulled to the controller (as GOV.UK's backup server pulled it), then duplicity "
                "full/incremental into the collection, encrypted to encrypt_key and signed with sign_key",
            ),
        ]

    def restore_steps(self, p: DatastoreParams, options: Any = None) -> list[Step]:
        conn = p.mysql.connection()
        return [
            Run(
                "check-mysql",
                conn.check_command(),
                about="the target MySQL answers before anything is fetched or decrypted",
            ),
            Duplicity(
                "latest.tbz2",
                collection(p, UNPACK_DUMPS, options),
                conn.restore_command(),
                error_pattern=MYSQL_ERRORS,
                about="duplicity restores automysqlbackup's latest.tbz2 on the controller; the newest "
                "dump of each database is streamed into mysql (the first error stops the load)",
            ),
            revert_step("nothing to revert: no file on the host changed owner"),
        ]

    def drill_dumps(self, p: DatastoreParams, facts: dict[str, str]) -> str | list[tuple[Any, Any]]:
        """For drills: per database the dump a restore loads (the newest, as ``duplicity.choose``
        picks it) as ``(dump object, count command)``: its facts are the rows ``recipes run``
        counted (the manifest's ``rows`` fact, JSON ``{dump file: {db.table: rows}}``), the
        command counts them in the restored MySQL. A string says why they cannot be compared."""
        import json

        from recipes import duplicity
        from recipes.errors import RecipeError
        from recipes.manifest import StoredObject

        if "rows" not in facts:
            return "the newest manifest records no row counts (made before recipes run counted them)"
        recorded = (facts.get("collection", ""), facts.get("collection_file", p.file_to_restore))
        if (recorded[0].rstrip("/"), recorded[1].strip("/")) != (
            p.source.rstrip("/"),
            p.file_to_restore.strip("/"),
        ):
            return f"the newest manifest is of {recorded[0]} {recorded[1]}, not the collection restored"
        try:
            rows: dict[str, dict[str, int]] = json.loads(facts["rows"])
            chosen = duplicity.choose([f"latest/{name}" for name in rows], p.databases)
        except (ValueError, RecipeError) as exc:
            return f"the manifest's row counts cannot be read: {exc}"
        count = p.mysql.connection().count_command
        out: list[tuple[Any, Any]] = []
        for dump in chosen:  # a dump without USE (no --databases) names tables without their database
            counted = {(k if "." in k else f"{dump.database}.{k}"): n for k, n in rows[dump.file].items()}
            obj = StoredObject(
                f"latest.tbz2 {dump.file}", "dump", "", 0, "", engine="mysql", facts={"rows": counted}
            )
            out.append((obj, count))
        return out

    def drill_checks(self, p: DatastoreParams) -> list[Any]:
        """After a drill's restore: the target MySQL answers (``SELECT 1``)."""
        from recipes.recipe import DrillCheck

        return [DrillCheck("mysql answers", p.mysql.connection().check_command(), about="SELECT 1")]


class GovukAssets:
    """Seed 004, assets: a directory from a duplicity collection onto the host."""

    name: ClassVar[str] = "govuk-assets"
    summary: ClassVar[str] = (
        "GOV.UK offsite assets: a directory from a duplicity + GPG collection onto the host"
    )
    seed: ClassVar[str] = SEED
    Params: ClassVar[type[Any]] = AssetsParams
    RestoreOptions: ClassVar[type[Any]] = OffsiteRestoreOptions
    external_restore: ClassVar[bool] = True
    SEED_MAP: ClassVar[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
        *_SHARED_SEED_MAP,
        (
            "duplicity restore --file-to-restore mnt/uploads/whitehall s3://… /mnt/uploads/whitehall",
            "restore assets (sign_key: another signer or none is exit 3)",
            (
                "tests/integration/test_govuk.py::test_assets_restore_streams_the_tree_and_refuses_a_non_empty_target",
                "tests/integration/test_govuk.py::test_sign_key_refuses_a_collection_signed_by_another_key_or_unsigned",
            ),
        ),
        (
            "change the owner of /mnt/uploads/whitehall … temporarily, and remove any files that exist",
            "restore target (--force: moved aside, back on failure), owner",
            (
                "tests/integration/test_govuk.py::test_assets_restore_streams_the_tree_and_refuses_a_non_empty_target",
            ),
        ),
        (
            "revert all the manual actions you've taken",
            "restore revert-manual-actions (manual: printed)",
            ("tests/unit/test_govuk.py::test_restore_plans_list_the_seeds_revert_steps_as_manual",),
        ),
        (
            "(GOV.UK's job) duplicity of the assets directory",
            "backup assets (signed with sign_key; the tar stream's files, bytes and sample as facts)",
            (
                "tests/integration/test_govuk.py::test_run_govuk_assets_writes_a_signed_collection_that_restores_with_sign_key",
                "tests/integration/test_drill_apps.py::test_govuk_assets_drill_compares_the_tree_with_the_run_manifest_then_fails_naming_a_deleted_file",
            ),
        ),
    )

    def backup_steps(self, p: AssetsParams) -> list[Step]:
        tar = sh("tar", "--create", "--file=-", "--numeric-owner", f"--directory={p.target}", ".")
        return [
            Duplicity(
                "assets",
                collection(p, UNPACK_TREE, None),
                Command(tar),
                restore=False,
                about="the target directory as a tar stream to the controller, unpacked there at "
                "file_to_restore, then duplicity full/incremental into the collection (encrypted, signed)",
            )
        ]

    def drill_tree(self, p: AssetsParams, facts: dict[str, str]) -> str | tuple[Any, str]:
        """For drills: the restored tree as ``(archive object, root on the host)``, its facts
        the ``tree`` fact ``recipes run`` recorded of the tar stream it pulled from the host
        (``facts.TarFacts``: files, bytes, sample), so a drill measures ``target`` against
        them. A string says why they cannot be compared (not recorded, another collection)."""
        import json

        from recipes.manifest import StoredObject

        if "tree" not in facts:
            return "the newest manifest records no tree facts (made before recipes run counted them)"
        recorded = (facts.get("collection", ""), facts.get("collection_file", ""))
        if (recorded[0].rstrip("/"), recorded[1].strip("/")) != (
            p.source.rstrip("/"),
            p.file_to_restore.strip("/"),
        ):
            return f"the newest manifest is of {recorded[0]} {recorded[1]}, not the collection restored"
        try:
            tree = json.loads(facts["tree"])
            if not isinstance(tree, dict) or not isinstance(tree.get("sample", {}), dict):
                raise ValueError("not an object of files, bytes and sample")
            int(tree.get("files", 0)), int(tree.get("bytes", 0))
        except (ValueError, TypeError) as exc:
            return f"the manifest's tree facts cannot be read: {exc}"
        return StoredObject("tree", "files", "", 0, "", facts=tree), p.target

    def drill_checks(self, p: AssetsParams) -> list[Any]:
        """After a drill's restore: every restored file and directory has ``owner`` (when set:
        the owner step ran); nothing without it (the owners are the archive's, compared nowhere)."""
        from recipes.recipe import DrillCheck

        if not p.owner:
            return []
        user, _, group = p.owner.partition(":")
        test = f"! -user {sh(user)}" + (f" -o ! -group {sh(group)}" if group else "")
        first = f"find {sh(p.target)} -xdev \\( {test} \\) -print -quit"
        script = (
            f't={sh(p.target)}; [ -d "$t" ] || {{ echo "$t is not a directory" >&2; exit 1; }}; '
            f"bad=$({first}) || exit 1; "
            f'[ -z "$bad" ] || {{ echo "$bad is not owned by {p.owner}" >&2; exit 1; }}'
        )
        return [DrillCheck("owner", Command(script), about=f"every file under target is {p.owner}'s")]

    def restore_steps(self, p: AssetsParams, options: Any = None) -> list[Step]:
        t = sh(p.target)
        extract = Command(
            f"mkdir -p {t} && tar --extract --file=- --numeric-owner --same-owner --preserve-permissions "
            f"--directory={t}"
        )
        steps: list[Step] = [
            MoveAside(
                "target",
                p.target,
                non_empty_only=True,
                about="(only with --force, over existing files) kept aside; moved back if the restore fails",
            ),
            Duplicity(
                "assets",
                collection(p, UNPACK_TREE, options),
                extract,
                must_be_empty=p.target,
                about="duplicity restores the directory on the controller; it is streamed as a tar "
                "into the target (numeric owners kept); like duplicity, refuses a non-empty target "
                "unless --force",
            ),
        ]
        if p.owner:
            steps.append(
                Run(
                    "owner",
                    Command(f"chown -R -- {sh(p.owner)} {t}"),
                    about="the restored files get their owner",
                )
            )
        owner = f"set to {p.owner} by the owner step" if p.owner else "the owners duplicity recorded, kept"
        steps.append(revert_step(owner))
        return steps
