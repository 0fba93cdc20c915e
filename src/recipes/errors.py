"""The one exception tree the CLI catches; anything else is a bug and shows a traceback."""

from __future__ import annotations

import re

# ``scheme://user:password@host``: the password part of a URL's user info.
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/@:]*):[^\s/]*@")  # to the last @


def masked(text: str) -> str:
    """``text`` with every URL's password shown as ``***`` (``ftp://me:***@host/x``)."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


class RecipeError(Exception):
    """An expected failure with a one-line message for the operator."""

    exit_code = 1


class ConfigError(RecipeError):
    """Bad configuration, parameters or command-line usage (exit 2)."""

    exit_code = 2


class HostError(RecipeError):
    """A host could not be reached or a connection broke (exit 1)."""


class StepFailed(RecipeError):
    """A step of a plan failed on the host (exit 1)."""


class RepositoryError(RecipeError):
    """The repository could not be read or written (exit 1)."""


class VerifyError(RecipeError):
    """Stored data does not match its manifest (exit 3)."""

    exit_code = 3


class HostKeyError(VerifyError):
    """An SSH host's key is changed, unknown or does not match its pin (exit 3)."""
