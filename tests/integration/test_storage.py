"""Storage failures end to end through the CLI: S3 on a real server (rclone serve s3) and a tiny disk.

Every failure must be one line on stderr with exit 1, within a bounded time, leave nothing
listed, never show a secret, and never create a bucket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import attrs
import pytest

from recipes.model import Command
from recipes.steps import Dump, Quiesce, Step
from tests import servers
from tests.integration.django_site import SQLITE_DB, comparable, seed_tree, sqlite_rows
from tests.integration.fakes import Svc, SvcParams, service_commands
from tests.integration.test_compensation import _pid, running, running_service, starts
from tests.integration.world import World

READ_TIMEOUT = 2  # seconds; the tests' S3 client gives up on a silent server this fast


class Streaming(Svc):
    """The fake service, whose dump streams incompressible bytes forever (until the run ends)."""

    name: ClassVar[str] = "svc-stream"

    def backup_steps(self, p: SvcParams) -> list[Step]:
        check, stop, start = service_commands(p.dir)
        return [
            Quiesce(name="svc", check=check, stop=stop, start=start, about="stop the service"),
            Dump(
                name="d",
                engine="test",
                command=Command("while head -c 1000000 /dev/urandom; do sleep 0.05; done"),  # ends on EPIPE
            ),
        ]


LAUNCH = (
    "import recipes.apps as a; from tests.integration.test_storage import Streaming; "
    "a.RECIPES = a.RECIPES + (Streaming,); from recipes.cli import main; main()"
)


def s3_world(world: World, server: servers.S3Server, bucket: str, tmp_path: Path) -> World:
    """The same hosts and keys, with the repository in ``bucket`` on ``server``."""
    lines = world.config.read_text().splitlines()
    url = next(i for i, line in enumerate(lines) if line.startswith("url = "))
    lines[url] = f'url = "s3://{bucket}/backups"'
    lines.insert(
        url + 1,
        f'options = {{ endpoint_url = "{server.endpoint}", '
        f"config_kwargs = {{ read_timeout = {READ_TIMEOUT}, connect_timeout = {READ_TIMEOUT} }} }}",
    )
    config = tmp_path / "recipes-s3.toml"
    config.write_text("\n".join(lines) + "\n")
    return attrs.evolve(world, config=config)


def env(server: servers.S3Server, tmp_path: Path, secret: str | None = None) -> dict[str, str]:
    """Credentials from the environment, as an operator's cron job would have them."""
    return {
        **server.env(),
        **({"AWS_SECRET_ACCESS_KEY": secret} if secret is not None else {}),
        "HOME": str(tmp_path),  # no ~/.aws of the machine
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def one_line_error(stderr: str) -> str:
    """The error line; asserts it is one line and there is no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("recipes: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture
def svc_dir(ssh_source: servers.SshHost) -> Iterator[tuple[str, Path]]:
    """A running fake service on host source: (its dir inside the host, the same dir outside)."""
    yield from running_service(ssh_source)


def test_django_backup_and_restore_through_s3(
    world: World,
    site: tuple[str, Path, Path],
    s3_server: servers.S3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    root, src, dst = site
    seed_tree(src)
    s3 = s3_world(world, s3_server, s3_bucket, tmp_path)
    sets = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    creds = env(s3_server, tmp_path)

    backup = s3.cli("--json", "run", "django", "--host", "source", *sets, env=creds)
    assert backup.returncode == 0, backup.stderr
    sid = json.loads(backup.stdout)["snapshot"]
    stored = Path(s3_server.data_dir) / s3_bucket / "backups" / "django" / "source" / sid
    assert (stored / "manifest.json").is_file() and (stored / "files.tar.zst.age").stat().st_size > 300_000
    assert not (Path(s3_server.data_dir) / s3_bucket / "backups" / "locks" / "django@source").exists()
    listed = json.loads(s3.cli("--json", "snapshots", env=creds, check=True).stdout)
    assert [s["snapshot"] for s in listed] == [sid]

    restore = s3.cli("restore", "django", "--host", "target", "--from", "source", *sets, env=creds)
    assert restore.returncode == 0, restore.stderr
    assert comparable(dst) == comparable(src)
    assert sqlite_rows(dst / SQLITE_DB.lstrip("/")) == sqlite_rows(src / SQLITE_DB.lstrip("/"))


def test_objects_of_every_size_read_back_through_s3(
    s3_server: servers.S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object written in one PUT (< 8 MiB) but read in 4 MiB ranges (4-8 MiB: verify --deep,
    restore) reads back whole: rclone sends the whole object's CRC with each range, which
    botocore's own response check must not reject (our sha256 is the integrity check)."""
    from recipes.repository import Repository

    for name, value in env(s3_server, Path("/nonexistent")).items():
        monkeypatch.setenv(name, value)
    repo = Repository(f"s3://{s3_bucket}/sizes", {"endpoint_url": s3_server.endpoint})
    for size in (3 << 20, 6 << 20, 9 << 20):
        data = os.urandom(size)
        writer = repo.begin("django", "h")
        with writer.open("obj") as fh:
            for i in range(0, size, 1 << 17):
                fh.write(data[i : i + (1 << 17)])
        with repo.fs.open(f"{writer.path}/obj", "rb", block_size=1 << 22) as fh:
            got = b"".join(iter(lambda: fh.read(1 << 17), b""))
        assert got == data, size


def test_wrong_secret_and_no_credentials_are_one_line_without_secrets(
    world: World, s3_server: servers.S3Server, s3_bucket: str, tmp_path: Path, svc_dir: tuple[str, Path]
) -> None:
    s3 = s3_world(world, s3_server, s3_bucket, tmp_path)
    wrong = "wrong-" + s3_server.secret[:10]
    for args in (("snapshots",), ("run", "django", "--host", "source", "--set", f"root={svc_dir[0]}")):
        bad = s3.cli(*args, env=env(s3_server, tmp_path, secret=wrong))
        assert bad.returncode == 1, bad.stderr
        line = one_line_error(bad.stderr)
        assert "access denied" in line and s3_bucket in line
        assert wrong not in bad.stderr + bad.stdout and s3_server.secret not in bad.stderr + bad.stdout
    creds = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    none = s3.cli("snapshots", env={**env(s3_server, tmp_path), **creds})
    assert none.returncode == 1 and "no S3 credentials" in one_line_error(none.stderr)


def test_mistyped_bucket_is_refused_and_never_created(
    world: World, s3_server: servers.S3Server, s3_bucket: str, tmp_path: Path, svc_dir: tuple[str, Path]
) -> None:
    inside, outside = svc_dir
    s3 = s3_world(world, s3_server, s3_bucket, tmp_path)
    typo = f"typo-{uuid.uuid4().hex[:8]}"
    result = s3.cli(
        "run", "django", "--host", "source", "--set", f"root={inside}", "--repo", f"s3://{typo}/x",
        env=env(s3_server, tmp_path),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    line = one_line_error(result.stderr)
    assert f"bucket {typo} does not exist" in line and "create the bucket" in line
    assert not (Path(s3_server.data_dir) / typo).exists()
    assert running(outside) and starts(outside) == 0


def test_stopped_s3_server_is_one_line(world: World, tmp_path: Path, svc_dir: tuple[str, Path]) -> None:
    inside, outside = svc_dir
    server = servers.start_s3()
    try:
        server.make_bucket("gone-bucket")
        s3 = s3_world(world, server, "gone-bucket", tmp_path)
    finally:
        server.stop()
    for args in (("snapshots",), ("run", "django", "--host", "source", "--set", f"root={inside}")):
        result = s3.cli(*args, env=env(server, tmp_path))
        assert result.returncode == 1, result.stderr
        assert f"cannot reach the S3 endpoint {server.endpoint}" in one_line_error(result.stderr)
    assert running(outside) and starts(outside) == 0


def test_frozen_s3_server_at_start_is_one_line_and_touches_no_host(
    world: World, s3_server: servers.S3Server, s3_bucket: str, tmp_path: Path, svc_dir: tuple[str, Path]
) -> None:
    inside, outside = svc_dir
    s3 = s3_world(world, s3_server, s3_bucket, tmp_path)
    before = _pid(outside)
    with s3_server.frozen():
        result = s3.cli(
            "run", "django", "--host", "source", "--set", f"root={inside}", env=env(s3_server, tmp_path)
        )
    assert result.returncode == 1, result.stderr
    assert f"did not answer within {READ_TIMEOUT} s" in one_line_error(result.stderr)
    assert running(outside) and _pid(outside) == before and starts(outside) == 0
    assert json.loads(s3.cli("--json", "snapshots", env=env(s3_server, tmp_path), check=True).stdout) == []


def test_frozen_s3_server_mid_backup_is_one_line_and_the_service_runs_again(
    world: World, s3_server: servers.S3Server, s3_bucket: str, tmp_path: Path, svc_dir: tuple[str, Path]
) -> None:
    inside, outside = svc_dir
    s3 = s3_world(world, s3_server, s3_bucket, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "--config", str(s3.config), "run", "svc-stream", "--host", "source",
         "--set", f"dir={inside}"],
        cwd=Path(__file__).parents[2],
        env={**os.environ, "XDG_CACHE_HOME": str(world.cache), **env(s3_server, tmp_path)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while running(outside) and time.monotonic() < deadline:  # quiesced: the dump is streaming
            time.sleep(0.05)
        assert not running(outside), "the backup never stopped the service"
        time.sleep(1.5)  # a few parts are on their way
        with s3_server.frozen():
            _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, err
    line = one_line_error(err)
    assert f"the S3 endpoint {s3_server.endpoint} did not answer" in line
    assert running(outside) and starts(outside) == 1
    assert json.loads(s3.cli("--json", "snapshots", env=env(s3_server, tmp_path), check=True).stdout) == []


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A 1 MiB tmpfs: the repository's disk fills up mid-backup."""
    import tempfile

    mount = Path(tempfile.mkdtemp(prefix="tiny-repo-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()


def test_full_disk_is_one_line_and_the_partial_snapshot_is_removed(
    world: World, site: tuple[str, Path, Path], tiny_disk: Path
) -> None:
    root, src, _ = site
    seed_tree(src)
    (src / "srv/data/big.bin").write_bytes(os.urandom(3 << 20))
    result = world.cli("run", "django", "--host", "source", "--set", f"root={root}", "--repo", str(tiny_disk))
    assert result.returncode == 1, result.stderr
    line = one_line_error(result.stderr)
    assert "no space left on the device" in line and str(tiny_disk) in line
    assert list(tiny_disk.glob("django/source/*")) == []  # the partial snapshot is gone
    assert list(tiny_disk.glob("locks/*")) == []  # and the lock released


def test_copy_from_s3_to_a_local_folder_and_back(
    world: World,
    site: tuple[str, Path, Path],
    s3_server: servers.S3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    """Seed 002's offline copy: the S3 repository copied to a local disk, verified there, and
    copied back into another S3 prefix, verified again (each object checked on arrival)."""
    root, src, _ = site
    seed_tree(src)
    s3 = s3_world(world, s3_server, s3_bucket, tmp_path)
    creds = env(s3_server, tmp_path)
    s3.cli("run", "django", "--host", "source", "--set", f"root={root}", env=creds, check=True)
    disk = tmp_path / "offline"
    down = s3.cli("--json", "copy", "--all", "--to", str(disk), env=creds)
    assert down.returncode == 0, down.stderr
    assert [c["outcome"] for c in json.loads(down.stdout)] == ["copied"]
    assert s3.cli("verify", "--all", "--repo", str(disk), env=creds).returncode == 0
    back = f"s3://{s3_bucket}/restored-copy"
    up = s3.cli("copy", "--all", "--repo", str(disk), "--to", back, env=creds)
    assert up.returncode == 0, up.stderr
    checked = s3.cli("--json", "verify", "--all", "--repo", back, env=creds)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["snapshots"][0]["snapshot"] == json.loads(down.stdout)[0]["snapshot"]


def test_the_weekly_cron_verify_reads_the_env_file_for_s3_credentials(
    world: World,
    site: tuple[str, Path, Path],
    s3_server: servers.S3Server,
    s3_bucket: str,
    tmp_path: Path,
) -> None:
    """``schedule --format cron``: the credentials in ``--env-file`` reach the weekly
    ``verify --all`` as they reach prune and run (it failed every week on an S3 repository)."""
    root, src, _ = site
    seed_tree(src)
    s3 = s3_world(world, s3_server, s3_bucket, tmp_path)
    s3.cli(
        "run", "django", "--host", "source", "--set", f"root={root}", env=env(s3_server, tmp_path), check=True
    )
    env_file = tmp_path / "recipes.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in s3_server.env().items()))
    env_file.chmod(0o600)
    out = tmp_path / "cron"
    s3.cli(
        "schedule",
        "django",
        "--host",
        "source",
        "--format",
        "cron",
        "--env-file",
        str(env_file),
        "-o",
        str(out),
        check=True,
    )
    (cron,) = out.iterdir()
    (weekly,) = [line for line in cron.read_text().splitlines() if line.startswith("47 4 * * 0 ")]
    command = weekly.split(None, 6)[6]  # after the five time fields and the user
    # cron's own environment: no AWS credentials, only what the env file gives
    bare = {k: v for k, v in world.env().items() if not k.startswith("AWS_")}
    bare["AWS_EC2_METADATA_DISABLED"] = "true"
    ran = subprocess.run(
        ["sh", "-c", command.replace(" >/dev/null", "")], capture_output=True, text=True, env=bare
    )
    assert ran.returncode == 0, ran.stderr
    assert "no S3 credentials" not in ran.stderr
