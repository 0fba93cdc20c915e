"""known_hosts parsing as OpenSSH reads it: names, patterns, hashed names, markers, pins."""

from __future__ import annotations

import base64
from pathlib import Path

import paramiko
import pytest

from recipes import hostkeys
from recipes.errors import HostKeyError

ED = (
    "ssh-ed25519 "
    + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(range(32))).decode()
)
ED2 = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(32)).decode()


def test_lookup_name_brackets_other_ports() -> None:
    assert hostkeys.lookup_name("10.0.0.1", 22) == "10.0.0.1"
    assert hostkeys.lookup_name("10.0.0.1", None) == "10.0.0.1"
    assert hostkeys.lookup_name("10.0.0.1", 2222) == "[10.0.0.1]:2222"


@pytest.mark.parametrize(
    ("names", "name", "hit"),
    [
        ("web1,10.0.0.1", "10.0.0.1", True),
        ("WEB1", "web1", True),
        ("[10.0.0.1]:2222", "[10.0.0.1]:2222", True),
        ("[10.0.0.1]:2222", "10.0.0.1", False),
        ("10.0.0.1", "[10.0.0.1]:2222", False),
        ("*.example.net", "db.example.net", True),
        ("*.example.net,!db.example.net", "db.example.net", False),
        ("10.0.0.?", "10.0.0.7", True),
        ("[10.0.0.?]:2222", "[10.0.0.7]:2222", True),
        (paramiko.HostKeys.hash_host("[10.0.0.1]:2222"), "[10.0.0.1]:2222", True),
        (paramiko.HostKeys.hash_host("[10.0.0.1]:2222"), "[10.0.0.1]:2223", False),
    ],
)
def test_names_match(names: str, name: str, hit: bool) -> None:
    assert hostkeys._names_match(names, name) is hit


def test_read_known_keeps_line_numbers_and_markers(tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(
        f"# comment\n\nweb1 {ED}\n@cert-authority web1 {ED2}\n@revoked web1 {ED2}\n"
        f"web1 ssh-foo AAAA\nweb2 {ED2}\n"
    )
    found = hostkeys.read_known([str(tmp_path / "missing"), str(kh)], "web1")
    assert [(k.line, k.revoked) for k in found] == [(3, False), (5, True)]
    assert found[0].key == hostkeys.parse_public_key(ED)


def test_pin_parses_with_a_comment_and_names_its_fault() -> None:
    key = hostkeys.parse_public_key(ED + " host@web1")
    assert hostkeys.fingerprint(key).startswith("SHA256:")
    with pytest.raises(ValueError, match="not base64"):
        hostkeys.parse_public_key("ssh-ed25519 ***")
    with pytest.raises(ValueError, match=r"not a valid ssh-rsa"):
        hostkeys.parse_public_key("ssh-rsa " + ED.split()[1])


def test_ssh_config_decides_files_and_strictness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    check = hostkeys.HostKeyCheck.create(
        "web1",
        "10.0.0.1",
        2222,
        {"userknownhostsfile": '~/a "%d/b c" none', "stricthostkeychecking": "Accept-New"},
    )
    assert check.name == "[10.0.0.1]:2222"
    assert check.user_files == (f"{tmp_path}/a", f"{tmp_path}/b c")
    assert check.accepts_unknown() and check.record_file() == f"{tmp_path}/a"
    default = hostkeys.HostKeyCheck.create("web1", "10.0.0.1", 22, {})
    assert default.user_files[0] == f"{tmp_path}/.ssh/known_hosts" and not default.accepts_unknown()
    strict = hostkeys.HostKeyCheck.create("w", "h", 22, {"stricthostkeychecking": "yes"}, accept_new=True)
    assert not strict.accepts_unknown()


def test_a_revoked_key_is_never_loaded_even_when_another_line_lists_it(tmp_path: Path) -> None:
    """OpenSSH refuses a @revoked key whatever other lines say: paramiko must not be handed it,
    so the policy (which refuses it as REVOKED) decides instead of a silent accept."""
    known = tmp_path / "known_hosts"
    known.write_text(f"web1 {ED}\n@revoked * {ED}\n")
    check = hostkeys.HostKeyCheck("web1", "web1", user_files=(str(known),))
    client = paramiko.SSHClient()
    check.prepare(client)
    assert client.get_host_keys().lookup("web1") is None
    offered = hostkeys.parse_public_key(ED)
    with pytest.raises(HostKeyError, match="REVOKED"):
        client._policy.missing_host_key(client, "web1", offered)
