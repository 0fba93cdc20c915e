"""S3's multipart ETag, computed from part ETags as a real server did (rclone serve s3)."""

from __future__ import annotations

from recipes import storage


def test_the_multipart_etag_of_parts_is_the_servers() -> None:
    # Part ETags and the CompleteMultipartUpload ETag rclone serve s3 answered for one upload.
    parts = ['"011d317dc6aa6ec7273ef47927b35749"', '"619ed9250e64f1b13f95083baeeeeb0b"']
    assert storage.multipart_etag(parts) == "1e3bb4c7f6510c080bcd6b509fb188be-2"


def test_a_part_etag_that_is_not_an_md5_gives_no_multipart_etag() -> None:
    assert storage.multipart_etag(['"011d317dc6aa6ec7273ef47927b35749"', '"kms-encrypted"']) is None
    assert storage.multipart_etag(['"zz1d317dc6aa6ec7273ef47927b35749"']) is None
