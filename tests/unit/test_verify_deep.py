"""``verify --deep``'s fixed costs and its objects checked side by side: a host_key pin judged
without paramiko exactly as paramiko judges it, no SSH module imported by ``verify``, and a
failing object stopping the one beside it."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from recipes import hostkeys, verify
from recipes import manifest as mf
from recipes.errors import RepositoryError


def _line(key: object) -> str:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def _blob(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


GOOD = [
    _line(ed25519.Ed25519PrivateKey.generate().public_key()),
    _line(ec.generate_private_key(ec.SECP256R1()).public_key()),
    _line(ec.generate_private_key(ec.SECP384R1()).public_key()),
    _line(ec.generate_private_key(ec.SECP521R1()).public_key()),
    _line(rsa.generate_private_key(65537, 2048).public_key()),
]
ED, P256 = GOOD[0], GOOD[1]
BAD = [
    "ssh-ed25519",  # no key
    "ssh-ed25519 not-base64!",
    "ssh-ed25519 " + base64.b64encode(_blob(ED)[:-3]).decode(),  # truncated
    "ecdsa-sha2-nistp256 " + ED.split()[1],  # an ed25519 key under another name
    "ssh-ed25519 " + P256.split()[1],
    "ssh-rsa " + base64.b64encode(_string(b"ssh-rsa") + _string(b"\x01") + _string(b"\x00")).decode(),
    "ssh-ed25519 " + base64.b64encode(_string(b"ssh-ed25519") + _string(bytes(31))).decode(),
    "ssh-foo " + ED.split()[1],  # a type nobody knows
    "ssh-ed25519 " + base64.b64encode("é".encode()).decode() + "é",
    # stray characters inside valid base64: cryptography's decoder skips them, paramiko refuses
    "ssh-ed25519 " + ED.split()[1][:20] + "-" + ED.split()[1][20:],
    "ssh-ed25519 " + ED.split()[1][:20] + "!" + ED.split()[1][20:],
]


@pytest.mark.parametrize("line", [*GOOD, ED + " a comment", "  " + P256 + "  "])
def test_a_good_host_key_is_accepted_without_paramiko(line: str) -> None:
    hostkeys.parse_public_key(line)
    hostkeys.check_public_key(line)  # no ValueError


@pytest.mark.parametrize("line", BAD)
def test_a_bad_host_key_gets_paramikos_verdict_in_its_words(line: str) -> None:
    """Whatever paramiko makes of a damaged key (it even takes some truncated ones), the quick
    check makes the same: accepted, or refused with the same message."""
    try:
        hostkeys.parse_public_key(line)
    except ValueError as exc:
        with pytest.raises(ValueError) as ours:
            hostkeys.check_public_key(line)
        assert str(ours.value) == str(exc)
    else:
        hostkeys.check_public_key(line)  # no ValueError


def test_verify_imports_no_ssh_module(tmp_path: Path) -> None:
    """``recipes verify`` (config with a host and a pinned key) never imports paramiko, fabric or
    invoke: they cost a tenth of a second and verify connects to no host."""
    repo = tmp_path / "repo"
    repo.mkdir()
    cfg = tmp_path / "recipes.toml"
    cfg.write_text(
        f'[repository]\nurl = "{repo}"\n\n'
        f'[hosts.web]\naddress = "10.0.0.1"\nhost_key = "{ED}"\n\n[recipes.django]\n'
    )
    code = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('SSH', sorted({m.split('.')[0] for m in sys.modules}"
        " & {'paramiko', 'fabric', 'invoke'})))\n"
        f"sys.argv = ['recipes', '--config', {str(cfg)!r}, 'verify', '--all', '--allow-unsigned']\n"
        "runpy.run_module('recipes', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "no snapshots in" in done.stdout
    assert "SSH []" in done.stdout


def _obj(path: str, size: int) -> mf.StoredObject:
    return mf.StoredObject(name=path, kind="files", path=path, size=size, sha256="0" * 64)


def test_objects_run_two_at_a_time_biggest_first_reported_in_manifest_order() -> None:
    objects = [_obj("small-1", 10), _obj("big", 10_000), _obj("small-2", 20)]
    started: list[str] = []
    both = threading.Barrier(2, timeout=10)  # the big one and a small one run at once

    def check(obj: mf.StoredObject) -> verify.Problem | None:
        started.append(obj.path)
        if obj.path in ("big", "small-2"):
            both.wait()
        return verify.Problem("S", obj.path, "bad") if obj.path != "small-1" else None

    found = verify._together(objects, check, verify._Abort())
    assert started[:2] == ["big", "small-2"]
    assert [p.object if p else None for p in found] == [None, "big", "small-2"]


def test_a_failing_object_stops_the_one_beside_it_and_is_raised() -> None:
    """A storage failure on one object kills the programs of the other and stops its read
    (otherwise a failed verify would still read a whole archive before saying so)."""
    abort = verify._Abort()
    sleeper = subprocess.Popen(["sleep", "60"])
    stopped = threading.Event()

    def check(obj: mf.StoredObject) -> verify.Problem | None:
        if obj.path == "big":
            abort.add([sleeper])
            if abort.event.wait(10):
                stopped.set()
            return None
        raise RepositoryError("repository s3://b: read small: connection reset")

    with pytest.raises(RepositoryError, match="connection reset"):
        verify._together([_obj("big", 1000), _obj("small", 1)], check, abort)
    assert stopped.is_set()
    assert sleeper.wait(10) == -9
    late = subprocess.Popen(["sleep", "60"])
    abort.add([late])  # started after the failure: killed at once
    assert late.wait(10) == -9


class _Reads:
    """A stored object's reads: ``n`` chunks of 1 MiB, then an error (``fail``) or the end."""

    def __init__(self, n: int, fail: bool = False) -> None:
        self.left, self.fail, self.reads = n, fail, 0

    def read(self, size: int = -1, /) -> bytes:
        self.reads += 1
        if self.left == 0:
            if self.fail:
                raise RepositoryError("repository s3://b: read x: connection reset")
            return b""
        self.left -= 1
        return b"x" * (1 << 20)


def test_the_read_ahead_passes_every_chunk_and_raises_a_read_error() -> None:
    feed = verify._Feed(None, None, None)  # type: ignore[arg-type]
    assert sum(len(c) for c in feed._ahead(_Reads(20))) == 20 << 20
    got = []
    with pytest.raises(RepositoryError, match="connection reset"):
        for chunk in feed._ahead(_Reads(3, fail=True)):
            got.append(chunk)
    assert len(got) == 3  # everything read before the failure was passed on


def test_the_read_ahead_stops_reading_when_the_feed_gives_up() -> None:
    feed = verify._Feed(None, None, None)  # type: ignore[arg-type]
    reads = _Reads(1000)
    chunks = feed._ahead(reads)
    next(chunks)
    feed._stop.set()
    rest = sum(1 for _ in chunks)
    assert rest <= verify.AHEAD + 1 and reads.reads <= verify.AHEAD + 3  # not the 1000 chunks
    quitting = verify._Feed(None, None, None)._ahead(_Reads(1000))  # type: ignore[arg-type]
    next(quitting)
    quitting.close()  # the pipe's side gave up: the reader blocked on a full queue ends too
    assert not [t for t in threading.enumerate() if t.name == "verify-read"]


def test_a_stopped_check_stops_in_process_reads_and_never_passes_a_short_read(tmp_path: Path) -> None:
    """Once the snapshot's check is stopped (another object failed, Ctrl-C), the in-process
    reads give up at the next chunk, and the size-and-sha256 pass cut short never says "good"."""
    import hashlib

    from recipes.errors import VerifyError
    from recipes.repository import Repository

    repo = Repository(str(tmp_path / "repo"))
    data = b"y" * (24 << 20)
    obj = mf.StoredObject(
        name="files.tar", kind="files", path="o.age", size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    stamp = "2026-01-01T00:00:00Z"
    m = mf.Manifest("20260101T000000Z-aaaaaa", "django", "web1", stamp, stamp, {}, (obj,))
    folder = tmp_path / "repo" / "django" / "web1" / m.snapshot
    folder.mkdir(parents=True)
    (folder / "o.age").write_bytes(data)
    repo.verify_objects(m, [obj])  # whole: good
    with pytest.raises(VerifyError, match="does not match"):
        repo.verify_objects(m, [obj], stopped=lambda: True)
    event = threading.Event()
    with verify._Stoppable(repo, event).open_object(m, obj) as fh:
        assert len(fh.read(1 << 20)) == 1 << 20
        event.set()
        with pytest.raises(verify._Stopped):
            fh.read(1 << 20)


def test_a_local_object_is_hashed_whole_from_its_open_file_whatever_the_program_reads(
    tmp_path: Path,
) -> None:
    """Over a local folder the first program reads the object's open file itself: the size and
    sha256 still cover every byte (a program that stops early, then one that reads all), the
    path replaced meanwhile changes nothing, and a stop ends the hashing at the next chunk."""
    import hashlib
    import os

    path = tmp_path / "o.age"
    data = os.urandom(3 << 20) + b"z" * (5 << 20)
    path.write_bytes(data)
    for argv in (["head", "-c", "1"], ["cat"]):
        with path.open("rb") as fh:
            feed = verify._FileFeed(fh.fileno())
            path.with_name("other").write_bytes(b"other")
            os.replace(path.with_name("other"), path)  # the path now names another file
            codes = verify._pipeline([argv], [subprocess.DEVNULL], feed, None)
        path.write_bytes(data)
        assert codes == [0]
        assert feed.error is None
        assert (feed.size, feed.sha.hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())
    stop = threading.Event()
    stop.set()
    with path.open("rb") as fh:
        stopped = verify._FileFeed(fh.fileno(), stop)
        verify._pipeline([["cat"]], [subprocess.DEVNULL], stopped, None)
    assert stopped.size < len(data)  # never the whole: the check it feeds cannot pass
    endless = threading.Event()  # a stop while it reads: it ends at the next chunk
    with open("/dev/zero", "rb") as zero:
        reading = verify._FileFeed(zero.fileno(), endless)
        reading.start(None)
        while reading.size < (4 << 20):
            pass
        endless.set()
        assert reading._thread is not None
        reading._thread.join(30)
        assert not reading._thread.is_alive()


def test_a_local_filesystem_without_real_files_is_read_through_the_pipe_instead() -> None:
    """A local-protocol filesystem whose files have no descriptor (a wrapped or cached one) gives
    no fd: ``verify --deep`` then feeds age through the pipe rather than failing."""
    import contextlib
    import io

    class NoFiles:
        local = True

        def check_sizes(self, m: object, objects: object) -> None:
            pass

        @contextlib.contextmanager
        def open_object(self, m: object, obj: object, **kw: object) -> object:
            yield io.BytesIO(b"data")

    class RealFile(NoFiles):
        @contextlib.contextmanager
        def open_object(self, m: object, obj: object, **kw: object) -> object:
            with open(__file__, "rb") as fh:
                yield fh

    size = Path(__file__).stat().st_size
    obj = mf.StoredObject(name="files.tar", kind="files", path="o.age", size=size, sha256="0" * 64)
    with contextlib.ExitStack() as files:
        assert verify._file_of(files, NoFiles(), None, obj) is None  # type: ignore[arg-type]
        assert isinstance(verify._file_of(files, RealFile(), None, obj), int)  # type: ignore[arg-type]


def test_a_device_or_a_pipe_in_an_objects_place_ends_the_hashing_with_a_verdict() -> None:
    """Hostile local storage: ``/dev/zero`` in an object's place is hashed one byte past the
    manifest's size, then given up (it never matches); a pipe, which cannot be read at an
    offset, is the object's verdict (VerifyError, exit 3), not a traceback."""
    import os

    from recipes.errors import VerifyError

    with open("/dev/zero", "rb") as zero:
        feed = verify._FileFeed(zero.fileno(), limit=5 << 20)
        feed.start(None)
        assert feed._thread is not None
        feed._thread.join(30)
        ended = not feed._thread.is_alive()
        feed.stop()  # (were it still reading: stop it, then fail)
    assert ended and feed.error is None and 5 << 20 < feed.size <= (6 << 20)
    r, w = os.pipe()
    try:
        piped = verify._FileFeed(r, limit=10)
        piped.start(None)
        piped.join()
    finally:
        os.close(r)
        os.close(w)
    assert isinstance(piped.error, VerifyError) and "cannot read it" in str(piped.error)
