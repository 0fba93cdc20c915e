"""Prove the Looker and DSS stand-ins and the loop-device btrfs, run on a real SSH test host.

No recipe code: these check that the test doubles behave like the real programs in what the
recipes will depend on (see tests/integration/standins/README.md), so recipe tests can trust them.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tests import servers
from tests.integration import standins
from tests.integration.standins import Site

pytestmark = pytest.mark.integration


def run(host: servers.SshHost, command: str) -> tuple[int, str, str]:
    """Run command as root on host over SSH (host key pinned); return (rc, stdout, stderr)."""
    keytype, b64 = host.host_public_key.split()[:2]
    client = paramiko.SSHClient()
    client.get_host_keys().add(
        f"[{host.address}]:{host.port}", keytype, paramiko.Ed25519Key(data=base64.b64decode(b64))
    )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host.address,
        port=host.port,
        username=host.user,
        key_filename=host.key_file,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        _, stdout, stderr = client.exec_command(command, timeout=60)
        out, err = stdout.read().decode(), stderr.read().decode()
        return stdout.channel.recv_exit_status(), out, err
    finally:
        client.close()


def ok(host: servers.SshHost, command: str) -> str:
    """Run command on host, assert it exits 0, return its stdout."""
    rc, out, err = run(host, command)
    assert rc == 0, f"{command!r} exited {rc}: {err}{out}"
    return out


def alive(pid: int) -> bool:
    """Tell whether pid runs (not a zombie); the hosts share the controller's pid namespace."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def src_site(site: tuple[str, Path, Path]) -> Iterator[Site]:
    """The source host's side of the per-test site dir; no stand-in left running after the test."""
    yield Site(site[1], site[0])
    standins.stop_processes(site[0])


@pytest.fixture(scope="module")
def looker_user() -> str:
    """The OS user the Looker stand-in runs as (machine-wide, like the real install's)."""
    standins.ensure_user("looker")
    return "looker"


# ---------------------------------------------------------------------------------------- Looker


def test_looker_start_status_stop_is_a_real_process(
    ssh_source: servers.SshHost, src_site: Site, looker_user: str
) -> None:
    lk = standins.install_looker(src_site, user=looker_user)
    assert run(ssh_source, lk.command("status"))[0] == 7
    out = ok(ssh_source, lk.command("start"))
    assert "started" in out
    assert run(ssh_source, lk.command("status"))[0] == 0
    pid = int((lk.app_dir / ".tmp" / "looker.pid").read_text())
    assert alive(pid)
    assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam(looker_user).pw_uid
    assert (lk.app_dir / ".db" / "looker.lck").read_text().strip() == str(pid)
    rc, _, err = run(ssh_source, lk.command("start"))
    assert rc == 1 and "already running" in err
    ok(ssh_source, lk.command("stop"))
    assert not alive(pid)
    assert not (lk.app_dir / ".tmp" / "looker.pid").exists()
    assert run(ssh_source, lk.command("status"))[0] == 7
    assert "not running" in ok(ssh_source, lk.command("stop"))
    names = [e.name for e in standins.read_events(lk.events)]
    assert names == ["started", "refused", "stopped", "stop-noop"]
    # the init.d equivalent drives the same script
    assert run(ssh_source, f"{lk.initd} status")[0] == 7


def test_looker_needs_home_as_the_real_script_does(ssh_source: servers.SshHost, src_site: Site) -> None:
    lk = standins.install_looker(src_site)
    other = src_site.root / "other"
    (other / "looker").mkdir(parents=True)  # another home with a looker dir: still not ours
    for home in ("/root", src_site.host_path(other)):
        rc, _, err = run(ssh_source, f"cd {lk.home}/looker && HOME={home} ./looker start")
        assert rc == 2 and f"HOME={lk.home}" in err
    assert run(ssh_source, lk.command("status"))[0] == 7


def test_looker_refuses_to_start_while_deploying(ssh_source: servers.SshHost, src_site: Site) -> None:
    lk = standins.install_looker(src_site, deploying=True)
    rc, _, err = run(ssh_source, lk.command("start"))
    assert rc == 1 and ".deploying" in err
    assert run(ssh_source, lk.command("status"))[0] == 7
    assert not (lk.app_dir / ".tmp" / "looker.pid").exists()
    (lk.app_dir / ".deploying").unlink()
    ok(ssh_source, lk.command("start"))
    ok(ssh_source, lk.command("stop"))


def test_looker_keyfile_needs_stopped_and_cmk_then_recrypt_checks_it(
    ssh_source: servers.SshHost, src_site: Site, looker_user: str
) -> None:
    lk = standins.install_looker(src_site, user=looker_user)
    keyfile = f"{lk.home}/backup.key"
    local_key = lk.home_dir / "backup.key"
    ok(ssh_source, lk.command("start"))
    try:
        rc, _, err = run(ssh_source, lk.command("generate_keyfile_for_backup", keyfile, cmk=True))
        assert rc == 1 and "running" in err and not local_key.exists()
    finally:
        ok(ssh_source, lk.command("stop"))
    rc, _, err = run(ssh_source, lk.command("generate_keyfile_for_backup", keyfile))
    assert rc == 1 and "LKR_MASTER_KEY_FILE" in err and not local_key.exists()
    missing = f"cd {lk.home}/looker && HOME={lk.home} LKR_MASTER_KEY_FILE=/nonexistent ./looker"
    rc, _, err = run(ssh_source, f"{missing} generate_keyfile_for_backup {keyfile}")
    assert rc == 1 and "cannot read the CMK" in err and not local_key.exists()
    wrong = src_site.root / "wrong-cmk"
    wrong.write_text("not-the-cmk\n")
    rc, _, err = run(
        ssh_source,
        f"cd {lk.home}/looker && HOME={lk.home} LKR_MASTER_KEY_FILE={src_site.host_path(wrong)} "
        f"./looker generate_keyfile_for_backup {keyfile}",
    )
    assert rc == 1 and "cannot decrypt" in err and not local_key.exists()

    ok(ssh_source, lk.command("generate_keyfile_for_backup", keyfile, cmk=True))
    assert local_key.stat().st_mode & 0o777 == 0o600
    data = json.loads(local_key.read_bytes())
    assert set(data) == {"dbmk", "backup_uid"} and data["dbmk"].endswith("\n")
    assert len(base64.b64decode(data["dbmk"])) == 32 and len(base64.b64decode(data["backup_uid"])) == 16
    cmk = (src_site.root / "etc/looker/cmk").read_text().strip()
    assert cmk not in local_key.read_text()

    bogus = lk.home_dir / "bogus.key"
    bogus.write_text('{"dbmk":"short","backup_uid":"x"}')
    rc, _, err = run(ssh_source, lk.command("keystore_independent_recrypt", f"{lk.home}/bogus.key", cmk=True))
    assert rc == 1 and "not a key file" in err and lk.recrypt_entries() == {}
    ok(ssh_source, lk.command("start"))
    try:
        rc, _, err = run(ssh_source, lk.command("keystore_independent_recrypt", keyfile, cmk=True))
        assert rc == 1 and "running" in err and lk.recrypt_entries() == {}
    finally:
        ok(ssh_source, lk.command("stop"))
    ok(ssh_source, lk.command("keystore_independent_recrypt", keyfile, cmk=True))
    entries = lk.recrypt_entries()
    assert list(entries) == [data["backup_uid"]]
    assert standins.keyfile_matches(entries, local_key.read_bytes())
    assert data["dbmk"].strip() not in (lk.app_dir / ".db" / "keystore_independent").read_text()
    assert [e.name for e in standins.read_events(lk.events)].count("recrypted") == 1


def test_looker_home_has_every_path_of_the_seed_table(src_site: Site) -> None:
    lk = standins.install_looker(src_site, deploying=True)
    for rel in (*standins.LOOKER_EXCLUDED, *standins.LOOKER_OPTIONAL, *standins.LOOKER_KEPT):
        assert (lk.home_dir / rel).exists(), rel
    assert (lk.app_dir / ".deploying").exists()
    assert (src_site.root / "etc/init.d/looker").exists()


# ------------------------------------------------------------------------------------------- DSS


def test_dss_start_status_stop_and_running_jobs(ssh_source: servers.SshHost, src_site: Site) -> None:
    dss = standins.install_dss(src_site)
    for folders in standins.DSS_CATEGORIES.values():
        for folder in folders:
            assert any((dss.data_path / folder).rglob("*.bin")), folder
    for kept in standins.DSS_KEPT:
        assert (dss.data_path / kept).exists(), kept
    ini = (dss.data_path / "install.ini").read_text()
    assert f"[general]\nnodetype = design\ninstallid = {dss.installid}\n" in ini
    assert json.loads((dss.data_path / "dss-version.json").read_text())["product_version"] == "12.5.0"
    assert os.readlink(dss.data_path / "bin/dss") == f"{dss.install_dir}/bin/dss"

    assert run(ssh_source, dss.dss("status"))[0] == 1
    assert run(ssh_source, dss.jobs_check())[0] == 2  # dsscli needs the backend
    ok(ssh_source, dss.dss("start"))
    pid = int((dss.data_path / "run/supervisord.pid").read_text())
    assert alive(pid)
    assert run(ssh_source, dss.dss("status"))[0] == 0
    assert run(ssh_source, dss.jobs_check())[0] == 0
    dss.mark_job_running("PROJ", "build_2024")
    rc, out, _ = run(ssh_source, dss.jobs_check())
    assert rc == 1 and out.strip() == "PROJ/build_2024"
    ok(ssh_source, dss.dss("stop"))
    assert not alive(pid)
    assert run(ssh_source, dss.dss("status"))[0] == 1
    assert (dss.data_path / "jobs/PROJ/build_2024/ABORTED").exists()
    names = [e.name for e in standins.read_events(dss.events)]
    assert names.index("dss-started") < names.index("job-aborted") < names.index("dss-stopped")


def test_dss_installer_relinks_a_restored_data_dir_and_refuses_a_downgrade(
    ssh_source: servers.SshHost, src_site: Site
) -> None:
    old = standins.install_dss(src_site, version="12.5.0")
    # "restored elsewhere": the data dir in a new place, the old kit gone, a newer kit installed
    moved = src_site.root / "restored" / "dss_data"
    moved.parent.mkdir()
    shutil.copytree(old.data_path, moved, symlinks=True)
    shutil.rmtree(src_site.local_path(old.install_dir))
    data_dir = src_site.host_path(moved)
    assert run(ssh_source, f"{data_dir}/bin/dss status")[0] == 127  # dangling link into the old kit

    older = standins.install_dss_kit(src_site, version="12.4.0")
    rc, _, err = run(ssh_source, f"{older.install_dir}/installer.sh -d {data_dir} -u")
    assert rc == 1 and "cannot downgrade" in err
    assert os.readlink(moved / "bin/dss") == f"{old.install_dir}/bin/dss"

    newer = standins.install_dss_kit(src_site, version="13.0.1")
    rc, _, err = run(ssh_source, f"{newer.install_dir}/installer.sh -d {data_dir}")
    assert rc == 2 and "usage" in err
    ok(ssh_source, f"{newer.install_dir}/installer.sh -d {data_dir} -u")
    assert os.readlink(moved / "bin/dss") == f"{newer.install_dir}/bin/dss"
    assert os.readlink(moved / "bin/dsscli") == f"{newer.install_dir}/bin/dsscli"
    assert not (moved / "bin/env-site.sh").is_symlink()
    assert f'DKUINSTALLDIR="{newer.install_dir}"' in (moved / "bin/env-default.sh").read_text()
    assert json.loads((moved / "dss-version.json").read_text())["product_version"] == "13.0.1"
    calls = [e for e in standins.read_events(newer.events) if e.name == "installer-called"]
    assert [c.detail for c in calls][-1] == f"-d {data_dir} -u"

    ok(ssh_source, f"{data_dir}/bin/dss start")
    try:
        rc, _, err = run(ssh_source, f"{newer.install_dir}/installer.sh -d {data_dir} -u")
        assert rc == 1 and "running" in err
    finally:
        ok(ssh_source, f"{data_dir}/bin/dss stop")


def test_dss_start_refuses_a_data_dir_of_another_version(ssh_source: servers.SshHost, src_site: Site) -> None:
    dss = standins.install_dss(src_site, version="13.0.1", data_version="12.5.0")
    rc, _, err = run(ssh_source, dss.dss("start"))
    assert rc == 1 and "installer.sh" in err
    assert run(ssh_source, dss.dss("status"))[0] == 1


# ----------------------------------------------------------------------------------------- btrfs


def test_btrfs_snapshot_needs_no_check_device_for_small_incrementals(
    btrfs: servers.Btrfs, ssh_source: servers.SshHost, site: tuple[str, Path, Path]
) -> None:
    mnt = f"{site[0]}/btrfs"
    btrfs.mount_on(ssh_source, mnt)
    try:
        t = uuid.uuid4().hex[:8]
        vol, s1, s2, work = (f"{mnt}/{n}-{t}" for n in ("vol", "snap1", "snap2", "work"))
        ok(ssh_source, f"btrfs -q subvolume create {vol} && mkdir {work}")
        ok(ssh_source, f"for i in $(seq 40); do head -c 16384 /dev/urandom > {vol}/f$i; done")
        ok(ssh_source, f"btrfs -q subvolume snapshot -r {vol} {s1}")
        assert run(ssh_source, f"touch {s1}/x")[0] != 0  # read-only
        ok(ssh_source, f"tar -C {s1} -cf {work}/full.tar --listed-incremental={work}/a.snar .")
        ok(ssh_source, f"cp {work}/a.snar {work}/b.snar && echo new > {vol}/added")
        ok(ssh_source, f"btrfs -q subvolume snapshot -r {vol} {s2}")
        devs = ok(ssh_source, f"stat -c %d {vol} {s1} {s2}").split()
        assert len(set(devs)) == 3  # every snapshot has a device number of its own

        def files(archive: str) -> set[str]:
            names = ok(ssh_source, f"tar -tf {work}/{archive}").split()
            return {n for n in names if not n.endswith("/")}

        ok(ssh_source, f"tar -C {s2} -cf {work}/default.tar --listed-incremental={work}/a.snar .")
        ok(
            ssh_source,
            f"tar -C {s2} -cf {work}/nocheck.tar --no-check-device --listed-incremental={work}/b.snar .",
        )
        assert len(files("full.tar")) == 40
        assert files("default.tar") == {*files("full.tar"), "./added"}  # everything again
        assert files("nocheck.tar") == {"./added"}
        ok(ssh_source, f"btrfs -q subvolume delete {s1} {s2} && btrfs -q subvolume delete {vol}")
        assert f"snap1-{t}" not in ok(ssh_source, f"ls {mnt}")
        listing = ok(ssh_source, f"btrfs subvolume list {mnt}")
        assert f"snap1-{t}" not in listing and f"snap2-{t}" not in listing
    finally:
        btrfs.unmount_on(ssh_source, mnt)
    assert run(ssh_source, f"mountpoint -q {mnt}")[0] != 0


def test_stop_processes_ends_servers_a_failed_test_left_running(
    ssh_source: servers.SshHost, src_site: Site
) -> None:
    lk = standins.install_looker(src_site)
    dss = standins.install_dss(src_site)
    ok(ssh_source, lk.command("start"))
    ok(ssh_source, dss.dss("start"))
    pids = {
        int((lk.app_dir / ".tmp/looker.pid").read_text()),
        int((dss.data_path / "run/supervisord.pid").read_text()),
    }
    assert sorted(standins.stop_processes(src_site.site_path)) == sorted(pids)
    assert not any(alive(p) for p in pids)
