"""recipes.toml: found, parsed and checked into frozen attrs, with the file and key in every error."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import attrs
import cattrs

from recipes.compression import Compression
from recipes.errors import ConfigError
from recipes.hosts import LOCAL, HostSpec, parse_target
from recipes.recipe import error_lines

DEFAULT_DIR = "~/.config/recipes"
DEFAULT_CONFIG = f"{DEFAULT_DIR}/recipes.toml"
DEFAULT_IDENTITY = f"{DEFAULT_DIR}/identity.txt"
DEFAULT_REPOSITORY = "~/.local/share/recipes/repo"


@attrs.frozen
class RepositoryConfig:
    """``[repository]``: where snapshots go and which keys encrypt them."""

    url: str = DEFAULT_REPOSITORY
    options: dict[str, Any] = attrs.Factory(dict)
    recipients: tuple[str, ...] = ()
    identity_file: str | None = None
    compression: str = "auto"
    """Where zstd runs: ``auto``, ``remote`` (on the host) or ``controller``; per host in [hosts.*]."""
    compression_level: int = 1
    cache_dir: str | None = None
    """Where the controller keeps tar states for the next incremental (``$XDG_CACHE_HOME/recipes``)."""


@attrs.frozen
class RetentionConfig:
    """``[retention]``: duply's semantics plus GFS keeps (``full_every`` now, the rest with ``prune``)."""

    full_every: str = "3M"
    """duply's MAX_FULLBKP_AGE: a backup starts a new chain once the chain's full is this old."""
    max_age: str = "2Y"
    max_fulls_with_incrs: int = 2
    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None


@attrs.frozen
class HostConfig:
    """``[hosts.NAME]``: how to reach one host."""

    address: str | None = None
    user: str | None = None
    port: int | None = None
    key_file: str | None = None
    sudo: bool = False
    compression: str | None = None
    """Overrides ``[repository] compression`` for this host."""


@attrs.frozen
class EngineConfig:
    """``[engine]``: how runs protect the application (the host's dead-man's switch)."""

    deadman_seconds: float = 60.0
    """A host's guard starts again what was stopped once the controller is silent this long."""

    def check(self, where: str) -> None:
        if not 1 <= self.deadman_seconds <= 86400:
            raise ConfigError(f"{where}: engine.deadman_seconds must be 1 to 86400 seconds")


@attrs.frozen
class Config:
    """The whole configuration; ``path`` is None when defaults apply."""

    repository: RepositoryConfig = attrs.Factory(RepositoryConfig)
    retention: RetentionConfig = attrs.Factory(RetentionConfig)
    hosts: dict[str, HostConfig] = attrs.Factory(dict)
    engine: EngineConfig = attrs.Factory(EngineConfig)
    recipes: dict[str, dict[str, Any]] = attrs.Factory(dict)
    path: str | None = None

    def base_dir(self) -> Path:
        return Path(self.path).parent if self.path else Path.cwd()

    def resolve_path(self, text: str) -> str:
        """``~`` expanded; a relative path is relative to the config file."""
        p = Path(os.path.expanduser(text))
        return str(p if p.is_absolute() else (self.base_dir() / p).resolve())

    def repository_url(self, override: str | None = None) -> str:
        url = override or self.repository.url
        if "://" in url:
            return url
        return self.resolve_path(url) if not override else os.path.abspath(os.path.expanduser(url))

    def identity_path(self, override: str | None = None) -> str | None:
        if override:
            return os.path.abspath(os.path.expanduser(override))
        if self.repository.identity_file:
            return self.resolve_path(self.repository.identity_file)
        default = os.path.expanduser(DEFAULT_IDENTITY)
        return default if os.path.exists(default) else None

    def chaining(self, identity_override: str | None = None) -> Any:
        """How backups chain: ``full_every``, the state cache and the identity that may read states."""
        from recipes.chain import parse_duration
        from recipes.engine import Chaining

        cache = self.resolve_path(self.repository.cache_dir) if self.repository.cache_dir else None
        return Chaining(
            full_every=parse_duration(self.retention.full_every),
            cache_dir=Path(cache) if cache else None,
            identity_file=self.identity_path(identity_override),
        )

    def compression(self, host: str) -> Compression:
        """Where zstd runs for ``host`` (its ``[hosts.*]`` setting, else the repository's) and its level."""
        h = self.hosts.get(host)
        mode = h.compression if h is not None and h.compression else self.repository.compression
        return Compression(mode, self.repository.compression_level)

    def host(self, name: str) -> HostSpec:
        """A host alias from ``[hosts.*]``, ``local``, an ``~/.ssh/config`` name or ``[user@]addr[:port]``."""
        if name in self.hosts:
            h = self.hosts[name]
            key = self.resolve_path(h.key_file) if h.key_file else None
            return HostSpec(
                name=name,
                address=h.address or name,
                user=h.user,
                port=h.port,
                key_file=key,
                sudo=h.sudo,
            )
        if name == LOCAL:
            return HostSpec(LOCAL)
        return parse_target(name)


_conv = cattrs.Converter(forbid_extra_keys=True)


def find(explicit: str | None) -> Path | None:
    """``--config``, then ``$RECIPES_CONFIG``, then ``./recipes.toml``, then the user's config."""
    if explicit:
        p = Path(os.path.expanduser(explicit))
        if not p.exists():
            raise ConfigError(f"config file {explicit} does not exist")
        return p
    env = os.environ.get("RECIPES_CONFIG")
    if env:
        p = Path(os.path.expanduser(env))
        if not p.exists():
            raise ConfigError(f"RECIPES_CONFIG={env}: file does not exist")
        return p
    for candidate in (Path("recipes.toml"), Path(os.path.expanduser(DEFAULT_CONFIG))):
        if candidate.exists():
            return candidate
    return None


def load(explicit: str | None = None) -> Config:
    """Find and parse the configuration; defaults when there is none."""
    path = find(explicit)
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse(data, str(path.resolve()))


def parse(data: dict[str, Any], where: str) -> Config:
    """Structure a parsed TOML document into a Config."""
    recipes = data.get("recipes", {})
    if not isinstance(recipes, dict) or not all(isinstance(v, dict) for v in recipes.values()):
        raise ConfigError(f"{where}: [recipes.NAME] sections must be tables")
    try:
        config = _conv.structure({k: v for k, v in data.items() if k != "recipes"}, Config)
    except Exception as exc:
        raise ConfigError(error_lines(exc, where)) from exc
    _check_compression(config, where)
    _check_retention(config, where)
    config.engine.check(where)
    return attrs.evolve(config, recipes=recipes, path=where)


def _check_compression(config: Config, where: str) -> None:
    """Bad compression settings fail when the file is read, naming the key."""
    checks: list[tuple[str, dict[str, Any]]] = [
        ("repository.compression_level", {"level": config.repository.compression_level}),
        ("repository.compression", {"mode": config.repository.compression}),
    ]
    checks += [
        (f"hosts.{n}.compression", {"mode": h.compression}) for n, h in config.hosts.items() if h.compression
    ]
    for key, kwargs in checks:
        try:
            Compression(**kwargs)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None


def _check_retention(config: Config, where: str) -> None:
    from recipes.chain import parse_duration

    try:
        parse_duration(config.retention.full_every)
    except ValueError as exc:
        raise ConfigError(f"{where}: retention.full_every: {exc}") from None


def parse_set(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--set key=value``: TOML values when they parse, else strings; dotted keys nest."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, as in --set root=/srv/site")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        merge(out, nest(key.split("."), value))
    return out


def nest(keys: list[str], value: Any) -> dict[str, Any]:
    result: dict[str, Any] = {keys[-1]: value}
    for k in reversed(keys[:-1]):
        result = {k: result}
    return result


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into ``base`` (a table replaces a scalar such as ``postgres = true``)."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def recipe_values(config: Config, recipe: str, sets: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Parameters for a recipe: ``[recipes.NAME]`` overridden by ``--set``."""
    import copy

    values = copy.deepcopy(config.recipes.get(recipe, {}))
    return merge(values, parse_set(sets))
