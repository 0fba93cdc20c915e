"""``recipes init``: a new age identity (0600) and a starter config that names its public key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recipes import config
from recipes.errors import ConfigError

STARTER = """\
# recipes.toml written by `recipes init`. Every key is explained in the project's recipes.toml.
[repository]
url = "{url}"
recipients = ["{recipient}"]
# The SECRET key: needed only where restores run. Keep a copy offline.
identity_file = "{identity}"

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


def init(config_path: str | None, repo: str | None, force: bool) -> dict[str, Any]:
    """Create the identity and the config; refuse to overwrite either without ``force``."""
    import pyrage

    cfg = Path(os.path.expanduser(config_path or config.DEFAULT_CONFIG))
    identity = cfg.parent / "identity.txt"
    for path in (cfg, identity):
        if path.exists() and not force:
            raise ConfigError(
                f"{path} already exists: pass --force to replace it "
                "(a replaced identity cannot decrypt older snapshots)"
            )
    cfg.parent.mkdir(parents=True, exist_ok=True)
    key = pyrage.x25519.Identity.generate()
    recipient = str(key.to_public())
    fd = os.open(identity, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# public key: {recipient}\n{key}\n")
    os.chmod(identity, 0o600)
    url = repo or os.path.expanduser(config.DEFAULT_REPOSITORY)
    cfg.write_text(STARTER.format(url=url, recipient=recipient, identity=identity))
    return {
        "config": str(cfg),
        "identity": str(identity),
        "recipient": recipient,
        "repository": url,
    }


def init_message(result: dict[str, Any]) -> str:
    return (
        f"wrote {result['config']}\n"
        f"repository: {result['repository']}\n"
        f"public key (backups encrypt to it): {result['recipient']}\n"
        f"\n"
        f"!! SECRET KEY written to {result['identity']} (mode 0600).\n"
        f"!! Without it no snapshot can be restored. Copy it OFFLINE now (paper, USB disk,\n"
        f"!! password manager) and keep it off the servers you back up."
    )
