"""age v1 encryption (age-encryption.org/v1) to X25519 recipients, streaming, off the GIL.

pyrage encrypts while holding the GIL, so on a backup the SSH reader, the upload and the facts
tap wait for it. The format for X25519 recipients is small and fixed (C2SP age): this writes it
with ``cryptography``'s ChaCha20-Poly1305, X25519 and HKDF, which release the GIL and run about
3x faster. Anything else (SSH recipients) still goes through pyrage. Every file written here is
read back by ``age -d`` and by pyrage in the tests.
"""

from __future__ import annotations

import base64
import hmac
import os
from collections.abc import Callable
from hashlib import sha256

INTRO = b"age-encryption.org/v1\n"
CHUNK = 64 << 10  # plaintext bytes per STREAM chunk (the format fixes it)
TAG = 16
_X25519_INFO = b"age-encryption.org/v1/X25519"
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _b64(data: bytes) -> bytes:
    """age's base64: standard alphabet, no padding."""
    return base64.b64encode(data).rstrip(b"=")


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i, g in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            if (top >> i) & 1:
                chk ^= g
    return chk


def x25519_key(recipient: str) -> bytes | None:
    """The 32-byte public key of an ``age1...`` recipient (Bech32, checksum checked), else None."""
    text = recipient.strip()
    if text.lower() != text and text.upper() != text:
        return None
    text = text.lower()
    hrp, sep, data = text.rpartition("1")
    if hrp != "age" or not sep or len(data) < 6 or any(c not in _BECH32 for c in data):
        return None
    values = [_BECH32.index(c) for c in data]
    if _polymod([ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + values) != 1:
        return None
    acc = bits = 0
    out = bytearray()
    for v in values[:-6]:
        acc = acc << 5 | v
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits & 0xFF)
    if bits >= 5 or acc & ((1 << bits) - 1):
        return None  # non-zero padding: not a canonical encoding
    return bytes(out) if len(out) == 32 else None


def header(keys: list[bytes], file_key: bytes) -> bytes:
    """The age header wrapping ``file_key`` to each X25519 public key, with its MAC."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    out = [INTRO]
    for key in keys:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        secret = ephemeral.exchange(X25519PublicKey.from_public_bytes(key))  # raises on all-zero
        wrap = _hkdf(secret, share + key, _X25519_INFO)
        body = ChaCha20Poly1305(wrap).encrypt(bytes(12), file_key, None)
        out.append(b"-> X25519 " + _b64(share) + b"\n" + _b64(body) + b"\n")
    out.append(b"---")
    text = b"".join(out)
    mac = hmac.new(_hkdf(file_key, b"", b"header"), text, sha256).digest()
    return text + b" " + _b64(mac) + b"\n"


def encrypt(
    read: Callable[[int], bytes], write: Callable[[bytes], object], keys: list[bytes], size: int
) -> None:
    """Read plaintext with ``read(size)`` until ``b""`` and write the age file through ``write``,
    one STREAM chunk per call. Only the last chunk, which the format marks, waits for the end;
    nothing else is copied or held (constant memory: one chunk besides the caller's read)."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    file_key = os.urandom(16)
    nonce = os.urandom(16)
    seal = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload")).encrypt
    write(header(keys, file_key) + nonce)
    counter = 0
    carry = b""  # plaintext not yet sealed: at most one chunk, which may turn out to be the last

    def sealed(plain: bytes | memoryview) -> None:
        nonlocal counter
        write(seal(counter.to_bytes(11, "big") + b"\0", plain, None))
        counter += 1

    while data := read(size):
        view = memoryview(data)
        pos = 0
        if carry:  # more data came: the carried chunk is not the last once it is full
            pos = min(CHUNK - len(carry), len(view))
            carry += view[:pos]
            if pos == len(view):
                continue
            sealed(carry)
        end = pos + (len(view) - pos - 1) // CHUNK * CHUNK  # keep 1..CHUNK bytes back
        for at in range(pos, end, CHUNK):
            sealed(view[at : at + CHUNK])
        carry = bytes(view[end:])
    write(seal(counter.to_bytes(11, "big") + b"\1", carry, None))
