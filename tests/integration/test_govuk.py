"""GOV.UK offsite restores (seed 004) with real parts: a duplicity 0.8 + GnuPG collection in an
S3 server (rclone), built the way GOV.UK's servers did (automysqlbackup ``latest.tbz2`` with daily
and weekly dumps, a full then an incremental, encrypted to a key with a passphrase, unsigned),
restored with the real CLI into a real MariaDB over real SSH; and assets as a directory."""

from __future__ import annotations

import bz2
import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from recipes.duplicity import GNUPG_PREFIX, SHORT_TMP
from tests import servers
from tests.integration.world import World, fingerprint

pytestmark = pytest.mark.integration

PASSPHRASE = "pp-SENTINEL-offsite-7781"
HOST_DIR = "data/backups/whitehall-mysql-backup-1/var/lib/automysqlbackup"
TBZ2 = f"{HOST_DIR}/latest.tbz2"
ASSETS = "mnt/uploads/whitehall"
DBS = ("gv_blog", "gv_white_hall")


@attrs.frozen
class Offsite:
    """A built collection and how to reach it."""

    bucket: str
    key_file: Path
    fingerprint: str
    full_time: int
    """A time between the full and the incremental (for --snapshot TIME)."""
    s3: servers.S3Server
    assets: Path
    """The asset tree as it was backed up."""

    def sets(self, prefix: str) -> list[str]:
        return [
            "--set",
            f'source="boto3+s3://{self.bucket}/{prefix}/"',
            "--set",
            f's3_endpoint_url="{self.s3.endpoint}"',
            "--set",
            'aws_key_env="OFFSITE_AWS_KEY"',
            "--set",
            'aws_secret_env="OFFSITE_AWS_SECRET"',
            "--set",
            f'gpg_key_file="{self.key_file}"',
            "--set",
            'passphrase_env="OFFSITE_PASSPHRASE"',
        ]

    def env(self, tmp: Path, passphrase: str = PASSPHRASE) -> dict[str, str]:
        tmp.mkdir(exist_ok=True)
        return {
            "OFFSITE_AWS_KEY": self.s3.key,
            "OFFSITE_AWS_SECRET": self.s3.secret,
            "OFFSITE_PASSPHRASE": passphrase,
            "TMPDIR": str(tmp),
        }


def _gpg(home: Path, *args: str) -> str:
    out = subprocess.run(
        ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", PASSPHRASE, *args],
        env={**os.environ, "GNUPGHOME": str(home)},
        capture_output=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return out.stdout.decode()


def _dump(db: servers.MariaDB, name: str, use_line: bool) -> bytes:
    args = ["mariadb-dump", "--no-defaults", f"-S{db.socket}", "-uroot", f"-p{db.root_password}"]
    args += ["--databases", name] if use_line else [name]
    return subprocess.run(args, capture_output=True, check=True).stdout


def _latest_tbz2(path: Path, dumps: dict[str, bytes]) -> None:
    """automysqlbackup's ``latest.tbz2``: ``latest/<file>.sql.bz2`` members."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:bz2") as tar:
        for name, data in dumps.items():
            packed = bz2.compress(data)
            info = tarfile.TarInfo(f"latest/{name}")
            info.size = len(packed)
            tar.addfile(info, io.BytesIO(packed))


def _duplicity(home: Path, work: Path, s3: servers.S3Server, *args: str) -> None:
    env = {**os.environ, "GNUPGHOME": str(home), **s3.env(), "PASSPHRASE": PASSPHRASE}
    done = subprocess.run(
        [
            "duplicity",
            *args,
            "--archive-dir",
            str(work / "cache"),
            "--name",
            "govuk",
            "--s3-endpoint-url",
            s3.endpoint,
        ],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()


def _rows(db: servers.MariaDB, sql: str) -> list[str]:
    return db.sql(sql).split()


@pytest.fixture(scope="module")
def offsite(
    tmp_path_factory: pytest.TempPathFactory, s3_server: servers.S3Server, mariadb_source: servers.MariaDB
) -> Iterator[Offsite]:
    work = tmp_path_factory.mktemp("offsite")
    home = work / "gnupg"
    home.mkdir(mode=0o700)
    _gpg(home, "--quick-gen-key", "Offsite <offsite@test.invalid>", "ed25519", "sign", "never")
    fpr = next(
        line.split(":")[9]
        for line in _gpg(home, "--list-secret-keys", "--with-colons").splitlines()
        if line.startswith("fpr:")
    )
    _gpg(home, "--quick-add-key", fpr, "cv25519", "encr", "never")
    key_file = work / "offsite-secret.asc"
    key_file.write_text(_gpg(home, "--armor", "--export-secret-keys", fpr))
    key_file.chmod(0o600)
    bucket = f"offsite-{uuid.uuid4().hex[:8]}"
    s3_server.make_bucket(bucket)

    src = mariadb_source
    for name in DBS:
        src.sql(f"DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}")
    src.sql("CREATE TABLE gv_blog.posts (id INT PRIMARY KEY, title TEXT)")
    src.sql("CREATE TABLE gv_white_hall.docs (id INT PRIMARY KEY, body TEXT)")
    src.sql("INSERT INTO gv_blog.posts VALUES (1, 'old')")
    weekly_blog = _dump(src, "gv_blog", True)  # an older weekly: must not be the one loaded
    src.sql("INSERT INTO gv_blog.posts VALUES (2, 'full')")
    tree = work / "src"
    _latest_tbz2(tree / TBZ2, {"daily_gv_blog_2026-11-16_06h00m.sql.bz2": _dump(src, "gv_blog", True)})
    _duplicity(
        home,
        work,
        s3_server,
        "full",
        "--encrypt-key",
        fpr,
        str(tree),
        f"boto3+s3://{bucket}/govuk-datastores",
    )
    time.sleep(1.1)
    full_time = int(time.time())
    time.sleep(1.1)
    src.sql("INSERT INTO gv_blog.posts VALUES (3, 'incremental')")
    src.sql("INSERT INTO gv_white_hall.docs VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")
    _latest_tbz2(
        tree / TBZ2,
        {
            "daily_gv_blog_2026-11-17_06h00m.sql.bz2": _dump(src, "gv_blog", True),
            "weekly_gv_blog_2026-11-10_06h00m.sql.bz2": weekly_blog,
            # no --databases: no USE line, the database name comes from the file name
            "daily_gv_white_hall_2026-11-17_06h00m_Tuesday.sql.bz2": _dump(src, "gv_white_hall", False),
            "weekly_gv_white_hall_2026-11-17_06h00m.sql.bz2": _dump(src, "gv_white_hall", False),
        },
    )
    _duplicity(
        home,
        work,
        s3_server,
        "incr",
        "--encrypt-key",
        fpr,
        str(tree),
        f"boto3+s3://{bucket}/govuk-datastores",
    )

    assets = work / "assets"
    (assets / ASSETS / "sub").mkdir(parents=True)
    (assets / ASSETS / "a.pdf").write_bytes(os.urandom(3000))
    (assets / ASSETS / "sub" / "b.txt").write_text("attachment\n")
    os.chown(assets / ASSETS / "sub" / "b.txt", 1234, 1234)
    os.chmod(assets / ASSETS / "sub" / "b.txt", 0o640)
    _duplicity(
        home,
        work,
        s3_server,
        "full",
        "--encrypt-key",
        fpr,
        str(assets),
        f"boto3+s3://{bucket}/assets-whitehall",
    )
    subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)}, check=False)
    for name in DBS:
        src.sql(f"DROP DATABASE IF EXISTS {name}")
    yield Offsite(bucket, key_file, fpr, full_time, s3_server, assets / ASSETS)


@pytest.fixture
def empty_target(mariadb_target: servers.MariaDB) -> Iterator[servers.MariaDB]:
    for name in DBS:
        mariadb_target.sql(f"DROP DATABASE IF EXISTS {name}")
    yield mariadb_target
    for name in DBS:
        mariadb_target.sql(f"DROP DATABASE IF EXISTS {name}")


def _keyring(world: World) -> Path:
    """The operator's own ~/.gnupg, with content: it must stay exactly as it is."""
    gnupg = world.home / ".gnupg"
    gnupg.mkdir(parents=True, exist_ok=True, mode=0o700)
    (gnupg / "pubring.kbx").write_bytes(b"operator's keyring")
    return gnupg


def _agents(where: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "gpg-agent" in line and where in line]


def _short_homes() -> set[str]:
    """Temporary GNUPGHOMEs made on a short path (TMPDIR here is too deep for agent sockets)."""
    return {str(p) for p in Path(SHORT_TMP).glob(f"{GNUPG_PREFIX}*")}


def _gone(probe: Callable[[], object], patience: float = 30.0) -> bool:
    """Whether ``probe()`` comes back empty: what this run leaked stays forever, while what a
    concurrent run elsewhere on this machine holds (its agent, its short home) goes when it ends."""
    deadline = time.monotonic() + patience
    while probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _clean(world: World, tmp: Path, keyring: Path, before: dict[str, tuple[object, ...]]) -> None:
    assert list(tmp.iterdir()) == []  # no temporary keyring, key or restored file left
    assert _agents(str(tmp)) == []
    assert _gone(lambda: _agents(GNUPG_PREFIX)) and _gone(_short_homes)
    assert fingerprint(keyring) == before


def _no_secret(offsite: Offsite, *texts: str) -> None:
    for text in texts:
        for secret in (PASSPHRASE, offsite.s3.secret, offsite.s3.key):
            assert secret not in text


def test_datastore_restore_loads_the_newest_dump_of_each_database(
    world: World, offsite: Offsite, empty_target: servers.MariaDB, tmp_path: Path
) -> None:
    keyring = _keyring(world)
    before = fingerprint(keyring)
    tmp = tmp_path / "controller-tmp"
    sets = [*offsite.sets("govuk-datastores"), "--set", f'file_to_restore="/{TBZ2}"']
    plan = world.cli("restore", "govuk-datastore", "--host", "target", "--plan", *sets, env=offsite.env(tmp))
    assert plan.returncode == 0, plan.stderr
    assert "duplicity restore --file-to-restore " + TBZ2 in plan.stdout
    assert "manual (not run, yours to do): the seed's 'revert all the manual actions" in plan.stdout

    done = world.cli("-v", "restore", "govuk-datastore", "--host", "target", *sets, env=offsite.env(tmp))
    assert done.returncode == 0, done.stderr
    assert _rows(empty_target, "SELECT id FROM gv_blog.posts ORDER BY id") == ["1", "2", "3"]
    assert _rows(empty_target, "SELECT COUNT(*) FROM gv_white_hall.docs") == ["4"]
    assert "daily_gv_blog_2026-11-17_06h00m.sql.bz2 into database gv_blog" in done.stderr
    assert "daily_gv_white_hall_2026-11-17_06h00m_Tuesday.sql.bz2 into database gv_white_hall" in done.stderr
    assert "collection-status: " in done.stderr
    assert "encrypted but not signed" in done.stderr
    _no_secret(offsite, plan.stdout, plan.stderr, done.stdout, done.stderr)
    _clean(world, tmp, keyring, before)


def test_snapshot_time_restores_the_full(
    world: World, offsite: Offsite, empty_target: servers.MariaDB, tmp_path: Path
) -> None:
    tmp = tmp_path / "controller-tmp"
    sets = [
        *offsite.sets("govuk-datastores"),
        "--set",
        f'file_to_restore="{TBZ2}"',
        "--set",
        'databases=["gv_blog"]',
    ]
    done = world.cli(
        "restore",
        "govuk-datastore",
        "--host",
        "target",
        "--snapshot",
        str(offsite.full_time),
        *sets,
        env=offsite.env(tmp),
    )
    assert done.returncode == 0, done.stderr
    assert _rows(empty_target, "SELECT id FROM gv_blog.posts ORDER BY id") == ["1", "2"]
    assert _rows(empty_target, "SHOW DATABASES LIKE 'gv_white_hall'") == []
    assert list(tmp.iterdir()) == []


def test_wrong_passphrase_is_one_line_and_changes_nothing(
    world: World, offsite: Offsite, empty_target: servers.MariaDB, tmp_path: Path
) -> None:
    keyring = _keyring(world)
    before = fingerprint(keyring)
    tmp = tmp_path / "controller-tmp"
    empty_target.sql(
        "CREATE DATABASE gv_blog; CREATE TABLE gv_blog.posts (id INT); INSERT INTO gv_blog.posts VALUES (99)"
    )
    sets = [*offsite.sets("govuk-datastores"), "--set", f'file_to_restore="{TBZ2}"']
    done = world.cli(
        "restore", "govuk-datastore", "--host", "target", *sets, env=offsite.env(tmp, "wrong-pass-SENTINEL")
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("recipes: error: duplicity")
    assert "bad passphrase" in errors[0] and "$OFFSITE_PASSPHRASE" in errors[0]
    assert "nothing was changed on the host" in errors[0] and "PARTLY" not in errors[0]
    assert "Traceback" not in done.stderr and "wrong-pass-SENTINEL" not in done.stderr
    assert _rows(empty_target, "SELECT id FROM gv_blog.posts") == ["99"]
    _clean(world, tmp, keyring, before)


def test_missing_passphrase_variable_is_a_config_error(
    world: World, offsite: Offsite, tmp_path: Path
) -> None:
    tmp = tmp_path / "controller-tmp"
    env = offsite.env(tmp)
    sets = [*offsite.sets("govuk-datastores"), "--set", 'passphrase_env="OFFSITE_UNSET_PW"']
    done = world.cli("restore", "govuk-datastore", "--host", "target", *sets, env=env)
    assert done.returncode == 2
    assert "OFFSITE_UNSET_PW is not set on the controller" in done.stderr
    assert list(tmp.iterdir()) == []


def test_a_failing_load_stops_and_cleans_up(
    world: World, offsite: Offsite, empty_target: servers.MariaDB, tmp_path: Path
) -> None:
    """The first real mysql error stops the load and is reported; the workspace still goes."""
    keyring = _keyring(world)
    before = fingerprint(keyring)
    tmp = tmp_path / "controller-tmp"
    # A table of another shape is in the way: the dump's DROP TABLE/CREATE works, so make the
    # database read-only for the load instead: a user without rights.
    empty_target.sql("CREATE USER IF NOT EXISTS 'gv_ro'@'localhost' IDENTIFIED BY 'ro-pw-SENTINEL'")
    sets = [
        *offsite.sets("govuk-datastores"),
        "--set",
        f'file_to_restore="{TBZ2}"',
        "--set",
        'mysql={user="gv_ro", password_env="GV_RO_PW"}',
    ]
    env = {**offsite.env(tmp), "GV_RO_PW": "ro-pw-SENTINEL"}
    done = world.cli("restore", "govuk-datastore", "--host", "target", *sets, env=env)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "ERROR" in errors[0] and "daily_gv_blog" in errors[0], errors
    assert "ro-pw-SENTINEL" not in done.stderr + done.stdout
    _clean(world, tmp, keyring, before)


def _cut_short_collection(offsite: Offsite, work: Path, prefix: str) -> None:
    """A full backup whose latest.tbz2 holds a good dump of gv_cut_a and a dump of gv_cut_b cut
    short mid-way (its bz2 stream ends after several blocks, as a half-written file does): read
    from the start, it has its ``DROP TABLE`` and thousands of rows, then it ends."""
    home = work / "gnupg"
    home.mkdir(parents=True, mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--import", str(offsite.key_file)], env=env, check=True, capture_output=True
    )
    good = b"CREATE DATABASE IF NOT EXISTS gv_cut_a;\nUSE gv_cut_a;\nCREATE TABLE t (id INT);\n"
    rows = "".join(f"INSERT INTO t VALUES ({i}, '{os.urandom(100).hex()}');\n" for i in range(30000))
    cut = "CREATE DATABASE IF NOT EXISTS gv_cut_b;\nUSE gv_cut_b;\nDROP TABLE IF EXISTS t;\n"
    cut += "CREATE TABLE t (id INT PRIMARY KEY, v TEXT);\n" + rows
    packed = bz2.compress(cut.encode())
    tree = work / "tree"
    (tree / TBZ2).parent.mkdir(parents=True)
    with tarfile.open(tree / TBZ2, "w:bz2") as tar:
        for name, data in (
            ("daily_gv_cut_a_2026-11-17_06h00m.sql.bz2", bz2.compress(good)),
            ("daily_gv_cut_b_2026-11-17_06h00m.sql.bz2", packed[: len(packed) // 2]),
        ):
            info = tarfile.TarInfo(f"latest/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    url = f"boto3+s3://{offsite.bucket}/{prefix}"
    trust = "--gpg-options=--trust-model=always"
    _duplicity(home, work, offsite.s3, "full", trust, "--encrypt-key", offsite.fingerprint, str(tree), url)
    subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)


def test_a_dump_cut_short_in_the_collection_is_refused_before_anything_is_loaded(
    world: World, offsite: Offsite, mariadb_target: servers.MariaDB, tmp_path: Path
) -> None:
    """Without the read-through, gv_cut_a was loaded, then gv_cut_b's DROP TABLE ran and ~9000
    of its rows, and the line blamed MariaDB ("ERROR 1064 ... syntax") for a damaged file."""
    target = mariadb_target
    target.sql("DROP DATABASE IF EXISTS gv_cut_a; DROP DATABASE IF EXISTS gv_cut_b")
    target.sql("CREATE DATABASE gv_cut_b; CREATE TABLE gv_cut_b.t (id INT PRIMARY KEY, v TEXT)")
    target.sql("INSERT INTO gv_cut_b.t VALUES (99, 'kept')")
    prefix = f"cut-{uuid.uuid4().hex[:6]}"
    _cut_short_collection(offsite, tmp_path / "build", prefix)
    tmp = tmp_path / "controller-tmp"
    sets = [*offsite.sets(prefix), "--set", f'file_to_restore="{TBZ2}"']
    done = world.cli("restore", "govuk-datastore", "--host", "target", *sets, env=offsite.env(tmp))
    try:
        assert done.returncode == 1, done.stderr
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr
        assert errors[0].startswith(
            "recipes: error: daily_gv_cut_b_2026-11-17_06h00m.sql.bz2 in the restored latest.tbz2 "
            "is cut short or damaged ("
        ), errors[0]
        assert "nothing was changed on the host" in errors[0] and "--snapshot TIME" in errors[0]
        assert "PARTLY" not in errors[0] and "Traceback" not in done.stderr
        # nothing loaded: the good dump neither, and the target's table is as it was
        assert _rows(target, "SHOW DATABASES LIKE 'gv_cut_a'") == []
        assert target.sql("SELECT id, v FROM gv_cut_b.t").split() == ["99", "kept"]
        assert list(tmp.iterdir()) == []
    finally:
        target.sql("DROP DATABASE IF EXISTS gv_cut_a; DROP DATABASE IF EXISTS gv_cut_b")


def test_assets_restore_streams_the_tree_and_refuses_a_non_empty_target(
    world: World, offsite: Offsite, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    path, _src, dst = site
    keyring = _keyring(world)
    before = fingerprint(keyring)
    tmp = tmp_path / "controller-tmp"
    target = f"{path}/whitehall"
    sets = [
        *offsite.sets("assets-whitehall"),
        "--set",
        f'file_to_restore="{ASSETS}/"',
        "--set",
        f'target="{target}"',
    ]
    done = world.cli("restore", "govuk-assets", "--host", "target", *sets, env=offsite.env(tmp))
    assert done.returncode == 0, done.stderr
    got = fingerprint(dst / "whitehall")
    want = fingerprint(offsite.assets)
    assert got == want
    _no_secret(offsite, done.stdout, done.stderr)
    _clean(world, tmp, keyring, before)

    # non-empty: refused without --force, nothing touched
    (dst / "whitehall" / "local.txt").write_text("kept")
    refused = world.cli("restore", "govuk-assets", "--host", "target", *sets, env=offsite.env(tmp))
    assert refused.returncode == 2
    assert "is not empty: pass --force" in refused.stderr
    # wrong passphrase with --force: what was there is moved back
    bad = world.cli(
        "restore", "govuk-assets", "--host", "target", "--force", *sets, env=offsite.env(tmp, "nope")
    )
    assert bad.returncode == 1 and "bad passphrase" in bad.stderr
    assert "PARTLY" not in bad.stderr and "taken back after the failure: move" in bad.stderr
    assert (dst / "whitehall" / "local.txt").read_text() == "kept"
    assert not list(dst.glob("whitehall.before-restore-*"))
    _clean(world, tmp, keyring, before)
    # with --force: the old tree is kept aside, the restored one is in place, owner set
    forced = world.cli(
        "restore",
        "govuk-assets",
        "--host",
        "target",
        "--force",
        *sets,
        "--set",
        'owner="1500:1500"',
        env=offsite.env(tmp),
    )
    assert forced.returncode == 0, forced.stderr
    aside = list(dst.glob("whitehall.before-restore-*"))
    assert len(aside) == 1 and (aside[0] / "local.txt").read_text() == "kept"
    assert not (dst / "whitehall" / "local.txt").exists()
    assert (dst / "whitehall" / "sub" / "b.txt").read_text() == "attachment\n"
    assert (dst / "whitehall" / "sub" / "b.txt").stat().st_uid == 1500
    _clean(world, tmp, keyring, before)


def _signed_full(offsite: Offsite, tmp_path: Path, tree: Path, url: str, *, signer: str = "forger") -> None:
    """A full backup of ``tree`` encrypted to the offsite key and signed by a key of ``signer``
    (a keyring of its own: the offsite public key plus the signer's secret key)."""
    home = tmp_path / f"gnupg-{signer}"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(
        ["gpg", "--batch", "--import", str(offsite.key_file)], env=env, check=True, capture_output=True
    )
    _gpg(home, "--quick-gen-key", f"{signer} <{signer}@test.invalid>", "ed25519", "sign", "never")
    fpr = next(
        line.split(":")[9]
        for line in _gpg(home, "--list-secret-keys", "--with-colons", signer).splitlines()
        if line.startswith("fpr:")
    )
    done = subprocess.run(
        [
            "duplicity",
            "full",
            "--encrypt-key",
            offsite.fingerprint,
            "--sign-key",
            fpr,
            "--gpg-options=--trust-model=always",
            "--archive-dir",
            str(tmp_path / f"cache-{signer}"),
            "--s3-endpoint-url",
            offsite.s3.endpoint,
            str(tree),
            url,
        ],
        env={**env, **offsite.s3.env(), "PASSPHRASE": PASSPHRASE, "SIGN_PASSPHRASE": PASSPHRASE},
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()


def test_sign_key_refuses_a_collection_signed_by_another_key_or_unsigned(
    world: World, offsite: Offsite, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    path, _src, dst = site
    keyring = _keyring(world)
    before = fingerprint(keyring)
    tmp = tmp_path / "controller-tmp"
    tree = tmp_path / "forged"
    (tree / ASSETS).mkdir(parents=True)
    (tree / ASSETS / "planted.txt").write_text("not from the offsite job\n")
    prefix = f"forged-{uuid.uuid4().hex[:6]}"
    _signed_full(offsite, tmp_path, tree, f"boto3+s3://{offsite.bucket}/{prefix}")
    target = f"{path}/whitehall"
    common = ["--set", f'file_to_restore="{ASSETS}/"', "--set", f'target="{target}"']
    common += ["--set", f'sign_key="{offsite.fingerprint}"']
    for source in (prefix, "assets-whitehall"):  # signed by the forger; GOV.UK's unsigned one
        done = world.cli(
            "restore",
            "govuk-assets",
            "--host",
            "target",
            *offsite.sets(source),
            *common,
            env=offsite.env(tmp),
        )
        assert done.returncode == 3, done.stderr
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
        assert errors[0].startswith("recipes: error: duplicity refused ") and "not sign_key" in errors[0]
        signed_by = "no key (unsigned)" if source == "assets-whitehall" else "signed by key "
        assert signed_by in errors[0], errors[0]
        assert not (dst / "whitehall").exists() or not list((dst / "whitehall").iterdir())
        _no_secret(offsite, done.stdout, done.stderr)
        _clean(world, tmp, keyring, before)


def test_run_govuk_assets_writes_a_signed_collection_that_restores_with_sign_key(
    world: World, offsite: Offsite, site: tuple[str, Path, Path], tmp_path: Path
) -> None:
    path, src_dir, dst = site
    keyring = _keyring(world)
    before = fingerprint(keyring)
    tmp = tmp_path / "controller-tmp"
    tree = src_dir / "uploads"
    (tree / "2026" / "11").mkdir(parents=True)
    (tree / "2026" / "11" / "report.pdf").write_bytes(os.urandom(5000))
    (tree / "index.txt").write_text("uploads\n")
    os.chown(tree / "index.txt", 1234, 1235)
    os.chmod(tree / "index.txt", 0o640)
    prefix = f"assets-run-{uuid.uuid4().hex[:6]}"
    keys = ["--set", f'encrypt_key="{offsite.fingerprint}"', "--set", f'sign_key="{offsite.fingerprint}"']
    run = world.cli(
        "--json",
        "run",
        "govuk-assets",
        "--host",
        "source",
        *offsite.sets(prefix),
        "--set",
        f'target="{path}/uploads"',
        *keys,
        env=offsite.env(tmp),
    )
    assert run.returncode == 0, run.stderr
    manifest = json.loads(run.stdout)
    assert manifest["facts"]["collection"] == f"boto3+s3://{offsite.bucket}/{prefix}/"
    assert manifest["facts"]["signed"] == "yes"
    _no_secret(offsite, run.stdout, run.stderr)
    _clean(world, tmp, keyring, before)
    assert manifest["snapshot"] in world.cli("snapshots", "govuk-assets", check=True).stdout

    done = world.cli(
        "restore",
        "govuk-assets",
        "--host",
        "target",
        *offsite.sets(prefix),
        "--set",
        f'target="{path}/restored"',
        *keys,
        env=offsite.env(tmp),
    )
    assert done.returncode == 0, done.stderr
    assert "encrypted but not signed" not in done.stderr
    assert fingerprint(dst / "restored") == fingerprint(tree)
    _clean(world, tmp, keyring, before)


def test_closing_the_workspace_kills_its_gpg_agent(offsite: Offsite, tmp_path: Path) -> None:
    """``gpgconf --kill all`` itself, not the directory's removal, ends the agent: with the
    removal left out, no gpg-agent of that GNUPGHOME remains after a failure inside."""
    from recipes import duplicity
    from recipes.ops import DuplicityCollection

    src = DuplicityCollection(
        url=f"boto3+s3://{offsite.bucket}/govuk-datastores/",
        file_to_restore=TBZ2,
        gpg_key_file=str(offsite.key_file),
        passphrase_env="OFFSITE_PASSPHRASE",
        unpack=duplicity.UNPACK_DUMPS,
    )
    os.environ["OFFSITE_PASSPHRASE"] = PASSPHRASE
    work = duplicity.Workspace(src)
    home = work.gnupg
    work._remove = lambda: None  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="failed inside"), work:
            work.import_key()  # a secret key: gpg starts the agent
            assert _agents(home), "the import should have started a gpg-agent"
            raise RuntimeError("failed inside")
        for _ in range(100):  # the agent exits once told; wait for it to be gone
            if not _agents(home):
                break
            time.sleep(0.1)
        assert _agents(home) == [], _agents(home)
        assert os.path.isdir(home)  # still there: the removal was not what ended the agent
    finally:
        del os.environ["OFFSITE_PASSPHRASE"]
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": home}, check=False)
        subprocess.run(["rm", "-rf", work.dir, home], check=False)


def test_run_adds_a_signed_incremental_that_plain_duplicity_restores(
    world: World,
    offsite: Offsite,
    mariadb_source: servers.MariaDB,
    empty_target: servers.MariaDB,
    site: tuple[str, Path, Path],
    tmp_path: Path,
) -> None:
    """Runs last: it grows the module's collection by one incremental."""
    path, src_dir, _dst = site
    keyring = _keyring(world)
    before = fingerprint(keyring)
    tmp = tmp_path / "controller-tmp"
    mariadb_source.sql("DROP DATABASE IF EXISTS gv_blog; CREATE DATABASE gv_blog")
    mariadb_source.sql("CREATE TABLE gv_blog.posts (id INT PRIMARY KEY, title TEXT)")
    mariadb_source.sql("INSERT INTO gv_blog.posts VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'run')")
    sets = [
        *offsite.sets("govuk-datastores"),
        "--set",
        f'file_to_restore="{TBZ2}"',
        "--set",
        'databases=["gv_blog"]',
        "--set",
        f'backup_dir="{path}/automysqlbackup"',
        "--set",
        f'encrypt_key="{offsite.fingerprint}"',
        "--set",
        f'sign_key="{offsite.fingerprint}"',
        # today is the weekly and the monthly day: a weekly_ and a monthly_ copy are kept too
        "--set",
        f"weekly_day={time.strftime('%u')}",
        "--set",
        f"monthly_day={time.localtime().tm_mday}",
    ]
    # earlier runs' dumps, rotated as automysqlbackup does (daily 6, weekly 35, monthly 150 days)
    amb = src_dir / "automysqlbackup"
    aged = {
        "daily/gv_blog/daily_gv_blog_2026-01-01_06h00m.sql.bz2": (10, False),
        "daily/gv_blog/daily_gv_blog_2026-01-02_06h00m.sql.bz2": (3, True),
        "weekly/gv_blog/weekly_gv_blog_2026-01-03_06h00m.sql.bz2": (40, False),
        "weekly/gv_blog/weekly_gv_blog_2026-01-04_06h00m.sql.bz2": (10, True),
        "monthly/gv_blog/monthly_gv_blog_2025-01-01_06h00m.sql.bz2": (200, False),
        "monthly/gv_blog/monthly_gv_blog_2026-01-01_06h00m.sql.bz2": (40, True),
    }
    for name, (days, _) in aged.items():
        (amb / name).parent.mkdir(parents=True, exist_ok=True)
        (amb / name).write_bytes(bz2.compress(b"-- old\n"))
        old = time.time() - days * 86400 - 3600
        os.utime(amb / name, (old, old))
    try:
        run = world.cli("--json", "run", "govuk-datastore", "--host", "source", *sets, env=offsite.env(tmp))
    finally:
        mariadb_source.sql("DROP DATABASE IF EXISTS gv_blog")
    assert run.returncode == 0, run.stderr
    manifest = json.loads(run.stdout)
    assert manifest["facts"]["collection"] == f"boto3+s3://{offsite.bucket}/govuk-datastores/"
    assert manifest["facts"]["signed"] == "yes"
    assert (amb / "latest.tbz2").is_file()
    for name, (_, kept) in aged.items():
        assert (amb / name).exists() == kept, name
    new = {p.name for period in ("daily", "weekly", "monthly") for p in (amb / period / "gv_blog").iterdir()}
    new -= {Path(name).name for name in aged}
    latest = sorted(p.name for p in (amb / "latest").iterdir())
    assert sorted(new) == latest and [n.split("_")[0] for n in latest] == ["daily", "monthly", "weekly"]
    assert manifest["facts"]["dumps"].split() == latest
    # rows per table of every dump, counted as the controller read latest.tbz2 (signed manifest)
    assert json.loads(manifest["facts"]["rows"]) == {name: {"gv_blog.posts": 5} for name in latest}
    _no_secret(offsite, run.stdout, run.stderr)
    _clean(world, tmp, keyring, before)
    listed = world.cli("snapshots", "govuk-datastore")
    assert listed.returncode == 0 and manifest["snapshot"] in listed.stdout

    # plain duplicity (the operator's way, own GNUPGHOME) restores the new set
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home), **offsite.s3.env(), "PASSPHRASE": PASSPHRASE}
    subprocess.run(
        ["gpg", "--batch", "--import", str(offsite.key_file)], env=env, check=True, capture_output=True
    )
    out = tmp_path / "plain" / "latest.tbz2"
    out.parent.mkdir()
    status = subprocess.run(
        [
            "duplicity",
            "collection-status",
            "--archive-dir",
            str(tmp_path / "c"),
            "--s3-endpoint-url",
            offsite.s3.endpoint,
            f"boto3+s3://{offsite.bucket}/govuk-datastores",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0 and "Incremental" in status.stdout, status.stderr
    plain = subprocess.run(
        [
            "duplicity",
            "restore",
            "--file-to-restore",
            TBZ2,
            "--archive-dir",
            str(tmp_path / "c"),
            "--s3-endpoint-url",
            offsite.s3.endpoint,
            f"boto3+s3://{offsite.bucket}/govuk-datastores",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False)
    assert plain.returncode == 0, plain.stderr
    with tarfile.open(out, "r:bz2") as tar:
        names = tar.getnames()
    assert [n for n in names if n.startswith("latest/daily_gv_blog_")] and not any(
        "2026-11-17" in n for n in names
    )

    # and recipes restores it: five rows
    done = world.cli(
        "restore",
        "govuk-datastore",
        "--host",
        "target",
        *offsite.sets("govuk-datastores"),
        "--set",
        f'file_to_restore="{TBZ2}"',
        env=offsite.env(tmp),
    )
    assert done.returncode == 0, done.stderr
    assert _rows(empty_target, "SELECT COUNT(*) FROM gv_blog.posts") == ["5"]
    _clean(world, tmp, keyring, before)
