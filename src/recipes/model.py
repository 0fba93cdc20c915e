"""Frozen data shared by every layer: secrets, commands and how they render."""

from __future__ import annotations

import os
import shlex

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

    ``script`` is bash text (already quoted by whoever built it). ``secrets`` are read
    from stdin into shell variables of the remote bash, never exported: the script hands
    each one to the one program that needs it (``PGPASSWORD="$PGPASSWORD" pg_dumpall``),
    so neither argv nor the environment of the rest of the pipeline (zstd) ever holds it.
    """

    script: str
    secrets: tuple[tuple[str, Secret], ...] = ()
    user: str | None = None
    """Run as this user through ``sudo -n -u``."""

    def masked(self) -> str:
        """What plans, logs and runbooks show: ``NAME="$NAME" prog`` reads ``NAME=*** prog``."""
        text, prefix = self.script, ""
        for name, _ in self.secrets:
            scoped = f'{name}="${name}"'
            if scoped in text:
                text = text.replace(scoped, f"{name}={MASK}")
            else:
                prefix += f"{name}={MASK} "
        text = prefix + text
        if self.user:
            text = f"sudo -n -u {shlex.quote(self.user)} -- bash -c {shlex.quote(text)}"
        return text

    def wire(self, sudo: bool = False) -> tuple[str, bytes]:
        """The exec string for the host and the stdin bytes that must precede any data."""
        reads = "".join(f"IFS= read -r {name} && " for name, _ in self.secrets)
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
