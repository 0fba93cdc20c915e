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

import pytest

from recipes import plan
from recipes.backupjob import Backup
from recipes.compression import Compression
from recipes.model import Command
from recipes.steps import Archive
from tests.unit.test_background_dump import RECIPIENT, Writer


def _tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("dataiku/abc/settings.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    return buf.getvalue()


class TarProc:
    def __init__(self, said: str) -> None:
        self.chunks = [_tar_bytes()]
        self.said = said

    def read(self, n: int = -1, /) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def write(self, data: bytes, /) -> int:
        return len(data)

    def close_stdin(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def stderr(self) -> str:
        return self.said

    def kill(self) -> None:
        pass


class TarHost:
    name = "web1"

    def __init__(self, said: str) -> None:
        self.said = said

    def start(self, command: Command) -> TarProc:
        return TarProc(self.said)

    def connect_soon(self) -> None:
        pass

    def close(self) -> None:
        pass


def _archive(said: str, tmp_path: Path) -> Backup:
    step = Archive(
        root="/etc", name="config", object="config.tar", incremental=False, members="echo dataiku/abc"
    )
    p = plan.Plan("t", "web1", "backup", {}, (step,), Compression("controller", 1))
    writer = Writer()
    job = Backup(p, TarHost(said), writer, [RECIPIENT], p.compression, {}, tmp_path)  # type: ignore[arg-type]
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
    assert obj.warnings == (SOCKET, UNREAD)  # tar's own lines only, not the login's
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
