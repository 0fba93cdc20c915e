"""The SSH host's channel plumbing below the Host boundary: the chunk pipe that replaces
paramiko's BufferedPipe, and falling back to a session of its own when there is no usable spare
session (the spare itself runs against a real sshd in tests/integration/test_hosts.py)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from paramiko.buffered_pipe import PipeTimeout

from recipes import hosts
from recipes.model import Command


def test_the_chunk_pipe_reads_like_paramikos_pipe() -> None:
    pipe = hosts._chunk_pipe()()
    event = threading.Event()
    pipe.set_event(event)
    assert not event.is_set() and not pipe.read_ready()
    with pytest.raises(PipeTimeout):
        pipe.read(10, timeout=0.0)
    for i in range(4):
        pipe.feed(bytes([i]) * 300)
    assert event.is_set() and pipe.read_ready() and len(pipe) == 1200
    assert pipe.read(100) == b"\0" * 100  # part of the first packet
    assert pipe.read(250) == b"\0" * 200 + b"\1" * 50  # the rest of it and part of the next
    assert pipe.read(10_000) == b"\1" * 250 + b"\2" * 300 + b"\3" * 300
    assert len(pipe) == 0 and not event.is_set()
    pipe.feed(b"")  # an empty packet changes nothing
    assert not pipe.read_ready()
    pipe.feed(b"tail")
    assert pipe.empty() == b"tail" and len(pipe) == 0
    pipe.feed(b"last")
    pipe.close()
    assert event.is_set()
    assert pipe.read(10) == b"last"
    assert pipe.read(10) == b""  # closed and drained: the end


def test_a_reader_waiting_on_the_chunk_pipe_wakes_for_data_and_for_close() -> None:
    pipe = hosts._chunk_pipe()()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend([pipe.read(5), pipe.read(5)]))
    reader.start()
    pipe.feed(b"hello")
    pipe.close()
    reader.join(timeout=5)
    assert got == [b"hello", b""]


class FakeChannel:
    """A session channel: records the exec request and what was sent on stdin."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self.exec: str | None = None
        self.sent = b""
        self.closed = False
        self.out = hosts.SPARE_READY  # what its shell printed: a spare says it is ready

    def get_transport(self) -> FakeTransport:
        return self.transport

    def exec_command(self, line: str) -> None:
        self.exec = line

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def settimeout(self, seconds: float | None) -> None:
        pass

    def recv(self, n: int) -> bytes:
        out, self.out = self.out[:n], self.out[n:]
        return out

    def recv_stderr(self, n: int) -> bytes:
        return b""

    def close(self) -> None:
        self.closed = True


class FakeTransport:
    def __init__(self, refuse_after: int = 99) -> None:
        self.opened: list[FakeChannel] = []
        self.refuse_after = refuse_after

    def open_session(self, **_kw: Any) -> FakeChannel:
        if len(self.opened) >= self.refuse_after:
            raise OSError("administratively prohibited (MaxSessions)")
        channel = FakeChannel(self)
        self.opened.append(channel)
        return channel


def _host(transport: FakeTransport) -> hosts.SshHost:
    host = hosts.SshHost(hosts.HostSpec("h"))
    host._transport = lambda: transport  # type: ignore[method-assign]
    return host


def _settled(host: hosts.SshHost) -> None:
    """Wait for the spares being opened (each in a thread of its own)."""
    for _ in range(500):
        if not host._refilling:
            return
        threading.Event().wait(0.01)
    raise AssertionError("a spare was never opened")


def test_spares_serve_commands_oldest_first_and_the_last_one_taken_is_replaced() -> None:
    transport = FakeTransport()
    host = _host(transport)
    host._refill_soon(transport, hosts.SPARES)  # as the connection comes up
    _settled(host)
    first, second = transport.opened
    assert first.exec == second.exec == hosts.SPARE
    host.start(Command("echo one"))
    line, _ = Command("echo one").wire(sudo=False)
    text = line.encode() + hosts.SPARE_END
    assert first.sent == b"%012d" % len(text) + text
    _settled(host)
    assert len(transport.opened) == 2  # one spare left: nothing new opened
    host.start(Command("echo two"))
    assert second.sent.endswith(b"echo two'" + hosts.SPARE_END)
    _settled(host)
    assert len(transport.opened) == 3 and host._spares == [transport.opened[2]]
    assert transport.opened[2].exec == hosts.SPARE


@pytest.mark.parametrize(
    "said",
    [
        b"",  # its shell exited before saying anything (a broken rc file)
        b"This account can only be used for backups.\n",  # a forced command runs instead
        b"Welcome!\n" + hosts.SPARE_READY,  # a chatty rc file: not what the script says first
    ],
)
def test_a_spare_that_did_not_say_it_is_ready_is_not_used(said: bytes) -> None:
    transport = FakeTransport()
    host = _host(transport)
    host._refill_soon(transport)
    _settled(host)
    transport.opened[0].out = said
    host.start(Command("echo hi"))
    assert transport.opened[0].sent == b"" and transport.opened[0].closed
    assert transport.opened[1].exec == Command("echo hi").wire(sudo=False)[0]
    _settled(host)
    assert len(transport.opened) == 2  # no new spare for a host whose spares do not work
    host._refill_soon(transport, hosts.SPARES)  # nor when the connection would open them
    host.start(Command("echo again"))
    assert (
        len(transport.opened) == 3 and transport.opened[2].exec == Command("echo again").wire(sudo=False)[0]
    )


def test_a_host_that_refuses_the_spare_runs_each_command_in_a_session_of_its_own() -> None:
    transport = FakeTransport(refuse_after=0)
    host = _host(transport)
    host._refill_soon(transport, hosts.SPARES)  # refused: logged, no spare
    _settled(host)
    assert host._spares == []
    transport.refuse_after = 1
    host.start(Command("echo hi"))
    assert transport.opened[0].exec == Command("echo hi").wire(sudo=False)[0]
