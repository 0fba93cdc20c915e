"""sshsig signatures and key files, checked against the real ``ssh-keygen`` in both directions."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipes import config, signing
from recipes.errors import ConfigError, VerifyError
from recipes.signing import MANIFEST_NAMESPACE, PublicKey, SigningKey

DATA = b'{"format": 2, "snapshot": "20250101T000000Z"}\n'


def keygen(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["ssh-keygen", *args], input=stdin, capture_output=True, check=False)


def ssh_key(tmp_path: Path, name: str = "key", kind: str = "ed25519", passphrase: str = "") -> Path:
    path = tmp_path / name
    extra = ["-b", "2048"] if kind == "rsa" else []
    result = keygen("-q", "-t", kind, *extra, "-N", passphrase, "-C", f"{name}@test", "-f", str(path))
    assert result.returncode == 0, result.stderr
    return path


def ssh_verify(tmp_path: Path, key: PublicKey, data: bytes, sig: bytes, namespace: str) -> int:
    (tmp_path / "allowed_signers").write_text(f"recipes {key.line}\n")
    (tmp_path / "FILE.sig").write_bytes(sig)
    result = keygen(
        "-Y",
        "verify",
        "-f",
        str(tmp_path / "allowed_signers"),
        "-I",
        "recipes",
        "-n",
        namespace,
        "-s",
        str(tmp_path / "FILE.sig"),
        stdin=data,
    )
    return result.returncode


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, text
    return text


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return signing.generate_signing_key(tmp_path / "ours", "recipes@test")


# --- interoperability with ssh-keygen ---------------------------------------------------------


def test_our_signature_verifies_with_ssh_keygen(tmp_path: Path, key: SigningKey) -> None:
    sig = key.sign(DATA, MANIFEST_NAMESPACE)
    assert sig.startswith(b"-----BEGIN SSH SIGNATURE-----\n") and sig.endswith(
        b"-----END SSH SIGNATURE-----\n"
    )
    assert all(len(line) <= 70 for line in sig.splitlines())
    assert ssh_verify(tmp_path, key.public, DATA, sig, MANIFEST_NAMESPACE) == 0
    # ...and ssh-keygen refuses it for other data or another namespace
    assert ssh_verify(tmp_path, key.public, DATA + b" ", sig, MANIFEST_NAMESPACE) != 0
    assert ssh_verify(tmp_path, key.public, DATA, sig, signing.DRILL_NAMESPACE) != 0


def test_ssh_keygen_signature_verifies_with_ours_and_is_byte_identical(tmp_path: Path) -> None:
    path = ssh_key(tmp_path)
    (tmp_path / "FILE").write_bytes(DATA)
    result = keygen("-Y", "sign", "-f", str(path), "-n", MANIFEST_NAMESPACE, str(tmp_path / "FILE"))
    assert result.returncode == 0, result.stderr
    theirs = (tmp_path / "FILE.sig").read_bytes()
    public = signing.parse_public_key((tmp_path / "key.pub").read_text())
    assert signing.verify(DATA, theirs, [public], MANIFEST_NAMESPACE) == public
    # ed25519 is deterministic: the same key over the same data gives the same armored bytes
    assert signing.load_signing_key(str(path)).sign(DATA, MANIFEST_NAMESPACE) == theirs


def test_ssh_keygen_sha256_signature_verifies(tmp_path: Path) -> None:
    path = ssh_key(tmp_path)
    (tmp_path / "FILE").write_bytes(DATA)
    args = ["-Y", "sign", "-O", "hashalg=sha256", "-f", str(path), "-n", MANIFEST_NAMESPACE]
    assert keygen(*args, str(tmp_path / "FILE")).returncode == 0
    public = signing.parse_public_key((tmp_path / "key.pub").read_text())
    assert signing.verify(DATA, (tmp_path / "FILE.sig").read_bytes(), [public], MANIFEST_NAMESPACE) == public


def test_ssh_keygen_key_loads_with_ours(tmp_path: Path) -> None:
    path = ssh_key(tmp_path)
    loaded = signing.load_signing_key(str(path))
    assert loaded.public.line == (tmp_path / "key.pub").read_text().strip()
    assert loaded.public.comment == "key@test"
    # our writer lays the file out byte for byte as ssh-keygen did (given its random check number)
    text = path.read_text()
    raw = base64.b64decode("".join(text.splitlines()[1:-1]))
    # magic, cipher "none", kdf "none", kdf options "", 1 key, public blob, then the private part
    reader = signing._Reader(raw)
    reader.take(len(signing.KEY_MAGIC))
    for _ in range(3):
        reader.string()
    assert reader.uint32() == 1
    reader.string()
    check = struct.unpack(">I", reader.string()[:4])[0]
    assert loaded.private_text(check) == text


def test_our_key_loads_in_ssh_keygen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "signing_key"
    key = signing.generate_signing_key(path, "recipes@host one")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(f"{path}.pub").st_mode & 0o777 == 0o644
    result = keygen("-y", "-f", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == key.public.line == Path(f"{path}.pub").read_text().strip()
    assert key.public.line.endswith(" recipes@host one")
    # ssh-keygen signs with our key file, and we verify that
    (tmp_path / "FILE").write_bytes(DATA)
    assert keygen("-Y", "sign", "-f", str(path), "-n", "x", str(tmp_path / "FILE")).returncode == 0
    assert signing.verify(DATA, (tmp_path / "FILE.sig").read_bytes(), [key.public], "x") == key.public
    assert signing.load_signing_key(str(path)).public == key.public


def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path, key: SigningKey) -> None:
    out = keygen("-l", "-f", str(tmp_path / "ours.pub")).stdout.decode().split()
    assert out[1] == key.public.fingerprint
    assert key.public.fingerprint.startswith("SHA256:") and not key.public.fingerprint.endswith("=")


# --- refusals ---------------------------------------------------------------------------------


def test_tampered_data_is_a_bad_signature(key: SigningKey) -> None:
    sig = key.sign(DATA, MANIFEST_NAMESPACE)
    with pytest.raises(VerifyError) as exc:
        signing.verify(DATA.replace(b"2025", b"2024"), sig, [key.public], MANIFEST_NAMESPACE)
    assert "bad signature" in one_line(exc) and key.public.fingerprint in str(exc.value)
    assert exc.value.exit_code == 3


def _armor(blob: bytes) -> bytes:
    return signing._wrap(blob, signing.SIG_BEGIN, signing.SIG_END).encode()


def _blob(sig: bytes) -> bytes:
    return signing._unwrap(sig.decode(), signing.SIG_BEGIN, signing.SIG_END)


def test_tampered_signature_is_a_bad_signature(key: SigningKey) -> None:
    blob = bytearray(_blob(key.sign(DATA, MANIFEST_NAMESPACE)))
    blob[-5] ^= 0x01  # inside the 64 signature bytes at the end
    with pytest.raises(VerifyError) as exc:
        signing.verify(DATA, _armor(bytes(blob)), [key.public], MANIFEST_NAMESPACE)
    assert "bad signature" in one_line(exc)


def test_wrong_namespace_is_refused(tmp_path: Path, key: SigningKey) -> None:
    sig = key.sign(DATA, signing.DRILL_NAMESPACE)
    with pytest.raises(VerifyError) as exc:
        signing.verify(DATA, sig, [key.public], MANIFEST_NAMESPACE)
    assert "'recipes-drill'" in one_line(exc) and "'recipes-manifest'" in str(exc.value)
    # a namespace forged into the blob without re-signing is a bad signature, not a pass
    forged = _blob(sig).replace(b"recipes-drill", b"recipes-x-man")
    forged = forged.replace(
        struct.pack(">I", 13) + b"recipes-x-man", struct.pack(">I", 16) + b"recipes-manifest"
    )
    with pytest.raises(VerifyError, match="bad signature"):
        signing.verify(DATA, _armor(forged), [key.public], MANIFEST_NAMESPACE)


def test_unknown_signer_is_named_by_fingerprint(tmp_path: Path, key: SigningKey) -> None:
    other = signing.generate_signing_key(tmp_path / "other", "other")
    sig = other.sign(DATA, MANIFEST_NAMESPACE)
    with pytest.raises(VerifyError) as exc:
        signing.verify(DATA, sig, [key.public], MANIFEST_NAMESPACE)
    assert other.public.fingerprint in one_line(exc) and "not among" in str(exc.value)
    with pytest.raises(VerifyError, match="not among the 0 trusted"):
        signing.verify(DATA, sig, [], MANIFEST_NAMESPACE)
    assert signing.verify(DATA, sig, [key.public, other.public], MANIFEST_NAMESPACE) == other.public


def test_rsa_keys_are_refused_everywhere(tmp_path: Path) -> None:
    path = ssh_key(tmp_path, "rsa", kind="rsa")
    with pytest.raises(ConfigError) as exc:
        signing.load_signing_key(str(path))
    assert "ssh-rsa" in one_line(exc) and "ed25519" in str(exc.value)
    with pytest.raises(ValueError, match="ssh-rsa key: recipes signs and verifies with ed25519 keys only"):
        signing.parse_public_key((tmp_path / "rsa.pub").read_text())
    (tmp_path / "FILE").write_bytes(DATA)
    assert (
        keygen("-Y", "sign", "-f", str(path), "-n", MANIFEST_NAMESPACE, str(tmp_path / "FILE")).returncode
        == 0
    )
    with pytest.raises(VerifyError) as vexc:
        signing.verify(DATA, (tmp_path / "FILE.sig").read_bytes(), [], MANIFEST_NAMESPACE)
    assert "ssh-rsa" in one_line(vexc)


def test_garbage_and_truncated_signatures_are_malformed(key: SigningKey) -> None:
    sig = key.sign(DATA, MANIFEST_NAMESPACE)
    blob = _blob(sig)
    cases = [
        b"",
        b"garbage",
        b"\xff\xfe binary",
        sig[: len(sig) // 2],
        b"-----BEGIN SSH SIGNATURE-----\n!!!!\n-----END SSH SIGNATURE-----\n",
        _armor(blob[:-1]),
        _armor(blob[:20]),
        _armor(blob + b"\x00"),
        _armor(b"SSHSIG" + struct.pack(">I", 2) + blob[10:]),
        _armor(b"SSHSIX" + blob[6:]),
    ]
    for case in cases:
        with pytest.raises(VerifyError) as exc:
            signing.verify(DATA, case, [key.public], MANIFEST_NAMESPACE)
        assert one_line(exc).startswith("malformed signature"), (case, str(exc.value))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not an OpenSSH public key line"),
        ("ssh-ed25519", "not an OpenSSH public key line"),
        ("ssh-ed25519 !!!notbase64", "base64"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFrvLvG/1NX1xlgFnLfP8okh7xZx", "truncated"),
        ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==", "ssh-rsa key"),
        ("ecdsa-sha2-nistp256 AAAA", "ecdsa-sha2-nistp256 key"),
        (
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFrvLvG/1NX1xlgFnLfP8okh7xZxGjXFCE7yhsETCCeJ\nssh-ed25519 x",
            "lines",
        ),
    ],
)
def test_bad_public_keys_fail_with_one_line(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as exc:
        signing.parse_public_key(text)
    assert reason in one_line(exc)


def test_public_key_line_is_normalized(key: SigningKey) -> None:
    b64 = key.public.line.split()[1]
    parsed = signing.parse_public_key(f"  ssh-ed25519   {b64}   my   laptop \n")
    assert parsed.line == f"ssh-ed25519 {b64} my laptop"
    assert parsed.blob == key.public.blob and parsed.fingerprint == key.public.fingerprint
    assert signing.parse_public_key(f"ssh-ed25519 {b64}").line == f"ssh-ed25519 {b64}"


# --- loading the private key ------------------------------------------------------------------


def test_missing_key_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        signing.load_signing_key(str(tmp_path / "nope"))
    text = one_line(exc)
    assert "does not exist" in text and "recipes init" in text
    assert f"ssh-keygen -t ed25519 -N '' -f {tmp_path / 'nope'}" in text
    assert exc.value.exit_code == 2


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = ssh_key(tmp_path)
    for mode in (0o640, 0o604, 0o644):
        os.chmod(path, mode)
        with pytest.raises(ConfigError) as exc:
            signing.load_signing_key(str(path))
        assert f"mode {mode:04o}" in one_line(exc) and "chmod 600" in str(exc.value)
    os.chmod(path, 0o400)
    assert signing.load_signing_key(str(path)).public.comment == "key@test"


def test_passphrase_protected_key_is_refused(tmp_path: Path) -> None:
    path = ssh_key(tmp_path, passphrase="hunter22")
    with pytest.raises(ConfigError) as exc:
        signing.load_signing_key(str(path))
    assert "protected by a passphrase" in one_line(exc) and "ssh-keygen -p" in str(exc.value)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"garbage\n",
        b"\x00\xff\xfe binary",
        b"-----BEGIN OPENSSH PRIVATE KEY-----\n!!!\n-----END OPENSSH PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
    ],
)
def test_garbage_key_files_fail_with_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as exc:
        signing.load_signing_key(str(path))
    assert str(path) in one_line(exc) and "recipes init" in str(exc.value)


def test_truncated_and_damaged_key_files_fail_with_one_line(tmp_path: Path) -> None:
    good = ssh_key(tmp_path)
    lines = good.read_text().splitlines()
    raw = base64.b64decode("".join(lines[1:-1]))
    bad = tmp_path / "bad"
    variants = [
        "\n".join(lines[:3]) + "\n",  # armor cut off
        "\n".join([lines[0], base64.b64encode(raw[:100]).decode(), lines[-1]]) + "\n",
        "\n".join([lines[0], base64.b64encode(raw[:-8]).decode(), lines[-1]]) + "\n",
        "\n".join([lines[0], base64.b64encode(raw[:-1] + b"\x09").decode(), lines[-1]]) + "\n",
        "\n".join(
            [lines[0], base64.b64encode(raw[:160] + bytes([raw[160] ^ 1]) + raw[161:]).decode(), lines[-1]]
        )
        + "\n",
    ]
    for text in variants:
        bad.write_text(text)
        os.chmod(bad, 0o600)
        with pytest.raises(ConfigError) as exc:
            signing.load_signing_key(str(bad))
        assert str(bad) in one_line(exc)


def test_a_directory_is_not_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        signing.load_signing_key(str(tmp_path))
    assert "not a file" in one_line(exc)


# --- fuzzing ----------------------------------------------------------------------------------

_FUZZ_KEY = signing.SigningKey(signing.Ed25519PrivateKey.from_private_bytes(bytes(range(32))), "fuzz")
_FUZZ_SIG = _FUZZ_KEY.sign(DATA, MANIFEST_NAMESPACE)
_FUZZ_BLOB = _blob(_FUZZ_SIG)


def _verify_only_raises_verify_error(sig: bytes) -> None:
    try:
        signer = signing.verify(DATA, sig, [_FUZZ_KEY.public], MANIFEST_NAMESPACE)
    except VerifyError as exc:
        assert "\n" not in str(exc)
    else:  # only an armor variant that decodes to the very same signature may pass
        assert signer == _FUZZ_KEY.public and _blob(sig) == _FUZZ_BLOB


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_random_signatures(sig: bytes) -> None:
    _verify_only_raises_verify_error(sig)


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=len(_FUZZ_BLOB) - 1))
def test_fuzz_truncated_signatures(n: int) -> None:
    _verify_only_raises_verify_error(_armor(_FUZZ_BLOB[:n]))
    _verify_only_raises_verify_error(_FUZZ_SIG[:n])


@settings(max_examples=500)
@given(st.integers(min_value=0, max_value=len(_FUZZ_BLOB) * 8 - 1))
def test_fuzz_bit_flipped_signature_blobs_never_verify(bit: int) -> None:
    blob = bytearray(_FUZZ_BLOB)
    blob[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(VerifyError):
        signing.verify(DATA, _armor(bytes(blob)), [_FUZZ_KEY.public], MANIFEST_NAMESPACE)


@settings(max_examples=500)
@given(st.integers(min_value=0, max_value=len(_FUZZ_SIG) * 8 - 1))
def test_fuzz_bit_flipped_armor(bit: int) -> None:
    sig = bytearray(_FUZZ_SIG)
    sig[bit // 8] ^= 1 << (bit % 8)
    _verify_only_raises_verify_error(bytes(sig))


@settings(max_examples=200)
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0))
def test_fuzz_spliced_signature_blobs(junk: bytes, at: int) -> None:
    at %= len(_FUZZ_BLOB)
    _verify_only_raises_verify_error(_armor(_FUZZ_BLOB[:at] + junk + _FUZZ_BLOB[at:]))
    _verify_only_raises_verify_error(_armor(_FUZZ_BLOB[:at] + junk + _FUZZ_BLOB[at + len(junk) :]))


# --- [repository] signing_key and signers -----------------------------------------------------


def _write_config(tmp_path: Path, repository: str) -> str:
    path = tmp_path / "recipes.toml"
    path.write_text(f"[repository]\n{repository}\n")
    return str(path)


def test_config_signers_are_parsed_and_bad_entries_named(tmp_path: Path, key: SigningKey) -> None:
    good = f'signers = ["{key.public.line}"]'
    cfg = config.load(_write_config(tmp_path, good))
    assert cfg.signers() == [key.public]
    path = _write_config(tmp_path, f'signers = ["{key.public.line}", "ssh-rsa AAAAB3Nza"]')
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    text = one_line(exc)
    assert text.startswith(f"{path}: repository.signers[1]: ") and "ssh-rsa" in text
    with pytest.raises(ConfigError, match=r"repository\.signers: must be a list"):
        config.load(_write_config(tmp_path, f'signers = "{key.public.line}"'))
    with pytest.raises(ConfigError, match=r"repository\.signers: expected a list of strings"):
        config.load(_write_config(tmp_path, "signers = [42]"))


def test_signing_key_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "conf").mkdir()
    explicit = config.load(_write_config(tmp_path / "conf", 'signing_key = "keys/sk"'))
    assert explicit.signing_key_path() == str(tmp_path / "conf" / "keys" / "sk")
    tilde = config.load(_write_config(tmp_path / "conf", 'signing_key = "~/sk"'))
    assert tilde.signing_key_path() == str(home / "sk")
    plain = config.load(_write_config(tmp_path / "conf", ""))
    assert plain.signing_key_path() is None
    signing.generate_signing_key(home / ".config" / "recipes" / "signing_key", "x")
    assert plain.signing_key_path() == str(home / ".config" / "recipes" / "signing_key")
    assert config.Config().signers() == []


def test_text_from_a_hostile_signature_is_shown_escaped_on_one_line() -> None:
    """Found by the splice fuzzer: a key type with a newline once split the error in two."""
    forged = _FUZZ_BLOB.replace(b"ssh-ed25519", b"s\nh-ed25519", 1)
    with pytest.raises(VerifyError) as exc:
        signing.verify(DATA, _armor(forged), [_FUZZ_KEY.public], MANIFEST_NAMESPACE)
    assert "s\\nh-ed25519" in one_line(exc)
    with pytest.raises(ValueError) as vexc:
        signing.parse_public_key("ssh-ed25519\x1b[2J AAAA")
    assert "\\x1b[2J" in one_line(vexc)


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_fuzz_public_key_lines(text: str) -> None:
    try:
        signing.parse_public_key(text)
    except ValueError as exc:
        assert "\n" not in str(exc) and str(exc)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=len(_FUZZ_KEY.private_text(7)) - 1), st.binary(max_size=3))
def test_fuzz_damaged_key_files(tmp_path_factory: pytest.TempPathFactory, at: int, junk: bytes) -> None:
    text = _FUZZ_KEY.private_text(7).encode()
    path = tmp_path_factory.mktemp("k") / "key"
    path.write_bytes(text[:at] + junk + text[at + len(junk) :])
    os.chmod(path, 0o600)
    try:
        loaded = signing.load_signing_key(str(path))
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert loaded.public.blob == _FUZZ_KEY.public.blob
