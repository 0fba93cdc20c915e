"""The deis recipe (seed 003) end to end with real parts: the CLI over real SSH, a real S3 API
(``rclone serve s3``) as the store-gateway, a real PostgreSQL behind ``docker exec
deis-database``, a real etcd (v2) for the controller's re-sync.

``deisctl``, ``docker`` and ``manage.py`` are stand-ins (tests/integration/standins/deis): they
record every call in ``events.log`` and do what the recipe depends on against those servers.
The "new cluster" is the same host wiped (database dropped, etcd's /deis removed, store-volume
emptied) with a NEW gateway whose keys differ and whose buckets are empty.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import s3fs

from recipes import buckets
from recipes.apps.deis import RESYNC
from recipes.ops import Bucket
from tests import servers
from tests.integration.test_standins import ok
from tests.integration.world import World, fingerprint, write_config
from tests.s3faults import FaultyS3

pytestmark = pytest.mark.integration

STANDINS = Path(__file__).parent / "standins" / "deis"
ROOT = "/srv/deis"
DB = "deis"
BUCKETS = ("db_wal", "registry")
CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUshop\n-----END CERTIFICATE-----"
CERT_KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSMshop\n-----END PRIVATE KEY-----"
LIVE_ETCD = {
    "/deis/builder/users/alice/aa:bb:cc": "ssh-ed25519 AAAAC3 alice@laptop",
    "/deis/builder/users/bob/dd:ee:ff": "ssh-rsa AAAAB3 bob@desk",
    "/deis/domains/shop.example.com": "app1",
    "/deis/domains/blog.example.com": "app2",
    "/deis/config/app1/debug": "false",
    "/deis/config/app1/workers": "2",
    "/deis/config/app3/workers": "4",
    "/deis/certs/shop.example.com/cert": CERT,
    "/deis/certs/shop.example.com/key": CERT_KEY,
}
"""The live cluster's etcd, as its controller published the rows over time (app1's LATEST
config; keys lower-cased as Deis v1 writes them), plus /deis/services/app1..3 (directories)."""


@attrs.frozen
class Gateway:
    """An ``rclone serve s3`` whose buckets are made as directories before it starts (rclone
    refuses to create names with ``_`` such as ``db_wal``)."""

    proc: subprocess.Popen[bytes]
    dir: str
    port: int
    key: str
    secret: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fs(self) -> s3fs.S3FileSystem:
        return s3fs.S3FileSystem(
            key=self.key,
            secret=self.secret,
            client_kwargs={"endpoint_url": self.url},
            skip_instance_cache=True,
        )

    def objects(self) -> dict[str, bytes]:
        fs = self.fs()
        return {p: fs.cat(p) for b in BUCKETS for p in fs.find(b)}

    def meta(self) -> dict[str, tuple[str, dict[str, str]]]:
        """Every object's Content-Type and user metadata (x-amz-meta-*), as the gateway answers."""
        fs = self.fs()
        out = {}
        for b in BUCKETS:
            for p in fs.find(b):
                head = fs.call_s3("head_object", Bucket=b, Key=p.removeprefix(b + "/"))
                out[p] = (head["ContentType"], head["Metadata"])
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_gateway() -> Gateway:
    d = tempfile.mkdtemp(prefix="deis-gw-")
    for b in BUCKETS:
        os.makedirs(f"{d}/data/{b}")
    open(f"{d}/rclone.conf", "w").close()
    key, secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    port = servers.free_port()
    cmd = [servers.rclone_binary(), "serve", "s3", "--config", f"{d}/rclone.conf", "--addr"]
    cmd += [f"127.0.0.1:{port}", "--auth-key", f"{key},{secret}", "--etag-hash", "MD5"]
    cmd += ["--vfs-cache-mode", "off", f"{d}/data"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    gw = Gateway(proc, d, port, key, secret)
    for _ in range(200):
        try:
            gw.fs().ls("")
            return gw
        except Exception:
            time.sleep(0.05)
    gw.stop()
    raise RuntimeError("rclone serve s3 did not start")


@attrs.frozen
class Etcd:
    proc: subprocess.Popen[bytes]
    dir: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ctl(self, *args: str, check: bool = True) -> str:
        env = {**os.environ, "ETCDCTL_API": "2"}
        out = subprocess.run(
            ["etcdctl", f"--endpoints=http://{self.endpoint}", *args],
            capture_output=True,
            text=True,
            env=env,
            check=check,
        )
        return out.stdout

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def tree(self) -> dict[str, str]:
        """Every key under /deis with its value (directories as "")."""
        out: dict[str, str] = {}
        for key in self.ctl("ls", "--recursive", "-p", "/deis", check=False).split():
            out[key] = "" if key.endswith("/") else self.ctl("get", key).strip()
        return out


def start_etcd() -> Etcd:
    """A real etcd (v2 API on) on free loopback ports; ``stop()`` when done."""
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.fail("etcd and etcdctl are needed: run ./scripts/install-test-deps (etcd-server, etcd-client)")
    d = tempfile.mkdtemp(prefix="deis-etcd-")
    cp, pp = servers.free_port(), servers.free_port()
    cmd = ["etcd", "--name", "t", "--data-dir", f"{d}/data"]
    cmd += [
        "--listen-client-urls",
        f"http://127.0.0.1:{cp}",
        "--advertise-client-urls",
        f"http://127.0.0.1:{cp}",
    ]
    cmd += [
        "--listen-peer-urls",
        f"http://127.0.0.1:{pp}",
        "--initial-advertise-peer-urls",
        f"http://127.0.0.1:{pp}",
    ]
    cmd += ["--initial-cluster", f"t=http://127.0.0.1:{pp}", "--initial-cluster-state", "new"]
    cmd += ["--heartbeat-interval", "10", "--election-timeout", "100", "--enable-v2=true"]
    cmd += ["--logger", "zap", "--log-outputs", f"{d}/etcd.log"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = Etcd(proc, d, cp)
    for _ in range(200):
        if subprocess.run(["curl", "-s", f"http://127.0.0.1:{cp}/health"], capture_output=True).stdout:
            break
        time.sleep(0.05)
    return server


@pytest.fixture(scope="module")
def etcd() -> Iterator[Etcd]:
    server = start_etcd()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def deis_pg() -> Iterator[servers.Postgres]:
    """The cluster behind ``docker exec deis-database`` (its own: pg_dumpall dumps all of it)."""
    pg = servers.start_postgres(tcp=True, socket_alias_port=5432)
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def deis_host(deis_pg: servers.Postgres) -> Iterator[servers.SshHost]:
    site = tempfile.mkdtemp(prefix="deis-site-")
    os.chmod(site, 0o755)
    host = servers.start_sshd("deis", binds={"/var/run/postgresql": deis_pg.socket_dir, ROOT: site})
    try:
        yield host
    finally:
        host.stop()
        shutil.rmtree(site, ignore_errors=True)


@pytest.fixture
def world(tmp_path: Path, keys: tuple[Path, str, Path], deis_host: servers.SshHost) -> World:
    identity, recipient, signing_key = keys
    config = tmp_path / "recipes.toml"
    write_config(config, tmp_path / "repo", identity, recipient, {"deis": deis_host}, signing_key)
    return World(
        config, tmp_path / "repo", identity, recipient, tmp_path / "cache", tmp_path / "home", signing_key
    )


@pytest.fixture
def root(deis_host: servers.SshHost, deis_pg: servers.Postgres, etcd: Etcd) -> Iterator[Path]:
    """The stand-ins under /srv/deis (as the host sees it), a deis database and etcd's /deis."""
    r = Path(deis_host.binds[ROOT])
    install_standins(r)
    deis_pg.psql(f"CREATE DATABASE {DB};")
    deis_pg.psql(
        "CREATE TABLE api_key (owner text, fingerprint text, public text);"
        "CREATE TABLE api_app (id text);"
        "CREATE TABLE api_domain (domain text, app text);"
        'CREATE TABLE api_config (uuid text, app text, created timestamptz, "values" text);'
        "CREATE TABLE api_certificate (common_name text, certificate text, key text);"
        "INSERT INTO api_key VALUES ('alice', 'aa:bb:cc', 'ssh-ed25519 AAAAC3 alice@laptop'),"
        " ('bob', 'dd:ee:ff', 'ssh-rsa AAAAB3 bob@desk');"
        "INSERT INTO api_app SELECT 'app' || i FROM generate_series(1, 3) i;"
        "INSERT INTO api_domain VALUES ('shop.example.com', 'app1'), ('blog.example.com', 'app2');"
        # app1 has two generations: `deis config:set DEBUG=false` made the newer one
        "INSERT INTO api_config VALUES"
        " ('c1-old', 'app1', '2016-01-01 10:00Z', '{\"DEBUG\": \"true\", \"WORKERS\": \"2\"}'),"
        " ('c1-new', 'app1', '2016-02-01 10:00Z', '{\"DEBUG\": \"false\", \"WORKERS\": \"2\"}'),"
        " ('c3', 'app3', '2016-01-15 10:00Z', '{\"WORKERS\": \"4\"}');"
        f"INSERT INTO api_certificate VALUES ('shop.example.com', '{CERT}', '{CERT_KEY}');",
        db=DB,
    )
    try:
        yield r
    finally:
        deis_pg.psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE);")
        etcd.ctl("rm", "--recursive", "/deis", check=False)
        subprocess.run(["rm", "-rf", *(str(p) for p in r.iterdir())], check=False)


def publish_live(etcd: Etcd) -> None:
    """etcd as the live cluster's controller left it: ``LIVE_ETCD`` and the apps' directories."""
    for app in ("app1", "app2", "app3"):
        etcd.ctl("mkdir", f"/deis/services/{app}")
    for key, value in LIVE_ETCD.items():
        etcd.ctl("set", "--", key, value)


def leaves(tree: dict[str, str]) -> dict[str, str]:
    """The keys of ``Etcd.tree()`` that hold values (not directories)."""
    return {k: v for k, v in tree.items() if not k.endswith("/")}


def install_standins(r: Path) -> None:
    """deisctl, docker, the database's first boot and manage.py under ``r`` (/srv/deis on the host)."""
    (r / "bin").mkdir()
    (r / "app").mkdir()
    for name in ("deisctl", "docker"):
        shutil.copy(STANDINS / f"{name}.sh", r / "bin" / name)
    shutil.copy(STANDINS / "dbboot.py", r / "bin" / "dbboot.py")
    shutil.copy(STANDINS / "manage.sh", r / "app" / "manage.py")


def use_gateway(r: Path, gw: Gateway) -> None:
    """The cluster's gateway (its keys are what ``deisctl config store get`` prints)."""
    py = sys.executable
    (r / "gateway.env").write_text(
        f"GATEWAY={gw.url}\nACCESS={gw.key}\nSECRET={gw.secret}\nDBNAME={DB}\nPY={py}\n"
    )


def sets(gateway: str, etcd: Etcd, *more: str) -> list[str]:
    items = [
        f"gateway={gateway}",
        f"store_dir={ROOT}/store",
        f"etcd={etcd.endpoint}",
        f"deisctl={ROOT}/bin/deisctl",
        f"docker={ROOT}/bin/docker",
        f"dump_file={ROOT}/dump_all.sql",
        *more,
    ]
    return [w for item in items for w in ("--set", item)]


def fill(gw: Gateway, pg: servers.Postgres) -> None:
    """Registry layers and a WAL-E base backup (a real pg_dump of the deis database) in db_wal."""
    fs = gw.fs()
    base = subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            f"{servers.PG_BIN}/pg_dump",
            "--create",
            "-h",
            pg.socket_dir,
            "-p",
            str(pg.port),
            DB,
        ],
        capture_output=True,
        check=True,
        cwd="/",
    ).stdout
    fs.pipe("db_wal/basebackups_005/base_000000010000000000000002.sql", base)
    fs.pipe(
        "db_wal/wal_005/000000010000000000000002.lzo",
        os.urandom(70_000),
        ContentType="application/x-lzop",
        Metadata={"wal-e-version": "0.8.1"},
    )
    fs.pipe(
        "registry/docker/registry/v2/blobs/sha256/ab/layer",
        os.urandom(3 << 20),
        ContentType="application/octet-stream",
        Metadata={"digest": "sha256:ab", "uploaded-by": "deis-registry"},
    )
    # over the 5 MiB part size: put back as a multipart upload, metadata on its initiation
    fs.pipe(
        "registry/docker/registry/v2/blobs/sha256/cd/layer",
        os.urandom(6 << 20),
        ContentType="application/vnd.docker.image.rootfs.diff.tar.gzip",
        Metadata={"digest": "sha256:cd"},
    )
    fs.pipe(
        "registry/docker/registry/v2/repositories/app1/_manifests/tags/v1/link",
        b"sha256:ab\n",
        ContentType="text/plain",
    )
    fs.pipe("registry/empty-object", b"")


def error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("recipes: error: ")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    assert "Traceback" not in stderr
    return errors[0]


def no_key(gw: Gateway, *texts: str) -> None:
    for text in texts:
        assert gw.key not in text and gw.secret not in text


def repo_text(world: World) -> str:
    """Every plain file of the repository (manifests, listings) as text."""
    out = []
    for p in world.repo.rglob("*"):
        if p.is_file():
            out.append(p.read_bytes().decode("latin-1"))
    return "\n".join(out)


def test_backup_wipe_restore_brings_back_objects_rows_store_and_etcd_keys(
    world: World, root: Path, deis_pg: servers.Postgres, etcd: Etcd, deis_host: servers.SshHost
) -> None:
    old, new = start_gateway(), start_gateway()
    try:
        use_gateway(root, old)
        fill(old, deis_pg)
        store = root / "store"
        (store / "logs").mkdir(parents=True)
        (store / "logs" / "deis-controller.log").write_text("started\n" * 1000)
        (store / "logs" / "deis-registry.log").write_text("pushed app1:v1\n")
        os.chown(store / "logs" / "deis-registry.log", 1234, 5678)
        os.chmod(store / "logs" / "deis-registry.log", 0o640)
        publish_live(etcd)
        keys_before = etcd.tree()
        assert leaves(keys_before) == LIVE_ETCD
        objects_before = old.objects()
        meta_before = old.meta()
        assert meta_before["registry/docker/registry/v2/blobs/sha256/ab/layer"] == (
            "application/octet-stream",
            {"digest": "sha256:ab", "uploaded-by": "deis-registry"},
        )
        store_before = fingerprint(store)

        backup = world.cli("--json", "-v", "run", "deis", "--host", "deis", *sets(old.url, etcd))
        assert backup.returncode == 0, backup.stderr
        manifest = json.loads(backup.stdout)
        names = {o["name"]: o for o in manifest["objects"]}
        assert set(names) == {"buckets/db_wal.tar", "buckets/registry.tar", "store.tar", "dumps/database.sql"}
        assert names["buckets/registry.tar"]["facts"]["objects"] == 4
        assert names["buckets/registry.tar"]["facts"]["bytes"] == (9 << 20) + len(b"sha256:ab\n")
        assert len(names["buckets/db_wal.tar"]["facts"]["sample"]) == 2
        assert "/deis/domains/shop.example.com" in manifest["facts"]["etcd_keys"].split()
        no_key(old, backup.stdout, backup.stderr, repo_text(world))

        # the new cluster: no database, no /deis in etcd, an empty store, a new gateway (new keys)
        deis_pg.psql(f"DROP DATABASE {DB} WITH (FORCE);")
        etcd.ctl("rm", "--recursive", "/deis")
        shutil.rmtree(store)
        (root / "events.log").unlink()
        use_gateway(root, new)
        assert new.objects() == {}

        # no gateway: a usage error in one line before anything runs on the new cluster
        unset = [w for w in sets(new.url, etcd) if not w.startswith("gateway=")][1:]
        for plan_only in ((), ("--plan",)):
            refused = world.cli("restore", "deis", "--host", "deis", *plan_only, *unset)
            assert refused.returncode == 2 and "deis needs gateway" in error_line(refused.stderr)
        assert not (root / "events.log").exists()

        plan = world.cli("restore", "deis", "--host", "deis", "--plan", *sets(new.url, etcd))
        assert plan.returncode == 0, plan.stderr
        restore = world.cli("-v", "restore", "deis", "--host", "deis", *sets(new.url, etcd))
        assert restore.returncode == 0, restore.stderr
        no_key(old, restore.stdout, restore.stderr, plan.stdout)
        no_key(new, restore.stdout, restore.stderr, plan.stdout)

        assert {k: v for k, v in new.objects().items()} == objects_before
        # each object's content type and x-amz-meta-* came back too (rclone guesses a type from
        # the name when none is given: these differ from its guesses)
        assert new.meta() == meta_before
        assert fingerprint(store) == store_before
        rows = deis_pg.psql("SELECT count(*) FROM api_key; SELECT count(*) FROM api_app;", db=DB).split()
        assert rows == ["2", "3"]
        # the re-sync published every key, app, domain, each app's LATEST config and every
        # certificate again: the seed's script alone would leave out /deis/config and /deis/certs
        after = etcd.tree()
        assert after["/deis/config/app1/debug"] == "false"  # app1's newer generation, not "true"
        assert after["/deis/certs/shop.example.com/cert"] == CERT
        assert after["/deis/certs/shop.example.com/key"] == CERT_KEY
        assert after == keys_before
        old_generation = deis_pg.psql("SELECT \"values\" FROM api_config WHERE uuid = 'c1-old';", db=DB)
        assert json.loads(old_generation) == {"DEBUG": "true", "WORKERS": "2"}  # not re-saved
        events = (root / "events.log").read_text().splitlines()
        assert events == [
            "deisctl install platform",
            "deisctl start store-monitor",
            "deisctl start store-daemon",
            "deisctl start store-metadata",
            "deisctl start store-gateway",
            "deisctl start store-volume",
            "deisctl start router@1",
            "deisctl config router set bodySize=100m",
            "deisctl config store get gateway/accessKey",
            "deisctl config store get gateway/secretKey",
            "deisctl start platform",
            "database restored from db_wal/basebackups_005/base_000000010000000000000002.sql",
            "docker exec deis-controller sh -c cd /app && ./manage.py shell",
            f"manage.py shell (ETCD={etcd.endpoint})",
        ], events
        assert "deis scale" in restore.stderr  # the manual step is said, not run
        assert (root / "dump_all.sql").stat().st_mode & 0o077 == 0

        # only the database: load the pg_dumpall into the running database container
        deis_pg.psql(f"DROP DATABASE {DB} WITH (FORCE);")
        only = world.cli("restore", "deis", "--host", "deis", *sets(new.url, etcd, "only=database"))
        assert only.returncode == 0, only.stderr
        assert deis_pg.psql("SELECT count(*) FROM api_domain;", db=DB).split() == ["2"]
    finally:
        old.stop()
        new.stop()


SEED_RESYNC = """from api.models import *
[k.save() for k in Key.objects.all()]
[a.save() for a in App.objects.all()]
[d.save() for d in Domain.objects.all()]
"""
"""The seed's ``./manage.py shell <<EOF`` script, verbatim."""


def test_the_seeds_resync_leaves_config_and_certs_out_of_etcd_and_ours_puts_the_latest_back(
    root: Path, etcd: Etcd, deis_host: servers.SshHost, deis_pg: servers.Postgres
) -> None:
    """Deis v1 publishes /deis/config/<app> when a Config is saved and /deis/certs/<cn> when a
    Certificate is: the seed's script (keys, apps, domains) brings back neither. Ours saves each
    app's latest Config (saving an older one would merge and publish its stale values) and
    every Certificate too."""
    (root / "gateway.env").write_text(f"DBNAME={DB}\nPY={sys.executable}\n")  # manage.py needs no gateway
    shell = f"cd {ROOT}/app && ETCD={etcd.endpoint} ./manage.py shell <<'EOF'\n{{}}EOF"
    ok(deis_host, shell.format(SEED_RESYNC))
    seed = etcd.tree()
    assert "/deis/services/app3/" in seed and "/deis/domains/shop.example.com" in seed
    assert not [k for k in seed if k.startswith(("/deis/config", "/deis/certs"))], seed

    etcd.ctl("rm", "--recursive", "/deis")
    ok(deis_host, shell.format(RESYNC))
    ours = etcd.tree()
    assert leaves(ours) == LIVE_ETCD
    assert {"/deis/services/app1/", "/deis/services/app2/", "/deis/services/app3/"} <= set(ours)
    old_generation = deis_pg.psql("SELECT \"values\" FROM api_config WHERE uuid = 'c1-old';", db=DB)
    assert json.loads(old_generation) == {"DEBUG": "true", "WORKERS": "2"}


@pytest.mark.parametrize("fault", ["down", "refuses-a-write"])
def test_an_etcd_resync_that_cannot_reach_etcd_fails_the_restore_naming_it(
    world: World, root: Path, deis_pg: servers.Postgres, etcd: Etcd, fault: str
) -> None:
    """Django 1.x's ``manage.py shell`` (the stand-in runs the script with code.interact, as
    the controller does) prints a failing statement's traceback and exits 0 at the end of its
    input: without the re-sync script's own exit status the restore said it succeeded while
    etcd held none of the keys, apps or domains. etcd down at the import of ``api.models``
    leaves it without a client (saves publish nothing, silently); a write etcd refuses raises."""
    old, new = start_gateway(), start_gateway()
    try:
        use_gateway(root, old)
        fill(old, deis_pg)
        (root / "store").mkdir()
        world.cli("run", "deis", "--host", "deis", *sets(old.url, etcd), check=True)
        deis_pg.psql(f"DROP DATABASE {DB} WITH (FORCE);")
        etcd.ctl("rm", "--recursive", "/deis", check=False)
        use_gateway(root, new)
        dead = f"127.0.0.1:{servers.free_port()}"  # nothing listens: etcd is down
        where = dead if fault == "down" else etcd.endpoint
        if fault == "refuses-a-write":
            etcd.ctl("set", "/deis/domains", "a value where a directory goes")
        restore = world.cli(
            "restore", "deis", "--host", "deis", *sets(new.url, etcd), "--set", f"etcd={where}"
        )
        assert restore.returncode == 1, restore.stderr
        line = error_line(restore.stderr)
        assert line.startswith("recipes: error: etcd-resync failed on deis (exit 1): etcd re-sync failed"), (
            line
        )
        if fault == "down":
            assert f"(ETCD={dead}): RuntimeError: api.models has no etcd client" in line, line
            assert etcd.tree() == {}
        else:
            assert f"(ETCD={where}): OSError: etcd {where}:" in line and "Not a directory" in line, line
        assert "check that etcd answers" in line, line
        assert "PARTLY restored" in line and "failed run etcd-resync" in line, line
        assert deis_pg.psql("SELECT count(*) FROM api_key;", db=DB).split() == ["2"]  # the rest came back
    finally:
        old.stop()
        new.stop()


def test_a_gateway_failing_mid_copy_fails_the_snapshot_and_lists_nothing(
    world: World, root: Path, deis_pg: servers.Postgres, etcd: Etcd
) -> None:
    gw = start_gateway()
    proxy = FaultyS3(("127.0.0.1", gw.port))
    try:
        use_gateway(root, gw)
        fill(gw, deis_pg)
        (root / "store").mkdir()
        # as many requests as copying db_wal takes (listing, head and reads), then it denies all
        copy = buckets.BucketTar(
            buckets.filesystem(
                Bucket(proxy.endpoint, "db_wal"), {"gw_access": gw.key, "gw_secret": gw.secret}
            ),
            Bucket(proxy.endpoint, "db_wal"),
        )
        while copy.read(1 << 20):
            pass
        assert copy.objects == 2
        proxy.after, proxy.requests = proxy.requests, 0
        proxy.always = "403"
        backup = world.cli("-v", "run", "deis", "--host", "deis", *sets(proxy.endpoint, etcd))
        assert backup.returncode == 1, backup.stderr
        line = error_line(backup.stderr)
        # db_wal is listed and copied, then the gateway denies everything
        assert "copy s3://registry failed: the gateway" in line and "Access Denied" in line, line
        no_key(gw, backup.stdout, backup.stderr)
        listed = world.cli("--json", "snapshots", check=True)
        assert json.loads(listed.stdout) == []
    finally:
        proxy.close()
        gw.stop()


def test_a_failing_pg_dumpall_fails_the_snapshot(
    world: World, root: Path, deis_pg: servers.Postgres, etcd: Etcd
) -> None:
    gw = start_gateway()
    try:
        use_gateway(root, gw)
        (root / "store").mkdir()
        backup = world.cli(
            "run", "deis", "--host", "deis", *sets(gw.url, etcd, "database_container=deis-db-gone")
        )
        assert backup.returncode == 1, backup.stderr
        assert "No such container: deis-db-gone" in error_line(backup.stderr)
        assert json.loads(world.cli("--json", "snapshots", check=True).stdout) == []
    finally:
        gw.stop()


def test_an_unset_gateway_is_a_usage_error_at_plan_and_run(world: World, root: Path, etcd: Etcd) -> None:
    unset = [w for w in sets("http://unused", etcd) if not w.startswith("gateway=")][1:]
    assert "--set" in unset and not any(w.startswith("gateway") for w in unset)
    for command in (["plan", "deis"], ["run", "deis"]):  # restore: in the round trip (needs a snapshot)
        done = world.cli(*command, "--host", "deis", *unset)
        assert done.returncode == 2, (command, done.stderr)
        line = error_line(done.stderr)
        assert "deis needs gateway" in line and "--set gateway=" in line, line
    assert not (root / "events.log").exists()  # nothing ran on the host
    assert json.loads(world.cli("--json", "snapshots", check=True).stdout) == []


def test_a_bucket_is_listed_a_page_at_a_time_while_it_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the real S3 API: with 2 keys a page, the next page is asked for only after the
    objects of the one before were copied (never every key in memory); the tar is complete."""
    gw = start_gateway()
    try:
        fs = gw.fs()
        for i in range(5):
            fs.pipe(f"registry/k{i}", b"x" * i, ContentType=f"application/x-{i}", Metadata={"n": str(i)})
        monkeypatch.setattr(buckets, "PAGE", 2)
        source = buckets.filesystem(Bucket(gw.url, "registry"), {"gw_access": gw.key, "gw_secret": gw.secret})
        calls: list[str] = []
        real = source.call_s3

        def spy(method: str, *args: Any, **kwargs: Any) -> Any:
            calls.append(method + (f" {kwargs['Key']}" if "Key" in kwargs else ""))
            return real(method, *args, **kwargs)

        source.call_s3 = spy
        copy = buckets.BucketTar(source, Bucket(gw.url, "registry"))
        data = b""
        while chunk := copy.read(1 << 16):
            data += chunk
        lists = [i for i, c in enumerate(calls) if c == "list_objects_v2"]
        assert len(lists) == 3, calls
        heads = [c.split()[1] for c in calls if c.startswith("head_object")]
        assert heads == [f"k{i}" for i in range(5)]
        assert calls.index("head_object k1") < lists[1] < calls.index("head_object k2"), calls
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            assert [m.name for m in members] == [f"k{i}" for i in range(5)]
            assert [buckets.put_args(m) for m in members] == [
                {"ContentType": f"application/x-{i}", "Metadata": {"n": str(i)}} for i in range(5)
            ]
        assert copy.facts()["objects"] == 5
    finally:
        gw.stop()
