"""Frozen data shared by every layer: secrets, commands and how they render."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable

import attrs

from recipes.errors import ConfigError

MASK = "***"


@attrs.frozen
class Secret:
    """A value read from the controller's environment at run time; renders as ``***``."""

    env: str
    """Name of the controller environment variable that holds the value."""

    def reveal(self) -> str:
        """Return the value; only the wire ever sees it."""
        value = os.environ.get(self.env)
        if value is None:
            raise ConfigError(
                f"environment variable {self.env} is not set on the controller: "
                f"export it before running (it holds a password)"
            )
        if "\n" in value:
            raise ConfigError(f"environment variable {self.env} must be a single line")
        return value

    def __str__(self) -> str:
        return MASK


def sh(*words: str) -> str:
    """Join words into one shell-safe command line."""
    return shlex.join(words)


@attrs.frozen
class Command:
    """A shell command run on a host; secrets reach it on stdin, never in argv.

    ``script`` is bash text (already quoted by whoever built it). ``secrets`` are
    exported as environment variables inside the remote shell after being read
    from stdin, so no process on the host ever has them on its command line.
    """

    script: str
    secrets: tuple[tuple[str, Secret], ...] = ()
    user: str | None = None
    """Run as this user through ``sudo -n -u``."""

    def masked(self) -> str:
        """What plans, logs and runbooks show."""
        prefix = "".join(f"{name}={MASK} " for name, _ in self.secrets)
        text = prefix + self.script
        if self.user:
            text = f"sudo -n -u {shlex.quote(self.user)} -- bash -c {shlex.quote(text)}"
        return text

    def wire(self, sudo: bool = False) -> tuple[str, bytes]:
        """The exec string for the host and the stdin bytes that must precede any data."""
        reads = "".join(f"IFS= read -r {name} && export {name} && " for name, _ in self.secrets)
        # A switched user may not be able to read the login user's home directory.
        cd = "cd / && " if self.user else ""
        inner = f"set -o pipefail; {cd}{reads}{self.script}"
        line = f"bash -c {shlex.quote(inner)}"
        if self.user:
            line = f"sudo -n -u {shlex.quote(self.user)} -- {line}"
        if sudo:
            line = f"sudo -n -- {line}"
        stdin = b"".join(secret.reveal().encode() + b"\n" for _, secret in self.secrets)
        return line, stdin

    def with_secrets(self, secrets: Iterable[tuple[str, Secret]]) -> Command:
        """A copy with more secrets attached."""
        return attrs.evolve(self, secrets=(*self.secrets, *secrets))
