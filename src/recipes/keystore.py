"""A store apart from the repository for key files (Looker's backup key): any fsspec URL.

Objects are the repository's format (zstd, then age to the same recipients), written to a
temporary name and renamed, so a half-written key file never looks complete.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import fsspec

from recipes import stream
from recipes.errors import RepositoryError, VerifyError

# A key file is a few hundred bytes; anything far larger is not one.
MAX_KEY_BYTES = 1 << 20


def _fs(url: str) -> tuple[Any, str]:
    try:
        fs, path = fsspec.core.url_to_fs(url)
        return fs, str(path)
    except (ValueError, ImportError) as exc:
        raise RepositoryError(f"key store {url}: {exc}") from exc


def put(url: str, source: stream.Readable, recipients: list[str]) -> stream.Stored:
    """Encrypt ``source`` into ``url``; the object appears only once complete."""
    fs, path = _fs(url)
    part = f"{path}.part"
    try:
        parent = path.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        with fs.open(part, "wb") as fh:
            stored = stream.store(source, fh, recipients, compressed=False)
        fs.mv(part, path)
    except OSError as exc:
        with contextlib.suppress(Exception):
            fs.rm(part)
        raise RepositoryError(f"cannot write the key store at {url}: {exc}") from exc
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(part)
        raise
    return stored


def get(url: str, sha256: str, size: int, identities: list[Any]) -> bytes:
    """The decrypted key file, after its stored bytes matched the manifest's size and sha256."""
    if size > MAX_KEY_BYTES:
        raise VerifyError(f"key file at {url} is recorded as {size} bytes: not a key file")
    fs, path = _fs(url)
    try:
        with fs.open(path, "rb") as fh:
            data = fh.read(MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise RepositoryError(f"cannot read the key file at {url}: {exc}") from exc
    out = io.BytesIO()
    stream.fetch(io.BytesIO(data), out, identities, sha256, size)
    return out.getvalue()


def remove(url: str) -> None:
    """Remove a key file (a failed run's); missing is fine."""
    fs, path = _fs(url)
    for p in (path, f"{path}.part"):
        with contextlib.suppress(Exception):
            fs.rm(p)
