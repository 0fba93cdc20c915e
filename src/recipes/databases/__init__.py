"""One module per database engine: its dump, its restore, a check that it answers, and the one
parameter table (``Params``) every recipe reuses to say how to reach it."""

from __future__ import annotations

import re
from typing import Any

import attrs
from cattrs.gen import make_dict_unstructure_fn, override

from recipes.recipe import FieldError, converter


def database_name(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """attrs validator: a plain database name (it becomes a client argument on the host)."""
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_$-]{0,63}", value):
        raise FieldError(
            attribute, f"must be a database name of letters, digits, _ $ - (at most 64), got {value!r}"
        )


def omit_unset(table: type[Any], *names: str) -> None:
    """Leave these fields out of plans and manifests while they are None.

    A field added later (``database``) then changes nothing recorded for configurations that
    do not set it: older plans and manifests stay byte for byte the same.
    """
    overrides: dict[str, Any] = {name: override(omit_if_default=True) for name in names}
    converter.register_unstructure_hook(table, make_dict_unstructure_fn(table, converter, **overrides))
