"""Deis v1 platform (seed 003): the store-gateway's buckets, the store-volume files, the database.

The seed backs up "Database backups and registry data" with ``s3cmd sync s3://db_wal .`` and
``s3cmd sync s3://registry .`` using the keys from ``deisctl config store get
gateway/accessKey`` / ``secretKey``; "Log data" with ``tar cpzf`` of ``/var/lib/deis/store``
("file changed as we read it" is a warning); "Database data" with ``docker exec deis-database
sudo -u postgres pg_dumpall``. Here the keys are secrets held in memory on the controller,
the buckets are copied by s3fs into the snapshot, and the dump's exit status is checked.

The restore follows the seed's order on a new cluster: install the platform, start only the
store components and ``router@1``, raise the router's ``bodySize``, read the NEW gateway keys,
create the buckets and put the objects back (the database fetches its base backup and WAL
from ``db_wal`` when it first starts), untar the logs with ``--same-owner``, ``deisctl start
platform``, then the controller re-writes keys, apps and domains to etcd through ``manage.py
shell`` as the seed's script does, and also each app's latest Config and every Certificate,
which the seed's script does not save (Deis v1 publishes ``/deis/config`` and ``/deis/certs``
only when those are saved); ``deis scale`` is left to the operator. ``--set only=database`` instead loads the
``pg_dumpall`` into the running database container.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from recipes.apps.dss import one_line
from recipes.databases import postgresql as pg_db
from recipes.errors import ConfigError
from recipes.model import Command, sh
from recipes.ops import Bucket
from recipes.recipe import FieldError, absolute_path, param
from recipes.steps import (
    Archive,
    CopyBucket,
    Dump,
    Extract,
    Fact,
    Load,
    ManualStep,
    ReadSecret,
    RestoreBucket,
    Run,
    Step,
)

STORE_COMPONENTS = ("store-monitor", "store-daemon", "store-metadata", "store-gateway", "store-volume")
ETCD_KEYS = ("/deis/builder/users", "/deis/domains", "/deis/services", "/deis/config", "/deis/certs")
"""What the controller's re-sync re-writes: recorded as a fact (key names only) for drills."""
_RESYNC_BLOCK = """try:
    from api.models import *
    import api.models
    if getattr(api.models, '_etcd_client', 0) is None:
        raise RuntimeError("api.models has no etcd client: its import could not reach etcd "
                           "('Cannot synchronize with etcd cluster'), so saves would publish nothing")
    [k.save() for k in Key.objects.all()]
    [a.save() for a in App.objects.all()]
    [d.save() for d in Domain.objects.all()]
    [a.config_set.latest().save() for a in App.objects.all() if a.config_set.exists()]
    [c.save() for c in Certificate.objects.all()]
except Exception as e:
    try:
        why = ' '.join(str(e).split())
    except Exception:
        why = repr(e)
    sys.stderr.write(
        'etcd re-sync failed (ETCD=%s): %s: %s: check that etcd answers there (the etcd parameter)\\n'
        % (os.environ.get('ETCD'), type(e).__name__, why))
    sys.stderr.flush()
    os._exit(1)
"""
RESYNC = f"import os, sys\nexec({_RESYNC_BLOCK!r})\n"
"""The seed's ``./manage.py shell <<EOF`` script, fed on stdin. Django 1.x's shell runs it
statement by statement (``code.interact``): one that raises prints its traceback and the shell
goes on, exiting 0 at the end of its input (and drops a block its input ends inside). So the
saves are one ``try``, run by a one-line ``exec`` (Python 2 and 3), whose failure says what
failed on one line and ends the process with ``os._exit(1)`` (IPython, which the shell prefers
when installed, would catch a SystemExit). Deis v1's ``api.models`` does not raise when etcd is
down at its import: it logs "Cannot synchronize with etcd cluster", keeps ``_etcd_client = None``
and connects no publishing handler, so every save succeeds and publishes nothing: the script
checks for that client first.

Beyond the seed's script, it also saves each app's latest Config and every Certificate. Deis
v1's ``App.save`` only makes ``/deis/services/<app>``: ``/deis/config/<app>/<key>`` is published
when a Config is saved and ``/deis/certs/<domain>/{cert,key}`` when a Certificate is, so the
seed's script (keys, apps, domains) leaves the apps' config and the TLS certificates out of
etcd though it says the cluster is "fully restored". Only the latest Config of an app is saved:
``Config.save`` merges the latest Config into the one saved (whose values win), so saving an
older one would publish, and store, its stale values."""
SCALE = (
    "the seed: 'The database keeps track of running application containers. Since this is a fresh "
    "cluster, it is advisable to deis scale <proctype>=0 and then deis scale back up to the desired "
    "number of containers for an application'"
)
ACCESS, SECRET = "gw_access", "gw_secret"
EXAMPLE_GATEWAY = "http://deis-store.local3.deisapp.com"


def gateway_url(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """attrs validator: an http(s) URL of the store-gateway."""
    if value is not None and not value.startswith(("http://", "https://")):
        raise FieldError(
            attribute, f"must be the gateway's URL, e.g. http://deis-store.example.com, got {value!r}"
        )


def bucket_names(_: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    """attrs validator: plain S3 bucket names."""
    for name in value:
        if not name or "/" in name or any(c.isspace() for c in name):
            raise FieldError(attribute, f"must be S3 bucket names such as db_wal, got {name!r}")


def endpoint(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """attrs validator: ``host:port``."""
    if value is not None and (":" not in value or any(c.isspace() or c in "'\"$`\\;" for c in value)):
        raise FieldError(attribute, f"must be host:port such as 172.17.8.100:4001, got {value!r}")


@attrs.frozen
class DeisParams:
    """Parameters of the ``deis`` recipe."""

    store_dir: str = param(
        "/var/lib/deis/store", "the store-volume filesystem (logs) tarred with -p", validator=absolute_path
    )
    gateway: str | None = param(
        None,
        "URL of the store-gateway's S3 API (e.g. http://deis-store.local3.deisapp.com)",
        validator=gateway_url,
    )
    buckets: tuple[str, ...] = param(
        ("db_wal", "registry"),
        "gateway buckets copied (database WAL and base backups, registry)",
        validator=bucket_names,
        content=True,
    )
    database_container: str = param("deis-database", "the database container", validator=one_line)
    controller_container: str = param("deis-controller", "the controller container", validator=one_line)
    etcd: str | None = param(
        None,
        "host:port of etcd for the re-sync (ETCD=); unset: the host's address and 4001",
        validator=endpoint,
    )
    dump_file: str = param(
        "/home/core/dump_all.sql",
        "where a full restore keeps the pg_dumpall on the host (the seed's `docker cp "
        "deis-database:/app/dump_all.sql .`); the database itself comes back from db_wal",
        validator=absolute_path,
    )
    deisctl: str = param("deisctl", "the deisctl command on the host", validator=one_line)
    docker: str = param("docker", "the docker command on the host", validator=one_line)


ONLY = ("all", "database")


def only_choice(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in ONLY:
        raise FieldError(attribute, f"must be one of {', '.join(ONLY)}, got {value!r}")


@attrs.frozen
class DeisRestoreOptions:
    """Options of a ``deis`` restore (``recipes restore deis --set only=database``)."""

    only: str = param(
        "all",
        "all: the seed's restore onto a new cluster; database: load the pg_dumpall into the "
        "running database container only",
        validator=only_choice,
    )


class Deis:
    """Seed 003: gateway buckets, store-volume tar and pg_dumpall; restore in the seed's order."""

    name: ClassVar[str] = "deis"
    summary: ClassVar[str] = "Deis v1 platform: store-gateway buckets, store-volume logs, the database dump"
    seed: ClassVar[str] = "003_2c7fd525059271cd.txt"
    Params: ClassVar[type[Any]] = DeisParams
    RestoreOptions: ClassVar[type[Any]] = DeisRestoreOptions
    SEED_MAP: ClassVar[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
        (
            "deisctl config store get gateway/accessKey, …/secretKey",
            "backup gw_access, gw_secret (secrets, memory only)",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
            ),
        ),
        (
            "s3cmd sync s3://db_wal . / s3cmd sync s3://registry .",
            "backup bucket-db_wal, bucket-registry (paged listing; content type and x-amz-meta-* kept)",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
                "tests/integration/test_deis.py::test_a_bucket_is_listed_a_page_at_a_time_while_it_is_copied",
                "tests/integration/test_deis.py::test_a_gateway_failing_mid_copy_fails_the_snapshot_and_lists_nothing",
            ),
        ),
        (
            "cd /var/lib/deis/store && sudo tar cpzf … ('file changed as we read it')",
            "backup store",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
            ),
        ),
        (
            "docker exec deis-database sudo -u postgres pg_dumpall > dump_all.sql",
            "backup database",
            ("tests/integration/test_deis.py::test_a_failing_pg_dumpall_fails_the_snapshot",),
        ),
        (
            "deisctl install platform",
            "restore install-platform",
            ("tests/unit/test_deis_plan.py::test_restore_runs_the_seeds_steps_in_the_seeds_order",),
        ),
        (
            "deisctl start store-monitor … store-volume",
            "restore start-store-monitor … start-store-volume",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
            ),
        ),
        (
            "deisctl start router@1",
            "restore start-router",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
            ),
        ),
        (
            "deisctl config router set bodySize=100m",
            "restore router-body-size",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
            ),
        ),
        (
            "deisctl config store get gateway/accessKey, …/secretKey (the new cluster)",
            "restore gw_access, gw_secret",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
            ),
        ),
        (
            "s3cmd mb s3://db_wal / s3cmd sync … s3://db_wal, s3://registry",
            "restore bucket-db_wal, bucket-registry",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
            ),
        ),
        (
            "cd /var/lib/deis/store && sudo tar -xzpf … --same-owner",
            "restore store",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
            ),
        ),
        (
            "docker cp deis-database:/app/dump_all.sql . (the text dump)",
            "restore database (kept at dump_file; --set only=database loads it)",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
            ),
        ),
        (
            "deisctl start platform",
            "restore start-platform",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
            ),
        ),
        (
            "nse deis-controller; export ETCD=…:4001; ./manage.py shell <<EOF … save() loop",
            "restore etcd_endpoint, etcd-resync (also each app's latest Config and every Certificate: "
            "beyond the seed's script, which leaves /deis/config and /deis/certs out)",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
                "tests/integration/test_deis.py::"
                "test_the_seeds_resync_leaves_config_and_certs_out_of_etcd_and_ours_puts_the_latest_back",
            ),
        ),
        (
            "deis scale <proctype>=0, then back up",
            "restore scale (manual: printed, not run)",
            (
                "tests/integration/test_deis.py::test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys",
            ),
        ),
        (
            "host_base = deis-store.<your domain> (the gateway's URL)",
            "parameter gateway: unset is exit 2 at plan, run and restore",
            (
                "tests/integration/test_deis.py::test_an_unset_gateway_is_a_usage_error_at_plan_and_run",
                "tests/unit/test_deis_plan.py::test_missing_gateway_is_a_config_error_before_any_step",
            ),
        ),
    )
    """Each seed command, the step that runs or prints it, the test that proves it (docgen's table)."""
    EXAMPLE_PARAMS: ClassVar[dict[str, Any]] = {"gateway": EXAMPLE_GATEWAY}
    """What the reference page's plans are drawn with (``gateway`` has no default)."""

    def _deisctl(self, p: DeisParams, *args: str) -> Command:
        return Command(sh(p.deisctl, *args))

    def _gateway(self, p: DeisParams) -> str:
        """The gateway URL; unset, a usage error (exit 2, one line) before any plan or command."""
        if p.gateway is None:
            raise ConfigError(
                "deis needs gateway, the store-gateway's S3 URL: --set gateway=http://deis-store.<domain> "
                "or [recipes.deis] gateway"
            )
        return p.gateway

    def _keys(self, p: DeisParams, new: bool = False) -> list[Step]:
        which = "the NEW cluster's" if new else "the"
        return [
            ReadSecret(
                name,
                self._deisctl(p, "config", "store", "get", f"gateway/{key}"),
                about=f"{which} gateway {key} (the seed: `deisctl config store get gateway/{key}`): "
                "held in memory on the controller only",
            )
            for name, key in ((ACCESS, "accessKey"), (SECRET, "secretKey"))
        ]

    def _etcd(self, p: DeisParams) -> Fact:
        where = sh(p.etcd) if p.etcd else "\"$(hostname -I | awk '{print $1}')\":4001"
        return Fact(
            "etcd_endpoint",
            Command(f"echo {where}"),
            about="etcd's host:port (the seed: 'the IP of the host machine which runs this container')",
        )

    def backup_steps(self, p: DeisParams) -> list[Step]:
        gateway = self._gateway(p)
        keys = " ".join(sh(k) for k in ETCD_KEYS)
        list_keys = (
            "if command -v etcdctl >/dev/null 2>&1; then "
            f"for k in {keys}; do ETCDCTL_API=2 etcdctl --endpoints=http://{{{{etcd_endpoint}}}} "
            'ls --recursive "$k" 2>/dev/null || true; done | sort | tr "\\n" " "; fi'
        )
        steps: list[Step] = [*self._keys(p), self._etcd(p)]
        steps.append(
            Fact(
                "etcd_keys",
                Command(list_keys),
                about="the etcd keys the restore's re-sync re-writes (names only; values may hold "
                "app config), when etcdctl is on the host, so a drill can compare",
            )
        )
        steps += [
            CopyBucket(
                Bucket(gateway, b, (ACCESS, SECRET)),
                about=f"the seed: `s3cmd sync s3://{b} .`: every object, streamed by s3fs with the keys",
            )
            for b in p.buckets
        ]
        steps.append(
            Archive(
                root=p.store_dir,
                object="store.tar",
                name="store",
                incremental=False,
                about=f"the seed: `cd {p.store_dir} && sudo tar cpzf ...`: 'file changed as we read it' "
                "(exit 1) is a recorded warning, any other tar error fails",
            )
        )
        dump = sh(p.docker, "exec", p.database_container, "sudo", "-u", "postgres", "pg_dumpall")
        steps.append(
            Dump(
                "database",
                pg_db.ENGINE,
                Command(dump),
                about="the seed: `docker exec deis-database sudo -u postgres pg_dumpall`; a non-zero exit "
                "fails the snapshot",
            )
        )
        return steps

    def _load(self, p: DeisParams) -> Load:
        psql = sh(
            p.docker,
            "exec",
            "-i",
            p.database_container,
            "sudo",
            "-u",
            "postgres",
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--dbname=postgres",
            "--file=-",
        )
        check = sh(
            p.docker,
            "exec",
            p.database_container,
            "sudo",
            "-u",
            "postgres",
            "psql",
            "-X",
            "-A",
            "-t",
            "--dbname=postgres",
            "--command=SELECT 1",
        )
        return Load(
            "database",
            pg_db.ENGINE,
            Command(f"{pg_db.ROLES_FILTER} | {psql}"),
            error_pattern=pg_db.ERROR,
            check=Command(check),
            about="the pg_dumpall into the running database container, stopping at the first error; "
            "roles that already exist are kept",
        )

    def restore_steps(self, p: DeisParams, options: Any = None) -> list[Step]:
        o: DeisRestoreOptions = options or DeisRestoreOptions()
        if o.only == "database":
            return [self._load(p)]
        gateway = self._gateway(p)
        steps: list[Step] = [
            Run(
                "install-platform",
                self._deisctl(p, "install", "platform"),
                about="the seed: `deisctl install platform`",
            ),
        ]
        steps += [
            Run(
                f"start-{c}",
                self._deisctl(p, "start", c),
                about=f"the seed: `deisctl start {c}` (only the store)",
            )
            for c in STORE_COMPONENTS
        ]
        steps += [
            Run("start-router", self._deisctl(p, "start", "router@1"), about="a router to reach the gateway"),
            Run(
                "router-body-size",
                self._deisctl(p, "config", "router", "set", "bodySize=100m"),
                about="the seed: the default maximum body size is too small for large uploads to the gateway",
            ),
            *self._keys(p, new=True),
        ]
        steps += [
            RestoreBucket(
                Bucket(gateway, b, (ACCESS, SECRET)),
                about=f"the seed: `s3cmd mb s3://{b}` (an existing bucket is fine), then `s3cmd sync` the "
                "objects back, before the database first starts and fetches from db_wal",
            )
            for b in p.buckets
        ]
        steps += [
            Extract(
                root=p.store_dir,
                object="store.tar",
                name="store",
                must_be_empty=False,
                incremental=False,
                options=("--same-owner",),
                about=f"the seed: `cd {p.store_dir} && sudo tar -xzpf ... --same-owner`",
            ),
            Load(
                "database",
                pg_db.ENGINE,
                Command(f"umask 077 && cat > {sh(p.dump_file)}"),
                about=f"the seed's text dump kept at {p.dump_file} on the host (the database itself "
                "comes back from db_wal when it first starts; `--set only=database` loads the dump)",
            ),
            Run(
                "start-platform",
                self._deisctl(p, "start", "platform"),
                about="the seed: `deisctl start platform`",
            ),
            self._etcd(p),
            Run(
                "etcd-resync",
                Command(
                    sh(p.docker, "exec", "-i", "-e")
                    + " ETCD={{etcd_endpoint}} "
                    + sh(p.controller_container, "sh", "-c", "cd /app && ./manage.py shell")
                ),
                stdin=RESYNC,
                about="the seed: in deis-controller, `cd /app; export ETCD=<host>:4001; ./manage.py shell` "
                "re-writes user keys, apps and domains to etcd; BEYOND the seed's script it also saves "
                "each app's latest Config and every Certificate, because Deis publishes /deis/config "
                "and /deis/certs only when those are saved (the seed's script would leave app config "
                "and TLS certificates out of etcd; an older Config is not saved: Config.save would "
                "merge and publish its stale values); a save that fails (etcd down) ends it "
                "with exit 1 and one line (Django's shell alone would go on and exit 0)",
            ),
            ManualStep(
                "scale",
                f"{SCALE}: for each app and proctype",
                shell="deis scale <proctype>=0 -a <app> && deis scale <proctype>=<n> -a <app>",
            ),
        ]
        return steps

    def drill_facts(self, p: DeisParams) -> list[tuple[str, Command, str]]:
        """For drills: ``(fact, command, role)``: the scratch cluster's etcd keys under the paths
        the re-sync re-writes, listed as the backup's ``etcd_keys`` fact was (exit 127 when
        etcdctl is not on the host), for the drill to find every recorded key again."""
        where = sh(p.etcd) if p.etcd else "\"$(hostname -I | awk '{print $1}')\":4001"
        keys = " ".join(sh(k) for k in ETCD_KEYS)
        listing = (
            "command -v etcdctl >/dev/null 2>&1 || { echo 'etcdctl is not on the host' >&2; exit 127; }; "
            f"for k in {keys}; do ETCDCTL_API=2 etcdctl --endpoints=http://{where} "
            'ls --recursive "$k" 2>/dev/null || true; done | sort | tr "\\n" " "'
        )
        return [("etcd_keys", Command(listing), "main")]
