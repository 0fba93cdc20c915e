"""A dump consistent from its first byte lets the run go on (an application started again) while
the rest streams; the run still waits for it, and its failure still fails the run. The host and
the repository are faked at their boundaries: what is tested is the engine's order."""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest

from recipes import plan
from recipes.backupjob import Backup
from recipes.compression import Compression
from recipes.errors import StepFailed
from recipes.model import Command
from recipes.steps import Dump, Run

RECIPIENT = str(pyrage.x25519.Identity.generate().to_public())


class Proc:
    def __init__(
        self, chunks: list[bytes], gate: threading.Event | None, status: int = 0, log: list[str] | None = None
    ) -> None:
        self.chunks = chunks
        self.gate = gate
        self.status = status
        self.killed = False
        self.log = log

    def read(self, n: int = -1, /) -> bytes:
        if not self.chunks:
            if self.log is not None:
                self.log.append("dump finished")
                self.log = None
            return b""
        if len(self.chunks) == 1 and self.gate is not None:
            self.gate.wait(10)  # the rest comes only once the host saw "start app" (or 10 s)
        return self.chunks.pop(0)

    def write(self, data: bytes, /) -> int:
        return len(data)

    def close_stdin(self) -> None:
        pass

    def wait(self, timeout: float | None = None) -> int:
        return self.status

    def stderr(self) -> str:
        return "pg_dump: error: connection lost" if self.status else ""

    def kill(self) -> None:
        self.killed = True


class Host:
    name = "web1"

    def __init__(self, dump_status: int = 0) -> None:
        self.gate = threading.Event()
        self.log: list[str] = []
        self.dump_status = dump_status

    def start(self, command: Command) -> Proc:
        if command.script == "dump":
            self.log.append("dump started")
            chunks = [b"-- header\n", b"COPY t FROM stdin;\n1\n\\.\n"]
            return Proc(chunks, self.gate, self.dump_status, self.log)
        self.log.append(command.script)
        if command.script == "start app":
            self.gate.set()
        return Proc([], None)

    def connect_soon(self) -> None:
        pass

    def close(self) -> None:
        pass


class Writer:
    snapshot = "20261123T100000Z-abcdef"

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[io.BytesIO]:
        buf = io.BytesIO()
        yield buf
        self.stored[path] = buf.getvalue()


def _backup(host: Host, tmp_path: Path) -> tuple[Backup, Writer]:
    steps = (
        Dump("govern", "postgresql", Command("dump"), consistent_from_first_byte=True),
        Run("start", Command("start app")),
    )
    p = plan.Plan("t", "web1", "backup", {}, steps, Compression("controller", 1))
    writer = Writer()
    job = Backup(p, host, writer, [RECIPIENT], p.compression, {}, tmp_path)  # type: ignore[arg-type]
    job.interpreter({}, 5.0, writer.snapshot)
    return job, writer


def test_the_run_goes_on_after_the_first_byte_and_waits_for_the_rest(tmp_path: Path) -> None:
    host = Host()
    job, writer = _backup(host, tmp_path)
    job.execute()
    assert host.log == ["dump started", "start app", "dump finished"]  # the app started mid-dump
    assert host.gate.is_set()
    assert "dumps/govern.sql.zst.age" in writer.stored  # and waited for before execute returned
    (obj,) = job.objects
    assert obj.facts["rows"] == {"t": 1}


def test_a_background_dump_that_fails_fails_the_run(tmp_path: Path) -> None:
    host = Host(dump_status=1)
    job, _ = _backup(host, tmp_path)
    with pytest.raises(
        StepFailed, match=r"dump govern failed on web1 \(exit 1\): pg_dump: error: connection lost"
    ):
        job.execute()
