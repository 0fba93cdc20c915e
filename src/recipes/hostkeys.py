"""SSH host key checking as OpenSSH does it: known_hosts files (hashed and ``[host]:port``
entries, ``*``/``?`` patterns, ``@revoked``), ``StrictHostKeyChecking`` for unknown hosts,
and a ``host_key`` pin from recipes.toml. A changed key is refused whatever the settings,
after the key exchange and before any credential is sent."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

import attrs

from recipes.errors import ConfigError, HostKeyError

log = logging.getLogger("recipes")

SSH_PORT = 22
DEFAULT_USER_FILES = "~/.ssh/known_hosts ~/.ssh/known_hosts2"
DEFAULT_GLOBAL_FILES = "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"
# StrictHostKeyChecking values that accept (and record) an unknown host's key.
ACCEPTING = ("accept-new", "no", "off")


def lookup_name(address: str, port: int | None) -> str:
    """The name known_hosts files (and paramiko) use: ``addr``, or ``[addr]:port`` off port 22."""
    if port is None or port == SSH_PORT:
        return address
    return f"[{address}]:{port}"


def fingerprint(key: Any) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` prints it."""
    return str(key.fingerprint)


def parse_public_key(text: str) -> Any:
    """An OpenSSH public key line (``type base64 [comment]``) as a paramiko key; ValueError if not."""
    import paramiko

    fields = text.split()
    if len(fields) < 2:
        raise ValueError('expected an OpenSSH public key, as in "ssh-ed25519 AAAA…"')
    key_type, blob = fields[:2]
    try:
        data = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the key after {key_type} is not base64") from None
    try:
        key = paramiko.PKey.from_type_string(key_type, data)
    except paramiko.UnknownKeyType:
        raise ValueError(f"unsupported key type {key_type!r} (ssh-ed25519, ecdsa-sha2-*, ssh-rsa)") from None
    except Exception as exc:  # paramiko raises several kinds for malformed key bytes
        raise ValueError(f"not a valid {key_type} key: {exc or type(exc).__name__}") from None
    if key.get_name() != key_type:
        raise ValueError(f"the key data is a {key.get_name()} key, not {key_type}")
    return key


# Key types paramiko accepts whose wire form ``cryptography`` also reads (an ``sk-`` key is not one).
QUICK_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


def check_public_key(text: str) -> None:
    """``parse_public_key``'s verdict without importing paramiko (a tenth of a second) for the
    usual key types: a key ``cryptography`` reads is valid; anything else goes to paramiko,
    which accepts it or words the error as before. ValueError if the key is not valid."""
    fields = text.split()
    if len(fields) >= 2 and fields[0] in QUICK_TYPES:
        from cryptography.hazmat.primitives.serialization import load_ssh_public_key

        try:
            base64.b64decode(fields[1], validate=True)  # cryptography's decoding is lenient
            load_ssh_public_key(f"{fields[0]} {fields[1]}".encode("ascii"))
        except (ValueError, UnicodeEncodeError, TypeError, binascii.Error):
            pass  # paramiko words why
        except Exception as exc:  # cryptography's other refusals: let paramiko judge
            log.debug("host key %s: %s", fields[0], exc)
        else:
            return
    parse_public_key(text)


@attrs.frozen
class KnownKey:
    """One known_hosts line that names a host: its file, line number and key."""

    path: str
    line: int
    key: Any
    revoked: bool = False


def _pattern_matches(pattern: str, name: str) -> bool:
    """An OpenSSH host pattern (``*`` and ``?`` wildcards; ``[`` is literal) or a hashed name."""
    if pattern.startswith("|1|"):
        import hmac

        import paramiko

        return hmac.compare_digest(paramiko.HostKeys.hash_host(name, pattern), pattern)
    if "*" not in pattern and "?" not in pattern:
        return pattern.lower() == name.lower()
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.IGNORECASE) is not None


def _names_match(names: str, name: str) -> bool:
    """A known_hosts names field (comma-separated, ``!`` negates) against one lookup name."""
    hit = False
    for pattern in names.split(","):
        negated = pattern.startswith("!")
        if _pattern_matches(pattern[1:] if negated else pattern, name):
            if negated:
                return False
            hit = True
    return hit


def read_known(paths: list[str], name: str) -> list[KnownKey]:
    """Every key the files hold for ``name``, in file order (unreadable files are skipped)."""
    import paramiko

    found: list[KnownKey] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            marker = fields.pop(0) if fields[0].startswith("@") else None
            if marker not in (None, "@revoked") or len(fields) < 3:
                continue  # @cert-authority lines need certificates, which paramiko does not check
            if not _names_match(fields[0], name):
                continue
            try:
                key = paramiko.PKey.from_type_string(fields[1], base64.b64decode(fields[2], validate=True))
            except Exception:  # a key type paramiko does not know, or a damaged line: as OpenSSH, skip
                continue
            found.append(KnownKey(path, number, key, revoked=marker == "@revoked"))
    return found


def _expand(path: str) -> str:
    """``~``, ``%d`` (home) and ``%u`` (user) as ssh_config expands them in file names."""
    home = os.path.expanduser("~")
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    path = path.replace("%%", "\0").replace("%d", home).replace("%u", user).replace("\0", "%")
    return os.path.expanduser(path)


def _files(value: str | None, default: str) -> list[str]:
    words = shlex.split(value) if value else shlex.split(default)
    return [_expand(w) for w in words if w.lower() != "none"]


@attrs.frozen
class HostKeyCheck:
    """What one connection accepts: built from a HostSpec and the host's ``~/.ssh/config`` entry."""

    host: str
    """The host's name as the operator wrote it (for messages and the pin's key)."""
    name: str
    """The known_hosts lookup name: ``addr`` or ``[addr]:port``."""
    pin: str | None = None
    accept_new: bool = False
    strict: str = "ask"
    user_files: tuple[str, ...] = ()
    global_files: tuple[str, ...] = ()
    hash_names: bool = False

    @classmethod
    def create(
        cls,
        host: str,
        address: str,
        port: int | None,
        ssh_config: Mapping[str, Any],
        pin: str | None = None,
        accept_new: bool = False,
    ) -> HostKeyCheck:
        return cls(
            host=host,
            name=lookup_name(address, port),
            pin=pin,
            accept_new=accept_new,
            strict=str(ssh_config.get("stricthostkeychecking", "ask")).lower(),
            user_files=tuple(_files(ssh_config.get("userknownhostsfile"), DEFAULT_USER_FILES)),
            global_files=tuple(_files(ssh_config.get("globalknownhostsfile"), DEFAULT_GLOBAL_FILES)),
            hash_names=str(ssh_config.get("hashknownhosts", "no")).lower() == "yes",
        )

    def known(self) -> list[KnownKey]:
        """The host's keys from the user's files, then the system's."""
        return read_known([*self.user_files, *self.global_files], self.name)

    def prepare(self, client: Any, prefer: Any = None) -> None:
        """Load the keys this host may present into a paramiko SSHClient, so paramiko itself
        refuses any other key (BadHostKeyException, before authentication), and install the
        policy for a host with none. ``prefer``: a known key to load first for its type."""
        keys = client.get_host_keys()
        if self.pin is not None:
            try:
                key = parse_public_key(self.pin)
            except ValueError as exc:
                raise ConfigError(f"hosts.{self.host}.host_key: {exc}") from None
            keys.add(self.name, key.get_name(), key)
        else:
            # paramiko holds one key per type for a name: the first line of each type wins
            # (``prefer`` first: the retry when a later line of the same type holds the key).
            # A @revoked key is never loaded, whatever other line lists it (as OpenSSH): the
            # policy then refuses it as revoked.
            known = self.known()
            revoked = [k.key for k in known if k.revoked]
            first: dict[str, Any] = {}
            for key in [prefer, *(k.key for k in known if not k.revoked)]:
                if key is not None and key not in revoked:
                    first.setdefault(key.get_name(), key)
            for type_name, key in first.items():
                keys.add(self.name, type_name, key)
        client.set_missing_host_key_policy(_Policy(self))

    def matching_known(self, offered: Any) -> KnownKey | None:
        """A known (not revoked) line holding exactly the offered key, if one does."""
        if self.pin is not None:
            return None
        known = self.known()
        if any(k.revoked and k.key == offered for k in known):
            return None
        return next((k for k in known if not k.revoked and k.key == offered), None)

    def changed(self, offered: Any) -> HostKeyError:
        """The one-line refusal for a key that differs from the pinned or known one."""
        what = f"{offered.get_name()} {fingerprint(offered)}"
        if self.pin is not None:
            return HostKeyError(
                f"host key of {self.host} ({self.name}) does not match hosts.{self.host}.host_key "
                f"in recipes.toml: offered {what}; refused before authenticating (fix the pin if the "
                "host's key really changed)"
            )
        known = self.known()
        revoked = next((k for k in known if k.revoked and k.key == offered), None)
        if revoked is not None:
            return HostKeyError(
                f"host key of {self.host} ({self.name}) is REVOKED: offered {what} is marked @revoked at "
                f"{revoked.path}:{revoked.line}; refused before authenticating"
            )
        live = [k for k in known if not k.revoked]
        line = next((k for k in live if k.key.get_name() == offered.get_name()), live[0] if live else None)
        where = f"{line.path}:{line.line}" if line else "known_hosts"
        return HostKeyError(
            f"host key of {self.host} ({self.name}) has CHANGED: offered {what}, known_hosts expects "
            f"another key at {where}; refused before authenticating (possible man in the middle; if "
            f"the change is expected, remove that line, e.g. ssh-keygen -R '{self.name}')"
        )

    def unknown(self, offered: Any) -> HostKeyError:
        """The one-line refusal for a host no file knows, saying how to accept it."""
        table = self.host if re.fullmatch(r"[A-Za-z0-9_-]+", self.host) else "NAME"
        why = (
            "StrictHostKeyChecking yes in ~/.ssh/config refuses it"
            if self.strict == "yes"
            else "refused before authenticating"
        )
        return HostKeyError(
            f"host key of {self.host} ({self.name}) is unknown: offered {offered.get_name()} "
            f"{fingerprint(offered)}; {why}. Compare the fingerprint out of band, then pin it in "
            f'recipes.toml ([hosts.{table}] host_key = "{offered.get_name()} AAAA…"), or set '
            f"accept_new_host_keys = true (in [hosts.{table}], or for every host in [ssh]) to record it "
            f"in {self.record_file() or '~/.ssh/known_hosts'}"
        )

    def accepts_unknown(self) -> bool:
        if self.strict == "yes":
            return False
        return self.accept_new or self.strict in ACCEPTING

    def record_file(self) -> str | None:
        return self.user_files[0] if self.user_files else None

    def record(self, key: Any) -> None:
        """Append the key to the first user known_hosts file, as OpenSSH's accept-new does
        (the file 0600 and a missing ``~/.ssh`` 0700; hashed when HashKnownHosts is yes)."""
        import paramiko

        path = self.record_file()
        if path is None:
            log.warning(
                "accepted the new host key of %s (%s); UserKnownHostsFile none: not recorded",
                self.host,
                fingerprint(key),
            )
            return
        name = paramiko.HostKeys.hash_host(self.name) if self.hash_names else self.name
        try:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                if fh.tell() > 0 and not _ends_with_newline(path):
                    fh.write("\n")
                fh.write(f"{name} {key.get_name()} {key.get_base64()}\n")
        except OSError as exc:
            raise HostKeyError(f"cannot record the new host key of {self.host} in {path}: {exc}") from exc
        log.warning(
            "recorded the new host key of %s (%s %s) in %s", self.host, key.get_name(), fingerprint(key), path
        )


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


class _Policy:
    """paramiko's missing-host-key hook: called after the key exchange, before authentication,
    only for a host none of the loaded keys names."""

    def __init__(self, check: HostKeyCheck) -> None:
        self.check = check

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        check = self.check
        known = check.known()
        if check.pin is not None or any(k.revoked and k.key == key for k in known):
            raise check.changed(key)
        if any(not k.revoked for k in known):
            raise check.changed(key)  # keys of other types are known: as a changed key
        if not check.accepts_unknown():
            raise check.unknown(key)
        check.record(key)
