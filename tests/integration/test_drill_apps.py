"""Restore drills of the other recipes over real SSH, with their stand-ins: back up on ``source``,
drill onto ``target`` (exit 0, the record signed and listed, the recipe's health checks run and
passed), then damage the restored copy in the ``after_restore`` hook and see the drill fail
(exit 3) naming the check. The harnesses are the recipes' own tests'; the drill helpers
``test_drill``'s. Each drill's RTO is printed at the end (``-s``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recipes.errors import VerifyError
from recipes.hosts import Host
from recipes.repository import Repository
from tests import servers
from tests.integration import standins
from tests.integration.django_site import seed_tree
from tests.integration.standins import Site
from tests.integration.test_deis import DB as DEIS_DB
from tests.integration.test_deis import (
    LIVE_ETCD,
    STANDINS,
    Etcd,
    deis_host,
    deis_pg,
    etcd,
    fill,
    leaves,
    publish_live,
    root,
    start_gateway,
    use_gateway,
)
from tests.integration.test_deis import ROOT as DEIS_ROOT
from tests.integration.test_deis import sets as deis_sets
from tests.integration.test_drill import RTO, _files, _report_rto, drill_in_process, records
from tests.integration.test_dss import dss_sets, error_line, running
from tests.integration.test_dss_restore import dss_user, on_target, sites
from tests.integration.test_govuk import TBZ2, Offsite, empty_target, offsite
from tests.integration.test_looker import looker_args, looker_user, mysql_set, seed_mysql, status
from tests.integration.test_standins import ok
from tests.integration.world import World, write_config

pytestmark = pytest.mark.integration

__all__ = [  # fixtures used by name
    "_report_rto", "deis_host", "deis_pg", "dss_user", "empty_target", "etcd", "looker_user", "offsite",
    "root", "sites",
]  # fmt: skip


def checks_of(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in record["checks"]}


def drill_cli(world: World, recipe: str, *sets: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``recipes --json drill RECIPE --host source --to-host target SETS``: exit 0, its record."""
    got = world.cli("--json", "drill", recipe, "--host", "source", "--to-host", "target", *sets, env=env)
    assert got.returncode == 0, got.stderr
    record: dict[str, Any] = json.loads(got.stdout)
    assert record["passed"] is True and record["host"] == "source" and record["scratch"] == "target"
    assert not [c for c in record["checks"] if not c["ok"]], record["checks"]
    return record


def listed_once(world: World, recipe: str, *, passed: bool) -> None:
    """Exactly one drill record of ``recipe``, verified (signed by the configured signer)."""
    listed = records(world, recipe)
    assert len(listed) == 1 and listed[0]["verified"] is True and listed[0]["passed"] is passed, listed


def sampled(world: World, recipe: str, obj: str, outside: str = "") -> str:
    """The first sampled path (as the archive names it) of ``obj`` in the newest snapshot, not
    under ``outside`` (a folder the drill does not compare)."""
    manifest = Repository(str(world.repo)).find(recipe, "source")
    found = manifest.object(obj)
    assert found is not None and found.facts.get("sample"), obj
    paths = [p for p in sorted(found.facts["sample"]) if not (outside and p.startswith(outside))]
    return str(paths[0])


def contents(root: Path) -> dict[str, str]:
    """Each regular file under ``root`` (relative path) and its sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def drill_failing(world: World, recipe: str, sets: list[str], damage: Any, **kw: Any) -> str:
    """``drill.run`` with the damage hook: VerifyError (exit 3); returns its message."""
    with pytest.raises(VerifyError) as failed:
        drill_in_process(world, recipe, "source", "target", sets=sets[1::2], after_restore=damage, **kw)
    assert failed.value.exit_code == 3
    return str(failed.value)


# --------------------------------------------------------------------------- dss


def test_dss_drill_passes_with_dss_status_then_fails_naming_a_deleted_file(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
) -> None:
    src_site, dst_site = sites
    dss = standins.install_dss(src_site, user=dss_user)
    kit = standins.install_dss_kit(dst_site)
    ok(ssh_source, dss.dss("start"))
    sets = dss_sets(dss)
    world.cli("run", "dss", "--host", "source", *sets, check=True)

    record = drill_cli(world, "dss", *sets)
    got = checks_of(record)
    # dss status ran on the scratch host after the restore and said RUNNING
    assert got["dss status"]["ok"] and got["dss status"]["found"].startswith("exit 0: dss: RUNNING pid ")
    assert running(ssh_target, on_target(dst_site, kit, dss.data_dir))
    # DSS's start writes its logs in run/ (backed up): the count is a range, bytes not compared
    files = got["files.tar files"]
    assert files["ok"] and "written since the restore under" in files["found"], files
    assert got["files.tar sample"]["ok"] and "skipped" not in got["files.tar sample"]
    RTO["dss"] = record["rto_seconds"]
    listed_once(world, "dss", passed=True)
    ok(ssh_target, on_target(dst_site, kit, dss.data_dir).dss("stop"))

    member = sampled(world, "dss", "files.tar", outside="./run/")

    def damage(host: Host) -> None:
        (dst_site.local_path(dss.data_dir) / member).unlink()

    message = drill_failing(world, "dss", sets, damage)
    assert "failed check files.tar sample" in message and f"{member} missing" in message
    second = records(world, "dss")[-1]
    assert second["verified"] and second["passed"] is False
    sample = checks_of(second)["files.tar sample"]
    assert not sample["ok"] and f"{member} missing" in sample["found"]


# --------------------------------------------------------------------------- looker


def test_looker_drill_runs_status_and_health_check_then_fails_naming_a_dropped_table(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    looker_user: str,
    mariadb_source: servers.MariaDB,
    mariadb_target: servers.MariaDB,
    fresh_mariadb_db: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src_site, _dst_site = sites
    db = fresh_mariadb_db
    seed_mysql(mariadb_source, db)
    lk = standins.install_looker(src_site, user=looker_user)
    ok(ssh_source, lk.command("start"))
    env = {"SRC_MYSQL_PW": mariadb_source.root_password, "TGT_MYSQL_PW": mariadb_target.root_password}
    src = looker_args(lk, *mysql_set(mariadb_source, db, "SRC_MYSQL_PW"))
    world.cli("run", "looker", "--host", "source", *src, env=env, check=True)
    # the scratch side: the target's own MariaDB (the source's would be refused)
    dst = looker_args(lk, *mysql_set(mariadb_target, db, "TGT_MYSQL_PW"))
    mariadb_target.sql(f"DROP DATABASE IF EXISTS `{db}`")
    try:
        record = drill_cli(world, "looker", *dst, env=env)
        got = checks_of(record)
        running = "exit 0: Status:Looker Web Application running"
        assert got["looker status"]["ok"] and got["looker status"]["found"] == running
        assert got["health_check"]["ok"] and got["health_check"]["found"] == running
        assert got[f"dumps/mysql.sql rows {db}.user"]["found"] == "2"
        assert got[f"dumps/mysql.sql rows {db}.look"]["found"] == "1"
        assert got["files.tar sample"]["ok"] and "skipped" not in got["files.tar sample"]
        assert got["files.tar files"]["ok"] and "skipped" not in got["files.tar files"]
        assert status(ssh_target, lk) == 0
        RTO["looker"] = record["rto_seconds"]
        listed_once(world, "looker", passed=True)

        def damage(host: Host) -> None:
            mariadb_target.sql(f"DROP TABLE `{db}`.look")

        monkeypatch.setenv("TGT_MYSQL_PW", mariadb_target.root_password)  # drill.run reads it in process
        message = drill_failing(world, "looker", dst, damage, force=True)
        assert f"failed check dumps/mysql.sql rows {db}.look: expected 1, found missing" in message
        assert records(world, "looker")[-1]["passed"] is False
    finally:
        mariadb_target.sql(f"DROP DATABASE IF EXISTS `{db}`")


# --------------------------------------------------------------------------- govuk-datastore


def test_govuk_datastore_drill_compares_rows_with_the_run_manifest_then_fails_naming_a_dropped_table(
    world: World,
    offsite: Offsite,
    mariadb_source: servers.MariaDB,
    empty_target: servers.MariaDB,
    site: tuple[str, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``recipes run govuk-datastore`` adds a set to the collection and a signed manifest; the
    drill restores the collection's newest set into the target's MariaDB and compares its tables
    with the manifest's row counts when the run recorded them (else says why it did not). The
    drill reads without sign_key: the collection's first sets are GOV.UK's unsigned ones."""
    path, _src, _dst = site
    mariadb_source.sql("DROP DATABASE IF EXISTS gv_blog; CREATE DATABASE gv_blog")
    mariadb_source.sql("CREATE TABLE gv_blog.posts (id INT PRIMARY KEY, title TEXT)")
    mariadb_source.sql("INSERT INTO gv_blog.posts VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'run')")
    sets = [
        *offsite.sets("govuk-datastores"),
        "--set", f'file_to_restore="{TBZ2}"',
        "--set", 'databases=["gv_blog"]',
    ]  # fmt: skip
    keys = ["--set", f'encrypt_key="{offsite.fingerprint}"', "--set", f'sign_key="{offsite.fingerprint}"']
    backup_dir = ["--set", f'backup_dir="{path}/automysqlbackup"']
    env = offsite.env(tmp_path / "controller-tmp")
    try:
        run = world.cli(
            "--json", "run", "govuk-datastore", "--host", "source", *sets, *keys, *backup_dir, env=env
        )
    finally:
        mariadb_source.sql("DROP DATABASE IF EXISTS gv_blog")
    assert run.returncode == 0, run.stderr
    counted = "rows" in json.loads(run.stdout)["facts"]

    record = drill_cli(world, "govuk-datastore", *sets, env=env)
    got = checks_of(record)
    assert got["mysql answers"]["ok"] and got["mysql answers"]["found"].startswith("exit 0")
    assert empty_target.sql("SELECT COUNT(*) FROM gv_blog.posts").split() == ["5"]
    RTO["govuk-datastore"] = record["rto_seconds"]
    listed_once(world, "govuk-datastore", passed=True)
    rows = {n: c for n, c in got.items() if n.startswith("latest.tbz2 ") and " rows " in n}
    if not counted:  # a run that records no row counts: said, never passed silently
        assert "records no row counts" in got["rows"]["skipped"] and not rows, got
        return
    (name,) = rows
    assert name.endswith(" rows gv_blog.posts") and rows[name]["ok"] and rows[name]["found"] == "5", rows

    def damage(host: Host) -> None:
        empty_target.sql("DROP TABLE gv_blog.posts")

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    message = drill_failing(world, "govuk-datastore", sets, damage, force=True)
    assert f"failed check {name}: expected 5, found missing" in message
    assert records(world, "govuk-datastore")[-1]["passed"] is False


# --------------------------------------------------------------------------- govuk-assets


def test_govuk_assets_drill_compares_the_tree_with_the_run_manifest_then_fails_naming_a_deleted_file(
    world: World,
    offsite: Offsite,
    site: tuple[str, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``recipes run govuk-assets`` records the tar stream's facts (files, bytes, sample) in its
    signed manifest; the drill restores the collection's newest set onto the scratch host and
    measures the target against them, and checks ``owner``; then a deleted sampled file and a
    file of another owner fail it (exit 3) naming the checks."""
    path, src, dst = site
    tree = src / "uploads"
    (tree / "2026" / "11").mkdir(parents=True)
    (tree / "2026" / "11" / "report.pdf").write_bytes(os.urandom(5000))
    for i in range(20):
        (tree / "2026" / f"note-{i:02}.txt").write_text(f"note {i}\n" * (i + 1))
    (tree / "index.txt").write_text("uploads\n")
    (tree / "empty").write_bytes(b"")
    on_disk = [p for p in tree.rglob("*") if p.is_file()]
    prefix = f"assets-drill-{uuid.uuid4().hex[:6]}"
    sets = [*offsite.sets(prefix), "--set", f'target="{path}/uploads"']
    sets += ["--set", f'encrypt_key="{offsite.fingerprint}"', "--set", f'sign_key="{offsite.fingerprint}"']
    env = offsite.env(tmp_path / "controller-tmp")
    run = world.cli("--json", "run", "govuk-assets", "--host", "source", *sets, env=env)
    assert run.returncode == 0, run.stderr
    facts = json.loads(json.loads(run.stdout)["facts"]["tree"])
    assert facts["files"] == len(on_disk) == 23 and "error" not in facts, facts
    assert facts["bytes"] == sum(p.stat().st_size for p in on_disk)
    assert len(facts["sample"]) == 16  # TarFacts' default sample, of 23 files
    for member, digest in facts["sample"].items():
        assert hashlib.sha256((tree / member).read_bytes()).hexdigest() == digest

    owned = [*sets, "--set", 'owner="1500:1501"']
    record = drill_cli(world, "govuk-assets", *owned, env=env)
    got = checks_of(record)
    for name in ("tree files", "tree bytes", "tree sample", "owner"):
        assert got[name]["ok"] and "skipped" not in got[name], got[name]
    assert got["tree files"]["found"] == "23" and got["tree bytes"]["found"] == str(facts["bytes"])
    assert got["tree sample"]["found"] == "16 of 16 equal"
    assert got["owner"]["found"] == "exit 0"
    assert contents(dst / "uploads") == contents(tree)  # the owner step changed owners only
    RTO["govuk-assets"] = record["rto_seconds"]
    listed_once(world, "govuk-assets", passed=True)

    member = sorted(facts["sample"])[0]
    other = next(p for p in sorted(facts["sample"]) if p != member)

    def damage(host: Host) -> None:
        (dst / "uploads" / member).unlink()
        os.chown(dst / "uploads" / other, 0, 0)

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    message = drill_failing(world, "govuk-assets", owned, damage, force=True)
    more = "(and 3 more: tree bytes, tree sample, owner)"
    assert f"failed check tree files: expected 23, found 22 {more}" in message, message
    second = checks_of(records(world, "govuk-assets")[-1])
    assert not second["tree sample"]["ok"] and f"{member} missing" in second["tree sample"]["found"]
    assert not second["owner"]["ok"] and second["owner"]["found"].endswith(
        f"{path}/uploads/{other.removeprefix('./')} is not owned by 1500:1501"
    ), second["owner"]


# --------------------------------------------------------------------------- deis


@pytest.fixture(scope="module")
def etcd2() -> Iterator[Etcd]:
    """The scratch cluster's own etcd (v2), started as ``test_deis``'s ``etcd`` fixture starts one."""
    d = tempfile.mkdtemp(prefix="deis-etcd2-")
    cp, pp = servers.free_port(), servers.free_port()
    peer, client = f"http://127.0.0.1:{pp}", f"http://127.0.0.1:{cp}"
    cmd = ["etcd", "--name", "t", "--data-dir", f"{d}/data", "--listen-client-urls", client]
    cmd += ["--advertise-client-urls", client, "--listen-peer-urls", peer]
    cmd += ["--initial-advertise-peer-urls", peer, "--initial-cluster", f"t={peer}"]
    cmd += ["--initial-cluster-state", "new", "--heartbeat-interval", "10", "--election-timeout", "100"]
    cmd += ["--enable-v2=true", "--logger", "zap", "--log-outputs", f"{d}/etcd.log"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(200):
            if subprocess.run(["curl", "-s", f"{client}/health"], capture_output=True).stdout:
                break
            time.sleep(0.05)
        yield Etcd(proc, d, cp)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def deis_pg2() -> Iterator[servers.Postgres]:
    """The scratch cluster's database server (no deis database: a new cluster)."""
    pg = servers.start_postgres(tcp=True, socket_alias_port=5432)
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def deis_host2(deis_pg2: servers.Postgres) -> Iterator[servers.SshHost]:
    """The scratch cluster's host: its own /srv/deis and database socket."""
    site = tempfile.mkdtemp(prefix="deis-site2-")
    os.chmod(site, 0o755)
    host = servers.start_sshd("deis2", binds={"/var/run/postgresql": deis_pg2.socket_dir, DEIS_ROOT: site})
    try:
        yield host
    finally:
        host.stop()
        shutil.rmtree(site, ignore_errors=True)


@pytest.fixture
def deis_world(
    tmp_path: Path, keys: tuple[Path, str, Path], deis_host: servers.SshHost, deis_host2: servers.SshHost
) -> World:
    """A recipes.toml naming the source cluster ``deis`` and the scratch cluster ``deis2``."""
    identity, recipient, signing_key = keys
    config = tmp_path / "recipes.toml"
    hosts: dict[str, object] = {"deis": deis_host, "deis2": deis_host2}
    write_config(config, tmp_path / "repo", identity, recipient, hosts, signing_key)
    return World(
        config, tmp_path / "repo", identity, recipient, tmp_path / "cache", tmp_path / "home", signing_key
    )


@pytest.fixture
def root2(deis_host2: servers.SshHost, deis_pg2: servers.Postgres, etcd2: Etcd) -> Iterator[Path]:
    """The scratch cluster's stand-ins under its /srv/deis; wiped (database, etcd, files) after."""
    r = Path(deis_host2.binds[DEIS_ROOT])
    (r / "bin").mkdir()
    (r / "app").mkdir()
    for name in ("deisctl", "docker"):
        shutil.copy(STANDINS / f"{name}.sh", r / "bin" / name)
    shutil.copy(STANDINS / "dbboot.py", r / "bin" / "dbboot.py")
    shutil.copy(STANDINS / "manage.sh", r / "app" / "manage.py")
    try:
        yield r
    finally:
        deis_pg2.psql(f"DROP DATABASE IF EXISTS {DEIS_DB} WITH (FORCE);")
        etcd2.ctl("rm", "--recursive", "/deis", check=False)
        subprocess.run(["rm", "-rf", *(str(p) for p in r.iterdir())], check=False)


def test_deis_drill_onto_a_second_cluster_checks_buckets_and_etcd_then_fails_naming_a_removed_object(
    deis_world: World,
    root: Path,
    root2: Path,
    deis_pg: servers.Postgres,
    deis_pg2: servers.Postgres,
    etcd: Etcd,
    etcd2: Etcd,
    deis_host: servers.SshHost,
) -> None:
    world = deis_world
    old, new = start_gateway(), start_gateway()
    try:
        use_gateway(root, old)
        fill(old, deis_pg)
        (root / "store" / "logs").mkdir(parents=True)
        (root / "store" / "logs" / "deis-controller.log").write_text("started\n" * 1000)
        publish_live(etcd)  # the source cluster's etcd as its controller published it
        keys_before = etcd.tree()
        objects_before = old.objects()
        registry = len([k for k in objects_before if k.startswith("registry/")])
        wal = len([k for k in objects_before if k.startswith("db_wal/")])
        world.cli("run", "deis", "--host", "deis", *deis_sets(old.url, etcd), check=True)
        use_gateway(root2, new)  # the scratch cluster's own gateway, keys and etcd
        scratch = deis_sets(new.url, etcd2)

        got = world.cli("--json", "drill", "deis", "--host", "deis", "--to-host", "deis2", *scratch)
        assert got.returncode == 0, got.stderr
        record = json.loads(got.stdout)
        checks = checks_of(record)
        assert record["passed"] and not [c for c in record["checks"] if not c["ok"]], record["checks"]
        objects = checks["buckets/registry.tar objects"]
        assert objects["ok"] and objects["expected"] == objects["found"] == str(registry), objects
        assert checks["buckets/db_wal.tar sample"]["found"] == f"{wal} of {wal} equal"
        assert (
            checks["buckets/registry.tar bytes"]["ok"]
            and "skipped" not in checks["buckets/registry.tar bytes"]
        )
        recorded = {k for k in keys_before if not k.endswith("/")}
        assert checks["etcd_keys"]["ok"] and "skipped" not in checks["etcd_keys"], checks["etcd_keys"]
        assert set(etcd2.tree()) >= recorded  # the re-sync on the scratch cluster wrote them
        # with the values: each app's LATEST config and the certificates (beyond the seed's script)
        assert leaves(etcd2.tree()) == LIVE_ETCD
        assert etcd.tree() == keys_before and old.objects() == objects_before == new.objects()
        RTO["deis"] = record["rto_seconds"]
        listed = records(world, "deis")
        assert len(listed) == 1 and listed[0]["verified"] and listed[0]["scratch"] == "deis2"

        def damage(host: Host) -> None:
            gone = "registry/docker/registry/v2/repositories/app1/_manifests/tags/v1/link"
            new.fs().rm(gone)
            assert gone not in new.objects()
            etcd2.ctl("rm", "/deis/domains/shop.example.com")

        with pytest.raises(VerifyError) as failed:
            drill_in_process(world, "deis", "deis", "deis2", sets=scratch[1::2], after_restore=damage)
        message = str(failed.value)
        assert failed.value.exit_code == 3
        assert (
            f"failed check buckets/registry.tar objects: expected {registry}, found {registry - 1}" in message
        )
        assert "etcd_keys" in message  # named among the others
        etcd_keys = checks_of(records(world, "deis")[-1])["etcd_keys"]
        assert not etcd_keys["ok"] and etcd_keys["found"].endswith("missing: /deis/domains/shop.example.com")
        sample = checks_of(records(world, "deis")[-1])["buckets/registry.tar sample"]
        assert not sample["ok"] and "repositories/app1/_manifests/tags/v1/link missing" in sample["found"]
        assert old.objects() == objects_before != new.objects()  # the source's gateway untouched
    finally:
        old.stop()
        new.stop()


# --------------------------------------------------------------------------- the host-key refusal


@pytest.fixture
def twin(ssh_source: servers.SshHost) -> Iterator[tuple[servers.SshHost, Path]]:
    """A second sshd (another port, its own /srv/site) presenting the source's host key: the
    same machine reached another way. Its key files are replaced, then SIGHUP re-reads them."""
    site = Path(tempfile.mkdtemp(prefix="site-twin-"))
    host = servers.start_sshd("twin", binds={"/srv/site": str(site)})
    try:
        for suffix in ("", ".pub"):
            shutil.copyfile(f"{ssh_source.dir}/host_key{suffix}", f"{host.dir}/host_key{suffix}")
        os.kill(host.pid, signal.SIGHUP)
        wanted = ssh_source.host_public_key.split()[1]
        for _ in range(200):
            scan = subprocess.run(
                ["ssh-keyscan", "-t", "ed25519", "-p", str(host.port), "127.0.0.1"],
                capture_output=True,
                text=True,
            )
            if wanted in scan.stdout:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the twin sshd does not present the source's host key: {scan.stdout}")
        yield host, site
    finally:
        host.stop()
        shutil.rmtree(site, ignore_errors=True)


def test_a_scratch_host_presenting_the_source_host_key_is_refused_and_nothing_is_written(
    world: World,
    site: tuple[str, Path, Path],
    ssh_source: servers.SshHost,
    twin: tuple[servers.SshHost, Path],
) -> None:
    root, src, _dst = site
    host, twin_site = twin
    seed_tree(src)
    common = ["--set", f"root={root}"]
    world.cli("run", "django", "--host", "source", *common, check=True)
    with world.config.open("a") as fh:  # pinned to the key it presents: the source's
        fh.write(
            f'\n[hosts.twin]\naddress = "127.0.0.1"\nuser = "root"\nport = {host.port}\n'
            f'key_file = "{host.key_file}"\nhost_key = "{ssh_source.host_public_key}"\n'
        )
    before_src, before_repo = _files(src), _files(world.repo)
    got = world.cli("drill", "django", "--host", "source", "--to-host", "twin", *common)
    assert got.returncode == 2, got.stderr
    line = error_line(got.stderr)
    assert "the scratch host twin presents the SSH host key of the source source" in line, line
    assert _files(twin_site) == set() and _files(src) == before_src and _files(world.repo) == before_repo
    assert records(world, "django") == []
