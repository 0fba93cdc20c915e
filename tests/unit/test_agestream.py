"""The in-house age encryption (agestream.py) against the reference implementations: every file
it writes must decrypt with the ``age`` program and with pyrage, for every recipient, whatever
the plaintext length (the last-chunk rule) and however the reads are split."""

from __future__ import annotations

import io
import os
import random
import subprocess
from pathlib import Path

import pyrage
import pytest
import zstandard
from pyrage import x25519

from recipes import agestream, stream

CHUNK = agestream.CHUNK


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[x25519.Identity, str, Path]]:
    """Two age identities: the identity, its recipient and an identity file for ``age -d -i``."""
    out = []
    for i in range(2):
        identity = x25519.Identity.generate()
        path = tmp_path_factory.mktemp("age") / f"id{i}.txt"
        path.write_text(f"{identity}\n")
        out.append((identity, str(identity.to_public()), path))
    return out


def _encrypt(data: bytes, recipients: list[str], size: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    src = io.BytesIO(data)
    out = io.BytesIO()
    keys = [agestream.x25519_key(r) for r in recipients]
    assert all(keys)
    agestream.encrypt(lambda n: src.read(rng.randint(1, n)), out.write, keys, size)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize("length", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 7, 1 << 20])
@pytest.mark.parametrize("size", [100, CHUNK, 3 * CHUNK + 1])
def test_every_length_decrypts_with_pyrage_for_every_recipient(
    people: list[tuple[x25519.Identity, str, Path]], length: int, size: int
) -> None:
    data = os.urandom(length)
    sealed = _encrypt(data, [p[1] for p in people], size, seed=length)
    for identity, _, _ in people:
        assert pyrage.decrypt(sealed, [identity]) == data
    # STREAM framing: a 16-byte nonce, then one 16-byte tag per 64 KiB chunk (one for empty input)
    chunks = max(1, -(-length // CHUNK))
    assert len(sealed) - sealed.index(b"\n---") == len(b"\n--- ") + 43 + 1 + 16 + length + 16 * chunks


@pytest.mark.parametrize("length", [0, CHUNK, 2 * CHUNK + 5])
def test_the_age_program_decrypts_it(people: list[tuple[x25519.Identity, str, Path]], length: int) -> None:
    data = os.urandom(length)
    sealed = _encrypt(data, [p[1] for p in people], 70_000)
    for _, _, path in people:
        out = subprocess.run(["age", "-d", "-i", str(path)], input=sealed, capture_output=True, check=False)
        assert (out.returncode, out.stdout) == (0, data), out.stderr
    stranger = people[0][2].parent / "stranger.txt"
    stranger.write_text(f"{x25519.Identity.generate()}\n")
    out = subprocess.run(["age", "-d", "-i", str(stranger)], input=sealed, capture_output=True, check=False)
    assert out.returncode != 0


def test_a_changed_header_or_body_does_not_decrypt(people: list[tuple[x25519.Identity, str, Path]]) -> None:
    sealed = bytearray(_encrypt(os.urandom(3 * CHUNK), [people[0][1]], CHUNK))
    for at in (sealed.index(b"X25519") + 20, len(sealed) - 10, len(sealed) - CHUNK - 40):
        bad = bytearray(sealed)
        bad[at] ^= 1
        with pytest.raises(pyrage.DecryptError):
            pyrage.decrypt(bytes(bad), [people[0][0]])


def test_recipients_parse_like_age() -> None:
    identity = x25519.Identity.generate()
    text = str(identity.to_public())
    key = agestream.x25519_key(text)
    assert key is not None and len(key) == 32
    assert agestream.x25519_key(text.upper()) == key  # Bech32 is case-insensitive, not mixed
    assert agestream.x25519_key(text[:5] + text[5].upper() + text[6:]) in (None, key)
    flipped = text[:-1] + ("q" if text[-1] != "q" else "p")
    assert agestream.x25519_key(flipped) is None  # the checksum is checked
    assert agestream.x25519_key("age1qqqq") is None
    assert agestream.x25519_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHxx") is None
    assert agestream.x25519_key("agf1" + text[4:]) is None


def test_store_uses_it_for_age_recipients_and_pyrage_for_ssh_ones(
    people: list[tuple[x25519.Identity, str, Path]], tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    out = io.BytesIO()
    stored = stream.store(io.BytesIO(data), out, [people[1][1]], compressed=False)
    assert stored.size == len(out.getvalue())
    plain = pyrage.decrypt(out.getvalue(), [people[1][0]])
    assert zstandard.ZstdDecompressor().decompressobj().decompress(plain) == data

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ssh_recipient = (tmp_path / "id_ed25519.pub").read_text().strip()
    out = io.BytesIO()
    stream.store(io.BytesIO(data), out, [people[0][1], ssh_recipient], compressed=False)
    plain = pyrage.decrypt(out.getvalue(), [pyrage.ssh.Identity.from_buffer(key.read_bytes())])
    assert zstandard.ZstdDecompressor().decompressobj().decompress(plain) == data
