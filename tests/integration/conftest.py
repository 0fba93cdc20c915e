"""Fixtures of the integration tests: an age key pair and a recipes.toml naming both hosts
(host keys pinned; every run with its own HOME)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest

from tests import servers
from tests.integration.world import World, write_config


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """The age identity, its recipient, and the controller's signing key (made by ssh-keygen,
    as an operator bringing their own would)."""
    d = tmp_path_factory.mktemp("keys")
    ident = pyrage.x25519.Identity.generate()
    path = d / "identity.txt"
    path.write_text(f"{ident}\n")
    path.chmod(0o600)
    signing_key = d / "signing_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tests@controller", "-f", str(signing_key)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path, str(ident.to_public()), signing_key


@pytest.fixture
def world(
    tmp_path: Path, keys: tuple[Path, str, Path], ssh_source: servers.SshHost, ssh_target: servers.SshHost
) -> World:
    identity, recipient, signing_key = keys
    repo = tmp_path / "repo"
    config = tmp_path / "recipes.toml"
    hosts = {"source": ssh_source, "target": ssh_target}
    write_config(config, repo, identity, recipient, hosts, signing_key)
    return World(config, repo, identity, recipient, tmp_path / "cache", tmp_path / "home", signing_key)


@pytest.fixture
def site(ssh_source: servers.SshHost, ssh_target: servers.SshHost) -> Iterator[tuple[str, Path, Path]]:
    """A fresh root under /srv/site: (path seen inside both hosts, source dir, target dir)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    src = Path(ssh_source.binds["/srv/site"]) / name
    dst = Path(ssh_target.binds["/srv/site"]) / name
    src.mkdir()
    yield f"/srv/site/{name}", src, dst
    subprocess.run(["rm", "-rf", str(src), str(dst)], check=False)
