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
from typing import Any

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


def _extract_as(root: Path, extract: Extract, *as_user: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*as_user, "bash", "-c", extract.command.script], input=_archive().decode("latin-1"),
        capture_output=True, text=True, encoding="latin-1", timeout=30,
    )  # fmt: skip


def test_a_uid_without_a_name_is_named_by_number_and_nothing_else_is_said() -> None:
    """``id -un`` fails for a uid with no passwd entry (an LDAP outage, a container uid): its
    "cannot find name" line would have been taken for the cause of a failed extract."""
    with tempfile.TemporaryDirectory(prefix="extract-") as tmp:
        Path(tmp).chmod(0o777)
        as_4242 = ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups"]
        done = _extract_as(Path(tmp), Extract(root=f"{tmp}/t"), *as_4242)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "tar: warning: not root (4242): files get that owner, not the snapshot's; "
        "log in as root or set sudo = true"
    ]


def test_a_login_as_the_applications_own_user_is_not_warned_about() -> None:
    """Looker's home may be restored by a login as Looker's own user: its files are its own,
    so it is not a loss (DSS's DATA_DIR is not exempt: with User Isolation it holds others')."""
    with tempfile.TemporaryDirectory(prefix="extract-") as tmp:
        Path(tmp).chmod(0o777)
        nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        done = _extract_as(Path(tmp), Extract(root=f"{tmp}/t", owner="nobody"), *nobody)
        assert done.returncode == 0 and done.stderr == ""
        done = _extract_as(Path(tmp), Extract(root=f"{tmp}/u", owner="dataiku"), *nobody)
        assert "not root (nobody)" in done.stderr


def test_each_line_of_tar_is_warned_about_once_per_step_across_a_chain(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: set[str] = set()
    line = "tar: warning: not root (web): files get that owner, not the snapshot's; log in as root"
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # a full and two incrementals
            restore._tar_warned("extract files", "web1", line + "\n", seen)
        restore._tar_warned("extract files", "web1", line + "\ntar: ./a: Cannot set POSIX ACLs\n", seen)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "not root (web)" in said[0] and "Cannot set POSIX ACLs" in said[1]


def test_a_line_counted_but_not_named_is_named_by_a_later_archive(caplog: pytest.LogCaptureFixture) -> None:
    seen: set[str] = set()
    with caplog.at_level(logging.WARNING):
        restore._tar_warned("extract files", "web1", "tar: A\ntar: B\n", seen)  # names A, "(and 1 more)"
        restore._tar_warned("extract files", "web1", "tar: B\n", seen)
    assert [r.getMessage().split(": ", 2)[-1] for r in caplog.records] == ["tar: A (and 1 more)", "tar: B"]


def test_steps_of_the_same_name_each_warn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Looker restores its home and each extra path as steps all named "extract files" (the
    same member names, so the same tar lines): each step's warnings are its own."""
    from types import SimpleNamespace

    from recipes.model import Command
    from recipes.ops import HostCommand, SnapshotObject, Transfer

    def fake_feed(
        self: Any, what: str, dst: Any, command: Any, host: Any, m: Any, obj: Any, said: Any = None
    ) -> None:
        restore._tar_warned(what, host.name, "tar: ./looker: Cannot set POSIX ACLs\n", said)

    monkeypatch.setattr(restore._Restore, "_feed", fake_feed)
    job = restore._Restore.__new__(restore._Restore)
    snap = SimpleNamespace(level=0, snapshot="s", object=lambda name: SimpleNamespace(name=name))
    job.snapshots = [snap, snap]  # type: ignore[list-item]
    host = SimpleNamespace(name="web1")
    with caplog.at_level(logging.WARNING):
        for obj in ("files.tar", "etc-ssl-looker.tar"):
            op = Transfer(
                SnapshotObject(obj, "files", chain=True), HostCommand(Command("tar x")), "extract files"
            )
            job.feed(host, op)  # type: ignore[arg-type]
    assert len(caplog.records) == 2  # once per step, not once per archive, nor once per name
