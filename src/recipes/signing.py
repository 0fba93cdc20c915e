"""Ed25519 signatures in OpenSSH's sshsig format, so ``ssh-keygen -Y verify`` alone can check them.

The formats are OpenSSH's own (PROTOCOL.sshsig, PROTOCOL.key): the signing key is the file
``ssh-keygen -t ed25519 -N ''`` writes, the public keys are ``ssh-ed25519 AAAA... comment``
lines, and a signature is the armored blob ``ssh-keygen -Y sign`` writes. Every signature has a
namespace, so a signature made for one kind of record can never pass as another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
import struct
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from recipes.errors import ConfigError, VerifyError

MANIFEST_NAMESPACE = "recipes-manifest"
DRILL_NAMESPACE = "recipes-drill"

KEY_TYPE = "ssh-ed25519"
MAGIC = b"SSHSIG"
SIG_VERSION = 1
HASH_ALGORITHM = "sha512"
SIG_BEGIN = "-----BEGIN SSH SIGNATURE-----"
SIG_END = "-----END SSH SIGNATURE-----"
KEY_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
KEY_END = "-----END OPENSSH PRIVATE KEY-----"
KEY_MAGIC = b"openssh-key-v1\x00"
_HASHES = {"sha512": hashlib.sha512, "sha256": hashlib.sha256}
_MAKE_ONE = "make one with `recipes init` or `ssh-keygen -t ed25519 -N '' -f {path}`"


class _Truncated(Exception):
    """The wire data ended early or had bytes left over."""


def _string(data: bytes) -> bytes:
    """SSH wire ``string``: uint32 length, then the bytes."""
    return struct.pack(">I", len(data)) + data


class _Reader:
    """Reads SSH wire-format fields and fails on truncation."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Truncated
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.uint32())

    def text(self) -> str:
        return self.string().decode("utf-8")

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise _Truncated


def _wrap(raw: bytes, begin: str, end: str) -> str:
    """PEM-like armor as OpenSSH writes it: base64 in 70-column lines."""
    b64 = base64.b64encode(raw).decode("ascii")
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    return "\n".join([begin, *lines, end]) + "\n"


def _unwrap(text: str, begin: str, end: str) -> bytes:
    """The bytes inside the armor; ValueError when the armor or the base64 is broken."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 2 or lines[0] != begin or lines[-1] != end:
        raise ValueError(f"no {begin} ... {end} armor")
    try:
        return base64.b64decode("".join(lines[1:-1]).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"damaged base64 inside the armor ({exc})") from None


@attrs.frozen
class PublicKey:
    """An ed25519 public key as an ``authorized_keys``-style line and its wire blob."""

    line: str
    """Normalized ``ssh-ed25519 AAAA... [comment]``."""
    blob: bytes
    """The SSH wire-format public key: string "ssh-ed25519", string key (32 bytes)."""

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` exactly as ``ssh-keygen -l`` prints it."""
        digest = base64.b64encode(hashlib.sha256(self.blob).digest()).decode("ascii")
        return "SHA256:" + digest.rstrip("=")

    @property
    def comment(self) -> str:
        parts = self.line.split(" ", 2)
        return parts[2] if len(parts) > 2 else ""

    def raw(self) -> bytes:
        """The 32 key bytes."""
        return self.blob[-32:]


def _blob(raw: bytes) -> bytes:
    return _string(KEY_TYPE.encode()) + _string(raw)


def _key_from_blob(blob: bytes) -> bytes:
    """The 32 raw key bytes of an ssh-ed25519 wire blob; ValueError naming what is wrong."""
    r = _Reader(blob)
    try:
        kind = r.string().decode("utf-8", "replace")
        if kind != KEY_TYPE:
            raise ValueError(f"a {_short(kind)} key: recipes signs and verifies with ed25519 keys only")
        raw = r.string()
        r.done()
    except _Truncated:
        raise ValueError("the key data is truncated or has extra bytes") from None
    if len(raw) != 32:
        raise ValueError(f"an ed25519 key has 32 bytes, this one {len(raw)}")
    return raw


def _public(raw: bytes, comment: str) -> PublicKey:
    blob = _blob(raw)
    b64 = base64.b64encode(blob).decode("ascii")
    return PublicKey(line=f"{KEY_TYPE} {b64} {comment}".rstrip(), blob=blob)


def parse_public_key(text: str) -> PublicKey:
    """``ssh-ed25519 AAAA... [comment]`` -> PublicKey; ValueError with a one-line reason."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string 'ssh-ed25519 AAAA... comment', got {type(text).__name__}")
    stripped = text.strip()
    if "\n" in stripped or "\r" in stripped:
        raise ValueError("one public key per entry: the text spans several lines")
    parts = stripped.split(None, 2)
    if len(parts) < 2:
        raise ValueError(
            f"not an OpenSSH public key line: '{_short(stripped)}' (expected 'ssh-ed25519 AAAA...')"
        )
    kind, b64 = parts[0], parts[1]
    comment = " ".join(parts[2].split()) if len(parts) > 2 else ""
    if kind != KEY_TYPE:
        raise ValueError(f"a {_short(kind)} key: recipes signs and verifies with ed25519 keys only")
    try:
        blob = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"the key's base64 '{_short(b64)}' is damaged") from None
    raw = _key_from_blob(blob)
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"not a valid ed25519 public key ({exc})") from None
    return _public(raw, comment)


def _short(text: str, n: int = 40) -> str:
    """Text read from a key or signature, safe to show on one line: escaped and cut short."""
    shown = repr(text)[1:-1]
    return shown if len(shown) <= n else shown[:n] + "..."


class SigningKey:
    """An ed25519 private key that signs in the sshsig format."""

    def __init__(self, private: Ed25519PrivateKey, comment: str = "") -> None:
        self._private = private
        raw = private.public_key().public_bytes_raw()
        self.public: PublicKey = _public(raw, comment)

    def __repr__(self) -> str:
        return f"SigningKey({self.public.fingerprint})"

    def sign(self, data: bytes, namespace: str) -> bytes:
        """The armored signature of ``data`` for ``namespace``, as ``ssh-keygen -Y sign`` writes it."""
        if not namespace:
            raise ValueError("a signature needs a namespace")
        signed = (
            MAGIC
            + _string(namespace.encode())
            + _string(b"")
            + _string(HASH_ALGORITHM.encode())
            + _string(_HASHES[HASH_ALGORITHM](data).digest())
        )
        sig = _string(KEY_TYPE.encode()) + _string(self._private.sign(signed))
        blob = (
            MAGIC
            + struct.pack(">I", SIG_VERSION)
            + _string(self.public.blob)
            + _string(namespace.encode())
            + _string(b"")
            + _string(HASH_ALGORITHM.encode())
            + _string(sig)
        )
        return _wrap(blob, SIG_BEGIN, SIG_END).encode("ascii")

    def private_text(self, check: int | None = None) -> str:
        """The OpenSSH private key file (unencrypted), byte for byte as ssh-keygen lays it out."""
        seed = self._private.private_bytes_raw()
        raw = self.public.raw()
        checkint = check if check is not None else struct.unpack(">I", os.urandom(4))[0]
        inner = (
            struct.pack(">II", checkint, checkint)
            + _string(KEY_TYPE.encode())
            + _string(raw)
            + _string(seed + raw)
            + _string(self.public.comment.encode())
        )
        inner += bytes(range(1, 1 + (-len(inner)) % 8))
        outer = (
            KEY_MAGIC
            + _string(b"none")
            + _string(b"none")
            + _string(b"")
            + struct.pack(">I", 1)
            + _string(self.public.blob)
            + _string(inner)
        )
        return _wrap(outer, KEY_BEGIN, KEY_END)


def _parse_private(text: str) -> tuple[Ed25519PrivateKey, str]:
    """An unencrypted OpenSSH ed25519 private key file -> key and comment; ValueError otherwise."""
    if KEY_BEGIN not in text:
        if "-----BEGIN" in text and "PRIVATE KEY-----" in text:
            raise ValueError(
                "not an OpenSSH-format private key (PEM): recipes needs an ed25519 key in OpenSSH format"
            )
        raise ValueError("not an OpenSSH private key")
    outer = _unwrap(text, KEY_BEGIN, KEY_END)
    r = _Reader(outer)
    try:
        if r.take(len(KEY_MAGIC)) != KEY_MAGIC:
            raise ValueError("not an openssh-key-v1 private key")
        cipher, kdf = r.text(), r.text()
        r.string()
        if cipher != "none" or kdf != "none":
            raise ValueError(
                "protected by a passphrase: recipes signs unattended and needs a key "
                "without one (ssh-keygen -p -N '' -f FILE removes it)"
            )
        if r.uint32() != 1:
            raise ValueError("holds more than one key")
        pub_blob = r.string()
        inner = _Reader(r.string())
        r.done()
        kind = _Reader(pub_blob).text()
        if kind != KEY_TYPE:
            raise ValueError(f"a {_short(kind)} key: recipes signs with ed25519 keys only")
        if inner.uint32() != inner.uint32():
            raise ValueError("damaged (its check numbers differ)")
        if inner.text() != KEY_TYPE:
            raise ValueError("damaged (its private part is not ed25519)")
        raw = inner.string()
        both = inner.string()
        comment = inner.text()
        padding = inner.rest()
    except _Truncated:
        raise ValueError("truncated or damaged") from None
    except UnicodeDecodeError:
        raise ValueError("damaged (a text field is not UTF-8)") from None
    if len(raw) != 32 or len(both) != 64 or both[32:] != raw or _blob(raw) != pub_blob:
        raise ValueError("damaged (its public and private parts do not match)")
    if padding != bytes(range(1, len(padding) + 1)):
        raise ValueError("damaged (bad padding)")
    private = Ed25519PrivateKey.from_private_bytes(both[:32])
    if private.public_key().public_bytes_raw() != raw:
        raise ValueError("damaged (its private key does not give its public key)")
    return private, comment


def load_signing_key(path: str) -> SigningKey:
    """Read an OpenSSH ed25519 private key file (unencrypted, mode 0600 or stricter, as ssh requires)."""
    p = Path(os.path.expanduser(path))
    make = _MAKE_ONE.format(path=path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"signing key {path} does not exist: {make}") from None
    except OSError as exc:
        raise ConfigError(f"signing key {path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"signing key {path} is not a file: {make}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"signing key {path} has mode {mode:04o}, readable by others: "
            f"it must be 0600 or stricter, like ssh's keys (chmod 600 {path})"
        )
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"signing key {path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"signing key {path} is not an OpenSSH private key (binary data): {make}") from None
    try:
        private, comment = _parse_private(text)
    except ValueError as exc:
        raise ConfigError(f"signing key {path}: {exc}; {make}") from None
    return SigningKey(private, comment)


def generate_signing_key(path: Path, comment: str) -> SigningKey:
    """A new key written as ``ssh-keygen -t ed25519 -N '' -C comment -f path`` does: path (0600), path.pub."""
    key = SigningKey(Ed25519PrivateKey.generate(), " ".join(comment.split()))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, key.private_text(), 0o600)
    write_file(Path(f"{path}.pub"), key.public.line + "\n", 0o644)
    return key


def write_file(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` atomically with ``text`` and ``mode``: a temporary file beside it (created
    anew, never through a link left there), then a rename, so a reader sees the old or the new."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a leftover of a crashed run with the same pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def verify(data: bytes, signature: bytes, signers: Sequence[PublicKey], namespace: str) -> PublicKey:
    """The signer of a valid sshsig ``signature`` over ``data`` in ``namespace``; VerifyError otherwise."""
    try:
        text = signature.decode("ascii")
        blob = _unwrap(text, SIG_BEGIN, SIG_END)
    except UnicodeDecodeError:
        raise VerifyError("malformed signature: not an armored SSH signature (binary data)") from None
    except ValueError as exc:
        raise VerifyError(f"malformed signature: {exc}") from None
    r = _Reader(blob)
    try:
        if r.take(len(MAGIC)) != MAGIC:
            raise VerifyError("malformed signature: no SSHSIG magic")
        version = r.uint32()
        if version != SIG_VERSION:
            raise VerifyError(f"malformed signature: version {version}, expected {SIG_VERSION}")
        key_blob = r.string()
        sig_namespace = r.string()
        reserved = r.string()
        hash_alg = r.string()
        sig = _Reader(r.string())
        r.done()
        sig_type = sig.string()
        sig_bytes = sig.string()
        sig.done()
    except _Truncated:
        raise VerifyError("malformed signature: truncated or has extra bytes") from None
    try:
        raw = _key_from_blob(key_blob)
    except ValueError as exc:
        raise VerifyError(f"malformed signature: signed with {exc}") from None
    signer = _public(raw, "")
    if sig_namespace != namespace.encode():
        shown = sig_namespace.decode("utf-8", "replace")
        raise VerifyError(f"signature is for namespace '{_short(shown)}', not {namespace!r}")
    algorithm = hash_alg.decode("utf-8", "replace")
    if algorithm not in _HASHES:
        raise VerifyError(f"malformed signature: unsupported hash '{_short(algorithm)}'")
    if sig_type != KEY_TYPE.encode() or len(sig_bytes) != 64:
        raise VerifyError("malformed signature: not an ed25519 signature")
    trusted = next((s for s in signers if s.blob == signer.blob), None)
    if trusted is None:
        raise VerifyError(
            f"signed by {signer.fingerprint}, which is not among the {len(signers)} trusted signers "
            "([repository] signers)"
        )
    signed = (
        MAGIC
        + _string(sig_namespace)
        + _string(reserved)
        + _string(hash_alg)
        + _string(_HASHES[algorithm](data).digest())
    )
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(sig_bytes, signed)
    except (InvalidSignature, ValueError):
        raise VerifyError(
            f"bad signature by {signer.fingerprint}: the signed data or the signature was changed"
        ) from None
    return trusted
