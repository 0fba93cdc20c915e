"""S3Upload's refusal of an object larger than S3 allows, at the storage boundary (a fake
client: the real server's behaviour is in tests/integration/test_s3_upload.py)."""

from __future__ import annotations

import time
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
        self.sizes: list[int] = []

    def call(self, what: str, fn: Any, retry: bool = True, alone: bool = False) -> Any:
        return fn()

    def once(self, method: str, body: Any = None, **kw: Any) -> Any:
        return lambda: self.fs.call_s3(method, **kw)

    def send(self, what: str, method: str, body: Any, **kw: Any) -> dict[str, Any]:
        self.fs.calls.append(method)
        self.sizes.append(len(body().getbuffer()))
        return {"ETag": f'"{kw.get("PartNumber", 0)}"'}


def test_the_part_after_the_last_one_s3_allows_is_refused_and_the_upload_aborted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage, "MAX_PARTS", 2)
    guarded = FakeGuarded()
    up = storage.S3Upload(guarded, "bucket/repo/obj", part_size=5 * MiB)  # type: ignore[arg-type]
    up.write(bytes(10 * MiB))  # two full parts: allowed
    with pytest.raises(RepositoryError, match=r"larger than 2 parts \(10 MiB\)"):
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


def test_parts_grow_so_ten_thousand_hold_far_more_than_eight_mib_parts_did() -> None:
    assert storage.part_size(1) == storage.part_size(2_000) == 5 * MiB
    assert storage.part_size(2_001) == 10 * MiB and storage.part_size(10_000) == 80 * MiB
    assert storage.most_bytes() > 300 << 30 > storage.MAX_PARTS * 8 * MiB  # 8 MiB parts: 78 GiB


def test_an_upload_sends_growing_parts_and_refuses_the_part_after_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage, "GROW_EVERY", 2)
    monkeypatch.setattr(storage, "MAX_PARTS", 5)
    guarded = FakeGuarded()
    up = storage.S3Upload(guarded, "bucket/repo/obj", part_size=5 * MiB)  # type: ignore[arg-type]
    most = storage.most_bytes(5 * MiB)
    assert most == (5 + 5 + 10 + 10 + 20) * MiB
    for _ in range(most // MiB):
        up.write(bytes(MiB))
    # two buffers: the fifth part could be filled only once the third was sent, and the fourth
    # is on its way; let it arrive (a loaded machine schedules the worker late)
    deadline = time.monotonic() + 30
    while len(guarded.sizes) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RepositoryError, match=r"larger than 5 parts \(50 MiB\)"):
        up.write(b"x")
    up.abort()
    sent = sorted(guarded.sizes)  # the last one may have been cancelled, never a sixth
    assert len(sent) >= 4 and sent == sorted(s * MiB for s in (5, 5, 10, 10, 20))[: len(sent)]
    assert "complete_multipart_upload" not in guarded.fs.calls


def test_growing_parts_complete_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "GROW_EVERY", 1)
    guarded = FakeGuarded()
    with storage.S3Upload(guarded, "bucket/repo/obj", part_size=5 * MiB) as up:  # type: ignore[arg-type]
        up.write(bytes(5 * MiB + 10 * MiB + 3))
    assert guarded.sizes == [5 * MiB, 10 * MiB, 3]
