"""GNU tar run by a user other than root extracts every file as that user, silently. The extract
command says so on stderr as a tar line, and the restore reports tar's lines as a warning. Run
here for real, as root (the test command runs as root) and as ``nobody`` (``setpriv``), on a
local folder."""

from __future__ import annotations

import io
import logging
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from recipes import restore
from recipes.steps import Extract


def _archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("app/settings.py")
        info.size, info.uid, info.gid = 3, 1234, 1234
        tar.addfile(info, io.BytesIO(b"x=1"))
    return buf.getvalue()


def _extract(root: Path, *as_user: str) -> subprocess.CompletedProcess[str]:
    script = Extract(root=str(root)).command.script
    return subprocess.run(
        [*as_user, "bash", "-c", script], input=_archive().decode("latin-1"), capture_output=True,
        text=True, encoding="latin-1", timeout=30,
    )  # fmt: skip


def test_a_restore_as_another_user_than_root_says_the_owners_are_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with tempfile.TemporaryDirectory(prefix="extract-") as tmp:  # pytest's tmp_path is root's alone
        Path(tmp).chmod(0o777)
        _check(Path(tmp), caplog)


def _check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    done = _extract(tmp_path / "as-root")
    assert done.returncode == 0 and done.stderr == ""
    assert (tmp_path / "as-root/app/settings.py").stat().st_uid == 1234  # the snapshot's owner

    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    done = _extract(tmp_path / "as-nobody", *nobody)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "as-nobody/app/settings.py").stat().st_uid == 65534  # not the snapshot's
    with caplog.at_level(logging.WARNING):
        restore._tar_warned("extract files", "web1", done.stderr)
    (said,) = [r.getMessage() for r in caplog.records]
    assert "extract files on web1: tar warned" in said
    assert "tar: warning: not root (nobody): files get that owner, not the snapshot's" in said
