"""Our S3 multipart writer (``storage.S3Upload``) against a real S3 API server (rclone serve s3),
with faults injected per part by a proxy: a multi-part object round-trips byte-exact, a 5xx on
one part is retried with the same bytes, a permanent error aborts (no object, no pending upload),
and a SIGKILLed writer leaves no visible object, only a pending upload that prune aborts."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import nightly
from recipes import prune, retention, signing, storage
from recipes.errors import RepositoryError
from recipes.repository import Repository
from recipes.trust import Trust
from tests import servers
from tests.integration.test_storage import env
from tests.s3faults import FaultyS3

MIB = 1 << 20
SIZE = 2 * storage.PART_SIZE + 3 * MIB + 17  # three parts, the last one short


@pytest.fixture
def proxy(s3_server: servers.S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyS3]:
    """A fault proxy in front of the server, with the server's keys in the environment."""
    for name, value in env(s3_server, Path("/nonexistent")).items():
        monkeypatch.setenv(name, value)
    faulty = FaultyS3(("127.0.0.1", s3_server.port))
    try:
        yield faulty
    finally:
        faulty.close()


def repository(endpoint: str, bucket: str) -> Repository:
    return Repository(
        f"s3://{bucket}/repo",
        {"endpoint_url": endpoint, "config_kwargs": {"read_timeout": 5, "connect_timeout": 5}},
    )


def pending(server: servers.S3Server, bucket: str) -> list[dict[str, Any]]:
    """The bucket's pending multipart uploads, asked of the server directly (not through our code)."""
    client = server.client()
    uploads: list[dict[str, Any]] = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def write(repo: Repository, data: bytes, name: str = "files.tar.zst.age") -> str:
    """``data`` as one object of a new snapshot, in 64 KiB writes as age makes them; its path."""
    writer = repo.begin("django", "web1")
    with writer.open(name) as fh:
        for i in range(0, len(data), 1 << 16):
            fh.write(data[i : i + (1 << 16)])
    return f"{writer.path}/{name}"


def stored(server: servers.S3Server, path: str) -> Path:
    """Where rclone keeps the object at ``bucket/key``."""
    return Path(server.data_dir) / path


def parts(proxy: FaultyS3) -> list[str]:
    return [line for line in proxy.seen if "partNumber=" in line]


def test_a_multipart_object_round_trips_byte_exact(
    proxy: FaultyS3, s3_server: servers.S3Server, s3_bucket: str
) -> None:
    repo = repository(proxy.endpoint, s3_bucket)
    data = os.urandom(SIZE)
    path = write(repo, data)
    assert stored(s3_server, path).read_bytes() == data
    with repo.fs.open(path, "rb", block_size=4 * MIB) as fh:  # and back through the client
        assert fh.read() == data
    assert len(parts(proxy)) == 3  # three parts, not one PUT
    assert sum(line.startswith("POST") and "uploads" in line for line in proxy.seen) == 1
    assert pending(s3_server, s3_bucket) == []
    small = os.urandom(100_000)
    small_path = write(repo, small, "dumps.sql.zst.age")
    assert stored(s3_server, small_path).read_bytes() == small
    assert len(parts(proxy)) == 3  # a small object is one put_object, no multipart upload


@pytest.mark.parametrize("fault", ["500", "slowdown", "reset"])
def test_a_5xx_or_a_reset_on_one_part_is_retried_and_the_object_is_correct(
    proxy: FaultyS3, s3_server: servers.S3Server, s3_bucket: str, fault: str
) -> None:
    repo = repository(proxy.endpoint, s3_bucket)
    data = os.urandom(SIZE)
    proxy.only, proxy.queue = "&partNumber=2", [fault]
    path = write(repo, data)
    assert proxy.queue == []  # the fault was served
    assert sum(line.endswith("&partNumber=2") for line in parts(proxy)) == 2  # tried again, once
    assert stored(s3_server, path).read_bytes() == data
    assert pending(s3_server, s3_bucket) == []


def test_a_permanent_error_on_a_part_aborts_and_leaves_no_object_and_no_upload(
    proxy: FaultyS3, s3_server: servers.S3Server, s3_bucket: str
) -> None:
    repo = repository(proxy.endpoint, s3_bucket)
    proxy.only, proxy.queue = "&partNumber=2", ["403"]
    writer = repo.begin("django", "web1")
    with pytest.raises(RepositoryError) as err, writer.open("files.tar.zst.age") as fh:
        data = os.urandom(MIB)
        for _ in range(SIZE // MIB):
            fh.write(data)
    message = str(err.value)
    assert "\n" not in message and "access denied" in message and "part 2" in message
    assert s3_server.secret not in message
    assert sum(line.endswith("&partNumber=2") for line in parts(proxy)) == 1  # never retried
    assert any(line.startswith("DELETE") and "uploadId=" in line for line in proxy.seen)  # aborted
    assert pending(s3_server, s3_bucket) == []
    assert not stored(s3_server, f"{writer.path}/files.tar.zst.age").exists()
    assert repo.listed() == []


def test_a_discarded_object_is_aborted(proxy: FaultyS3, s3_server: servers.S3Server, s3_bucket: str) -> None:
    """An exception from the producer (a failed dump, Ctrl-C) drops the object, never completes it."""
    repo = repository(proxy.endpoint, s3_bucket)
    writer = repo.begin("django", "web1")
    with pytest.raises(KeyboardInterrupt), writer.open("files.tar.zst.age") as fh:
        fh.write(os.urandom(SIZE))
        raise KeyboardInterrupt
    assert pending(s3_server, s3_bucket) == []
    assert not stored(s3_server, f"{writer.path}/files.tar.zst.age").exists()
    assert not any(line.startswith("POST") and "uploadId=" in line for line in proxy.seen)  # never completed


KILLED = textwrap.dedent(
    """
    import os, sys, time
    from recipes.repository import Repository
    repo = Repository(sys.argv[1], {"endpoint_url": sys.argv[2]})
    writer = repo.begin("django", "web1")
    with writer.open("files.tar.zst.age") as fh:
        fh.write(os.urandom(int(sys.argv[3])))
        print(writer.path, flush=True)
        time.sleep(600)
    """
)


def test_a_sigkilled_writer_leaves_no_visible_object_and_prune_aborts_its_upload(
    s3_server: servers.S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env(s3_server, tmp_path).items():
        monkeypatch.setenv(name, value)
    key = signing.generate_signing_key(tmp_path / "signing", "test")
    old = nightly.chain_of(1, dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    nightly.write_local(Path(s3_server.data_dir) / s3_bucket / "repo", old, key)
    url = f"s3://{s3_bucket}/repo"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, url, s3_server.endpoint, str(SIZE)],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ,
    )
    try:
        assert child.stdout is not None
        path = child.stdout.readline().strip()
        assert path, "the writer did not start"
        deadline = time.monotonic() + 60
        while not pending(s3_server, s3_bucket) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    repo = Repository(url, {"endpoint_url": s3_server.endpoint})
    assert not stored(s3_server, f"{path}/files.tar.zst.age").exists()
    assert [item.manifest.snapshot for item in repo.listed()] == [old[0].snapshot]
    assert len(pending(s3_server, s3_bucket)) == 1  # invisible, but billed until aborted

    trust = Trust((key.public,))
    young = prune.prune(repo, trust, retention.Policy(), dry_run=True)
    assert [r.debris for r in young] == [()]  # a run may still be writing it
    later = dt.datetime.now(dt.UTC) + prune.DEBRIS_AGE + dt.timedelta(minutes=1)
    done = prune.prune(repo, trust, retention.Policy(), now=later)
    assert [r.debris for r in done] == [(path.rsplit("/", 1)[-1],)]
    assert pending(s3_server, s3_bucket) == []
    assert [item.manifest.snapshot for item in repo.listed()] == [old[0].snapshot]


def test_a_complete_whose_answer_was_lost_is_tried_again_and_the_object_counts_as_written(
    proxy: FaultyS3, s3_server: servers.S3Server, s3_bucket: str
) -> None:
    repo = repository(proxy.endpoint, s3_bucket)
    data = os.urandom(SIZE)
    # The first POST starts the upload; the second completes it on the server, then resets.
    proxy.only, proxy.queue = "POST ", ["pass", "lost"]
    path = write(repo, data)
    assert proxy.queue == []  # the answer was lost
    completes = [line for line in proxy.seen if line.startswith("POST") and "uploadId=" in line]
    assert len(completes) == 2  # tried again, and that try got NoSuchUpload
    assert stored(s3_server, path).read_bytes() == data
    assert pending(s3_server, s3_bucket) == []


@pytest.mark.parametrize("meanwhile", ["deleted", "replaced"])
def test_a_lost_complete_whose_object_is_not_ours_fails_the_write(
    proxy: FaultyS3, s3_server: servers.S3Server, s3_bucket: str, meanwhile: str
) -> None:
    repo = repository(proxy.endpoint, s3_bucket)
    data = os.urandom(SIZE)
    client = s3_server.client()
    where: dict[str, str] = {}

    def change() -> None:  # between the lost answer and the retry, the object changes
        key = where["key"]
        if meanwhile == "deleted":
            client.delete_object(Bucket=s3_bucket, Key=key)
        else:  # another object (rclone's HEAD ETag is the whole md5: the size tells them apart)
            client.put_object(Bucket=s3_bucket, Key=key, Body=os.urandom(SIZE - 1))

    proxy.only, proxy.queue, proxy.on_lost = "POST ", ["pass", "lost"], change
    writer = repo.begin("django", "web1")
    where["key"] = f"{writer.path.split('/', 1)[1]}/files.tar.zst.age"
    with pytest.raises(RepositoryError, match="NoSuchUpload"), writer.open("files.tar.zst.age") as fh:
        for i in range(0, len(data), 1 << 16):
            fh.write(data[i : i + (1 << 16)])
    assert proxy.queue == []


def test_a_manifest_whose_answer_was_lost_goes_first_or_the_warning_says_it_may_be_there(
    proxy: FaultyS3, s3_server: servers.S3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The server wrote the manifest but its answer was lost, and every try after fails: the
    snapshot is committed though the run failed. The clean-up removes the manifest first; when
    it cannot, its warning says the snapshot may be there and how to tell."""
    repo = repository(proxy.endpoint, s3_bucket)
    writer = write_snapshot(repo)
    proxy.only, proxy.queue = "/manifest.json", ["lost"] + ["500"] * 40
    with pytest.raises(RepositoryError):
        writer.commit_raw(b'{"not": "checked here"}', b"sig")
    assert stored(s3_server, f"{writer.path}/manifest.json").exists()  # the lost write landed
    with caplog.at_level("WARNING", logger="recipes"):
        writer.abort()
    assert stored(s3_server, f"{writer.path}/manifest.json").exists()  # its delete failed too
    (warning,) = [r.getMessage() for r in caplog.records if "unfinished snapshot" in r.getMessage()]
    assert "its manifest may have been written all the same" in warning
    assert f"recipes verify {writer.snapshot}" in warning
    proxy.queue = []  # the endpoint answers again: the clean-up removes the manifest first
    writer.abort()
    assert not stored(s3_server, writer.path).exists()
    deletes = [line for line in proxy.seen if line.startswith("DELETE") and "/manifest.json" in line]
    assert deletes, proxy.seen


def write_snapshot(repo: Repository) -> Any:
    """A snapshot writer with one small object written (no manifest yet)."""
    writer = repo.begin("django", "web1")
    with writer.open("files.tar.zst.age") as fh:
        fh.write(os.urandom(1000))
    return writer
