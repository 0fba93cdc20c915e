"""Fake Looker and Dataiku DSS installs for the recipes' integration tests (see README.md).

Real Looker and DSS cannot run here, so these lay out their files inside a directory that an
SSH test host sees (``root`` on the controller is ``site_path`` inside the host, e.g. a
``site`` fixture dir under ``/srv/site``) with bash stand-ins for the programs a recipe runs.
Every stand-in call is appended to an events file (``read_events``) outside the backed-up
trees, so a test can tell when the application was stopped, what the installer was called
with, and what was refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shlex
import signal
import subprocess
import time
from pathlib import Path

import attrs

HERE = Path(__file__).resolve().parent

LOOKER_EXCLUDED = (
    "looker/.cache",
    "looker/.tmp",
    "looker/.snapshots",
    "looker/models",
    "looker/.db/looker.lck",
)
"""Paths under the home the seed's table says need no backup."""
LOOKER_OPTIONAL = ("looker/log", "looker/.ssl")
"""Paths the seed's table says "Maybe" for (the recipe's include_logs / include_ssl)."""
LOOKER_KEPT = (".ssh", "looker/.db", "looker/deploy_keys", "looker/models-user-1", "looker/models-user-2")
"""Paths the seed's table requires."""

DSS_CATEGORIES: dict[str, tuple[str, ...]] = {
    "temporary": ("tmp", "caches", "data-catalog"),
    "logs": ("run", "jobs", "scenarios", "diagnosis"),
    "ignorable": ("exports", "prepared_bundles", "apinode-packages"),
    "data": ("managed_datasets", "analysis_data", "saved_models"),
}
"""The seed's "What can be excluded" lists: category -> folders of DATA_DIR."""
DSS_KEPT = ("config", "projects", "bin", "install.ini", "dss-version.json")
"""DATA_DIR content no exclusion category names."""


@attrs.frozen
class Event:
    """One line of a stand-in's events file."""

    time: float
    user: str
    name: str
    detail: str


def read_events(path: Path) -> list[Event]:
    """Parse an events file (tab-separated: time, user, event, detail); missing means none."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        t, user, name, detail = [*line.split("\t", 3), "", ""][:4]
        events.append(Event(float(t), user, name, detail))
    return events


def stop_processes(site_path: str, timeout: float = 10.0) -> list[int]:
    """Stop, by pid, every stand-in server started under site_path (on any host); return the pids.

    For test teardown: a test that fails between ``start`` and ``stop`` would leave its server
    running. The servers' command lines begin ``looker-standin-server <dir>`` or
    ``dss-standin-server <dir>`` (dirs as the host sees them).
    """
    prefixes = tuple(f"{kind}-standin-server {site_path}/" for kind in ("looker", "dss"))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = (
                Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:
            continue
        if cmdline.startswith(prefixes):
            pids.append(int(entry))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def ensure_user(name: str) -> None:
    """Create a system user (no home, bash shell) unless it exists; machine-wide, left in place.

    The hosts share /etc/passwd, so one user serves both; retried because another test run may
    hold the passwd lock for a moment.
    """
    for _ in range(20):
        try:
            pwd.getpwnam(name)
            return
        except KeyError:
            pass
        res = subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/bin/bash",
                name,
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if res.returncode in (0, 9):  # 9: created meanwhile by someone else
            return
        time.sleep(0.1)
    raise RuntimeError(f"useradd {name} failed: {res.stderr.strip()}")


def _write(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Write a file (parents made) with mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    path.chmod(mode)


def _script(name: str, events: str) -> str:
    """A stand-in script's text with its events file path filled in."""
    return (HERE / name).read_text().replace("@EVENTS@", events)


def _chown_tree(top: Path, user: str | None) -> None:
    """Give top and everything under it (symlinks themselves) to user, if one is named."""
    if user is None:
        return
    pw = pwd.getpwnam(user)
    for base, dirs, files in os.walk(top):
        for n in [*dirs, *files]:
            os.chown(os.path.join(base, n), pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    os.chown(top, pw.pw_uid, pw.pw_gid)


def _events_file(root: Path) -> Path:
    """The events file of a site root: writable by anyone, so any app user can append."""
    path = root / "standin-events.log"
    path.touch()
    path.chmod(0o666)
    return path


@attrs.frozen
class Site:
    """A directory on the controller (``root``) that test hosts see as ``site_path``."""

    root: Path
    site_path: str

    def host_path(self, path: Path) -> str:
        """Where a controller path under root appears inside the host."""
        return f"{self.site_path}/{path.relative_to(self.root)}".rstrip("/")

    def local_path(self, host_path: str) -> Path:
        """Where an in-host path under site_path is on the controller."""
        rel = os.path.relpath(host_path, self.site_path)
        if rel.startswith(".."):
            raise ValueError(f"{host_path} is not under {self.site_path}")
        return self.root / rel


@attrs.frozen
class LookerInstall:
    """A fake Looker: home tree, startup script, /etc/init.d/looker and a CMK file."""

    site: Site
    home: str
    """In-host home of the Looker user (the recipe's ``home``); the app is ``{home}/looker``."""
    user: str | None
    cmk_file: str
    """In-host path of the CMK file (root-only readable unless user is set, then the user's)."""
    initd: str
    """In-host path of the /etc/init.d/looker equivalent."""
    events: Path

    @property
    def home_dir(self) -> Path:
        """The home on the controller."""
        return self.site.local_path(self.home)

    @property
    def app_dir(self) -> Path:
        """``{home}/looker`` on the controller."""
        return self.home_dir / "looker"

    def command(self, *args: str, cmk: bool = False) -> str:
        """A shell command that runs ``./looker ARGS`` in ``{home}/looker`` as user, HOME={home}.

        With cmk, LKR_MASTER_KEY_FILE names the CMK file (the path, never the key).
        """
        env = [f"HOME={self.home}"] + ([f"LKR_MASTER_KEY_FILE={self.cmk_file}"] if cmk else [])
        run_as = ["runuser", "-u", self.user, "--"] if self.user else []
        argv = [*run_as, "env", *env, "./looker", *args]
        return f"cd {shlex.quote(self.home + '/looker')} && {shlex.join(argv)}"

    def recrypt_entries(self) -> dict[str, str]:
        """``backup_uid -> sha256(dbmk)`` recorded in .db by keystore_independent_recrypt."""
        path = self.app_dir / ".db" / "keystore_independent"
        if not path.exists():
            return {}
        return dict(line.split(" ", 1) for line in path.read_text().splitlines() if line)


def keyfile_matches(entries: dict[str, str], keyfile: bytes) -> bool:
    """Tell whether a key file (its bytes) is one that keystore_independent_recrypt recorded."""
    data = json.loads(keyfile)
    dbmk = data["dbmk"].rstrip("\n")
    return entries.get(data["backup_uid"]) == hashlib.sha256(dbmk.encode()).hexdigest()


def install_looker(
    site: Site,
    *,
    home: str | None = None,
    user: str | None = None,
    cmk: str | None = None,
    deploying: bool = False,
    ca_cert: bool = True,
) -> LookerInstall:
    """Lay out a stopped Looker under site: the home (by the seed's table), init script, CMK.

    home defaults to ``{site_path}/home/looker``; user (if given) must exist and owns the home
    and the CMK file; cmk is the master key (random if None); deploying leaves a
    ``looker/.deploying`` marker; ca_cert puts a CA-signed certificate in ``looker/.ssl``.
    """
    home = home or f"{site.site_path}/home/looker"
    events = _events_file(site.root)
    h = site.local_path(home)
    app = h / "looker"
    cmk = cmk or secrets.token_urlsafe(32)
    _write(h / ".bashrc", "export PATH=$PATH\n")
    _write(h / ".ssh" / "id_rsa", "-----BEGIN OPENSSH PRIVATE KEY-----\nlooker-git\n", 0o600)
    _write(h / ".ssh" / "known_hosts", "github.com ssh-ed25519 AAAA\n")
    _write(app / "looker", _script("looker.sh", str(events)), 0o755)
    _write(app / "looker.jar", secrets.token_bytes(4096))
    _write(app / "lookerstart.cfg", 'LOOKERARGS="--no-daily-backups"\n')
    _write(app / ".cache" / "cache-0001.bin", secrets.token_bytes(2048))
    _write(app / ".tmp" / "upload-1.tmp", secrets.token_bytes(512))
    _write(app / ".snapshots" / "looker.jar.bak", secrets.token_bytes(1024))
    _write(app / ".db" / "looker.h2.db", secrets.token_bytes(8192))
    _write(app / ".db" / "looker.lck", "0\n")
    kek = hashlib.sha256(f"kek:{cmk}".encode()).hexdigest()
    _write(app / ".db" / "kek", kek, 0o600)
    _write(app / ".ssl" / "looker.jks", secrets.token_bytes(1024), 0o600)
    if ca_cert:
        _write(app / ".ssl" / "ca-signed.pem", "-----BEGIN CERTIFICATE-----\nca-signed\n")
    _write(app / "deploy_keys" / "analytics", "-----BEGIN OPENSSH PRIVATE KEY-----\ndeploy\n", 0o600)
    _write(app / "deploy_keys" / "analytics.pub", "ssh-ed25519 AAAA deploy\n")
    _write(app / "log" / "looker.log", "2024-01-01 started\n")
    _write(app / "models" / "analytics" / "analytics.model.lkml", "connection: x\n")
    for uid in (1, 2):
        _write(app / f"models-user-{uid}" / "analytics" / "dev.view.lkml", f"view: dev_{uid} {{}}\n")
    if deploying:
        _write(app / ".deploying", "")
    _chown_tree(h, user)
    initd = site.root / "etc" / "init.d" / "looker"
    _write(
        initd,
        f"#!/bin/sh\n# System startup script for Looker (stand-in)\n"
        f"cd {shlex.quote(home)}/looker && exec runuser -u {user or 'root'} -- env HOME={shlex.quote(home)} "
        './looker "$@"\n',
        0o755,
    )
    cmk_path = site.root / "etc" / "looker" / "cmk"
    _write(cmk_path, cmk + "\n", 0o600)
    _chown_tree(cmk_path.parent, user)
    return LookerInstall(site, home, user, site.host_path(cmk_path), site.host_path(initd), events)


@attrs.frozen
class DssInstall:
    """A fake DSS: an installation kit (INSTALL_DIR) and, unless kit-only, a DATA_DIR on it."""

    site: Site
    install_dir: str
    data_dir: str
    """In-host DATA_DIR ('' for a kit without a data dir)."""
    version: str
    """The kit's DSS version (DATA_DIR's own is in its dss-version.json)."""
    installid: str
    user: str | None
    events: Path

    @property
    def data_path(self) -> Path:
        """DATA_DIR on the controller."""
        return self.site.local_path(self.data_dir)

    def command(self, *argv: str) -> str:
        """A shell command running argv as user (if any)."""
        run_as = ["runuser", "-u", self.user, "--"] if self.user else []
        return shlex.join([*run_as, *argv])

    def dss(self, verb: str) -> str:
        """``DATA_DIR/bin/dss VERB`` as user."""
        return self.command(f"{self.data_dir}/bin/dss", verb)

    def jobs_check(self) -> str:
        """A ``jobs_check`` command: exits non-zero while a job runs (or DSS is down)."""
        return self.command(f"{self.data_dir}/bin/dsscli", "running-jobs")

    def mark_job_running(self, project: str, job: str) -> None:
        """Mark a job of a project as running (``bin/dss stop`` turns it ABORTED)."""
        d = self.data_path / "jobs" / project / job
        _write(d / "RUNNING", "")
        _write(d / "output.log", "job started\n")
        _chown_tree(d.parent, self.user)

    def finish_job(self, project: str, job: str) -> None:
        """Mark a running job done."""
        d = self.data_path / "jobs" / project / job
        (d / "RUNNING").rename(d / "DONE")


def _version_json(version: str) -> str:
    """A dss-version.json like DSS writes."""
    return json.dumps({"product_version": version, "product_commitid": "0" * 40, "conf_version": "12"}) + "\n"


def install_dss_kit(site: Site, *, version: str = "12.5.0", install_dir: str | None = None) -> DssInstall:
    """Lay out INSTALL_DIR only (``installer.sh``, ``bin/dss``, ``bin/dsscli``, ``dss-version.json``)."""
    install_dir = install_dir or f"{site.site_path}/opt/dataiku-dss-{version}"
    events = _events_file(site.root)
    kit = site.local_path(install_dir)
    _write(kit / "dss-version.json", _version_json(version))
    _write(kit / "installer.sh", _script("installer.sh", str(events)), 0o755)
    _write(kit / "bin" / "dss", _script("dss.sh", str(events)), 0o755)
    _write(kit / "bin" / "dsscli", _script("dsscli.sh", str(events)), 0o755)
    _write(kit / "lib" / "dip.jar", secrets.token_bytes(2048))
    return DssInstall(site, install_dir, "", version, "", None, events)


def install_dss(
    site: Site,
    *,
    version: str = "12.5.0",
    data_version: str | None = None,
    data_dir: str | None = None,
    install_dir: str | None = None,
    user: str | None = None,
    etc_config: bool = False,
) -> DssInstall:
    """Lay out a kit and a stopped DATA_DIR on it, with files in every folder the seed names.

    data_version (default version) is what DATA_DIR/dss-version.json says; etc_config also
    writes ``/etc/dataiku/<installid>/`` and ``/etc/dataiku-security/<installid>/`` under site.
    """
    kit = install_dss_kit(site, version=version, install_dir=install_dir)
    data_dir = data_dir or f"{site.site_path}/home/dataiku/dss_data"
    d = site.local_path(data_dir)
    installid = secrets.token_hex(8)
    _write(d / "dss-version.json", _version_json(data_version or version))
    _write(
        d / "install.ini",
        f"[general]\nnodetype = design\ninstallid = {installid}\n\n[server]\nport = 11000\n",
    )
    _write(d / "config" / "general-settings.json", '{"studioName": "standin"}\n')
    _write(d / "config" / "connections.json", '{"connections": {}}\n', 0o600)
    _write(d / "projects" / "PROJ" / "params.json", '{"projectKey": "PROJ"}\n')
    _write(d / "projects" / "PROJ" / "recipes" / "compute.json", '{"type": "python"}\n')
    for category, folders in DSS_CATEGORIES.items():
        for folder in folders:
            _write(d / folder / "PROJ" / f"{category}-{folder}.bin", secrets.token_bytes(1024))
    (d / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("dss", "dsscli"):
        os.symlink(f"{kit.install_dir}/bin/{name}", d / "bin" / name)
    _write(
        d / "bin" / "env-default.sh",
        f'export DKUINSTALLDIR="{kit.install_dir}"\nexport DIP_HOME="{data_dir}"\n',
    )
    _write(d / "bin" / "env-site.sh", "# site-specific settings (kept by the installer)\n")
    _chown_tree(d, user)
    if etc_config:
        _write(site.root / "etc" / "dataiku" / installid / "installer.conf", "[general]\n")
        _write(site.root / "etc" / "dataiku-security" / installid / "security.conf", "secret-path\n", 0o600)
    return attrs.evolve(kit, data_dir=data_dir, installid=installid, user=user)
