"""Break-glass blocks run for real: a backup with the harness, the blocks rendered with its
manifest into Markdown, extracted again and run as written in a clean shell
(``env -i HOME PATH`` plus the variables the first block names) against the target host; then
``recipes restore`` onto the same target made fresh again, and both results compared (files:
bytes, modes, owners; rows; objects)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from recipes import apps, breakglass, chain, config, plan
from recipes import manifest as mf
from recipes.apps.deis import RESYNC
from recipes.apps.dss import CATEGORIES
from recipes.recipe import make_params, restore_values, split_options
from recipes.repository import Repository
from tests import servers
from tests.integration import standins
from tests.integration.django_site import SQLITE_DB, comparable, seed_tree, sqlite_rows
from tests.integration.standins import Site
from tests.integration.test_deis import DB as DEIS_DB
from tests.integration.test_deis import ROOT as DEIS_ROOT
from tests.integration.test_deis import (
    Etcd,
    Gateway,
    deis_host,
    deis_pg,
    etcd,
    fill,
    install_standins,
    start_etcd,
    start_gateway,
    use_gateway,
)
from tests.integration.test_deis import root as deis_root
from tests.integration.test_deis import sets as deis_sets
from tests.integration.test_django import pg_rows, seed_postgres
from tests.integration.test_dss import USER as DSS_USER
from tests.integration.test_dss import dss_sets, event_names, skip_for
from tests.integration.test_dss import running as dss_running
from tests.integration.test_govuk import (
    ASSETS,
    DBS,
    TBZ2,
    Offsite,
    _agents,
    _keyring,
    _no_secret,
    empty_target,
    offsite,
)
from tests.integration.test_govuk import _rows as govuk_rows
from tests.integration.test_incremental import change
from tests.integration.test_looker import ki_args, without_dir_mtimes
from tests.integration.test_looker import status as looker_status
from tests.integration.test_standins import ok
from tests.integration.test_storage import env as s3_env
from tests.integration.test_storage import s3_world
from tests.integration.world import World, fingerprint, write_config

# fixtures shared with test_govuk and test_deis (the deis source cluster)
__all__ = ["deis_host", "deis_pg", "deis_root", "empty_target", "etcd", "offsite"]

SH_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def markdown(blocks: list[breakglass.Block]) -> str:
    """The blocks as the runbook prints them: a heading, a fenced ``sh`` block, how to check."""
    return "".join(f"### {b.title}\n\n```sh\n{b.script}\n```\n\n{b.check}\n\n" for b in blocks)


def restore_plan(
    world: World, recipe: str, host: str, source: str, sets: list[str], repo: Repository | None = None
) -> tuple[plan.Plan, mf.Manifest]:
    """What ``recipes restore RECIPE --host HOST --from SOURCE --set ...`` would run, and the
    manifest of the latest snapshot (as the runbook renders it for ``--snapshot latest``)."""
    cfg = config.load(str(world.config))
    r = apps.get(recipe)
    target, options = split_options(r, config.recipe_values(cfg, recipe, sets), "test")
    manifest = (repo or Repository(str(world.repo))).find(recipe, source)
    values, _ = restore_values(r, target, manifest.params)
    params = make_params(r, values, "test")
    return plan.restore_plan(r, params, host, options=options), manifest


def ssh_alias(world: World, host: servers.SshHost, alias: str = "scratch") -> None:
    """An ssh_config naming the scratch host (``HOST=scratch SSH_CONFIG=...``: ssh reads the
    passwd entry's home, never $HOME, so the test cannot use ~/.ssh/config)."""
    d = world.home / ".ssh"
    d.mkdir(parents=True, exist_ok=True)
    (d / "known_hosts").write_text(host.known_hosts_line() + "\n")
    (d / "config").write_text(
        f"Host {alias}\n  HostName {host.address}\n  Port {host.port}\n  User {host.user}\n"
        f"  IdentityFile {host.key_file}\n  IdentitiesOnly yes\n  BatchMode yes\n"
        f"  UserKnownHostsFile {d / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
    )


def allowed_signers(world: World) -> Path:
    path = world.home / "allowed_signers"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(breakglass.allowed_signers([Path(f"{world.signing_key}.pub").read_text()]))
    return path


def run_breakglass(
    world: World, blocks: list[breakglass.Block], tmp: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Every ``sh`` block of the Markdown, in order, as written, saved into one file and run with
    plain ``env -i HOME PATH bash FILE`` (as the runbook says: the script sets its own -euo
    pipefail) with only the variables the first block tells the operator to set."""
    doc = markdown(blocks)
    (tmp / "runbook.md").write_text(doc)
    script = tmp / "breakglass.sh"
    script.write_text("\n".join(SH_BLOCK.findall(doc)))
    given = {
        "HOME": str(world.home),
        "HOST": "scratch",
        "IDENTITY": str(world.identity),
        "ALLOWED_SIGNERS": str(allowed_signers(world)),
        "SSH_CONFIG": str(world.home / ".ssh" / "config"),
        "PATH": f"{os.path.dirname(servers.rclone_binary())}:{os.environ['PATH']}",  # rclone
        **(env or {}),
    }
    return subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in given.items()), "bash", str(script)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def _django_state(dst: Path, pg: servers.Postgres, db: str) -> tuple[Any, ...]:
    return comparable(dst), sqlite_rows(dst / SQLITE_DB.lstrip("/")), pg_rows(pg, db)


def _fresh_target(dst: Path, pg: servers.Postgres, db: str) -> None:
    subprocess.run(["rm", "-rf", str(dst)], check=True)
    pg.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE);')
    # pg_dumpall carried the source's postgres password: give the target its own back
    pg.psql(f"ALTER ROLE postgres PASSWORD '{pg.password}';")


def test_django_breakglass_equals_recipes_restore_for_a_chain(
    world: World,
    site: tuple[str, Path, Path],
    pg_source: servers.Postgres,
    pg_target: servers.Postgres,
    fresh_pg_db: str,
    ssh_target: servers.SshHost,
    tmp_path: Path,
) -> None:
    """A full and an incremental (a file added, one deleted): the blocks extract both archives,
    full first, load PostgreSQL and SQLite, and leave what ``recipes restore`` leaves."""
    root, src, dst = site
    seed_tree(src)
    seed_postgres(pg_source, fresh_pg_db)
    sets = ["--set", f"root={root}", "--set", "postgres=true", "--set", f'sqlite=["{SQLITE_DB}"]']
    world.cli("run", "django", "--host", "source", *sets, check=True)
    (src / "srv/data/added.txt").write_bytes(b"added after the full\n")
    (src / "etc/hostname").unlink()
    inc = json.loads(world.cli("--json", "run", "django", "--host", "source", *sets, check=True).stdout)
    assert inc["level"] == 1

    p, manifest = restore_plan(world, "django", "target", "source", [s for s in sets if s != "--set"])
    blocks = breakglass.blocks(p, str(world.repo), manifest)
    ssh_alias(world, ssh_target)
    try:
        done = run_breakglass(world, blocks, tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count('Good "recipes-manifest" signature') == 2  # the full and the incremental
        assert (dst / "srv/data/added.txt").exists() and not (dst / "etc/hostname").exists()
        by_hand = _django_state(dst, pg_target, fresh_pg_db)
        assert by_hand[0] == comparable(src)

        _fresh_target(dst, pg_target, fresh_pg_db)
        world.cli("restore", "django", "--host", "target", "--from", "source", *sets, check=True)
        assert _django_state(dst, pg_target, fresh_pg_db) == by_hand
    finally:
        _fresh_target(dst, pg_target, fresh_pg_db)


def test_a_damaged_object_stops_the_blocks_before_the_host_is_touched(
    world: World, site: tuple[str, Path, Path], ssh_target: servers.SshHost, tmp_path: Path
) -> None:
    root, src, dst = site
    seed_tree(src)
    sets = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    world.cli("run", "django", "--host", "source", *sets, check=True)
    p, manifest = restore_plan(world, "django", "target", "source", [s for s in sets if s != "--set"])
    blocks = breakglass.blocks(p, str(world.repo), manifest)
    ssh_alias(world, ssh_target)
    (stored,) = world.repo.glob("django/source/*/files.tar.zst.age")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 1  # same size, other bytes
    stored.write_bytes(bytes(data))
    done = run_breakglass(world, blocks, tmp_path)
    assert done.returncode != 0
    assert "files.tar.zst.age: FAILED" in done.stdout
    assert not dst.exists()  # nothing reached the host


def _sets(args: list[str]) -> list[str]:
    """``--set k=v ...`` as the ``k=v`` items ``config.recipe_values`` reads."""
    return [a for a in args if a != "--set"]


def test_looker_keystore_independent_breakglass_equals_recipes_restore(
    world: World,
    site: tuple[str, Path, Path],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    tmp_path: Path,
) -> None:
    """Quiesce (stop if running, start at exit), the home and /etc/init.d/looker from the
    repository, the backup key file from its key store, start and health check."""
    path, src, dst = site
    dst.mkdir(exist_ok=True)
    src_site, dst_site = Site(src, path), Site(dst, path)
    standins.ensure_user("looker")
    cmk = "cmk-" + uuid.uuid4().hex
    lk = standins.install_looker(src_site, user="looker", cmk=cmk)
    try:
        ok(ssh_source, lk.command("start"))
        args = ki_args(lk, tmp_path / "key-store")
        world.cli("run", "looker", "--host", "source", *args, check=True)
        p, manifest = restore_plan(world, "looker", "target", "source", _sets(args))
        blocks = breakglass.blocks(p, str(world.repo), manifest)
        assert manifest.external and cmk not in markdown(blocks)
        ssh_alias(world, ssh_target)
        done = run_breakglass(world, blocks, tmp_path)
        assert done.returncode == 0, done.stderr
        by_hand = _looker_state(ssh_target, dst_site, lk)
        assert by_hand[-1] == 0  # the blocks started it and the health check passed

        standins.stop_processes(path)
        subprocess.run(["rm", "-rf", str(dst)], check=True)
        dst.mkdir()
        world.cli("restore", "looker", "--host", "target", "--from", "source", *args, check=True)
        again = _looker_state(ssh_target, dst_site, lk)
        assert _differing(again[0], by_hand[0]) == [] and again[1:] == by_hand[1:]
    finally:
        standins.stop_processes(path)


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The entries two fingerprints disagree on (readable where ``==`` on dicts is not)."""
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _looker_state(host: servers.SshHost, dst: Site, lk: standins.LookerInstall) -> tuple[Any, ...]:
    home = dst.local_path(lk.home)
    # the key file is written when it is fetched (its mtime is then): compared on its own
    skip = (
        *standins.LOOKER_EXCLUDED,
        "looker/log",
        "looker/.deploying",
        "looker/.tmp",
        "looker/looker-backup.key",
    )
    key = home / "looker/looker-backup.key"
    return (
        without_dir_mtimes(fingerprint(home, skip)),
        dst.local_path(lk.initd).read_bytes(),
        key.read_bytes(),
        (oct(key.stat().st_mode), key.stat().st_uid, key.stat().st_gid),
        looker_status(host, lk),
    )


def test_dss_pristine_breakglass_equals_recipes_restore(
    world: World,
    site: tuple[str, Path, Path],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    tmp_path: Path,
) -> None:
    """The version guard (the snapshot's fact), DSS stopped if running, DATA_DIR moved aside
    (named by the run), the archive, DSS started: as ``recipes restore`` does it."""
    path, src, dst = site
    dst.mkdir(exist_ok=True)
    src_site, dst_site = Site(src, path), Site(dst, path)
    standins.ensure_user(DSS_USER)
    dss = standins.install_dss(src_site, user=DSS_USER, version="12.6.1")
    try:
        ok(ssh_source, dss.dss("start"))
        world.cli("run", "dss", "--host", "source", *dss_sets(dss), check=True)
        p, manifest = restore_plan(world, "dss", "target", "source", _sets(dss_sets(dss)))
        assert manifest.facts["dss_version"] == "12.6.1"
        blocks = breakglass.blocks(p, str(world.repo), manifest)
        ssh_alias(world, ssh_target)

        older = standins.install_dss(dst_site, user=DSS_USER, version="11.0.0")
        refused = run_breakglass(world, blocks, tmp_path)
        assert refused.returncode == 1 and "refusing: the snapshot is from DSS 12.6.1" in refused.stderr
        assert not _asides(older.data_path)  # nothing moved, nothing written

        states = []
        for how in ("breakglass", "recipes"):
            standins.stop_processes(path)
            subprocess.run(["rm", "-rf", str(dst)], check=True)
            dst.mkdir()
            old = standins.install_dss(dst_site, user=DSS_USER, version="12.6.1")
            ok(ssh_target, old.dss("start"))
            before = fingerprint(old.data_path, ("run",))
            if how == "breakglass":
                done = run_breakglass(world, blocks, tmp_path)
                assert done.returncode == 0, done.stderr
            else:
                world.cli(
                    "restore", "dss", "--host", "target", "--from", "source", *dss_sets(dss), check=True
                )
            assert len(_asides(old.data_path)) == 1, (how, list(old.data_path.parent.iterdir()))
            (aside,) = _asides(old.data_path)
            assert fingerprint(aside, ("run",)) == before  # the old content kept aside
            skip = (*skip_for(CATEGORIES["temporary"].folders), "run")
            restored = fingerprint(old.data_path, skip)
            assert restored == fingerprint(dss.data_path, skip)
            states.append((restored, dss_running(ssh_target, old), event_names(old)[-2:]))
        assert states[0] == states[1]
        assert states[0][1] and states[0][2] == ["dss-stopped", "dss-started"]
    finally:
        standins.stop_processes(path)


def _asides(data_path: Path) -> list[Path]:
    return sorted(data_path.parent.glob(f"{data_path.name}.before-restore-*"))


def test_govuk_datastore_breakglass_equals_recipes_restore(
    world: World,
    offsite: Offsite,
    empty_target: servers.MariaDB,
    ssh_target: servers.SshHost,
    tmp_path: Path,
) -> None:
    """duplicity + GnuPG on this machine (a private GNUPGHOME), the newest dump of each database
    of automysqlbackup's latest.tbz2 into MySQL on the host; the passphrase and S3 keys from the
    operator's variables, never written in the blocks."""
    sets = [*offsite.sets("govuk-datastores"), "--set", f'file_to_restore="/{TBZ2}"']
    p = _external_plan(world, "govuk-datastore", "target", _sets(sets))
    blocks = breakglass.blocks(p, str(world.repo))
    text = markdown(blocks)
    _no_secret(offsite, text)
    assert "OFFSITE_PASSPHRASE" in blocks[0].script and "ALLOWED_SIGNERS" not in blocks[0].script
    ssh_alias(world, ssh_target)
    env = offsite.env(tmp_path / "controller-tmp")
    done = run_breakglass(world, blocks, tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "daily_gv_blog_2026-11-17_06h00m.sql.bz2 into database gv_blog" in done.stdout
    by_hand = _govuk_rows(empty_target)
    assert by_hand[0] == ["1", "2", "3"] and by_hand[1] == ["4"]

    for name in DBS:
        empty_target.sql(f"DROP DATABASE IF EXISTS {name}")
    world.cli("restore", "govuk-datastore", "--host", "target", *sets, env=env, check=True)
    assert _govuk_rows(empty_target) == by_hand


def _govuk_rows(db: servers.MariaDB) -> tuple[list[str], ...]:
    return (
        govuk_rows(db, "SELECT id FROM gv_blog.posts ORDER BY id"),
        govuk_rows(db, "SELECT COUNT(*) FROM gv_white_hall.docs"),
        govuk_rows(db, "SELECT id, body FROM gv_white_hall.docs ORDER BY id"),
    )


def _external_plan(world: World, recipe: str, host: str, sets: list[str]) -> plan.Plan:
    """What ``recipes restore RECIPE --host HOST`` runs for a recipe restored from its own
    source (a duplicity collection: no manifest)."""
    cfg = config.load(str(world.config))
    r = apps.get(recipe)
    target, options = split_options(r, config.recipe_values(cfg, recipe, sets), "test")
    return plan.restore_plan(r, make_params(r, target, "test"), host, options=options)


@attrs.frozen
class Cluster:
    """A second Deis stand-in cluster: its own host (sshd), PostgreSQL and etcd, the stand-ins
    under /srv/deis (as the host sees it) and no database, keys or store yet."""

    host: servers.SshHost
    pg: servers.Postgres
    etcd: Etcd
    root: Path

    def state(self, gw: Gateway) -> tuple[Any, ...]:
        """What a restore left: objects, their content type and metadata, store files, rows,
        etcd keys, the dump kept on the host, and what ran (the stand-ins' events)."""
        rows = self.pg.psql(
            "SELECT count(*) FROM api_key; SELECT count(*) FROM api_app; SELECT count(*) FROM api_domain;",
            db=DEIS_DB,
        ).split()
        return (
            gw.objects(),
            gw.meta(),
            fingerprint(self.root / "store"),
            rows,
            self.etcd.tree(),
            (self.root / "dump_all.sql").read_bytes(),
            (self.root / "events.log").read_text().splitlines(),
        )

    def wipe(self) -> None:
        self.pg.psql(f"DROP DATABASE IF EXISTS {DEIS_DB} WITH (FORCE);")
        self.etcd.ctl("rm", "--recursive", "/deis", check=False)
        for name in ("store", "events.log", "dump_all.sql", "gateway.env"):
            subprocess.run(["rm", "-rf", str(self.root / name)], check=True)


@pytest.fixture
def deis2() -> Iterator[Cluster]:
    pg = servers.start_postgres(tcp=True, socket_alias_port=5432)
    site = Path(tempfile.mkdtemp(prefix="deis2-site-"))
    os.chmod(site, 0o755)
    host = servers.start_sshd("deis2", binds={"/var/run/postgresql": pg.socket_dir, DEIS_ROOT: str(site)})
    server = start_etcd()
    install_standins(site)
    try:
        yield Cluster(host, pg, server, site)
    finally:
        server.stop()
        host.stop()
        pg.stop()
        shutil.rmtree(site, ignore_errors=True)


def test_deis_breakglass_onto_a_second_cluster_equals_recipes_restore(
    keys: tuple[Path, str, Path],
    deis_root: Path,
    deis_pg: servers.Postgres,
    deis_host: servers.SshHost,
    etcd: Etcd,
    deis2: Cluster,
    tmp_path: Path,
) -> None:
    """Backup of the first cluster; the blocks rebuild a second one (its new gateway's keys
    read from it, buckets put back with rclone with each object's content type and metadata,
    the store tarball, the database booted from db_wal, etcd re-synced by manage.py shell);
    then the second cluster wiped and ``recipes restore`` onto it: the same objects, metadata,
    files, rows, etcd keys and calls."""
    identity, recipient, signing_key = keys
    world = World(
        tmp_path / "recipes.toml", tmp_path / "repo", identity, recipient, tmp_path / "cache",
        tmp_path / "home", signing_key,
    )  # fmt: skip
    write_config(
        world.config, world.repo, identity, recipient, {"deis": deis_host, "deis2": deis2.host}, signing_key
    )
    old = start_gateway()
    gateways = [old]
    try:
        use_gateway(deis_root, old)
        fill(old, deis_pg)
        store = deis_root / "store"
        (store / "logs").mkdir(parents=True)
        (store / "logs" / "deis-controller.log").write_text("started\n" * 1000)
        (store / "logs" / "deis-registry.log").write_text("pushed app1:v1\n")
        os.chown(store / "logs" / "deis-registry.log", 1234, 5678)
        os.chmod(store / "logs" / "deis-registry.log", 0o640)
        ok(deis_host, f"cd {DEIS_ROOT}/app && ETCD={etcd.endpoint} ./manage.py shell <<'EOF'\n{RESYNC}EOF")
        keys_before, objects_before, meta_before = etcd.tree(), old.objects(), old.meta()
        world.cli("run", "deis", "--host", "deis", *deis_sets(old.url, etcd), check=True)

        new = start_gateway()
        gateways.append(new)
        use_gateway(deis2.root, new)
        target = deis_sets(new.url, deis2.etcd)
        p, manifest = restore_plan(world, "deis", "deis2", "deis", _sets(target))
        blocks = breakglass.blocks(p, str(world.repo), manifest)
        text = markdown(blocks)
        assert new.key not in text and new.secret not in text and old.secret not in text
        ssh_alias(world, deis2.host)
        done = run_breakglass(world, blocks, tmp_path)
        assert done.returncode == 0, done.stderr
        assert "break-glass restore of deis onto scratch finished" in done.stdout
        assert new.secret not in done.stdout + done.stderr
        by_hand = deis2.state(new)
        objects, meta, files, rows, keys_after, _, _ = by_hand
        assert objects == objects_before and files == fingerprint(store)
        assert rows == ["2", "3", "2"] and keys_after == keys_before
        # rclone keeps each object's modification time as x-amz-meta-mtime (no flag turns it
        # off); everything else is the source's content type and metadata
        assert {
            k: (t, {m: v for m, v in md.items() if m != "mtime"}) for k, (t, md) in meta.items()
        } == meta_before

        deis2.wipe()
        again = start_gateway()
        gateways.append(again)
        use_gateway(deis2.root, again)
        world.cli(
            "restore",
            "deis",
            "--host",
            "deis2",
            "--from",
            "deis",
            *deis_sets(again.url, deis2.etcd),
            check=True,
        )
        by_recipes = deis2.state(again)
        assert by_recipes[1] == meta_before
        assert by_recipes[0] == by_hand[0] and by_recipes[2:] == by_hand[2:]
    finally:
        for gw in gateways:
            gw.stop()
        deis2.wipe()


def test_govuk_assets_breakglass_equals_recipes_restore_and_refuses_a_non_empty_target(
    world: World, offsite: Offsite, site: tuple[str, Path, Path], ssh_target: servers.SshHost, tmp_path: Path
) -> None:
    """The tree case: duplicity restores the directory here (a private GNUPGHOME, its agent
    killed at the end), streamed as a tar into the target; a non-empty target refused unless
    FORCE=yes, then kept aside as --force keeps it; the owner step as recipes runs it."""
    path, _src, dst = site
    keyring = _keyring(world)
    keyring_before = fingerprint(keyring)
    tmp = tmp_path / "controller-tmp"
    sets = [
        *offsite.sets("assets-whitehall"),
        *("--set", f'file_to_restore="{ASSETS}/"', "--set", f'target="{path}/whitehall"'),
    ]
    owned = [*sets, "--set", 'owner="1500:1500"']
    env = offsite.env(tmp)
    ssh_alias(world, ssh_target)
    tree = dst / "whitehall"

    blocks = breakglass.blocks(_external_plan(world, "govuk-assets", "target", _sets(sets)), str(world.repo))
    _no_secret(offsite, markdown(blocks))
    done = run_breakglass(world, blocks, tmp_path, env)
    assert done.returncode == 0, done.stderr
    _no_secret(offsite, done.stdout, done.stderr)
    _mine_clean(tmp, keyring, keyring_before)  # no key, agent or restored file left here
    by_hand = fingerprint(tree)
    assert by_hand == fingerprint(offsite.assets)
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    world.cli("restore", "govuk-assets", "--host", "target", *sets, env=env, check=True)
    assert fingerprint(tree) == by_hand

    # non-empty: refused before anything is written; with FORCE=yes kept aside, then owned
    blocks = breakglass.blocks(_external_plan(world, "govuk-assets", "target", _sets(owned)), str(world.repo))
    _local(tree)
    refused = run_breakglass(world, blocks, tmp_path, env)
    assert refused.returncode == 1 and f"refusing: target {path}/whitehall is not empty" in refused.stderr
    assert (tree / "local.txt").exists() and not _aside(dst)
    states = []
    for how in ("breakglass", "recipes"):
        subprocess.run(["rm", "-rf", str(tree), *map(str, _aside(dst))], check=True)
        _local(tree)
        if how == "breakglass":
            forced = run_breakglass(world, blocks, tmp_path, {**env, "FORCE": "yes"})
            assert forced.returncode == 0, forced.stderr
        else:
            world.cli("restore", "govuk-assets", "--host", "target", "--force", *owned, env=env, check=True)
        _mine_clean(tmp, keyring, keyring_before)
        (aside,) = _aside(dst)
        states.append((fingerprint(tree), fingerprint(aside)))
    assert states[0] == states[1]
    assert (tree / "sub" / "b.txt").stat().st_uid == 1500 and not (tree / "local.txt").exists()
    assert (aside / "local.txt").read_text() == "kept"


def _mine_clean(tmp: Path, keyring: Path, before: dict[str, tuple[object, ...]]) -> None:
    """test_govuk's ``_clean`` for what this run owns: its TMPDIR empty (no key, no restored
    tree), no gpg-agent of it alive, the operator's keyring untouched. (``_clean`` also wants no
    short GNUPGHOME and no agent machine-wide: other test runs on the machine make those.)"""
    assert list(tmp.iterdir()) == []
    assert _agents(str(tmp)) == []
    assert fingerprint(keyring) == before


def _local(tree: Path) -> None:
    """A target holding a file of its own (the same bytes and time each time)."""
    tree.mkdir(exist_ok=True)
    (tree / "local.txt").write_text("kept")
    os.utime(tree / "local.txt", (1_700_000_000, 1_700_000_000))


def _aside(dst: Path) -> list[Path]:
    return sorted(dst.glob("whitehall.before-restore-*"))


def test_django_from_an_s3_repository_breakglass_equals_recipes_restore(
    world: World,
    site: tuple[str, Path, Path],
    s3_server: servers.S3Server,
    s3_bucket: str,
    ssh_target: servers.SshHost,
    tmp_path: Path,
) -> None:
    """A full and an incremental in a bucket of a real S3 API: the blocks fetch each manifest,
    signature and object with rclone (keys and endpoint from the environment, as recipes reads
    them), check them, and restore what ``recipes restore`` restores."""
    root, src, dst = site
    seed_tree(src)
    s3 = s3_world(world, s3_server, s3_bucket, tmp_path)
    creds = s3_env(s3_server, tmp_path)
    sets = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    s3.cli("run", "django", "--host", "source", *sets, env=creds, check=True)
    change(src, 1)  # a deleted file, a deleted directory, a rename, a chmod, new rows
    s3.cli("run", "django", "--host", "source", *sets, env=creds, check=True)

    url = f"s3://{s3_bucket}/backups"
    repo = Repository(url, s3_server.options())
    p, manifest = restore_plan(s3, "django", "target", "source", _sets(sets), repo)
    assert manifest.level == 1
    full = chain.resolve(manifest, lambda sid: repo.load("django", "source", sid))
    blocks = breakglass.blocks(p, url, manifest, full)
    text = markdown(blocks)
    assert s3_server.secret not in text and s3_server.key not in text
    assert f"REPO:=repo:{s3_bucket}/backups" in text and "rclone copyto" in text
    ssh_alias(world, ssh_target)
    keys = {**s3_server.env(), "S3_ENDPOINT": s3_server.endpoint}
    done = run_breakglass(world, blocks, tmp_path, keys)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('Good "recipes-manifest" signature') == 2
    assert s3_server.secret not in done.stdout + done.stderr
    by_hand = comparable(dst), sqlite_rows(dst / SQLITE_DB.lstrip("/"))
    assert by_hand[0] == comparable(src)

    subprocess.run(["rm", "-rf", str(dst)], check=True)
    s3.cli("restore", "django", "--host", "target", "--from", "source", *sets, env=creds, check=True)
    assert (comparable(dst), sqlite_rows(dst / SQLITE_DB.lstrip("/"))) == by_hand

    # the runbook the CLI writes for --snapshot latest holds the same blocks (its chain read
    # from the bucket with the repository's options: endpoint, keys)
    book = tmp_path / "runbook.md"
    s3.cli(
        "runbook",
        "django",
        "--host",
        "source",
        "--snapshot",
        "latest",
        *sets,
        "-o",
        str(book),
        env=creds,
        check=True,
    )
    written = SH_BLOCK.findall(book.read_text())
    # (the first block differs only in the host it names as the one restored onto)
    assert written[-len(blocks) + 1 :] == [f"{b.script}\n" for b in blocks[1:]]
