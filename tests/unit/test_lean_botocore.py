"""The trimmed botocore data (``storage.lean_session``): the S3 client it makes knows every
operation recipes and s3fs call, and any doubt gives botocore's full data instead; the malloc
arena cap (``arenas.fewer_arenas``) yields to the operator's own setting."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from recipes import arenas, storage

# Every operation a run of tests/integration/test_s3*.py made (logged at botocore's
# _make_api_call), and those S3Upload and the lock make.
CALLED = {
    "AbortMultipartUpload",
    "CompleteMultipartUpload",
    "CreateMultipartUpload",
    "DeleteObject",
    "DeleteObjects",
    "GetObject",
    "HeadBucket",
    "HeadObject",
    "ListMultipartUploads",
    "ListObjectsV2",
    "PutObject",
    "UploadPart",
}


def filesystem() -> Any:
    import s3fs

    return s3fs.S3FileSystem(endpoint_url="http://127.0.0.1:9", key="k", secret="s", skip_instance_cache=True)


def client_of(fs: Any) -> Any:
    fs.connect()  # makes the client; no request is sent
    return fs._s3


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("AWS_DATA_PATH", raising=False)
    return tmp_path / "cache"


def test_the_lean_client_knows_every_operation_called_and_little_else(cache: Path) -> None:
    fs = filesystem()
    assert storage.lean_session(fs)
    names = set(client_of(fs).meta.service_model.operation_names)
    assert names >= CALLED
    assert len(names) < 40  # botocore's own model has about 100
    # Read as botocore's own endpoints data: resolution is the same as with the full file.
    assert fs.session._get_internal_component("endpoint_resolver").uses_builtin_data
    model = next(cache.rglob("service-2.json"))
    endpoints = json.loads((model.parents[2] / "endpoints.json").read_text())
    assert all("s3" in p["services"] for p in endpoints["partitions"])
    # The second repository reuses the files: nothing is generated again.
    before = model.stat().st_mtime_ns
    fs2 = filesystem()
    assert storage.lean_session(fs2)
    assert model.stat().st_mtime_ns == before
    assert set(client_of(fs2).meta.service_model.operation_names) == names


def test_a_custom_botocore_data_path_keeps_the_full_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DATA_PATH", "/nonexistent")
    fs = filesystem()
    assert not storage.lean_session(fs)
    assert fs.session is None  # s3fs makes its own, with botocore's full data


def test_when_the_trimmed_data_cannot_be_written_the_full_data_is_used(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.parent.mkdir(exist_ok=True)
    cache.write_text("a file where the cache folder should be")
    fs = filesystem()
    assert not storage.lean_session(fs)
    assert len(client_of(fs).meta.service_model.operation_names) > 90


def test_a_half_written_copy_is_never_used_and_is_written_again(cache: Path) -> None:
    sources = storage._lean_sources()
    assert sources is not None
    target = Path(storage._lean_dir(sources))
    model = target / "s3" / "2006-03-01" / "service-2.json"
    model.parent.mkdir(parents=True)
    model.write_text('{"metadata": ')  # a killed writer's leftovers, no "complete" marker
    fs = filesystem()
    assert storage.lean_session(fs)
    assert set(client_of(fs).meta.service_model.operation_names) >= CALLED
    assert os.path.exists(target / "complete")


def test_a_copy_damaged_after_it_was_written_is_written_again(cache: Path) -> None:
    """A trimmed file changed after its marker (a full disk, a stray edit) must not break every
    client: its digest no longer matches the marker's, so it is made again."""
    assert storage.lean_session(filesystem())
    sources = storage._lean_sources()
    assert sources is not None
    model = Path(storage._lean_dir(sources)) / "s3" / "2006-03-01" / "service-2.json"
    model.write_text('{"metadata": ')
    fs = filesystem()
    assert storage.lean_session(fs)
    assert set(client_of(fs).meta.service_model.operation_names) >= CALLED
    assert json.loads(model.read_text())["operations"]


def test_the_arena_cap_leaves_the_operators_own_setting_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not arenas.fewer_arenas()
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert arenas.fewer_arenas() is (platform.libc_ver()[0] == "glibc")


def test_a_home_that_does_not_exist_gets_no_cache_made_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service account's home is often /nonexistent: the trimmed data is then not written
    (botocore's own files are used) and no folder is made there."""
    home = tmp_path / "nonexistent"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(home))
    fs = filesystem()
    assert not storage.lean_session(fs)
    assert not home.exists()
    assert set(client_of(fs).meta.service_model.operation_names) >= CALLED  # the full model
