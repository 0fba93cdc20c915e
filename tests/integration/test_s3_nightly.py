"""Seed 002's nightly life on a real S3 API server (rclone serve s3): a chain with deletions
restored on a second host, prune and verify in the bucket, and storage faults injected by a
proxy in front of the server: transient ones (503 SlowDown, 500, a reset connection, a silent
server) are retried and bounded, permanent ones (403) fail at once; no secret anywhere."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import nightly
from recipes import signing, storage
from tests import servers
from tests.integration.django_site import SQLITE_DB, comparable, seed_tree, sqlite_rows
from tests.integration.test_incremental import change
from tests.integration.test_storage import READ_TIMEOUT, env, one_line_error, s3_world
from tests.integration.world import World
from tests.s3faults import FaultyS3


def secret_nowhere(server: servers.S3Server, *texts: str) -> None:
    for text in texts:
        assert server.secret not in text


def test_chain_with_deletions_into_s3_restores_on_the_second_host_then_prune_and_verify(
    world: World, site: tuple[str, Path, Path], s3_server: servers.S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    root, src, dst = site
    seed_tree(src)
    s3 = s3_world(world, s3_server, s3_bucket, tmp_path)
    creds = env(s3_server, tmp_path)
    sets = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']

    def run(*extra: str) -> dict[str, object]:
        out = s3.cli("--json", "run", "django", "--host", "source", *sets, *extra, env=creds)
        assert out.returncode == 0, out.stderr
        secret_nowhere(s3_server, out.stdout, out.stderr)
        result: dict[str, object] = json.loads(out.stdout)
        return result

    full = run()
    change(src, 1)  # a deleted file, a deleted directory, a rename, a chmod, new rows
    one = run()
    change(src, 2)
    two = run()
    assert [(m["level"], m["parent"]) for m in (full, one, two)] == [
        (0, None),
        (1, full["snapshot"]),
        (2, one["snapshot"]),
    ]
    restore = s3.cli("restore", "django", "--host", "target", "--from", "source", *sets, env=creds)
    assert restore.returncode == 0, restore.stderr
    assert comparable(dst) == comparable(src)
    assert not (dst / "opt/mysite/venv").exists() and not (dst / "home/django/.bashrc").exists()
    assert sqlite_rows(dst / SQLITE_DB.lstrip("/")) == sqlite_rows(src / SQLITE_DB.lstrip("/"))
    stored = Path(s3_server.data_dir) / s3_bucket / "backups"
    for manifest in stored.rglob("manifest.json"):  # credentials never reach a manifest
        secret_nowhere(s3_server, manifest.read_text())
        assert s3_server.key not in manifest.read_text()

    # prune on S3: a new chain, and only the newest full keeps its incrementals
    newer = run("--full")
    config = s3.config.read_text().split("\n[retention]\n")[0]
    s3.config.write_text(config + "\n[retention]\nmax_fulls_with_incrs = 1\n")
    dry = s3.cli("--json", "prune", "--dry-run", env=creds)
    assert dry.returncode == 0, dry.stderr
    gone = {s["snapshot"] for r in json.loads(dry.stdout) for s in r["snapshots"] if not s["keep"]}
    assert gone == {one["snapshot"], two["snapshot"]}
    assert len(list(stored.glob("django/source/*/manifest.json"))) == 4  # the dry run changed nothing
    pruned = s3.cli("--json", "prune", env=creds)
    assert pruned.returncode == 0, pruned.stderr
    assert sorted(p.name for p in stored.glob("django/source/*")) == sorted(
        [full["snapshot"], newer["snapshot"]]
    )
    assert not list(stored.glob("locks/*"))  # the lock released
    checked = s3.cli("--json", "verify", "--all", env=creds)
    assert checked.returncode == 0, checked.stderr
    assert {s["snapshot"] for s in json.loads(checked.stdout)["snapshots"]} == {
        full["snapshot"],
        newer["snapshot"],
    }

    # verify on S3 finds a damaged object: exit 3 naming the snapshot and the object
    obj = stored / "django" / "source" / str(newer["snapshot"]) / "files.tar.zst.age"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    obj.write_bytes(bytes(data))
    bad = s3.cli("verify", "--all", env=creds)
    assert bad.returncode == 3, bad.stderr
    line = one_line_error(bad.stderr)
    assert str(newer["snapshot"]) in line and "files.tar" in line
    secret_nowhere(s3_server, bad.stdout, bad.stderr)


@pytest.fixture
def faulty(s3_server: servers.S3Server, s3_bucket: str, tmp_path: Path) -> Iterator[tuple[FaultyS3, Path]]:
    """A proxy in front of the server, and a config whose repository (3 signed snapshots) is
    reached through it."""
    key = signing.generate_signing_key(tmp_path / "signing", "test")
    nightly.write_local(
        Path(s3_server.data_dir) / s3_bucket / "repo", nightly.chain_of(3, dt.datetime.now(dt.UTC)), key
    )
    proxy = FaultyS3(("127.0.0.1", s3_server.port), hold_seconds=READ_TIMEOUT + 2)
    options = (
        f'options = {{ endpoint_url = "{proxy.endpoint}", '
        f"config_kwargs = {{ read_timeout = {READ_TIMEOUT}, connect_timeout = {READ_TIMEOUT} }} }}"
    )
    try:
        yield proxy, nightly.config(tmp_path / "faulty.toml", f"s3://{s3_bucket}/repo", key, options)
    finally:
        proxy.close()


def snapshots(cfg: Path, server: servers.S3Server, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "recipes", "--config", str(cfg), "--json", "snapshots"],
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), **env(server, tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    secret_nowhere(server, out.stdout, out.stderr)
    return out


@pytest.mark.parametrize(
    "faults",
    [["slowdown", "slowdown"], ["500", "500"], ["reset"], ["timeout"], ["pass", "short"]],
    ids=lambda f: "+".join(f),
)
def test_transient_faults_are_retried(
    faulty: tuple[FaultyS3, Path], s3_server: servers.S3Server, tmp_path: Path, faults: list[str]
) -> None:
    proxy, cfg = faulty
    clean = snapshots(cfg, s3_server, tmp_path)
    assert clean.returncode == 0, clean.stderr
    calls = proxy.requests
    proxy.requests = 0
    proxy.queue = list(faults)
    out = snapshots(cfg, s3_server, tmp_path)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 3
    # each fault cost one retry ("pass" aims the short answer past the bucket check, a HEAD)
    assert proxy.queue == [] and proxy.requests == calls + len([f for f in faults if f != "pass"])


@pytest.mark.parametrize("fault", ["slowdown", "500", "reset", "short"])
def test_a_fault_that_persists_fails_in_one_line_after_bounded_tries(
    faulty: tuple[FaultyS3, Path], s3_server: servers.S3Server, tmp_path: Path, fault: str
) -> None:
    proxy, cfg = faulty
    proxy.always = fault
    out = snapshots(cfg, s3_server, tmp_path)
    assert out.returncode == 1, out.stderr
    line = one_line_error(out.stderr)
    said = {  # the first call is the bucket check, a HEAD: no error code in a body
        "slowdown": "the S3 endpoint {} failed (503)",
        "500": "the S3 endpoint {} failed (500)",
        "reset": "cannot reach the S3 endpoint {}",
        "short": "the S3 endpoint {} closed the connection before it answered",  # the listing's
    }
    assert said[fault].format(proxy.endpoint) in line
    # the first call (the bucket check) is tried ATTEMPTS times at most, each by s3fs at most
    # S3FS_TRIES times (a dropped connection), and nothing runs after it fails
    assert 2 <= proxy.requests <= storage.ATTEMPTS * storage.S3FS_TRIES


@pytest.mark.parametrize("persists", [False, True], ids=["once", "persists"])
def test_an_object_answer_cut_short_is_retried_then_one_line(
    faulty: tuple[FaultyS3, Path], s3_server: servers.S3Server, tmp_path: Path, persists: bool
) -> None:
    """The server sends a manifest's headers and half its body, then closes the connection (an
    object's read, not a listing: aiohttp raises its own error there, not botocore's)."""
    proxy, cfg = faulty
    proxy.only = "/manifest.json"
    proxy.queue = ["short"] * (50 if persists else 1)
    out = snapshots(cfg, s3_server, tmp_path)
    if not persists:
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)) == 3 and proxy.queue == []
        return
    assert out.returncode == 1, out.stderr
    line = one_line_error(out.stderr)
    assert f"the S3 endpoint {proxy.endpoint} ended an answer before its end" in line
    assert 50 - len(proxy.queue) <= 3 * storage.S3FS_TRIES  # bounded: at most 3 manifests, each tried by s3fs


def test_debug_output_carries_no_signature_key_id_or_secret(
    faulty: tuple[FaultyS3, Path], s3_server: servers.S3Server, tmp_path: Path
) -> None:
    """-vv shows botocore's requests, but never what a signed request carries: the access key
    id, the signature (replayable for minutes) or the secret."""
    _proxy, cfg = faulty
    out = subprocess.run(
        [sys.executable, "-m", "recipes", "-vv", "--config", str(cfg), "snapshots"],
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), **env(s3_server, tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "Sending http request" in out.stderr and "Authorization': b'***'" in out.stderr
    for leak in (s3_server.key, s3_server.secret, "Signature=", "Credential=", "StringToSign"):
        assert leak not in out.stderr + out.stdout, leak


def test_access_denied_fails_at_once(
    faulty: tuple[FaultyS3, Path], s3_server: servers.S3Server, tmp_path: Path
) -> None:
    proxy, cfg = faulty
    proxy.always = "403"
    out = snapshots(cfg, s3_server, tmp_path)
    assert out.returncode == 1, out.stderr
    assert "access denied" in one_line_error(out.stderr)
    assert proxy.requests == 1  # never retried


def _held(cfg: Path, environ: dict[str, str], proxy: FaultyS3, *args: str) -> subprocess.Popen[str]:
    """``recipes ARGS`` started, once the request the proxy holds (its queued fault) arrived."""
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "recipes", "--config", str(cfg), *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while proxy.queue and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not proxy.queue, args
    return proc


def _terminated(proc: subprocess.Popen[str]) -> str:
    """SIGTERM ``proc``: it must end as interrupted (exit 130, the one line); its stderr."""
    import signal

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "recipes: interrupted", err
    return err


def test_sigterm_mid_prune_or_copy_is_exit_130_with_the_lock_released_and_nothing_listed(
    faulty: tuple[FaultyS3, Path], s3_server: servers.S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """systemd stops a nightly job with SIGTERM: a prune holding its lock (the server silent on
    a manifest's read) and a copy to an offline disk both end with `recipes: interrupted`, exit
    130; the lock is released and the disk lists nothing."""
    proxy, cfg = faulty
    environ = {**os.environ, **env(s3_server, tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    disk = tmp_path / "disk"
    locks = Path(s3_server.data_dir) / s3_bucket / "repo" / "locks"
    proxy.only = "/manifest.json"
    for args in (["prune"], ["copy", "--all", "--to", str(disk)]):
        proxy.queue = ["timeout"]
        proc = _held(cfg, environ, proxy, *args)  # the server silent on a manifest's read
        if args == ["prune"]:
            assert [p.name for p in locks.iterdir()], "prune holds its lock while it reads"
        _terminated(proc)
        if args == ["prune"]:
            assert not locks.exists() or not list(locks.iterdir())  # the lock it held is released
    listed = subprocess.run(
        [sys.executable, "-m", "recipes", "--config", str(cfg), "--json", "snapshots", "--repo", str(disk)],
        env=environ,
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr


def test_sigterm_mid_copy_into_s3_removes_what_it_wrote(
    faulty: tuple[FaultyS3, Path], s3_server: servers.S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """A copy into S3 stopped by SIGTERM while an object's upload hangs: exit 130, and what it
    had written there is removed (nothing listed, no object left under the prefix)."""
    import hashlib

    import attrs

    from recipes import manifest as mf

    proxy, cfg = faulty
    key = signing.load_signing_key(str(tmp_path / "signing"))
    data = os.urandom(2 << 20)
    sha = hashlib.sha256(data).hexdigest()
    objects = (
        mf.StoredObject("files.snar", "state", "files.snar.zst.age", 5, hashlib.sha256(b"state").hexdigest()),
        mf.StoredObject("files.tar", "files", "files.tar.zst.age", len(data), sha),
    )
    m = attrs.evolve(nightly.synthetic(0, dt.datetime.now(dt.UTC), None, 0), objects=objects)
    source = tmp_path / "source"
    nightly.write_local(source, [m], key)
    folder = source / nightly.RECIPE / nightly.HOST / m.snapshot
    (folder / "files.snar.zst.age").write_bytes(b"state")
    (folder / "files.tar.zst.age").write_bytes(data)
    environ = {**os.environ, **env(s3_server, tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proxy.only, proxy.queue = "files.tar.zst.age", ["timeout"]
    argv = ["copy", "--all", "--repo", str(source), "--to", f"s3://{s3_bucket}/offsite"]
    proc = _held(cfg, environ, proxy, *argv)  # the archive's upload is held
    offsite = Path(s3_server.data_dir) / s3_bucket / "offsite"
    assert [p.name for p in offsite.rglob("*") if p.is_file()] == ["files.snar.zst.age"]  # written
    _terminated(proc)
    assert not [p for p in offsite.rglob("*") if p.is_file()]  # what it wrote is gone


def test_timeout_mid_prune_is_exit_1_with_the_lock_released(
    faulty: tuple[FaultyS3, Path], s3_server: servers.S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """A prune that hangs (the server silent on a manifest's read) and was given ``--timeout``
    ends by itself when it is up: one error line, exit 1 (so cron mails), its lock released."""
    proxy, cfg = faulty
    environ = {**os.environ, **env(s3_server, tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    locks = Path(s3_server.data_dir) / s3_bucket / "repo" / "locks"
    proxy.only, proxy.queue = "/manifest.json", ["timeout"] * 50  # every read hangs, retried
    proc = subprocess.Popen(
        [sys.executable, "-m", "recipes", "--config", str(cfg), "prune", "--timeout", "3s"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=60)
    assert len(proxy.queue) < 50, "a manifest's read was held"
    assert proc.returncode == 1, err
    assert err.strip().splitlines()[-1] == "recipes: error: timed out after 3s (--timeout 3s)", err
    assert not locks.exists() or not list(locks.iterdir())  # the lock it held is released
