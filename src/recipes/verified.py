"""The controller's memory of manifests whose signature already verified, so that listing
10,000 snapshots does not check 10,000 signatures again on every run.

Correctness never depends on it. Every run still lists the repository and reads every manifest
and signature; only the signature check itself is skipped, and only for the exact bytes that
passed it before under the same trusted keys. An entry is an HMAC (with a random key of this
controller's, 0600 beside the entries) over the repository URL, the snapshot's place, the trusted
keys, the manifest's bytes and the signature's bytes: a changed or moved manifest, a new
signature or a different ``signers`` list misses and is checked again, and an entry nobody who
cannot read the key wrote (another machine's cache, a hand-made line) matches nothing. An
unsigned snapshot never consults it. A cache file or key that another user owns or may write is
ignored (with a warning), as ssh ignores a group-writable ``authorized_keys``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import stat
import weakref
from collections.abc import Sequence
from pathlib import Path

from recipes import signing

log = logging.getLogger("recipes")

VERSION = b"recipes-verified-manifest-v2"  # v2: the shared parts first
MAX_BYTES = 32 << 20  # about 500,000 entries; past that the file starts over (it is only a cache)
_ENTRY = 64


def _private(path: Path) -> bool:
    """Ours and written by nobody else (group/other write bits off)."""
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _feed(mac: hmac.HMAC, part: bytes) -> None:
    """One length-prefixed part: no two different sequences of parts feed the same bytes."""
    mac.update(len(part).to_bytes(8, "big"))
    mac.update(part)


class VerifiedManifests:
    """Entries for one repository under ``root/verified/`` (the controller's cache dir)."""

    def __init__(self, root: Path, repo_url: str) -> None:
        self.dir = Path(root) / "verified"
        self.repo_url = repo_url
        self.path = self.dir / hashlib.sha256(repo_url.encode()).hexdigest()[:16]
        self._key: bytes | None = None
        self._entries: set[str] | None = None
        self._usable = True
        self._bases: dict[tuple[bytes, ...], hmac.HMAC] = {}
        self._fd: int | None = None

    def digest(
        self, where: str, raw: bytes, signature: bytes, signers: Sequence[signing.PublicKey]
    ) -> str | None:
        """The entry for these exact bytes at ``where`` under ``signers`` (None: no usable cache)."""
        key = self._load()
        if key is None:
            return None
        trusted = tuple(k.blob for k in signers)
        base = self._bases.get(trusted)
        if base is None:  # what every entry of this run shares, hashed once, not per snapshot
            base = hmac.new(key, VERSION, hashlib.sha256)
            for part in (
                self.repo_url.encode(),
                b"".join(sorted(trusted)),
                signing.MANIFEST_NAMESPACE.encode(),
            ):
                _feed(base, part)
            self._bases[trusted] = base
        mac = base.copy()
        for part in (where.encode(), raw, signature):
            _feed(mac, part)
        return mac.hexdigest()

    def __contains__(self, entry: str) -> bool:
        return self._entries is not None and entry in self._entries

    def add(self, entry: str) -> None:
        """Remember one entry (appended at once: a killed run keeps what it verified)."""
        if self._entries is None or entry in self._entries:
            return
        self._entries.add(entry)
        try:
            if self._fd is None:  # opened once per run, closed with this object
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                weakref.finalize(self, os.close, self._fd)
            os.write(self._fd, entry.encode() + b"\n")  # one short write: whole under O_APPEND
        except OSError as exc:  # a read-only or full cache disk costs speed, never a run
            log.debug("verified-manifest cache %s: %s", self.path, exc)
            self._usable = False
            self._entries = None

    def _load(self) -> bytes | None:
        """The HMAC key and the entries, read once; None when the cache cannot be trusted or made."""
        if not self._usable:
            return None
        if self._key is not None:
            return self._key
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            key_file = self.dir / "key"
            with contextlib.suppress(FileExistsError):
                fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, secrets.token_bytes(32))
                finally:
                    os.close(fd)
            for path in (self.dir, key_file, *([self.path] if self.path.exists() else [])):
                if not _private(path):
                    log.warning(
                        "ignoring the verified-manifest cache %s: another user may write it "
                        "(every signature is checked instead); remove it or chmod go-w",
                        path,
                    )
                    self._usable = False
                    return None
            key = key_file.read_bytes()
            if len(key) != 32:
                raise OSError(f"{key_file} is not a 32-byte key")
            entries: set[str] = set()
            if self.path.exists():
                if self.path.stat().st_size > MAX_BYTES:
                    self.path.unlink()
                else:
                    for line in self.path.read_bytes().split(b"\n"):
                        if len(line) == _ENTRY:  # a torn last line is skipped
                            entries.add(line.decode("ascii", "replace"))
        except OSError as exc:
            log.debug("verified-manifest cache %s unusable: %s", self.dir, exc)
            self._usable = False
            return None
        self._key, self._entries = key, entries
        return key
