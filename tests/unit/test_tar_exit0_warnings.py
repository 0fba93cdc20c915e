"""GNU tar says some things while exiting 0: a member it could not read under
``--ignore-failed-read`` is left out of the archive, and a socket is always left out. The first
must reach the operator (the manifest and a warning), the second only the manifest (a nightly
``-q`` run must not mail about a socket every night). Host and repository faked at their
boundaries, as in test_background_dump."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from recipes import plan
from recipes.backupjob import Backup
from recipes.compression import Compression
from recipes.model import Command
from recipes.steps import Archive
from tests.unit.test_background_dump import RECIPIENT, Proc, Writer


def _tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("dataiku/abc/settings.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    return buf.getvalue()


class TarProc(Proc):
    """test_background_dump's process, streaming one small archive and saying ``said``."""

    def __init__(self, said: str, status: int = 0) -> None:
        super().__init__([_tar_bytes()], None, status)
        self.said = said

    def stderr(self) -> str:
        return self.said


class TarHost:
    name = "web1"

    def __init__(self, said: str, status: int = 0) -> None:
        self.said = said
        self.status = status

    def start(self, command: Command) -> TarProc:
        return TarProc(self.said, self.status)

    def connect_soon(self) -> None:
        pass

    def close(self) -> None:
        pass


def _archive(said: str, tmp_path: Path, status: int = 0) -> Backup:
    step = Archive(
        root="/etc", name="config", object="config.tar", incremental=False, members="echo dataiku/abc"
    )
    p = plan.Plan("t", "web1", "backup", {}, (step,), Compression("controller", 1))
    writer = Writer()
    job = Backup(p, TarHost(said, status), writer, [RECIPIENT], p.compression, {}, tmp_path)  # type: ignore[arg-type]
    job.interpreter({}, 5.0, writer.snapshot)
    job.execute()
    return job


UNREAD = "tar: dataiku/abc/private.key: Cannot open: Permission denied"
SOCKET = "tar: ./run/dss.sock: socket ignored"


def test_a_member_tar_could_not_read_at_exit_0_is_a_warning_kept_with_the_object(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        job = _archive(
            f"bash: warning: setlocale: LC_ALL: cannot change locale\n{SOCKET}\n{UNREAD}\n", tmp_path
        )
    (obj,) = job.objects
    assert obj.warnings == (UNREAD, SOCKET)  # tar's own lines only, not the login's; real ones first
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["archive config: 2 warning(s), e.g. " + UNREAD]


def test_a_socket_left_out_is_recorded_but_not_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        job = _archive(SOCKET + "\n", tmp_path)
    (obj,) = job.objects
    assert obj.warnings == (SOCKET,)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(SOCKET in r.getMessage() for r in caplog.records)


def test_a_restore_names_a_stored_warning_again_unless_only_sockets_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from types import SimpleNamespace

    from recipes import restore

    manifest = SimpleNamespace(snapshot="20261124T000000Z-abcdef")
    with caplog.at_level(logging.INFO):
        restore._stored_with_warnings(manifest, SimpleNamespace(name="config.tar", warnings=(SOCKET,)))  # type: ignore[arg-type]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with caplog.at_level(logging.INFO):
        restore._stored_with_warnings(manifest, SimpleNamespace(name="config.tar", warnings=(SOCKET, UNREAD)))  # type: ignore[arg-type]
    (warned,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned.endswith(f"restored as stored: {UNREAD} (and 1 more)")


def test_the_run_summary_says_warning_only_for_a_real_one() -> None:
    from types import SimpleNamespace

    from recipes import output

    def notes(*warnings: str) -> list[str]:
        obj = SimpleNamespace(name="config.tar", warnings=warnings)
        m = SimpleNamespace(level=0, snapshot="s", size=1, downtime={}, objects=[obj])
        return output.run_notes(m, [])[2:]  # type: ignore[arg-type]

    assert notes(SOCKET) == [f"config.tar: tar left out 1 socket(s), e.g. {SOCKET}"]
    assert notes(SOCKET, UNREAD) == [f"warning: config.tar: 2 warning(s), e.g. {UNREAD}"]


@pytest.mark.parametrize("status", [0, 1])
def test_sockets_never_crowd_out_a_real_warning(
    status: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only 50 lines are kept: with 60 sockets before it, the line that matters still is."""
    real = UNREAD if status == 0 else "tar: ./var/log/app.log: File shrank by 100 bytes; padding with zeros"
    sockets = [f"tar: ./run/s{n}.sock: socket ignored" for n in range(60)]
    with caplog.at_level(logging.INFO):
        job = _archive("\n".join([*sockets, real]) + "\n", tmp_path, status)
    (obj,) = job.objects
    assert len(obj.warnings) == 50 and obj.warnings[0] == real
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and warned[0].endswith(real)


def test_a_stderr_cut_short_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """hosts._Tail drops the middle of a long stderr: what was there is unknown, so it warns."""
    with caplog.at_level(logging.INFO):
        job = _archive(f"{SOCKET}\n[... 70000 bytes of stderr skipped ...]\n{SOCKET}\n", tmp_path)
    (obj,) = job.objects
    assert obj.warnings[0] == "[... 70000 bytes of stderr skipped ...]"
    assert [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_restore_of_a_snapshot_with_a_full_list_of_sockets_still_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before real lines came first, 50 sockets could have crowded out a "File shrank"."""
    from types import SimpleNamespace

    from recipes import restore

    manifest = SimpleNamespace(snapshot="20261124T000000Z-abcdef")
    sockets = tuple(f"tar: ./run/s{n}.sock: socket ignored" for n in range(50))
    with caplog.at_level(logging.INFO):
        restore._stored_with_warnings(manifest, SimpleNamespace(name="files.tar", warnings=sockets))  # type: ignore[arg-type]
    assert [r for r in caplog.records if r.levelno == logging.WARNING]


def test_a_new_snapshot_with_only_sockets_left_out_restores_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sockets alone are kept 49 at most, so a restore tells them from an older, full list."""
    from recipes import restore

    sockets = [f"tar: ./run/s{n}.sock: socket ignored" for n in range(60)]
    with caplog.at_level(logging.INFO):
        job = _archive("\n".join(sockets) + "\n", tmp_path)
        (obj,) = job.objects
        assert len(obj.warnings) == 49
        restore._stored_with_warnings(SimpleNamespace(snapshot="s"), obj)  # type: ignore[arg-type]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
