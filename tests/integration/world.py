"""Shared pieces of the integration tests: a recipes.toml for the two SSH hosts (their host keys
pinned), the real CLI run with a HOME of its own, and a file-tree fingerprint that compares
content, mode, owner, mtime and symlinks."""

from __future__ import annotations

import ctypes
import hashlib
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import attrs


@attrs.frozen
class World:
    """A config file naming hosts ``source`` and ``target``, a repository and an identity."""

    config: Path
    repo: Path
    identity: Path
    recipient: str
    cache: Path
    """``$XDG_CACHE_HOME`` of every CLI run: where the controller caches tar states."""
    home: Path
    """``$HOME`` of every CLI run: never the real ``~/.ssh`` or ``~/.config`` of the machine."""
    signing_key: Path
    """The controller's signing key (its public half, ``.pub``, is the one signer)."""

    def env(self) -> dict[str, str]:
        """The environment of a run: the test's own HOME and cache."""
        self.home.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "HOME": str(self.home), "XDG_CACHE_HOME": str(self.cache)}

    def cli(
        self, *args: str, env: dict[str, str] | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ``recipes`` CLI as an operator would."""
        full_env = {**self.env(), **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "recipes", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            env=full_env,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"recipes {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc


def write_config(
    path: Path,
    repo: Path,
    identity: Path,
    recipient: str,
    hosts: dict[str, object],
    signing_key: Path,
) -> None:
    signer = Path(f"{signing_key}.pub").read_text().strip()
    lines = [
        "[repository]",
        f'url = "{repo}"',
        f'recipients = ["{recipient}"]',
        f'identity_file = "{identity}"',
        f'signing_key = "{signing_key}"',
        f'signers = ["{signer}"]',
        "",
    ]
    for name, h in hosts.items():
        lines += [
            f"[hosts.{name}]",
            f'address = "{h.address}"',  # type: ignore[attr-defined]
            f'user = "{h.user}"',  # type: ignore[attr-defined]
            f"port = {h.port}",  # type: ignore[attr-defined]
            f'key_file = "{h.key_file}"',  # type: ignore[attr-defined]
            f'host_key = "{h.host_public_key}"',  # type: ignore[attr-defined]
            "",
        ]
    path.write_text("\n".join(lines))


def fingerprint(root: Path, excludes: tuple[str, ...] = ()) -> dict[str, tuple[object, ...]]:
    """Every entry under root (minus excluded subtrees): type, mode, owner, mtime, content, xattrs."""
    out: dict[str, tuple[object, ...]] = {}
    skip = {e.strip("/") for e in excludes}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in list(dirnames):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in skip:
                dirnames.remove(name)
        for name in dirnames + filenames:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in skip:
                continue
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                detail: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            else:
                detail = None
            mtime = int(st.st_mtime) if not stat.S_ISLNK(st.st_mode) else None
            xattrs = (
                ()
                if stat.S_ISLNK(st.st_mode)
                else tuple(sorted((k, os.getxattr(p, k)) for k in os.listxattr(p)))
            )
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                mtime,
                detail,
                xattrs,
            )
    return out


IN_ACCESS = 0x1


def on_first_read(path: Path, action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` at the first read of ``path`` by anyone (inotify ``IN_ACCESS``): tar on a
    host, which has opened and stated the file by then. Join the thread after the run."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(path), IN_ACCESS) >= 0

    def wait() -> None:
        try:
            os.read(fd, 4096)
            action()
        finally:
            os.close(fd)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread
