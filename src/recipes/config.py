"""recipes.toml: found, parsed and checked into frozen attrs, with the file and key in every error."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from recipes.compression import Compression
from recipes.errors import ConfigError
from recipes.hosts import LOCAL, HostSpec, parse_target
from recipes.recipe import error_lines, key_text, strict_converter

if TYPE_CHECKING:
    from recipes.signing import PublicKey

DEFAULT_DIR = "~/.config/recipes"
DEFAULT_CONFIG = f"{DEFAULT_DIR}/recipes.toml"
DEFAULT_IDENTITY = f"{DEFAULT_DIR}/identity.txt"
DEFAULT_SIGNING_KEY = f"{DEFAULT_DIR}/signing_key"
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
    signing_key: str | None = None
    """The controller's OpenSSH ed25519 private key that signs manifests (default ``DEFAULT_SIGNING_KEY``)."""
    signers: tuple[str, ...] = ()
    """Public keys (``ssh-ed25519 AAAA... comment``) trusted to sign; checked when the file is read."""


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
    host_key: str | None = None
    """The host's OpenSSH public key (``ssh-ed25519 AAAA…``): when set, the only key accepted."""
    accept_new_host_keys: bool | None = None
    """Accept and record an unknown key in known_hosts; None: ``[ssh] accept_new_host_keys``."""


@attrs.frozen
class SshConfig:
    """``[ssh]``: host key settings for every host (a ``[hosts.NAME]`` value overrides them)."""

    accept_new_host_keys: bool = False
    """Accept an unknown host's key on first use and record it in known_hosts (OpenSSH's accept-new)."""


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
    ssh: SshConfig = attrs.Factory(SshConfig)
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
        if override is not None and not override.strip():
            raise ConfigError("--repo: empty URL; give a folder or a URL such as s3://bucket/prefix")
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

    def existing_identity(self, override: str | None = None) -> str | None:
        """``identity_path``, for a command that reads it: a named file that does not exist is one
        line saying where it was named (the toml key and file, or --identity) and how to fix it."""
        path = self.identity_path(override)
        if path is None or os.path.exists(path):
            return path
        if override:
            raise ConfigError(
                f"--identity {override}: file does not exist ({path}): give the age identity file "
                "`recipes init` made"
            )
        named = self.repository.identity_file
        where = f"in {self.path}" if self.path else "in the configuration"
        shown = "" if named == path else f" ({path})"
        raise ConfigError(
            f"[repository] identity_file = {named} ({where}): file does not exist{shown}: fix the path "
            "there, or pass --identity FILE"
        )

    def signing_key_path(self) -> str | None:
        """The configured signing key, else the default one if it exists, else None."""
        if self.repository.signing_key:
            return self.resolve_path(self.repository.signing_key)
        default = os.path.expanduser(DEFAULT_SIGNING_KEY)
        return default if os.path.exists(default) else None

    def signers(self) -> list[PublicKey]:
        """The public keys trusted to sign manifests (parsed; the file was checked when read)."""
        from recipes.signing import parse_public_key

        keys = []
        for i, text in enumerate(self.repository.signers):
            try:
                keys.append(parse_public_key(text))
            except ValueError as exc:
                raise ConfigError(f"{self.path or 'config'}: repository.signers[{i}]: {exc}") from None
        return keys

    def signer(self) -> Any:
        """The controller's signing key, refused unless ``signers`` trusts it (a snapshot no
        restore would believe is not worth taking)."""
        from recipes.signing import load_signing_key

        path = self.signing_key_path() or os.path.expanduser(DEFAULT_SIGNING_KEY)
        key = load_signing_key(path)
        trusted = self.signers()
        if key.public.blob not in {k.blob for k in trusted}:
            where = self.path or "the configuration"
            raise ConfigError(
                f"the signing key {path} ({key.public.fingerprint}) is not among [repository] signers "
                f"in {where}, so no restore would trust its snapshots: add its public line "
                f"({path}.pub) to signers, or run `recipes init` to add it"
            )
        return key

    def trust(self, allow_unsigned: bool = False, remember_for: str | None = None) -> Any:
        """Which snapshots to believe: signed by one of ``signers`` (``--allow-unsigned``: or none).
        ``remember_for`` (a repository URL) skips signatures this controller already verified there."""
        from recipes.trust import Trust

        trust = Trust(tuple(self.signers()), allow_unsigned)
        if remember_for is None:
            return trust
        from recipes.tarstate import default_cache_dir  # tarfile and the rest: only for the cache
        from recipes.verified import VerifiedManifests

        cache = self.resolve_path(self.repository.cache_dir) if self.repository.cache_dir else None
        return trust.remembering(
            VerifiedManifests(Path(cache) if cache else default_cache_dir(), remember_for)
        )

    def chaining(self, identity_override: str | None = None) -> Any:
        """How backups chain: ``full_every``, the state cache and the identity that may read states."""
        from recipes.chain import parse_duration
        from recipes.parents import Chaining

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
            accept = h.accept_new_host_keys
            return HostSpec(
                name=name,
                address=h.address or name,
                user=h.user,
                port=h.port,
                key_file=key,
                sudo=h.sudo,
                host_key=h.host_key,
                accept_new_host_keys=self.ssh.accept_new_host_keys if accept is None else accept,
            )
        if name == LOCAL:
            return HostSpec(LOCAL)
        return attrs.evolve(parse_target(name), accept_new_host_keys=self.ssh.accept_new_host_keys)


_conv = strict_converter()


def env_config() -> str | None:
    """``$RECIPES_CONFIG``, None when unset; set but empty is one line, never the default config."""
    env = os.environ.get("RECIPES_CONFIG")
    if env is not None and not env.strip():
        raise ConfigError("RECIPES_CONFIG is set but empty: unset it or name a file")
    return env


def find(explicit: str | None) -> Path | None:
    """``--config``, then ``$RECIPES_CONFIG``, then ``./recipes.toml``, then the user's config."""
    try:
        return _find(explicit)
    except OSError as exc:  # e.g. a directory on the way that we may not enter
        raise ConfigError(f"cannot look for the config file: {exc.strerror}: {exc.filename}") from exc


def _find(explicit: str | None) -> Path | None:
    if explicit is not None and not explicit.strip():
        raise ConfigError("--config: empty file name")
    if explicit:
        p = Path(os.path.expanduser(explicit))
        if not p.exists():
            raise ConfigError(f"config file {explicit} does not exist")
        return p
    env = env_config()
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
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {exc.start}); TOML is UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse(data, str(path.resolve()))


def parse(data: dict[str, Any], where: str) -> Config:
    """Structure a parsed TOML document into a Config; every mistake is one ConfigError line
    naming ``where`` (the file) and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a TOML document (a table), got {type(data).__name__}")
    sections = [f.name for f in attrs.fields(Config) if f.name != "path"]
    unknown = sorted(key_text(k) for k in data if k not in sections)
    if unknown:
        raise ConfigError(f"{where}: unknown keys ({', '.join(unknown)}); known keys: {', '.join(sections)}")
    recipes = _check_recipes(data.get("recipes", {}), where)
    try:
        config = _conv.structure({k: v for k, v in data.items() if k != "recipes"}, Config)
    except Exception as exc:
        raise ConfigError(error_lines(exc, where)) from exc
    _check_repository(config, where)
    _check_compression(config, where)
    _check_retention(config, where)
    _check_signers(config, data, where)
    _check_host_keys(config, where)
    _check_hosts(config, where)
    config.engine.check(where)
    return attrs.evolve(config, recipes=recipes, path=where)


def _check_recipes(recipes: Any, where: str) -> dict[str, dict[str, Any]]:
    """``[recipes.NAME]`` tables of known recipes; their keys are checked when a recipe is used."""
    if not isinstance(recipes, dict):
        raise ConfigError(f"{where}: recipes: expected tables [recipes.NAME], got {recipes!r}")
    for name, table in recipes.items():
        from recipes import apps  # only when there are tables to check: verify needs no recipe

        if name not in apps.names():
            raise ConfigError(
                f"{where}: recipes.{key_text(name)}: unknown recipe; known recipes: {', '.join(apps.names())}"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: recipes.{name}: expected a table of parameters, got {table!r}")
    return recipes


def _check_repository(config: Config, where: str) -> None:
    repo = config.repository
    if not repo.url.strip():
        raise ConfigError(
            f"{where}: repository.url: empty; give a folder or a URL such as s3://bucket/prefix"
        )
    for key in ("identity_file", "cache_dir"):
        value = getattr(repo, key, None)
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"{where}: repository.{key}: empty; leave it out for the default")


def _check_hosts(config: Config, where: str) -> None:
    """Host tables: a name without spaces, a port from 1 to 65535, an address and user that are
    one word (checked generically, by field name, so fields added later are covered too)."""
    for name, host in config.hosts.items():
        if not name.strip() or any(c.isspace() or not c.isprintable() for c in name) or "/" in name:
            raise ConfigError(f"{where}: hosts.{key_text(name)}: a host name must be one word without '/'")
        for key, value in attrs.asdict(host, recurse=False).items():
            if value is None:
                continue
            if (key == "port" or key.endswith("_port")) and not 1 <= value <= 65535:
                raise ConfigError(
                    f"{where}: hosts.{name}.{key}: must be a port number from 1 to 65535, got {value}"
                )
            if key in ("address", "user") and (
                not value or value.startswith("-") or any(c.isspace() or c in "@/" for c in value)
            ):
                raise ConfigError(f"{where}: hosts.{name}.{key}: {value!r} is not a valid {key}")
            if key.endswith("_file") and not value.strip():
                raise ConfigError(f"{where}: hosts.{name}.{key}: empty; leave it out for the default")


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
    """Durations parse (duply's units) and counts are not negative, for every retention key."""
    from recipes.chain import parse_duration

    for key, value in attrs.asdict(config.retention).items():
        if isinstance(value, str):
            try:
                parse_duration(value)
            except (ValueError, OverflowError) as exc:
                raise ConfigError(f"{where}: retention.{key}: {exc}") from None
        elif isinstance(value, int) and value < 0:
            raise ConfigError(f"{where}: retention.{key}: must not be negative, got {value}")


_SET_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _check_signers(config: Config, data: dict[str, Any], where: str) -> None:
    """``[repository] signers`` must be a list of ed25519 public key lines."""
    raw = data.get("repository", {}).get("signers")
    if raw is not None and not isinstance(raw, list):
        raise ConfigError(
            f'{where}: repository.signers: must be a list, as in signers = ["ssh-ed25519 AAAA... comment"]'
        )
    if not config.repository.signers:
        return
    from recipes.signing import parse_public_key

    for i, text in enumerate(config.repository.signers):
        try:
            parse_public_key(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: repository.signers[{i}]: {exc}") from None


def _check_host_keys(config: Config, where: str) -> None:
    """A malformed ``host_key`` pin fails when the file is read, naming the key."""
    from recipes.hostkeys import check_public_key

    for name, h in config.hosts.items():
        if h.host_key is not None:
            try:
                check_public_key(h.host_key)
            except ValueError as exc:
                raise ConfigError(f"{where}: hosts.{name}.host_key: {exc}") from None


def parse_set(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--set key=value``: TOML values when they parse, else strings; dotted keys nest."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, as in --set root=/srv/site")
        parts = key.split(".")
        if not all(_SET_KEY.fullmatch(p) for p in parts):
            raise ConfigError(
                f"--set {item!r}: {key!r} is not a key: use letters, digits, _ and -, "
                "with dots between table and key, as in --set postgres.port=5433"
            )
        try:
            doc = tomllib.loads(f"v = {text}")
        except tomllib.TOMLDecodeError:
            doc = {}
        value = doc["v"] if list(doc) == ["v"] else text  # "1\nx = 2" is one string, not two keys
        merge(out, nest(parts, value))
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
