"""What a system's recipe is: typed parameters plus the backup and restore steps they yield."""

from __future__ import annotations

import re
import types
import typing
from typing import Any, ClassVar, Protocol

import attrs
import cattrs

from recipes.errors import ConfigError
from recipes.steps import Step


def param(default: Any, doc: str, *, content: bool = False, chain: bool | None = None, **kwargs: Any) -> Any:
    """An attrs field whose docstring feeds ``recipes show`` and the docs.

    ``content`` marks a parameter that says what a snapshot holds (paths, excludes, which files
    are dumped): a restore takes it from the snapshot's manifest. The others are endpoints (where
    things are: roots, connections), taken from the restore target. ``chain`` (default: the same
    as ``content``) says a change starts a new incremental chain: a backup root is an endpoint
    for a restore, but another root on the source is other data.
    """
    metadata = {"doc": doc, "content": content, "chain": content if chain is None else chain}
    if isinstance(default, (list, tuple)):
        value = tuple(default)
        return attrs.field(default=value, metadata=metadata, converter=tuple, **kwargs)
    return attrs.field(default=default, metadata=metadata, **kwargs)


class Recipe(Protocol):
    """One application's backup and restore, declared once."""

    name: ClassVar[str]
    summary: ClassVar[str]
    seed: ClassVar[str]
    Params: ClassVar[type[Any]]

    def backup_steps(self, params: Any) -> list[Step]: ...
    def restore_steps(self, params: Any) -> list[Step]: ...


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def is_bool_or_table(tp: Any) -> bool:
        args = typing.get_args(tp)
        return (
            typing.get_origin(tp) in (typing.Union, types.UnionType)
            and bool in args
            and any(attrs.has(a) for a in args)
        )

    def structure_bool_or_table(value: Any, tp: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, dict):
            table = next(a for a in typing.get_args(tp) if attrs.has(a))
            return conv.structure(value, table)
        raise ValueError(f"expected true, false or a table, got {value!r}")

    conv.register_structure_hook_func(is_bool_or_table, structure_bool_or_table)

    def structure_str_tuple(value: Any, _: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        return tuple(value)

    conv.register_structure_hook_func(lambda tp: tp == tuple[str, ...], structure_str_tuple)

    def structure_str(value: Any, _: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value

    def structure_int(value: Any, _: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value

    def structure_bool(value: Any, _: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value

    conv.register_structure_hook(str, structure_str)
    conv.register_structure_hook(int, structure_int)
    conv.register_structure_hook(bool, structure_bool)
    return conv


converter = _make_converter()


def error_lines(exc: BaseException, where: str) -> str:
    """One line naming every bad key, for a cattrs structuring error."""
    if isinstance(exc, cattrs.BaseValidationError):
        parts = []
        for msg in cattrs.transform_error(exc, path=""):
            msg = msg.replace("extra fields found", "unknown keys").replace("invalid value for type, ", "")
            text, _, path = msg.rpartition(" @ ")
            key = re.sub(r"\['([^']*)'\]", r".\1", path).lstrip("$.").lstrip(".")
            if not key:
                parts.append(text or msg)
                continue
            parts.append(f"{key}: {text or msg}")
        return f"{where}: " + "; ".join(parts)
    return f"{where}: {exc}"


def make_params(recipe: Recipe, values: dict[str, Any], where: str) -> Any:
    """Structure parameters, turning any mistake into one ConfigError line."""
    try:
        return converter.structure(values, recipe.Params)
    except Exception as exc:
        raise ConfigError(error_lines(exc, where) + f" (see `recipes show {recipe.name}`)") from exc


def params_dict(params: Any) -> dict[str, Any]:
    """Parameters as plain data (secrets are only ever env-var names, so this is safe to store)."""
    data: dict[str, Any] = converter.unstructure(params)
    return data


def content_names(recipe: Recipe) -> tuple[str, ...]:
    """The parameters that say what a snapshot holds (declared with ``param(..., content=True)``)."""
    return tuple(f.name for f in attrs.fields(recipe.Params) if f.metadata.get("content"))


def chain_of(recipe: Recipe, values: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``values`` (a manifest's or a run's) whose change starts a new chain."""
    names = {f.name for f in attrs.fields(recipe.Params) if f.metadata.get("chain")}
    return {k: v for k, v in values.items() if k in names}


def restore_values(
    recipe: Recipe, target: dict[str, Any], snapshot_params: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Parameters for a restore: content from the snapshot, endpoints from the target's values.

    Returns the values and the names of content parameters the target set differently (they
    are ignored: the snapshot holds what it holds), so the caller can say so.
    """
    values = dict(target)
    ignored = []
    for name in content_names(recipe):
        if name not in snapshot_params:
            continue
        if name in target and _json(target[name]) != _json(snapshot_params[name]):
            ignored.append(name)
        values[name] = snapshot_params[name]
    return values, ignored


def _json(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, sort_keys=True, default=list))


def describe_params(recipe: Recipe) -> list[tuple[str, str, Any]]:
    """(name, doc, default) for every parameter."""
    out = []
    for field in attrs.fields(recipe.Params):
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        out.append((field.name, str(field.metadata.get("doc", "")), default))
    return out
