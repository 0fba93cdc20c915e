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
    def restore_steps(self, params: Any, options: Any = None) -> list[Step]:
        """``options``: an instance of the recipe's ``RestoreOptions`` class when it has one."""
        ...


@attrs.frozen
class DrillCheck:
    """A recipe's own proof that a restored copy works (Looker's health check, DSS status), run
    by ``recipes drill`` on the scratch host after the restore: it passes when it exits 0."""

    name: str
    command: Any
    """A ``recipes.model.Command`` (read-only: a drill's checks change nothing)."""
    role: str = "main"
    about: str = ""


def drill_checks(recipe: Recipe, params: Any) -> list[DrillCheck]:
    """The recipe's health checks for a drill, from its optional ``drill_checks(params)`` method
    (default: none; the facts recorded at backup time are checked for every recipe)."""
    method = getattr(recipe, "drill_checks", None)
    return list(method(params)) if method is not None else []


def drill_rewrites(recipe: Recipe, params: Any) -> tuple[str, ...]:
    """Absolute paths the restore itself writes after extracting the archive (a SQLite file
    rebuilt from its dump), from the optional ``drill_rewrites(params)`` method: a drill does not
    expect them to hold the archived bytes."""
    method = getattr(recipe, "drill_rewrites", None)
    return tuple(method(params)) if method is not None else ()


def roles_of(recipe: Recipe, params: Any) -> dict[str, tuple[str, ...]]:
    """Hosts (names as ``--host`` takes them) bound to the recipe's roles besides ``main``
    (which ``--host`` binds), from its ``roles(params)`` method when it has one."""
    method = getattr(recipe, "roles", None)
    if method is None:
        return {}
    found: dict[str, tuple[str, ...]] = method(params)
    return found


def split_options(recipe: Recipe, values: dict[str, Any], where: str) -> tuple[dict[str, Any], Any]:
    """Split a restore's values into parameters and the recipe's ``RestoreOptions`` (checked)."""
    attribute = "RestoreOptions"
    options_class: type[Any] | None = getattr(type(recipe), attribute, None)
    if options_class is None:
        return values, None
    names = {f.name for f in attrs.fields(options_class)}
    given = {k: values[k] for k in list(values) if k in names}
    rest = {k: v for k, v in values.items() if k not in names}
    try:
        options = converter.structure(given, options_class)
    except Exception as exc:
        raise ConfigError(error_lines(exc, f"{where} (restore options)")) from exc
    return rest, options


def reject_options(recipe: Recipe, values: dict[str, Any]) -> None:
    """A restore option given to a backup or plan: one line saying where it belongs."""
    attribute = "RestoreOptions"
    options_class: type[Any] | None = getattr(type(recipe), attribute, None)
    if options_class is None:
        return
    for field in attrs.fields(options_class):
        if field.name in values:
            raise ConfigError(
                f"{field.name} is a restore option of {recipe.name}: give it to `recipes restore "
                f"{recipe.name} --set {field.name}=...` (see `recipes show {recipe.name}`)"
            )


def strict_converter(*, forbid_extra_keys: bool = True) -> cattrs.Converter:
    """A converter that takes TOML/JSON values only as they are: ``"false"`` is no bool, ``"22"``
    no int, ``1.5`` no int; unknown keys fail unless ``forbid_extra_keys`` is off."""
    conv = cattrs.Converter(forbid_extra_keys=forbid_extra_keys)

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

    def structure_float(value: Any, _: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)

    conv.register_structure_hook(str, structure_str)
    conv.register_structure_hook(int, structure_int)
    conv.register_structure_hook(bool, structure_bool)
    conv.register_structure_hook(float, structure_float)
    return conv


converter = strict_converter()


class FieldError(ValueError):
    """A validator's complaint about one field; ``error_lines`` puts the field into the key path."""

    def __init__(self, attribute: attrs.Attribute[Any], message: str) -> None:
        super().__init__(message)
        self.field = attribute.name


def absolute_path(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """attrs validator: absolute paths without ``..`` (every path of a recipe is on the host)."""
    if value is None:
        return
    for item in (value,) if isinstance(value, str) else value:
        if not item.startswith("/"):
            raise FieldError(attribute, f"must be an absolute path (starting with /), got {item!r}")
        if ".." in item.split("/"):
            raise FieldError(attribute, f"must not contain '..', got {item!r}")
        if "\0" in item or "\n" in item:
            raise FieldError(attribute, f"must not contain a NUL or newline, got {item!r}")


def port_number(_: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    """attrs validator: a TCP port, 1 to 65535 (None: the default port)."""
    if value is not None and not 1 <= value <= 65535:
        raise FieldError(attribute, f"must be a port number from 1 to 65535, got {value}")


def env_name(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    """attrs validator: the name of an environment variable (a secret's value never goes in config)."""
    if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise FieldError(
            attribute, f"must be an environment variable name such as PGPASSWORD_WEB1, got {value!r}"
        )


def one_of(*choices: str) -> Any:
    """attrs validator: the value is one of ``choices``."""

    def check(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
        if value not in choices:
            raise FieldError(attribute, f"must be one of {', '.join(choices)}, got {value!r}")

    return check


def user_name(_: Any, attribute: attrs.Attribute[Any], value: str) -> None:
    """attrs validator: a portable OS user name (it becomes a sudo argument on the host)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}", value):
        raise FieldError(attribute, f"must be a user name such as {attribute.default}, got {value!r}")


_FIELD = "\x1f"


def key_text(key: object) -> str:
    """A key as it can appear in a one-line message: plain words as they are, anything else quoted."""
    return key if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_.@-]+", key) else repr(key)


def _describe(exc: BaseException, tp: type | None) -> str:
    """One cattrs sub-error as the operator should read it (our hooks' and validators' own words)."""
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        known = ", ".join(f.name for f in attrs.fields(exc.cl)) if attrs.has(exc.cl) else ""
        extra = ", ".join(key_text(k) for k in sorted(exc.extra_fields))
        return f"unknown keys ({extra})" + (f"; known keys: {known}" if known else "")
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, FieldError):
        return f"{exc.field}{_FIELD}{exc}"
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    if isinstance(exc, AttributeError) and "items" in str(exc):
        return "expected a table"
    name = getattr(tp, "__name__", None) or (repr(tp) if tp is not None else "")
    return f"expected {name}" if name else f"invalid value ({exc})"


def error_lines(exc: BaseException, where: str) -> str:
    """One line naming every bad key, for a cattrs structuring error."""
    if isinstance(exc, cattrs.BaseValidationError):
        parts = []
        for msg in cattrs.transform_error(exc, path="", format_exception=_describe):
            text, _, path = msg.rpartition(" @ ")
            text = text or msg
            key = re.sub(r"\['([^']*)'\]", r".\1", path).lstrip("$.").lstrip(".")
            if _FIELD in text:
                field, _, text = text.partition(_FIELD)
                key = f"{key}.{field}" if key else field
            text = " ".join(text.split())
            parts.append(f"{key}: {text}" if key else text)
        return f"{where}: " + "; ".join(parts)
    return f"{where}: " + " ".join(str(exc).split())


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
