"""``recipes init``: the age identity (0600), the signing key (0600) and a config that names both.

Run again on an existing config, it adds only what is missing (the signing key file and the
``signing_key`` and ``signers`` keys of ``[repository]``) and never replaces an identity, a key or
a value; ``--force`` starts over with new keys and a new config, the old identity, signing key and
config moved aside to ``NAME.replaced-<UTC time>`` (never deleted: older snapshots need them).
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any

from recipes import config
from recipes.errors import ConfigError, RecipeError

STARTER = """\
# recipes.toml written by `recipes init`. Every key is explained in the project's recipes.toml.
[repository]
url = {url}
recipients = [{recipient}]
# The SECRET key: needed only where restores run. Keep a copy offline.
identity_file = {identity}
# The key this controller signs every manifest with (OpenSSH ed25519, 0600), and the public
# keys trusted to sign: restore, verify and copy refuse a snapshot none of them signed.
signing_key = {signing_key}
signers = [{signer}]

[retention]
full_every = "3M"
max_age = "2Y"
max_fulls_with_incrs = 2

# [hosts.web1]
# address = "203.0.113.5"
# user = "root"

# [recipes.django]
# root = "/"
# postgres = true
# sqlite = ["/var/opt/mysite/mysite.db"]
"""

ADDED_COMMENT = "# added by `recipes init`: the key that signs manifests, and the public keys trusted to sign"
_HEADER = re.compile(r"^[ \t]*\[[ \t]*repository[ \t]*\][ \t]*(#.*)?$", re.MULTILINE)


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def _config_path(config_path: str | None) -> Path:
    """Where init writes: ``--config``, else ``$RECIPES_CONFIG``, else the user's config."""
    chosen = config_path or config.env_config() or config.DEFAULT_CONFIG
    return Path(os.path.expanduser(chosen)).absolute()


def _comment() -> str:
    return f"recipes@{socket.gethostname() or 'controller'}"


def init(config_path: str | None, repo: str | None, force: bool) -> dict[str, Any]:
    """A new config with new keys; on an existing config (without ``force``) add what is missing."""
    cfg = _config_path(config_path)
    if cfg.exists() and not force:
        return _complete(cfg, repo)
    return _fresh(cfg, repo, force)


def _fresh(cfg: Path, repo: str | None, force: bool) -> dict[str, Any]:
    """Write the starter config; an identity or signing key already beside it is kept unless ``force``."""
    identity = cfg.parent / "identity.txt"
    key_path = cfg.parent / "signing_key"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    notes = _set_aside(cfg, identity, key_path) if force else []
    try:
        return _write_fresh(cfg, identity, key_path, repo, force, notes)
    except (RecipeError, OSError) as exc:
        if not notes:
            raise
        # the old files are no longer where the config pointed: say where they went
        said = str(exc) if isinstance(exc, RecipeError) else (exc.strerror or str(exc))
        raise ConfigError(f"init --force failed ({said}); {'; '.join(notes)}") from None


def _write_fresh(
    cfg: Path, identity: Path, key_path: Path, repo: str | None, force: bool, notes: list[str]
) -> dict[str, Any]:
    """The new identity, signing key and config (``_fresh``'s work once the old ones are aside)."""
    from recipes import signing

    created: list[str] = []
    kept: list[str] = []
    if identity.exists() and not force:
        recipient = _recipient_of(identity)
        kept.append(f"age identity {identity}")
    else:
        recipient = _new_identity(identity)
        created.append(f"age identity {identity}")
    if key_path.exists() and not force:
        key = signing.load_signing_key(str(key_path))
        kept.append(f"signing key {key_path}")
    else:
        key = signing.generate_signing_key(key_path, _comment())
        created.append(f"signing key {key_path} (+ .pub)")
    url = repo or os.path.expanduser(config.DEFAULT_REPOSITORY)
    text = STARTER.format(
        url=_toml_str(url),
        recipient=_toml_str(recipient),
        identity=_toml_str(str(identity)),
        signing_key=_toml_str(str(key_path)),
        signer=_toml_str(key.public.line),
    )
    _write(cfg, text)
    config.load(str(cfg))
    created.append(f"config {cfg}")
    return {
        "config": str(cfg),
        "identity": str(identity),
        "recipient": recipient,
        "repository": url,
        "signing_key": str(key_path),
        "signer": key.public.line,
        "fingerprint": key.public.fingerprint,
        "new_config": True,
        "created": created,
        "kept": kept,
        "notes": notes,
    }


def _set_aside(cfg: Path, identity: Path, key_path: Path) -> list[str]:
    """``--force``: move the old identity, signing key and config to ``NAME.replaced-<UTC time>``
    (never deleted: the old identity alone decrypts the snapshots made before); what was moved."""
    import datetime as dt

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    pub = Path(f"{key_path}.pub")
    moved: dict[Path, Path] = {}
    for path in (identity, key_path, pub, cfg):
        if not (path.exists() or path.is_symlink()):
            continue
        aside = path.with_name(f"{path.name}.replaced-{stamp}")
        n = 1
        while aside.exists() or aside.is_symlink():
            n += 1
            aside = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
        try:
            path.rename(aside)
        except OSError as exc:
            already = "".join(f"; {was} was moved to {to}" for was, to in moved.items())
            raise ConfigError(
                f"init --force: cannot move {path} aside to {aside} ({exc.strerror or exc}); fix the "
                f"folder's permissions or move the file away yourself{already}"
            ) from None
        moved[path] = aside
    notes: list[str] = []
    if identity in moved:
        notes.append(
            f"the old age identity is kept at {moved[identity]}: only it decrypts the snapshots made "
            "before; keep it (offline) for as long as they are kept"
        )
    if key_path in moved:
        line = f": add its public line ({moved[pub]}) to" if pub in moved else "; add its public line to"
        notes.append(
            f"the old signing key is kept at {moved[key_path]}{line} [repository] signers to keep "
            "trusting the snapshots it signed"
        )
    if cfg in moved:
        notes.append(f"the old config is kept at {moved[cfg]}")
    return notes


def _complete(cfg: Path, repo: str | None) -> dict[str, Any]:
    """Add the signing key and the ``[repository]`` keys an existing config lacks; touch nothing else."""
    from recipes import signing

    current = config.load(str(cfg))
    repo_cfg = current.repository
    key_path = (
        Path(current.resolve_path(repo_cfg.signing_key))
        if repo_cfg.signing_key
        else cfg.parent / "signing_key"
    )
    created: list[str] = []
    kept: list[str] = []
    notes: list[str] = []
    if key_path.exists():
        key = signing.load_signing_key(str(key_path))
        kept.append(f"signing key {key_path}")
    else:
        key = signing.generate_signing_key(key_path, _comment())
        created.append(f"signing key {key_path} (+ .pub)")
    table = _raw_repository(cfg)
    lines: list[str] = []
    if "signing_key" not in table:
        lines.append(f"signing_key = {_toml_str(str(key_path))}")
    if "signers" not in table:
        lines.append(f"signers = [{_toml_str(key.public.line)}]")
    if lines:
        _insert(cfg, lines)
        created.append(f"{', '.join(line.split(' =')[0] for line in lines)} in [repository] of {cfg}")
    elif key.public.blob not in {s.blob for s in current.signers()}:
        notes.append(
            f"the signing key {key.public.fingerprint} is not among [repository] signers in {cfg}: "
            f"restores will refuse its snapshots until you add {key.public.line!r}"
        )
    if repo:
        notes.append(f"--repo {repo} ignored: {cfg} already names its repository (edit it there)")
    identity = current.identity_path()
    if identity is None or not os.path.exists(identity):
        notes.append(
            f"no age identity at {identity or config.DEFAULT_IDENTITY}: backups work, restores need "
            "--identity FILE (init never makes a new one for an existing config)"
        )
    return {
        "config": str(cfg),
        "identity": identity,
        "recipient": ", ".join(repo_cfg.recipients),
        "repository": current.repository_url(),
        "signing_key": str(key_path),
        "signer": key.public.line,
        "fingerprint": key.public.fingerprint,
        "new_config": False,
        "created": created,
        "kept": kept,
        "notes": notes,
    }


def _raw_repository(cfg: Path) -> dict[str, Any]:
    data = tomllib.loads(cfg.read_text(encoding="utf-8"))
    table = data.get("repository", {})
    return table if isinstance(table, dict) else {}


def _insert(cfg: Path, lines: list[str]) -> None:
    """Put ``lines`` right after the ``[repository]`` header (or a new one at the end), keeping the rest."""
    text = cfg.read_text(encoding="utf-8")
    before = tomllib.loads(text)
    block = "\n".join([ADDED_COMMENT, *lines]) + "\n"
    match = _HEADER.search(text)
    if match:
        end = match.end()
        newline = text.find("\n", end)
        at = len(text) if newline < 0 else newline + 1
        head = text[:at] if newline >= 0 else text + "\n"
        new = head + block + text[at:]
    else:
        new = text + ("" if text.endswith("\n") or not text else "\n") + "\n[repository]\n" + block
    added = tomllib.loads("\n".join(lines))
    expected = dict(before)
    expected["repository"] = {**before.get("repository", {}), **added}
    try:
        ok = tomllib.loads(new) == expected
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        raise ConfigError(
            f"{cfg}: cannot add the signing keys to [repository] automatically; "
            f"add these lines under [repository] yourself: {'; '.join(lines)}"
        )
    _write(cfg, new)


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically, keeping its mode (0644 for a new file)."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    from recipes import signing

    signing.write_file(path, text, mode)


def _new_identity(identity: Path) -> str:
    import pyrage

    key = pyrage.x25519.Identity.generate()
    recipient = str(key.to_public())
    fd = os.open(identity, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# public key: {recipient}\n{key}\n")
    os.chmod(identity, 0o600)
    return recipient


def _recipient_of(identity: Path) -> str:
    """The public key of an existing age identity file, which init keeps."""
    import pyrage

    try:
        lines = identity.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"age identity {identity} exists but cannot be read ({exc}): fix it or pass --force"
        ) from None
    for line in lines:
        if line.strip().startswith("AGE-SECRET-KEY-"):
            try:
                return str(pyrage.x25519.Identity.from_str(line.strip()).to_public())
            except Exception:
                break
    raise ConfigError(
        f"age identity {identity} exists but holds no age secret key: fix it, or pass --force to "
        "replace it (a replaced identity cannot decrypt older snapshots)"
    )


def init_message(result: dict[str, Any]) -> str:
    """What init did, and the warning to copy the secret key offline when it made one."""
    out: list[str] = []
    if result["new_config"]:
        out += [f"wrote {result['config']}", f"repository: {result['repository']}"]
        out.append(f"public key (backups encrypt to it): {result['recipient']}")
    elif result["created"]:
        out.append(f"{result['config']} exists: added only what was missing")
    else:
        out.append(f"{result['config']} exists and has everything init makes: nothing added")
    out += [f"created {c}" for c in result["created"] if not c.startswith("config ")]
    out += [f"kept existing {k}" for k in result["kept"]]
    out.append(f"signing key (signs every manifest): {result['signing_key']} {result['fingerprint']}")
    out += [f"note: {n}" for n in result["notes"]]
    if any(c.startswith("age identity") for c in result["created"]):
        out += [
            "",
            f"!! SECRET KEY written to {result['identity']} (mode 0600).",
            "!! Without it no snapshot can be restored. Copy it OFFLINE now (paper, USB disk,",
            "!! password manager) and keep it off the servers you back up.",
        ]
    return "\n".join(out)
