"""The dss recipe end to end over real SSH: a DSS stand-in on host "source" is backed up with the
CLI and restored on host "target" (the same DSS kit installed there), then compared.

The stand-ins (tests/integration/standins) behave like DSS in what the recipe depends on: a
real process behind ``DATA_DIR/bin/dss start|stop|status``, jobs that can be running, and an
events log outside DATA_DIR telling when DSS was stopped and started. Govern's database is the
real PostgreSQL of each host.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from recipes.apps.dss import CATEGORIES, run_as
from tests import servers
from tests.integration import standins
from tests.integration.standins import DssInstall, Site
from tests.integration.test_standins import alive, ok, run
from tests.integration.world import World, fingerprint

pytestmark = pytest.mark.integration

USER = "dataiku"


@pytest.fixture(scope="module")
def dss_user() -> str:
    """The OS user DSS runs as (machine-wide; both hosts share /etc/passwd)."""
    standins.ensure_user(USER)
    return USER


@pytest.fixture
def sites(site: tuple[str, Path, Path]) -> Iterator[tuple[Site, Site]]:
    """The source and target sides of the per-test site; no stand-in left running afterwards."""
    path, src, dst = site
    dst.mkdir(exist_ok=True)  # the site fixture makes only the source side
    yield Site(src, path), Site(dst, path)
    standins.stop_processes(path)


def dss_sets(dss: DssInstall, *more: str) -> list[str]:
    """``--set`` arguments for this install, plus ``more`` (each a ``key=value``); etc_dir is the
    site's own ``etc`` (include_config reads and restores there, never the host's /etc)."""
    items = [f"data_dir={dss.data_dir}", f"user={USER}", f"etc_dir={dss.site.site_path}/etc", *more]
    return [word for item in items for word in ("--set", item)]


def running(host: servers.SshHost, dss: DssInstall) -> bool:
    """Whether ``bin/dss status`` says DSS runs on host."""
    return run(host, dss.dss("status"))[0] == 0


def pid_of(dss: DssInstall) -> int:
    return int((dss.data_path / "run" / "supervisord.pid").read_text())


def event_names(dss: DssInstall) -> list[str]:
    return [e.name for e in standins.read_events(dss.events)]


def error_line(stderr: str) -> str:
    """The CLI's one error line, asserting it is the only one, the last, and no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("recipes: error: ")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    assert "Traceback" not in stderr
    return errors[0]


def no_snapshots(world: World) -> None:
    listed = world.cli("--json", "snapshots", check=True)
    assert json.loads(listed.stdout) == []


def skip_for(excluded: tuple[str, ...]) -> tuple[str, ...]:
    """What a file comparison leaves out: the excluded folders, and ``run`` (a live DSS writes its
    pid and log there on both hosts; its backed-up content is compared on its own)."""
    return (*excluded, "run")


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_backup_then_restore_on_second_host_for_each_exclude_category(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
    category: str,
) -> None:
    src_site, dst_site = sites
    dss = standins.install_dss(src_site, user=dss_user)
    kit = standins.install_dss_kit(dst_site)  # the same INSTALL_DIR path, as on the source
    assert kit.install_dir == dss.install_dir
    ok(ssh_source, dss.dss("start"))
    before = pid_of(dss)
    # "temporary" is the default: given by leaving exclude unset
    sets = dss_sets(dss) if category == "temporary" else dss_sets(dss, f'exclude=["{category}"]')

    backup = world.cli("--json", "run", "dss", "--host", "source", *sets)
    assert backup.returncode == 0, backup.stderr
    manifest = json.loads(backup.stdout)
    assert manifest["params"]["exclude"] == [category]
    assert {o["name"] for o in manifest["objects"]} == {"files.tar", "files.snar", "config.tar"}
    # stopped for the archive, running again after it
    assert running(ssh_source, dss) and pid_of(dss) != before and not alive(before)
    names = event_names(dss)
    assert names[-2:] == ["dss-stopped", "dss-started"], names

    restore = world.cli("restore", "dss", "--host", "target", "--from", "source", *sets)
    assert restore.returncode == 0, restore.stderr
    restored = dst_site.local_path(dss.data_dir)
    target = DssInstall(dst_site, kit.install_dir, dss.data_dir, kit.version, "", dss_user, kit.events)
    assert running(ssh_target, target)  # the restore's last step: "Restart DSS"

    excluded = CATEGORIES[category].folders
    for folder in excluded:
        assert (dss.data_path / folder / "PROJ").exists(), folder
        if folder == "run":  # DSS itself made run/ again on start: the backed-up logs are not there
            assert not (restored / "run" / "PROJ").exists()
        else:
            assert not (restored / folder).exists(), folder
    skip = skip_for(excluded)
    assert fingerprint(restored, skip) == fingerprint(dss.data_path, skip)
    if "run" not in excluded:
        assert fingerprint(restored / "run" / "PROJ") == fingerprint(dss.data_path / "run" / "PROJ")
    for other in {f for cat in CATEGORIES.values() for f in cat.folders} - set(excluded) - {"run"}:
        assert (restored / other / "PROJ").is_dir(), other  # the rest came back
    assert (restored / "bin" / "dss").is_symlink() and (restored / "config" / "connections.json").exists()


def test_a_stopped_dss_stays_stopped(
    world: World, sites: tuple[Site, Site], ssh_source: servers.SshHost, dss_user: str
) -> None:
    dss = standins.install_dss(sites[0], user=dss_user)
    # jobs_check runs only while DSS runs (dsscli needs the backend; a stopped DSS runs no job)
    sets = dss_sets(dss, f"jobs_check={dss.data_dir}/bin/dsscli running-jobs")
    backup = world.cli("run", "dss", "--host", "source", *sets)
    assert backup.returncode == 0, backup.stderr
    assert not running(ssh_source, dss)
    assert "dss-started" not in event_names(dss) and "dss-stopped" not in event_names(dss)


def test_jobs_check_refuses_while_a_job_runs_and_nothing_is_stopped(
    world: World, sites: tuple[Site, Site], ssh_source: servers.SshHost, dss_user: str
) -> None:
    dss = standins.install_dss(sites[0], user=dss_user)
    ok(ssh_source, dss.dss("start"))
    pid = pid_of(dss)
    dss.mark_job_running("PROJ", "build_2024")
    check = "bin/dsscli running-jobs"  # relative: it runs in DATA_DIR
    sets = dss_sets(dss, f"jobs_check={check}")

    refused = world.cli("run", "dss", "--host", "source", *sets)
    assert refused.returncode == 1, refused.stderr
    line = error_line(refused.stderr)
    assert f"jobs_check {check} exited 1 (PROJ/build_2024)" in line
    assert "DSS was not stopped" in line and "let the jobs finish" in line
    assert running(ssh_source, dss) and pid_of(dss) == pid  # never stopped
    names = event_names(dss)
    assert "dss-stopped" not in names and "job-aborted" not in names
    assert (dss.data_path / "jobs/PROJ/build_2024/RUNNING").exists()
    no_snapshots(world)

    dss.finish_job("PROJ", "build_2024")
    world.cli("run", "dss", "--host", "source", *sets, check=True)
    assert running(ssh_source, dss)
    assert event_names(dss)[-2:] == ["dss-stopped", "dss-started"]


def test_missing_data_dir_fails_with_one_line_before_anything(
    world: World, sites: tuple[Site, Site], ssh_source: servers.SshHost, dss_user: str
) -> None:
    dss = standins.install_dss(sites[0], user=dss_user)
    ok(ssh_source, dss.dss("start"))
    missing = f"{sites[0].site_path}/home/dataiku/no_such_dir"
    bad = world.cli("run", "dss", "--host", "source", "--set", f"data_dir={missing}", "--set", f"user={USER}")
    assert bad.returncode == 1  # a step failed on the host (docs: exit 1)
    line = error_line(bad.stderr)
    assert f"DSS data directory {missing} does not exist" in line and "set data_dir" in line
    assert "check-data-dir failed on source" in line
    assert running(ssh_source, dss) and "dss-stopped" not in event_names(dss)
    no_snapshots(world)


def test_a_failure_after_the_stop_starts_dss_again_and_stores_nothing(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    dss_user: str,
    pg_source: servers.Postgres,
) -> None:
    dss = standins.install_dss(sites[0], user=dss_user)
    ok(ssh_source, dss.dss("start"))
    govern = (
        f'govern_postgres={{host="127.0.0.1", port={pg_source.port}, password_env="GOVERN_PW", '
        'database="no_such_db"}'
    )
    bad = world.cli(
        "run", "dss", "--host", "source", *dss_sets(dss, govern), env={"GOVERN_PW": pg_source.password}
    )
    assert bad.returncode == 1
    line = error_line(bad.stderr)
    assert "dump govern failed on source" in line and "no_such_db" in line
    assert pg_source.password not in bad.stdout + bad.stderr
    assert running(ssh_source, dss)
    assert event_names(dss)[-2:] == ["dss-stopped", "dss-started"]  # the dump ran while stopped
    no_snapshots(world)


def govern_rows(pg: servers.Postgres, db: str) -> str:
    return pg.psql("SELECT id, kind, name, encode(payload, 'hex') FROM governed_items ORDER BY id", db=db)


def test_govern_database_is_dumped_while_stopped_and_restored(
    world: World,
    sites: tuple[Site, Site],
    ssh_source: servers.SshHost,
    ssh_target: servers.SshHost,
    dss_user: str,
    pg_source: servers.Postgres,
    pg_target: servers.Postgres,
    fresh_pg_db: str,
) -> None:
    src_site, dst_site = sites
    dss = standins.install_dss(src_site, user=dss_user)
    kit = standins.install_dss_kit(dst_site)
    pg_source.psql(
        "CREATE TABLE governed_items(id serial PRIMARY KEY, kind text, name text, payload bytea);"
        "INSERT INTO governed_items(kind, name, payload) SELECT "
        "(ARRAY['business-initiative','project','model','blueprint'])[1 + g % 4], 'item ' || g, "
        "decode(md5(g::text), 'hex') FROM generate_series(1, 500) g;",
        db=fresh_pg_db,
    )
    ok(ssh_source, dss.dss("start"))

    def sets(pg: servers.Postgres, env: str) -> list[str]:
        table = f'{{host="127.0.0.1", port={pg.port}, password_env="{env}", database="{fresh_pg_db}"}}'
        return dss_sets(dss, f"govern_postgres={table}")

    env = {"SRC_PG_PW": pg_source.password, "TGT_PG_PW": pg_target.password}
    plan = world.cli("plan", "dss", "--host", "source", *sets(pg_source, "SRC_PG_PW"), env=env)
    assert plan.returncode == 0, plan.stderr
    assert "PGPASSWORD=*** pg_dump" in plan.stdout and pg_source.password not in plan.stdout
    backup = world.cli(
        "--json", "-vv", "run", "dss", "--host", "source", *sets(pg_source, "SRC_PG_PW"), env=env
    )
    assert backup.returncode == 0, backup.stderr
    manifest = json.loads(backup.stdout)
    assert {o["name"] for o in manifest["objects"]} == {
        "files.tar",
        "files.snar",
        "config.tar",
        "dumps/govern.sql",
    }
    steps = [(s["kind"], s["name"]) for s in manifest["steps"]]
    assert steps.index(("quiesce", "dss")) < steps.index(("dump", "govern"))  # dumped while stopped
    assert running(ssh_source, dss)
    for text in (backup.stdout, backup.stderr, *(p.read_text() for p in world.repo.rglob("manifest.json"))):
        assert pg_source.password not in text and pg_target.password not in text

    try:
        restore = world.cli(
            "-vv",
            "restore",
            "dss",
            "--host",
            "target",
            "--from",
            "source",
            *sets(pg_target, "TGT_PG_PW"),
            env=env,
        )
        assert restore.returncode == 0, restore.stderr
        assert pg_source.password not in restore.stdout + restore.stderr
        assert pg_target.password not in restore.stdout + restore.stderr
        assert govern_rows(pg_target, fresh_pg_db) == govern_rows(pg_source, fresh_pg_db)
        assert len(govern_rows(pg_target, fresh_pg_db).splitlines()) == 500
        target = DssInstall(dst_site, kit.install_dir, dss.data_dir, kit.version, "", dss_user, kit.events)
        assert running(ssh_target, target)
        skip = skip_for(CATEGORIES["temporary"].folders)
        assert fingerprint(dst_site.local_path(dss.data_dir), skip) == fingerprint(dss.data_path, skip)
    finally:
        pg_target.psql(f'DROP DATABASE IF EXISTS "{fresh_pg_db}" WITH (FORCE);')


def test_run_as_works_when_the_login_is_the_user_itself(
    ssh_source: servers.SshHost, sites: tuple[Site, Site], dss_user: str
) -> None:
    """Logged in as root it goes through sudo; logged in as the DSS user (here: runuser, as the
    user has no sudo rights) it runs the command directly."""
    as_root = ok(ssh_source, f"{run_as(dss_user)}run_as id -un")
    assert as_root.strip() == dss_user
    script = f"{run_as(dss_user)}run_as id -un"
    rc, out, err = run(ssh_source, f"runuser -u {dss_user} -- bash -c {shlex.quote(script)}")
    assert rc == 0 and out.strip() == dss_user, err
    # and the user has no sudo of its own: the direct branch is what made that work
    rc, _, _ = run(ssh_source, f"runuser -u {dss_user} -- sudo -n -u {dss_user} -- true")
    assert rc != 0
