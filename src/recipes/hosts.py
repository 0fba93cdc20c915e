"""Where commands run: a Host protocol with an SSH implementation (Fabric connects, raw
paramiko channels carry the bytes) and a local one. Neither buffers bulk data."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from recipes.errors import ConfigError, HostError, RecipeError, StepFailed
from recipes.model import Command

log = logging.getLogger("recipes")
# Every command started on a host, masked: shown with -v (the CLI sets this logger's level).
commands = logging.getLogger("recipes.commands")


def said(host: str, command: Command) -> None:
    """Log a command about to run (masked), when -v asked for commands."""
    if commands.isEnabledFor(logging.INFO):
        commands.info("run on %s: %s", host, command.masked())


# Measured on loopback: aes128-gcm with a large window roughly doubles paramiko's throughput.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr")
# The receive window bounds what paramiko buffers when the host sends faster than we store.
# Measured with bench/ (django, 1.5 GB over loopback): 16 MiB peaked at 147 MB RSS, 8 MiB at
# 105 MB, 4 MiB at 74 MB, all at the same speed. 4 MiB still fills ~1 Gbit/s at 30 ms RTT.
WINDOW = 4 << 20
PACKET = 256 << 10
READ_MAX = 512 << 10  # the most one SshProcess.read returns
STDERR_TAIL = 64 << 10
# The first bytes of stderr are kept too: the root cause is usually the first error.
STDERR_HEAD = 16 << 10
# After a stream failed, how long a command may take to report its exit status (seconds).
FAILED_WAIT = 30.0
# Seconds a local command has between TERM and KILL.
KILL_GRACE = 2.0
LOCAL = "local"
# A spare session: the login shell started ahead of need (its rc files cost ~0.1 s a session on
# a typical host), waiting for its command on stdin: the command's byte length in 12 decimal
# digits, then the command itself (exactly the line an exec request would carry) and SPARE_END.
# It first says SPARE_READY, so only a shell that runs this script is ever handed a command (a
# forced command or a chatty rc file says something else: the command gets a session of its
# own). ``dd bs=1`` reads one byte at a time, never past what it was asked for (``head -c`` reads
# ahead on busybox and BSD, swallowing the command or a secret behind it) and never times out
# like bash's ``read`` under TMOUT. A command that did not arrive whole (no SPARE_END) is not run:
# exit 125, never a silent 0. Otherwise the shell ``exec``s it, so the command leads the session
# sshd made and its exit status or signal is reported as with an exec request. SHLVL=2 tells the
# command's own ``bash -c`` (Command.wire) that it is not the login shell: bash run by sshd with
# a level below 2 reads ~/.bashrc again (85 ms a command on this host, as with an exec request,
# where the login's bash execs it the same way); the login already did, and its environment is
# inherited. The spare ends only when its stdin does (the controller or the connection gone).
SPARE_READY = b"recipes-spare-ready\n"
# How long a command waits for a spare's shell to say it is ready (seconds): as long as a
# connection may take, since a spare started before the command is always sooner than a new
# session would be. A spare that fails this (silent, or saying anything else) ends the use of
# spares on that connection: every later command gets a session of its own at once.
SPARE_WAIT = 15.0
# Spares opened as the connection comes up: the control session's and the first command's
# logins then run at once, beside each other. Later, one is opened whenever the last is taken.
SPARES = 2
SPARE_END = b"\n#recipes-spare-end"
SPARE = (
    "printf 'recipes-spare-ready\\n' && "
    'n=$(dd bs=1 count=12 2>/dev/null) && case "$n" in *[!0-9]*|"") exit 125;; esac && '
    'c=$(dd bs=1 count="$n" 2>/dev/null) && case "$c" in '
    '*"#recipes-spare-end") export SHLVL=2; eval "exec $c";; '
    '*) echo "recipes: the command did not arrive whole" >&2; exit 125;; esac'
)


@attrs.frozen
class HostSpec:
    """How to reach a host: an alias resolved from config, ``~/.ssh/config`` or ``[user@]addr[:port]``."""

    name: str
    address: str | None = None
    user: str | None = None
    port: int | None = None
    key_file: str | None = None
    sudo: bool = False
    """Wrap every command in ``sudo -n`` (for a non-root login user)."""
    host_key: str | None = None
    """A pinned OpenSSH public key (``ssh-ed25519 AAAA…``): when set, the only key accepted."""
    accept_new_host_keys: bool = False
    """Accept an unknown host's key and record it in known_hosts (OpenSSH's accept-new)."""

    @property
    def is_local(self) -> bool:
        return self.name == LOCAL and self.address is None


@attrs.frozen
class Result:
    """A finished small command: exit status and its (bounded) output."""

    exit_status: int
    stdout: bytes
    stderr: str


class Process(Protocol):
    """A running command: stream its stdout or feed its stdin, then wait for its exit."""

    def read(self, n: int = -1, /) -> bytes: ...
    def write(self, data: bytes, /) -> int: ...
    def close_stdin(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int:
        """Exit status; with a timeout, kill the command and raise StepFailed when it expires."""
        ...

    def stderr(self) -> str: ...
    def kill(self) -> None: ...


class Host(Protocol):
    """A machine to run commands on."""

    name: str

    def start(self, command: Command) -> Process: ...
    def connect_soon(self) -> None:
        """Start connecting in the background while the controller does other work."""
        ...

    def close(self) -> None: ...


def run(
    host: Host, command: Command, stdin: bytes = b"", started: Callable[[], None] | None = None
) -> Result:
    """Run a command whose output is small (checks, stop/start); never for bulk data.
    ``started`` is called once the host took the command (whatever happens next)."""
    proc = host.start(command)
    if started is not None:
        started()
    try:
        if stdin:
            proc.write(stdin)
        proc.close_stdin()
        out = bytearray()
        while chunk := proc.read(1 << 16):
            if len(out) < (1 << 20):
                out += chunk
        status = proc.wait()
    except BaseException:
        proc.kill()
        raise
    return Result(status, bytes(out), proc.stderr())


def check(host: Host, command: Command, what: str) -> Result:
    """Run a small command and raise ``StepFailed`` with its stderr on a non-zero exit."""
    result = run(host, command)
    if result.exit_status != 0:
        raise StepFailed(
            f"{what} failed on {host.name} (exit {result.exit_status}): {last_line(result.stderr)}"
        )
    return result


def key_values(output: bytes) -> dict[str, str]:
    """``key=value`` lines of a facts command's output (other lines are ignored)."""
    lines = output.decode("utf-8", "replace").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


# Summary lines that say nothing about the cause (GNU tar's closing lines, sudo's cd warning,
# the mark where _Tail skipped the middle of a long stderr).
_NOISE = re.compile(
    r"Exiting with failure status|Error is not recoverable: exiting now|"
    r"could not change directory to|sudo: unable to resolve host|"
    r"^\[\.\.\. \d+ bytes of stderr skipped \.\.\.\]$"
)
# Lines that report an error (the first one is usually the cause; later ones its consequences).
_ERROR = re.compile(
    r"error|fatal|cannot|can't|could not|couldn't|not found|no such|denied|not permitted|"
    r"failed|refused|invalid|unable|\bnot\b.*\bexist",
    re.IGNORECASE,
)
_WARNING = re.compile(r"^(\S+:\s*)*warning\b", re.IGNORECASE)


def last_line(text: str) -> str:
    """The most telling line of a command's stderr, for one-line error messages: the first
    line that reports an error (not a warning), else the last line that is not noise."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not _NOISE.search(line)]
    if not useful:
        return lines[-1] if lines else "(no message)"
    errors = [line for line in useful if _ERROR.search(line) and not _WARNING.match(line)]
    best = errors[0] if errors else useful[-1]
    more = len(useful) - 1
    return best + (f" (+{more} more lines)" if more and len(best) < 200 else "")


class _Tail:
    """Keeps the first ``STDERR_HEAD`` and the last ``STDERR_TAIL`` bytes of a stream that a
    thread drains: the first error (the cause) and the last (what finally failed) both survive."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.data = bytearray()
        self.skipped = 0
        self.lock = threading.Lock()

    def add(self, chunk: bytes) -> None:
        with self.lock:
            room = STDERR_HEAD - len(self.head)
            if room > 0:
                self.head += chunk[:room]
                chunk = chunk[room:]
            self.data += chunk
            if len(self.data) > STDERR_TAIL:
                cut = len(self.data) - STDERR_TAIL
                del self.data[:cut]
                self.skipped += cut

    def text(self) -> str:
        with self.lock:
            if not self.skipped:
                return (self.head + self.data).decode("utf-8", "replace")
            head = self.head.decode("utf-8", "replace")
            tail = self.data.decode("utf-8", "replace")
            return f"{head}\n[... {self.skipped} bytes of stderr skipped ...]\n{tail}"


def _drain(read: Callable[[int], bytes], tail: _Tail) -> threading.Thread:
    def loop() -> None:
        try:
            while chunk := read(1 << 16):
                tail.add(chunk)
        except Exception:  # the process or channel went away; wait() reports it
            pass

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


class LocalProcess:
    """A local ``bash -c`` child with stdout and stdin as pipes."""

    def __init__(self, line: str, stdin_prefix: bytes) -> None:
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {line}"],  # the command itself is the child: kill() waits for it
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,
        )
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._tail = _Tail()
        self._errs = _drain(self._proc.stderr.read, self._tail)
        if stdin_prefix:
            self.write(stdin_prefix)

    def read(self, n: int = -1, /) -> bytes:
        assert self._proc.stdout
        return self._proc.stdout.read(n if n and n > 0 else 1 << 20)

    def write(self, data: bytes, /) -> int:
        assert self._proc.stdin
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError as exc:
            raise StepFailed(f"the command stopped reading its input: {self.stderr_now()}") from exc
        return len(data)

    def stderr_now(self) -> str:
        return last_line(self._tail.text())

    def close_stdin(self) -> None:
        assert self._proc.stdin
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()

    def wait(self, timeout: float | None = None) -> int:
        self.close_stdin()
        if timeout is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise StepFailed(f"the command did not finish within {timeout:.0f}s; killed") from None
        assert self._proc.stdout
        while self._proc.stdout.read(1 << 16):
            pass
        status = self._proc.wait()
        self._errs.join(timeout=5)
        return status

    def stderr(self) -> str:
        return self._tail.text()

    def kill(self) -> None:
        """TERM first, so the command's traps clean up (as a dropped SSH channel lets them); KILL
        after a short grace."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()


class LocalHost:
    """The controller itself (``--host local``)."""

    def __init__(self, spec: HostSpec | None = None) -> None:
        self.spec = spec or HostSpec(LOCAL)
        self.name = self.spec.name

    def start(self, command: Command) -> Process:
        line, prefix = command.wire(sudo=self.spec.sudo)
        said(self.name, command)
        return LocalProcess(line, prefix)

    def connect_soon(self) -> None:
        pass

    def close(self) -> None:
        pass


class SshProcess:
    """A command on a raw paramiko session channel: no Fabric buffering, no text decoding."""

    def __init__(self, channel: Any, stdin_prefix: bytes) -> None:
        self._chan = channel
        self._tail = _Tail()
        self._errs = _drain(channel.recv_stderr, self._tail)
        if stdin_prefix:
            self.write(stdin_prefix)

    def read(self, n: int = -1, /) -> bytes:
        # At most READ_MAX (512 KiB) a call, not the whole window (4 MiB): each chunk is held
        # by the reader and queued for the facts thread, so its size is what the stream holds.
        # The channel's pipe (_chunk_pipe) joins the packets it takes: one copy, no memmove.
        try:
            return bytes(self._chan.recv(READ_MAX if n is None or n <= 0 else min(n, READ_MAX)))
        except OSError as exc:
            raise HostError(f"connection lost while reading: {exc}") from exc

    def write(self, data: bytes, /) -> int:
        try:
            self._chan.sendall(data)
        except OSError as exc:
            if self._chan.exit_status_ready():
                raise StepFailed(
                    f"the command stopped reading its input: {last_line(self._tail.text())}"
                ) from exc
            raise HostError(f"connection lost while writing: {exc}") from exc
        return len(data)

    def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self._chan.shutdown_write()

    def wait(self, timeout: float | None = None) -> int:
        self.close_stdin()
        if timeout is not None and not self._chan.status_event.wait(timeout):
            self.kill()
            raise StepFailed(f"the command did not finish within {timeout:.0f}s; killed")
        try:
            while self._chan.recv(1 << 16):
                pass
        except OSError:
            pass
        status = int(self._chan.recv_exit_status())
        self._errs.join(timeout=5)
        self._chan.close()
        if status == -1:
            raise HostError("connection lost before the command finished")
        return status

    def stderr(self) -> str:
        return self._tail.text()

    def kill(self) -> None:
        self._chan.close()


@functools.cache
def _chunk_pipe() -> Any:
    """The class of a paramiko ``BufferedPipe`` that queues the packets' own bytes: paramiko's copies every
    packet into an ``array`` and memmoves the rest of it on every partial read, all under the GIL
    the SSH reader, the encryption and the upload share (12% of a backup's GIL time, measured)."""
    import collections
    import time

    from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

    class ChunkPipe(BufferedPipe):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._chunks: collections.deque[bytes] = collections.deque()
            self._size = 0
            self._off = 0  # bytes of the first chunk already read

        def set_event(self, event: threading.Event) -> None:
            with self._lock:
                self._event = event
                if self._closed or self._size:
                    event.set()
                else:
                    event.clear()

        def feed(self, data: bytes) -> None:
            with self._lock:
                if self._event is not None:
                    self._event.set()
                if data:
                    self._chunks.append(bytes(data))
                    self._size += len(data)
                self._cv.notify_all()

        def read_ready(self) -> bool:
            with self._lock:
                return self._size > 0

        def read(self, nbytes: int, timeout: float | None = None) -> bytes:
            with self._lock:
                if not self._size:
                    if self._closed:
                        return b""
                    if timeout == 0.0:
                        raise PipeTimeout()
                    while not self._size and not self._closed:
                        then = time.time()
                        self._cv.wait(timeout)
                        if timeout is not None:
                            timeout -= time.time() - then
                            if timeout <= 0.0:
                                raise PipeTimeout()
                out = self._take(nbytes)
                if not self._size and self._event is not None and not self._closed:
                    self._event.clear()
                return out

        def _take(self, n: int) -> bytes:
            want = left = min(n, self._size)
            parts = []
            while left:
                head = self._chunks[0]
                if len(head) - self._off <= left:
                    parts.append(head[self._off :] if self._off else head)
                    left -= len(head) - self._off
                    self._chunks.popleft()
                    self._off = 0
                else:
                    parts.append(head[self._off : self._off + left])
                    self._off += left
                    left = 0
            self._size -= want
            return parts[0] if len(parts) == 1 else b"".join(parts)

        def empty(self) -> bytes:
            with self._lock:
                out = self._take(self._size)
                if self._event is not None and not self._closed:
                    self._event.clear()
                return out

        def __len__(self) -> int:
            with self._lock:
                return self._size

    return ChunkPipe


def _session(transport: Any) -> Any:
    """A session channel with our window and packet sizes and the chunk pipe for its stdout."""
    channel = transport.open_session(window_size=WINDOW, max_packet_size=PACKET)
    channel.in_buffer = _chunk_pipe()()  # before any command: nothing has arrived yet
    return channel


def _spare_ready(spare: Any) -> bool:
    """Whether a spare session's first output is exactly ``SPARE_READY`` (read, so the command's
    output starts clean), waiting ``SPARE_WAIT`` s at most; its shell then waits for a command."""
    got = b""
    spare.settimeout(SPARE_WAIT)
    try:
        while len(got) < len(SPARE_READY):
            chunk = spare.recv(len(SPARE_READY) - len(got))
            got += chunk
            if not chunk or not SPARE_READY.startswith(got):
                return False
    except OSError:  # socket.timeout included
        return False
    finally:
        spare.settimeout(None)
    return True


def _authenticated(client: Any) -> bool:
    """Whether a paramiko SSHClient got as far as authenticating (past its host key check)."""
    transport = client.get_transport()
    return bool(transport is not None and transport.is_authenticated())


def _transport_factory(sock: Any, **kwargs: Any) -> Any:
    """A paramiko Transport with large windows and AES-GCM preferred."""
    import paramiko

    transport = paramiko.Transport(sock, default_window_size=WINDOW, default_max_packet_size=PACKET, **kwargs)
    options = transport.get_security_options()
    available = list(options.ciphers)
    first = [c for c in PREFERRED_CIPHERS if c in available]
    options.ciphers = tuple(first + [c for c in available if c not in first])
    return transport


class SshHost:
    """A server over SSH: Fabric resolves ``~/.ssh/config`` and connects; channels carry data."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self._conn: Any = None
        self._lock = threading.Lock()
        self._early: threading.Thread | None = None
        self._early_error: RecipeError | None = None
        self._tried_early = False
        self._state = threading.Lock()  # guards the next two between close() and a connect
        self._connecting = False
        self._abandon = False
        self._spares: list[Any] = []  # sessions waiting for their command (SPARE), oldest first
        self._refilling = 0  # spares being opened
        self._no_spares = False  # a spare failed to say it was ready: none any more
        self._spare_lock = threading.Condition()

    def connect_soon(self) -> None:
        """Connect (import Fabric, key exchange, auth: ~0.3 s) in a thread while the caller reads
        the repository; the first command waits for it, and gets its error if it failed."""
        if self._conn is not None or self._tried_early:
            return
        self._tried_early = True

        def connect() -> None:
            try:
                self._refill_soon(self._transport(), SPARES)  # the first logins run meanwhile
            except RecipeError as exc:  # HostError, HostKeyError
                self._early_error = exc
            except Exception as exc:  # surfaced by the first command, which connects again
                log.debug("early connect to %s failed: %s", self.name, exc)

        self._early = threading.Thread(target=connect, name=f"connect-{self.name}", daemon=True)
        self._early.start()

    def _connect(self) -> Any:
        """Connect and authenticate; the host key is checked in between (see hostkeys.py)."""
        import fabric
        import paramiko

        from recipes.hostkeys import HostKeyCheck

        kwargs: dict[str, Any] = {"transport_factory": _transport_factory}
        if self.spec.key_file:
            kwargs.update(
                key_filename=os.path.expanduser(self.spec.key_file),
                look_for_keys=False,
                allow_agent=False,
            )
        prefer = None
        for attempt in range(2):
            try:
                conn = fabric.Connection(
                    self.spec.address or self.spec.name,
                    user=self.spec.user,
                    port=self.spec.port,
                    connect_kwargs=kwargs,
                    connect_timeout=15,
                )
            except (UnicodeDecodeError, ValueError) as exc:  # a damaged ssh_config (a bad Port, binary)
                raise ConfigError(
                    f"{self.name}: cannot make the SSH connection's settings: {exc}; check this "
                    "host's address and port (recipes.toml [hosts], --host) and the SSH client "
                    "configuration (~/.ssh/config, /etc/ssh/ssh_config)"
                ) from None
            keys = HostKeyCheck.create(
                self.name,
                conn.host,
                int(conn.port),
                conn.ssh_config,
                pin=self.spec.host_key,
                accept_new=self.spec.accept_new_host_keys,
            )
            # Replaces Fabric's AutoAddPolicy: known keys go into the client, so paramiko refuses
            # any other key after the key exchange and before sending a credential.
            keys.prepare(conn.client, prefer)
            jump = self._check_jump(conn)
            try:
                conn.open()
            except paramiko.BadHostKeyException as exc:
                conn.client.close()  # Fabric's close() skips a half-open transport
                if jump is not None and not _authenticated(jump[0].client):
                    jump[0].client.close()  # the jump host itself offered the wrong key
                    raise jump[1].changed(exc.key) from None
                same = keys.matching_known(exc.key)
                if same is None or attempt:
                    raise keys.changed(exc.key) from None
                prefer = same.key
                continue  # a later known_hosts line of the same type holds the offered key
            except RecipeError:
                conn.client.close()
                if jump is not None:
                    jump[0].client.close()
                raise
            except (OSError, paramiko.SSHException) as exc:
                conn.client.close()
                target = f"{conn.user}@{conn.host}:{conn.port}"
                raise HostError(f"cannot connect to {self.name} ({target}): {exc}") from exc
            except UnicodeDecodeError as exc:  # paramiko reading a binary key file
                conn.client.close()
                which = self.spec.key_file or "a key in ~/.ssh"
                raise ConfigError(
                    f"{self.name}: {which} is not an SSH private key ({exc.__class__.__name__}); "
                    "point key_file at the private key (OpenSSH format)"
                ) from None
            except UnicodeError as exc:  # the resolver refusing the name (an empty label: a..b)
                conn.client.close()
                raise ConfigError(f"{self.name}: {conn.host!r} is not a valid host name ({exc})") from None
            return conn
        raise AssertionError("unreachable")

    def _check_jump(self, conn: Any) -> tuple[Any, Any] | None:
        """A ``ProxyJump`` host from ~/.ssh/config is connected by Fabric itself, with its default
        accept-anything policy: give its client the same known_hosts check as any host."""
        import fabric

        from recipes.hostkeys import HostKeyCheck

        gateway = conn.gateway
        if not isinstance(gateway, fabric.Connection):
            return None
        keys = HostKeyCheck.create(
            f"{gateway.host} (ProxyJump of {self.name})",
            gateway.host,
            int(gateway.port),
            gateway.ssh_config,
            accept_new=self.spec.accept_new_host_keys,
        )
        keys.prepare(gateway.client)
        return gateway, keys

    def _transport(self) -> Any:
        if self._early is not None and self._early is not threading.current_thread():
            self._early.join()
            self._early = None
            error, self._early_error = self._early_error, None
            if error is not None:
                raise error
        with self._lock:
            transport = self._conn.client.get_transport() if self._conn else None
            if transport is None or not transport.is_active():
                if self._conn is not None:
                    self._conn.close()
                with self._state:
                    self._connecting = True
                try:
                    conn = self._connect()
                finally:
                    with self._state:
                        self._connecting = False
                        abandon, self._abandon = self._abandon, False
                if abandon:  # closed while it connected (see close): not needed any more
                    conn.close()
                    raise HostError(f"{self.name}: the connection was closed while it was made")
                self._conn = conn
                transport = self._conn.client.get_transport()
                with self._spare_lock:  # a new connection: spares are tried afresh on it
                    self._no_spares = False
            return transport

    def start(self, command: Command) -> Process:
        line, prefix = command.wire(sudo=self.spec.sudo)
        said(self.name, command)
        transport = self._transport()
        spare = self._take_spare(transport)
        if spare is not None:
            text = line.encode() + SPARE_END
            try:
                spare.sendall(b"%012d" % len(text) + text)
            except OSError:  # the spare went away: a session of its own, as below
                spare.close()
            else:
                return SshProcess(spare, prefix)
        try:
            channel = _session(transport)
            channel.exec_command(line)
        except Exception as exc:
            raise HostError(f"cannot start a command on {self.name}: {exc}") from exc
        return SshProcess(channel, prefix)

    def _refill_soon(self, transport: Any, count: int = 1) -> None:
        """Open ``count`` spare sessions, each in a thread of its own (an open is a round trip
        and sshd's fork: no caller waits for it)."""
        with self._spare_lock:
            if self._no_spares:
                return
            self._refilling += count
        for _ in range(count):
            threading.Thread(target=self._refill, args=(transport,), name="spare", daemon=True).start()

    def _refill(self, transport: Any) -> None:
        """Open one spare session; a host that refuses it (MaxSessions, a forced command) just
        starts each command in a session of its own."""
        channel = None
        try:
            channel = _session(transport)
            channel.exec_command(SPARE)
        except Exception as exc:
            log.debug("no spare session on %s: %s", self.name, exc)
            if channel is not None:
                channel.close()
            channel = None
        finally:
            with self._spare_lock:
                self._refilling -= 1
                if channel is not None and self._no_spares:
                    channel.close()  # opened before the host was found not to run spares
                elif channel is not None:
                    self._spares.append(channel)
                self._spare_lock.notify_all()

    def _take_spare(self, transport: Any) -> Any:
        """The oldest spare session on this connection whose shell said it waits, or None; when
        it was the last one, the next is opened. A spare being opened is waited for (a session
        of its own would cost the same round trip, and one more login on the host)."""
        while True:
            with self._spare_lock:
                self._spare_lock.wait_for(lambda: self._spares or not self._refilling, SPARE_WAIT)
                if not self._spares or self._no_spares:
                    return None
                spare = self._spares.pop(0)
                last = not self._spares and not self._refilling
            if spare.get_transport() is not transport or spare.closed:
                spare.close()  # from a connection that was replaced
                continue
            if _spare_ready(spare):
                if last:
                    self._refill_soon(transport)
                return spare
            spare.close()
            with self._spare_lock:  # this host does not run the spare's script as it should
                self._no_spares = True
                dropped, self._spares = self._spares, []
            for other in dropped:
                other.close()
            return None

    def close(self) -> None:
        """Close the connection; never wait for one still being made in another thread (a run
        refused for bad input must not wait out a slow host): that thread closes it itself."""
        while not self._lock.acquire(timeout=0.05):
            with self._state:
                if self._connecting:
                    self._abandon = True
                    return
        try:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        finally:
            self._lock.release()


def parse_target(text: str) -> HostSpec:
    """``[user@]address[:port]``, ``[user@][v6address]:port`` or an ``~/.ssh/config`` name as a
    HostSpec; a malformed one is a one-line ConfigError (exit 2), never a connection attempt."""
    import ipaddress

    if text == LOCAL:
        return HostSpec(LOCAL)

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"--host {text!r}: {why}; give a [hosts.NAME] alias, an ~/.ssh/config name, "
            "[user@]address[:port] or local"
        )

    if not text.strip():
        raise bad("empty")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise bad("contains spaces or control characters")
    user, at, rest = text.rpartition("@")
    if at and not user:
        raise bad("nothing before '@'")
    if "@" in user:
        raise bad("more than one '@'")
    port_text: str | None = None
    if rest.startswith("["):
        address, close, tail = rest[1:].partition("]")
        if not close or (tail and not tail.startswith(":")):
            raise bad("an IPv6 address with a port is written [address]:port")
        port_text = tail[1:] if tail else None
        if address and ":" not in address:
            raise bad("only an IPv6 address goes in brackets")
    elif rest.count(":") > 1:
        address = rest
    else:
        address, colon, after = rest.partition(":")
        port_text = after if colon else None
    if not address:
        raise bad("no address")
    if ":" in address:
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            raise bad("too many ':' (an IPv6 address with a port is written [address]:port)") from None
    if address.startswith("-") or user.startswith("-"):
        raise bad("a name cannot start with '-'")
    port = None
    if port_text is not None:
        if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
            raise bad(f"the port must be a number from 1 to 65535, as in user@host:2222, not {port_text!r}")
        port = int(port_text)
    return HostSpec(name=text, address=address, user=user or None, port=port)


def open_host(spec: HostSpec) -> Host:
    """A live Host for a spec (connections open lazily, on the first command)."""
    if spec.is_local:
        return LocalHost(spec)
    return SshHost(spec)
