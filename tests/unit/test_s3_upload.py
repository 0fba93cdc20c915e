"""S3Upload's refusal of an object larger than S3 allows, at the storage boundary (a fake
client: the real server's behaviour is in tests/integration/test_s3_upload.py)."""

from __future__ import annotations

from typing import Any

import pytest

from recipes import storage
from recipes.errors import RepositoryError

MiB = 1 << 20


class FakeClient:
    """s3fs's surface S3Upload uses: split_path, call_s3, invalidate_cache."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def split_path(self, path: str) -> tuple[str, str, None]:
        bucket, key = path.split("/", 1)
        return bucket, key, None

    def call_s3(self, method: str, **kw: Any) -> dict[str, Any]:
        self.calls.append(method)
        return {"UploadId": "u1"} if method == "create_multipart_upload" else {}

    def invalidate_cache(self, path: str) -> None:
        pass


class FakeGuarded:
    """GuardedFS's surface: call (no retries here), once, send, url, down."""

    url = "s3://bucket/repo"
    down = False

    def __init__(self) -> None:
        self.fs = FakeClient()

    def call(self, what: str, fn: Any, retry: bool = True, alone: bool = False) -> Any:
        return fn()

    def once(self, method: str, body: Any = None, **kw: Any) -> Any:
        return lambda: self.fs.call_s3(method, **kw)

    def send(self, what: str, method: str, body: Any, **kw: Any) -> dict[str, Any]:
        self.fs.calls.append(method)
        return {"ETag": f'"{kw.get("PartNumber", 0)}"'}


def test_the_part_after_the_last_one_s3_allows_is_refused_and_the_upload_aborted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage, "MAX_PARTS", 2)
    guarded = FakeGuarded()
    up = storage.S3Upload(guarded, "bucket/repo/obj", part_size=5 * MiB)  # type: ignore[arg-type]
    up.write(bytes(10 * MiB))  # two full parts: allowed
    with pytest.raises(RepositoryError, match="larger than 2 parts of 5 MiB"):
        up.write(bytes(5 * MiB))
    up.abort()
    calls = guarded.fs.calls
    assert calls.count("upload_part") <= 2  # never a third part (a pending one may be cancelled)
    assert "complete_multipart_upload" not in calls and calls[-1] == "abort_multipart_upload"


def test_an_object_of_exactly_the_most_parts_completes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "MAX_PARTS", 2)
    guarded = FakeGuarded()
    with storage.S3Upload(guarded, "bucket/repo/obj", part_size=5 * MiB) as up:  # type: ignore[arg-type]
        up.write(bytes(9 * MiB))
    calls = guarded.fs.calls
    assert calls.count("upload_part") == 2 and calls[-1] == "complete_multipart_upload"
