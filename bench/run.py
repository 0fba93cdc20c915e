#!/usr/bin/env python3
"""The recipes benchmark: one reference dataset, one private sshd, the tool against its limits.

Run it with the project's interpreter (``.venv/bin/python bench/run.py`` or ``nox -s bench``)::

    python bench/run.py [--scale S] [--rounds N] [--out bench/results/NAME.json] [--quick]
                        [--only limit,recipes,restic,duplicity,downtime] [--work DIR]
                        [--settle-timeout SECONDS]

What it measures, and how to read the numbers, is in docs/performance.md. Only the standard
library and standard command-line tools are used (openssh, age, zstd, tar, restic,
duplicity, GNU time, btrfs-progs); missing Debian packages are installed with apt-get when
running as root.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

MIB = 1 << 20
GIB = 1 << 30
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_WORK = Path("/var/tmp/recipes-bench")
SCHEMA = 1

# The reference dataset at scale 1 (docs/performance.md). Bump DATASET_VERSION whenever the
# generator changes, so that a cached dataset made by an older generator is made again.
DATASET_VERSION = 1
TEXT_BYTES = 1 * GIB
TEXT_FILES = 20
RANDOM_BYTES = 200 * MIB
RANDOM_FILES = 10
SMALL_FILES = 50_000
SMALL_MIN, SMALL_MAX = 1024, 8192
MIN_FILE_BYTES = 4096
SEED = 20241123
POOL_BYTES = 8 * MIB
SLICE = 4096
CHANGE_EVERY = 100
CHANGE_BYTES = 32

GROUPS = ("limit", "recipes", "restic", "duplicity", "downtime")
CIPHER = "aes128-gcm@openssh.com"
SSHD = "/usr/sbin/sshd"
GNU_TIME = "/usr/bin/time"

# Commands the groups need -> the Debian package that provides them.
TOOLS: dict[str, dict[str, str]] = {
    "base": {"bash": "bash", "tar": "tar", GNU_TIME: "time"},
    "ssh": {
        "ssh": "openssh-client",
        "ssh-keygen": "openssh-client",
        SSHD: "openssh-server",
        "age": "age",
        "age-keygen": "age",
        "zstd": "zstd",
        "sha256sum": "coreutils",
    },
    "restic": {"restic": "restic"},
    "duplicity": {"duplicity": "duplicity"},
    "downtime": {
        "btrfs": "btrfs-progs",
        "mkfs.btrfs": "btrfs-progs",
        "losetup": "mount",
        "setsid": "util-linux",
    },
}

# The downtime part: the DSS stand-in of the integration tests, on a loop-device btrfs.
DSS_STANDIN = BENCH_DIR.parent / "tests" / "integration" / "standins" / "dss.sh"
DSS_VERSION = "12.5.0"
DOWNTIME_COPIES = {"1x": 1, "4x": 4}
"""DATA_DIR sizes: the dataset once, and four reflink copies of it (same bytes and files x4)."""
DOWNTIME_MODES = ("none", "btrfs")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- tools


def ensure_tools(groups: set[str]) -> None:
    """Install the Debian packages behind any missing command (CI machines start fresh)."""
    needed = dict(TOOLS["base"])
    if groups & {"limit", "recipes", "downtime"}:
        needed.update(TOOLS["ssh"])
    for g in ("restic", "duplicity", "downtime"):
        if g in groups:
            needed.update(TOOLS[g])
    missing = sorted({pkg for tool, pkg in needed.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"bench: missing Debian packages {' '.join(missing)}; install them or run as root")
    log(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdin=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    still = sorted(tool for tool in needed if shutil.which(tool) is None)
    if still:
        raise SystemExit(f"bench: still missing after apt-get: {' '.join(still)}")


def recipes_exe() -> str:
    """The ``recipes`` entry point of the interpreter running this script (the project venv)."""
    beside = Path(sys.executable).parent / "recipes"
    if beside.exists():
        return str(beside)
    found = shutil.which("recipes")
    if found is None:
        raise SystemExit("bench: no `recipes` command; run with the project's .venv/bin/python")
    return found


def first_line(cmd: Sequence[str]) -> str:
    """First non-empty line a ``--version`` style command prints (stdout or stderr)."""
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    for line in (res.stdout + "\n" + res.stderr).splitlines():
        if line.strip():
            return line.strip()
    return ""


def machine_info(groups: set[str]) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
                break
    tools = {
        "recipes": first_line([recipes_exe(), "--version"]),
        "python": sys.version.split()[0],
        "tar": first_line(["tar", "--version"]),
        "zstd": first_line(["zstd", "--version"]),
        "age": first_line(["age", "--version"]),
        "openssh": first_line(["ssh", "-V"]),
    }
    if "restic" in groups:
        tools["restic"] = first_line(["restic", "version"])
    if "duplicity" in groups:
        tools["duplicity"] = first_line(["duplicity", "--version"])
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "mem_total_mb": round(mem_kb / 1024),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "tools": tools,
        "source": source_revision(),
    }


def source_revision() -> str:
    """The commit the measured code is at, with ``+dirty`` when the tree has changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(BENCH_DIR), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


# --------------------------------------------------------------------------- dataset


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Sizes and counts of the reference dataset at one scale."""

    scale: float
    text_bytes: int
    text_files: int
    random_bytes: int
    random_files: int
    small_files: int

    @classmethod
    def at(cls, scale: float) -> DatasetSpec:
        return cls(
            scale=scale,
            text_bytes=max(int(TEXT_BYTES * scale), TEXT_FILES * MIN_FILE_BYTES),
            text_files=TEXT_FILES,
            random_bytes=max(int(RANDOM_BYTES * scale), RANDOM_FILES * MIN_FILE_BYTES),
            random_files=RANDOM_FILES,
            small_files=max(round(SMALL_FILES * scale), 10),
        )

    def stamp(self) -> dict[str, Any]:
        return {"version": DATASET_VERSION, **dataclasses.asdict(self)}


class TextPool:
    """Text-like bytes: words of a fixed, seeded vocabulary, Zipf-weighted (zstd -1: about 3.4x).

    A pool of POOL_BYTES is made once; every later block is stitched from 4 KiB slices at
    seeded random offsets of the pool, which costs almost nothing, keeps the text's
    compressibility and never repeats a run long enough for deduplication (restic's chunks
    are 0.5-8 MiB) or for zstd -1's 512 KiB window to find more than text would give.
    """

    def __init__(self, rng: random.Random) -> None:
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        freq = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8]
        freq += [2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07]
        lengths = [2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 8, 9, 10, 11, 12]
        words: set[str] = set()
        while len(words) < 2000:
            words.add("".join(rng.choices(letters, freq, k=rng.choice(lengths))))
        vocab = sorted(words)
        rng.shuffle(vocab)
        cum = list(itertools.accumulate(1 / (i + 1) ** 1.1 for i in range(len(vocab))))
        picked = rng.choices(vocab, cum_weights=cum, k=POOL_BYTES // 5)
        lines: list[str] = []
        i = 0
        while i < len(picked):
            k = rng.randint(6, 16)
            lines.append(" ".join(picked[i : i + k]).capitalize() + ".")
            i += k
        self.pool = ("\n".join(lines) + "\n").encode()[:POOL_BYTES]

    def block(self, rng: random.Random, size: int) -> bytes:
        top = len(self.pool) - SLICE
        parts = []
        left = size
        while left > 0:
            off = rng.randrange(top)
            take = min(SLICE, left)
            parts.append(self.pool[off : off + take])
            left -= take
        return b"".join(parts)


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def small_path(i: int) -> str:
    return f"small/d{i // 1000:03d}/s{i // 100 % 10}/f{i:06d}.txt"


def generate_dataset(data: Path, spec: DatasetSpec) -> None:
    rng = random.Random(SEED)
    pool = TextPool(rng)
    (data / "text").mkdir(parents=True)
    for n, size in enumerate(_split(spec.text_bytes, spec.text_files)):
        frng = random.Random(SEED + 1000 + n)
        with open(data / "text" / f"text-{n:02d}.txt", "wb") as f:
            left = size
            while left > 0:
                take = min(MIB, left)
                f.write(pool.block(frng, take))
                left -= take
    (data / "random").mkdir()
    for n, size in enumerate(_split(spec.random_bytes, spec.random_files)):
        frng = random.Random(SEED + 2000 + n)
        with open(data / "random" / f"rand-{n:02d}.bin", "wb") as f:
            left = size
            while left > 0:
                take = min(4 * MIB, left)
                f.write(frng.randbytes(take))
                left -= take
    srng = random.Random(SEED + 3000)
    made: set[Path] = set()
    for i in range(spec.small_files):
        path = data / small_path(i)
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(pool.block(srng, srng.randint(SMALL_MIN, SMALL_MAX)))


def list_files(root: Path) -> list[tuple[str, int]]:
    """Every regular file under root as (relative path, size), sorted."""
    out: list[tuple[str, int]] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out.append((os.path.relpath(p, root), st.st_size))
    out.sort()
    return out


def tree_bytes(root: Path) -> int:
    """Apparent size of every regular file under root (0 if missing)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


@dataclasses.dataclass
class Dataset:
    root: Path
    spec: DatasetSpec
    files: list[tuple[str, int]]
    generated_seconds: float | None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def info(self) -> dict[str, Any]:
        return {
            **self.spec.stamp(),
            "root": str(self.root),
            "files": len(self.files),
            "bytes": self.total_bytes,
            "cached": self.generated_seconds is None,
            "generate_seconds": self.generated_seconds,
        }


def ensure_dataset(work: Path, spec: DatasetSpec) -> Dataset:
    """The cached dataset for spec, made again only when missing, of another scale, or dirty."""
    data = work / "dataset"
    stamp = work / "dataset.json"
    dirty = work / "dataset.dirty"
    want = spec.stamp()
    have: dict[str, Any] | None = None
    with contextlib.suppress(OSError, ValueError):
        have = json.loads(stamp.read_text())
    if have is not None and have.get("spec") == want and data.is_dir() and not dirty.exists():
        files = list_files(data)
        if len(files) == have.get("files") and sum(s for _, s in files) == have.get("bytes"):
            log(f"dataset: cached {data} ({len(files)} files, {sum(s for _, s in files) / MIB:.0f} MiB)")
            return Dataset(data, spec, files, None)
    log(f"dataset: generating scale {spec.scale:g} into {data}")
    stamp.unlink(missing_ok=True)
    if data.exists():
        shutil.rmtree(data)
    dirty.unlink(missing_ok=True)
    started = time.monotonic()
    generate_dataset(data, spec)
    os.sync()
    seconds = round(time.monotonic() - started, 2)
    files = list_files(data)
    stamp.write_text(
        json.dumps({"spec": want, "files": len(files), "bytes": sum(s for _, s in files)}, indent=2) + "\n"
    )
    log(f"dataset: {len(files)} files, {sum(s for _, s in files) / MIB:.0f} MiB in {seconds:.1f}s")
    return Dataset(data, spec, files, seconds)


@dataclasses.dataclass
class Change:
    path: Path
    head: bytes
    atime_ns: int
    mtime_ns: int


@contextlib.contextmanager
def one_percent_changed(ds: Dataset, work: Path, tag: str) -> Iterator[int]:
    """Change every 100th file (its first bytes and its mtime), then put everything back.

    A marker file says the cache is dirty until the originals are back, so an interrupted
    run makes the dataset again next time instead of measuring a changed one.
    """
    dirty = work / "dataset.dirty"
    dirty.write_text("a run changed files and did not put them back\n")
    changes: list[Change] = []
    try:
        now = time.time_ns()
        for i, (rel, _size) in enumerate(ds.files):
            if i % CHANGE_EVERY:
                continue
            path = ds.root / rel
            st = os.stat(path)
            with open(path, "r+b") as f:
                head = f.read(CHANGE_BYTES)
                changes.append(Change(path, head, st.st_atime_ns, st.st_mtime_ns))
                f.seek(0)
                f.write(f"changed {tag} {i}".encode().ljust(len(head), b"."))
            os.utime(path, ns=(now, now))
        yield len(changes)
    finally:
        for c in reversed(changes):
            with open(c.path, "r+b") as f:
                f.write(c.head)
            os.utime(c.path, ns=(c.atime_ns, c.mtime_ns))
        dirty.unlink(missing_ok=True)


def verify_tree(src: Path, dst: Path, samples: int = 40) -> tuple[bool, str]:
    """Cheap restore check: same file names, count and total bytes; sampled content and mtime."""
    a, b = list_files(src), list_files(dst)
    if len(a) != len(b):
        return False, f"{len(b)} files restored, {len(a)} in the source"
    if [r for r, _ in a] != [r for r, _ in b]:
        return False, "restored file names differ from the source"
    if sum(s for _, s in a) != sum(s for _, s in b):
        return False, f"{sum(s for _, s in b)} bytes restored, {sum(s for _, s in a)} in the source"
    step = max(1, len(a) // samples)
    picks = sorted({*range(0, len(a), step), len(a) - 1})
    for i in picks:
        rel = a[i][0]
        for_src, for_dst = src / rel, dst / rel
        if _sha256(for_src) != _sha256(for_dst):
            return False, f"content of {rel} differs"
        if int(for_src.stat().st_mtime) != int(for_dst.stat().st_mtime):
            return False, f"mtime of {rel} differs"
    return True, f"{len(a)} files, {sum(s for _, s in a)} bytes, {len(picks)} sampled hashes equal"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- sshd


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def child_pids(pid: int) -> list[int]:
    """Children of pid, zombies included: a zombie's CPU reaches its parent only once reaped."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields is not None and fields[1] == str(pid):
                kids.append(int(entry))
    return kids


class Sshd:
    """A private sshd on 127.0.0.1 letting root in with a fresh key; stopped by its PID."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "sshd"
        self.key = self.dir / "client_key"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        d = self.dir
        (d / "keys").mkdir(parents=True)
        d.chmod(0o755)
        for name in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                check=True,
                stdin=subprocess.DEVNULL,
            )
        shutil.copy(d / "client_key.pub", d / "keys" / "root")
        (d / "sshd_config").write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"HostKey {d / 'host_key'}",
                    f"PidFile {d / 'sshd.pid'}",
                    f"AuthorizedKeysFile {d / 'keys'}/%u",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "MaxStartups 100",
                    "MaxSessions 100",
                    "",
                ]
            )
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for _attempt in range(5):
            self.port = free_port()
            log_file = open(d / "sshd.log", "ab")  # noqa: SIM115 - handed to the child
            try:
                self.proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(d / "sshd_config"), "-p", str(self.port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,
                )
            finally:
                log_file.close()
            if self._wait_ready(10.0):
                log(f"sshd: pid {self.proc.pid} on 127.0.0.1:{self.port}")
                return
            self.stop()
        raise RuntimeError(f"sshd did not start: {(d / 'sshd.log').read_text(errors='replace')[-2000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError, ValueError):
                if int((self.dir / "sshd.pid").read_text().strip() or 0) == self.proc.pid:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                        if s.recv(64).startswith(b"SSH-2.0-"):
                            return True
            time.sleep(0.02)
        return False

    def ssh_words(self) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.key),
            "-p",
            str(self.port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-c",
            CIPHER,
            "root@127.0.0.1",
        ]

    def children_cpu(self) -> float:
        """CPU seconds of every finished connection (tar, zstd, sshd's own crypto on the host side)."""
        if self.proc is None:
            return 0.0
        fields = _proc_stat(self.proc.pid)
        if fields is None:
            return 0.0
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")

    def settle(self, timeout: float = 15.0) -> None:
        """Wait until every connection process has exited and been reaped by the listener."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        while child_pids(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for kid in child_pids(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(kid, signal.SIGTERM)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


# --------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class Sample:
    """One timed run of one case."""

    wall: float
    user: float
    sys: float
    max_rss_kb: int
    remote_cpu: float | None = None
    stored_bytes: int | None = None
    verified: bool | None = None
    downtime: float | None = None
    """Seconds the application was stopped (the manifest's ``downtime``), for downtime cases."""
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.user + self.sys


_TIME_FIELDS = {
    "User time (seconds)": "user",
    "System time (seconds)": "sys",
    "Maximum resident set size (kbytes)": "rss",
    "Percent of CPU this job got": "pct",
}


def parse_gnu_time(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.strip().rpartition(": ")
        if key in _TIME_FIELDS:
            out[_TIME_FIELDS[key]] = float(value.rstrip("%") or 0)
    return out


def warm_read(path: Path) -> float:
    """Read every byte under path once, so the next command finds it in the page cache.

    Needed before every case, not once per run: on the reference VM the host reclaims cold page
    cache within minutes (a 1.4 GiB read took 12 s two minutes after a run, then 0.9 s).
    ``tar cf /dev/null`` would not do: GNU tar skips reading file contents into /dev/null.
    """
    started = time.monotonic()
    files = [path] if path.is_file() else [Path(d) / f for d, _dirs, fs in os.walk(path) for f in fs]
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.read(MIB):
                pass
    return round(time.monotonic() - started, 2)


def _block_activity() -> tuple[int, ...]:
    """Sectors written and I/Os in flight on every real block device (``/sys/block/*/stat``)."""
    out: list[int] = []
    for stat in sorted(Path("/sys/block").glob("*/stat")):
        if stat.parent.name.startswith(("loop", "ram", "zram")):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().split()
            out += [int(fields[6]), int(fields[8])]
    return tuple(out)


def settle_disk(quiet: float = 2.0, timeout: float = 90.0) -> float:
    """``sync``, then wait until no block device has written for ``quiet`` seconds.

    ``sync`` returns before a VM's virtual disk has really absorbed the writes: measured here,
    a restore that ran right after another case's big write took up to twice as long as one
    that ran after a quiet disk, which would charge one case for another's I/O.
    """
    started = time.monotonic()
    os.sync()
    last, since = _block_activity(), time.monotonic()
    while time.monotonic() - started < timeout:
        time.sleep(0.25)
        now = _block_activity()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return round(time.monotonic() - started, 2)


class Runner:
    """Runs commands under GNU time: inputs read into the page cache, dirty pages written out
    first, and the CPU time spent under the private sshd counted."""

    def __init__(self, scratch: Path, sshd: Sshd | None, settle_timeout: float = 90.0) -> None:
        self.scratch = scratch
        self.sshd = sshd
        self.settle_timeout = settle_timeout
        self.count = 0

    def run(
        self,
        cmd: Sequence[str],
        env: dict[str, str] | None = None,
        what: str = "",
        warm: Path | None = None,
    ) -> tuple[Sample, str]:
        self.count += 1
        stem = self.scratch / f"cmd-{self.count:04d}"
        timing, out, err = (stem.with_suffix(s) for s in (".time", ".out", ".err"))
        warm_seconds = warm_read(warm) if warm is not None else None
        settled = settle_disk(timeout=self.settle_timeout)
        if self.sshd is not None:
            self.sshd.settle()
        remote_before = self.sshd.children_cpu() if self.sshd is not None else 0.0
        with open(out, "wb") as fo, open(err, "wb") as fe:
            started = time.perf_counter()
            res = subprocess.run(
                [GNU_TIME, "-v", "-o", str(timing), *cmd],
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                env={**os.environ, **(env or {})},
            )
            wall = time.perf_counter() - started
        stdout = out.read_text(errors="replace")
        if res.returncode != 0:
            tail = err.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{what or cmd[0]} exited {res.returncode}: {shlex.join(cmd)}\n{tail}")
        remote: float | None = None
        if self.sshd is not None:
            self.sshd.settle()
            remote = round(self.sshd.children_cpu() - remote_before, 2)
        t = parse_gnu_time(timing.read_text(errors="replace"))
        for p in (timing, out, err):
            p.unlink(missing_ok=True)
        sample = Sample(
            wall=round(wall, 3),
            user=t.get("user", 0.0),
            sys=t.get("sys", 0.0),
            max_rss_kb=int(t.get("rss", 0)),
            remote_cpu=remote,
        )
        if warm_seconds is not None:
            sample.detail["warm_seconds"] = warm_seconds
        sample.detail["settle_seconds"] = settled
        return sample, stdout


# --------------------------------------------------------------------------- the cases


class Bench:
    """Everything one run needs: dataset, sshd, keys, scratch space, and the results so far."""

    def __init__(self, args: argparse.Namespace, ds: Dataset, run_dir: Path, sshd: Sshd | None) -> None:
        self.args = args
        self.ds = ds
        self.dir = run_dir
        self.sshd = sshd
        self.groups: set[str] = args.groups
        self.runner = Runner(run_dir, sshd, args.settle_timeout)
        self.results: dict[str, list[Sample]] = {}
        self.recipes = recipes_exe()
        self.identity = run_dir / "identity.txt"
        self.recipient = ""
        self.config = run_dir / "recipes.toml"

    # -- setup

    def setup(self) -> None:
        if self.groups & {"limit", "recipes", "downtime"}:
            res = subprocess.run(
                ["age-keygen", "-o", str(self.identity)],
                capture_output=True,
                text=True,
                check=True,
                stdin=subprocess.DEVNULL,
            )
            m = re.search(r"(age1[0-9a-z]+)", res.stderr + res.stdout)
            if m is None:
                raise RuntimeError(f"age-keygen printed no public key: {res.stderr}")
            self.recipient = m.group(1)
        if self.groups & {"recipes", "downtime"}:
            assert self.sshd is not None
            signing_key = self.dir / "signing_key"
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(signing_key)],
                check=True,
                stdin=subprocess.DEVNULL,
            )
            signer = (self.dir / "signing_key.pub").read_text().strip()
            host_key = (self.sshd.dir / "host_key.pub").read_text().split()[:2]
            self.config.write_text(
                "\n".join(
                    [
                        "[repository]",
                        f'url = "{self.dir / "unused-repo"}"',
                        f'recipients = ["{self.recipient}"]',
                        f'identity_file = "{self.identity}"',
                        f'cache_dir = "{self.dir / "recipes-cache"}"',
                        f'signing_key = "{signing_key}"',
                        f'signers = ["{signer}"]',
                        "",
                        "[hosts.bench]",
                        'address = "127.0.0.1"',
                        'user = "root"',
                        f"port = {self.sshd.port}",
                        f'key_file = "{self.sshd.key}"',
                        f'host_key = "{" ".join(host_key)}"',
                        "",
                    ]
                )
            )
        log(f"reading the dataset into the page cache: {warm_read(self.ds.root):.1f}s")
        if self.sshd is not None:
            # One connection before the first timed one (host keys, sshd's first fork).
            subprocess.run([*self.sshd.ssh_words(), "true"], check=True, stdin=subprocess.DEVNULL)

    def add(self, name: str, sample: Sample) -> None:
        self.results.setdefault(name, []).append(sample)
        extra = ""
        if sample.stored_bytes is not None:
            extra += f", stored {sample.stored_bytes / MIB:.1f} MiB"
        if sample.verified is not None:
            extra += f", verified {sample.verified}"
        if "warm_seconds" in sample.detail:
            extra += f" (inputs read into cache first: {sample.detail['warm_seconds']:.1f}s)"
        log(
            f"{name}: {sample.wall:.2f}s wall, cpu {sample.cpu:.1f}s"
            + (f" + sshd side {sample.remote_cpu:.1f}s" if sample.remote_cpu is not None else "")
            + f", peak RSS {sample.max_rss_kb / 1024:.0f} MB{extra}"
        )

    # -- the limit: the same work done by the standard tools in one shell pipeline

    def limit_full(self, rd: Path) -> None:
        assert self.sshd is not None
        out = rd / "limit.tar.zst.age"
        remote = f"tar cf - -C {shlex.quote(str(self.ds.root))} . | zstd -q -1 -T0"
        script = (
            f"set -o pipefail; {shlex.join(self.sshd.ssh_words())} {shlex.quote(remote)}"
            f" | age -r {self.recipient} | tee {shlex.quote(str(out))} | sha256sum >/dev/null"
        )
        sample, _ = self.runner.run(["bash", "-c", script], what="limit_full", warm=self.ds.root)
        sample.stored_bytes = out.stat().st_size
        self.add("limit_full", sample)

    def limit_restore(self, rd: Path) -> None:
        assert self.sshd is not None
        src = rd / "limit.tar.zst.age"
        target = rd / "restore-limit"
        remote = f"mkdir -p {shlex.quote(str(target))} && tar xf - -C {shlex.quote(str(target))}"
        script = (
            f"set -o pipefail; age -d -i {shlex.quote(str(self.identity))} {shlex.quote(str(src))}"
            f" | zstd -q -d | {shlex.join(self.sshd.ssh_words())} {shlex.quote(remote)}"
        )
        sample, _ = self.runner.run(["bash", "-c", script], what="limit_restore", warm=src)
        sample.verified, note = verify_tree(self.ds.root, target)
        sample.detail["verify"] = note
        shutil.rmtree(target)
        self.add("limit_restore", sample)

    # -- recipes

    def _recipes(self, *args: str) -> list[str]:
        return [self.recipes, "--config", str(self.config), "--json", *args]

    def _recipes_run(self, name: str, repo: Path) -> None:
        before = tree_bytes(repo)
        cmd = self._recipes(
            "run", "django", "--host", "bench", "--repo", str(repo), "--set", f"root={self.ds.root}"
        )
        sample, out = self.runner.run(cmd, what=name, warm=self.ds.root)
        manifest = json.loads(out)
        sample.stored_bytes = tree_bytes(repo) - before
        sample.detail["snapshot"] = manifest.get("snapshot")
        sample.detail["level"] = manifest.get("level")
        expected = 0 if name == "recipes_full" else 1
        if manifest.get("level") != expected:
            raise RuntimeError(f"{name} made a level {manifest.get('level')} snapshot, not {expected}")
        sample.detail["manifest_bytes"] = sum(int(o["size"]) for o in manifest.get("objects", []))
        sample.detail["steps"] = {s["name"]: s["seconds"] for s in manifest.get("steps", [])}
        self.add(name, sample)

    def recipes_full(self, rd: Path) -> None:
        self._recipes_run("recipes_full", rd / "recipes-repo")

    def recipes_incr(self, rd: Path) -> None:
        self._recipes_run("recipes_incr", rd / "recipes-repo")

    def recipes_restore(self, rd: Path) -> None:
        target = rd / "restore-recipes"
        cmd = self._recipes(
            "restore",
            "django",
            "--host",
            "bench",
            "--repo",
            str(rd / "recipes-repo"),
            "--set",
            f"root={target}",
        )
        sample, _ = self.runner.run(cmd, what="recipes_restore", warm=rd / "recipes-repo")
        sample.verified, note = verify_tree(self.ds.root, target)
        sample.detail["verify"] = note
        shutil.rmtree(target)
        self.add("recipes_restore", sample)

    def recipes_help(self) -> None:
        rounds = 3 if self.args.quick else self.args.help_rounds
        subprocess.run([self.recipes, "--help"], check=True, capture_output=True, stdin=subprocess.DEVNULL)
        runner = Runner(self.dir, None, self.args.settle_timeout)
        for _ in range(rounds):
            sample, _out = runner.run([self.recipes, "--help"], what="recipes --help")
            self.add("recipes_help", sample)

    # -- restic (reads the dataset locally: no ssh, as the reference figures were taken)

    def _restic(self, rd: Path, *args: str) -> list[str]:
        return ["restic", "-r", str(rd / "restic-repo"), "--cache-dir", str(rd / "restic-cache"), *args]

    def _restic_env(self) -> dict[str, str]:
        return {"RESTIC_PASSWORD": "bench-password"}

    def restic_full(self, rd: Path) -> None:
        subprocess.run(
            self._restic(rd, "init"),
            check=True,
            capture_output=True,
            env={**os.environ, **self._restic_env()},
            stdin=subprocess.DEVNULL,
        )
        self._restic_backup(rd, "restic_full")

    def restic_incr(self, rd: Path) -> None:
        self._restic_backup(rd, "restic_incr")

    def _restic_backup(self, rd: Path, name: str) -> None:
        before = tree_bytes(rd / "restic-repo")
        sample, _ = self.runner.run(
            self._restic(rd, "backup", "--quiet", str(self.ds.root)),
            env=self._restic_env(),
            what="restic",
            warm=self.ds.root,
        )
        sample.stored_bytes = tree_bytes(rd / "restic-repo") - before
        sample.remote_cpu = None
        self.add(name, sample)

    # -- duplicity (local source, file:// target, no encryption)

    def _duplicity(self, rd: Path, mode: str) -> list[str]:
        (rd / "duplicity-tmp").mkdir(exist_ok=True)
        return [
            "duplicity",
            mode,
            "--no-encryption",
            "--archive-dir",
            str(rd / "duplicity-cache"),
            "--name",
            "bench",
            "--tempdir",
            str(rd / "duplicity-tmp"),
            str(self.ds.root),
            f"file://{rd / 'duplicity-target'}",
        ]

    def _duplicity_case(self, rd: Path, name: str, mode: str) -> None:
        before = tree_bytes(rd / "duplicity-target")
        sample, _ = self.runner.run(self._duplicity(rd, mode), what=name, warm=self.ds.root)
        sample.stored_bytes = tree_bytes(rd / "duplicity-target") - before
        sample.remote_cpu = None
        self.add(name, sample)

    # -- one round, every case interleaved (A B A B ...) so drift hits all alike

    def round(self, n: int) -> None:
        """One round of every case; even rounds run each group in reverse (ABBA), so whatever the
        previous case left behind (dirty pages, a tree just deleted) is not always paid by the same one."""
        rd = self.dir / f"round-{n}"
        rd.mkdir()
        g = self.groups

        def ordered(cases: list[tuple[str, Callable[[], None]]]) -> list[Callable[[], None]]:
            chosen = [fn for group, fn in cases if group in g]
            return chosen[::-1] if n % 2 == 0 else chosen

        try:
            for case in ordered(
                [
                    ("limit", lambda: self.limit_full(rd)),
                    ("recipes", lambda: self.recipes_full(rd)),
                    ("restic", lambda: self.restic_full(rd)),
                    ("duplicity", lambda: self._duplicity_case(rd, "duplicity_full", "full")),
                ]
            ):
                case()
            for case in ordered(
                [("limit", lambda: self.limit_restore(rd)), ("recipes", lambda: self.recipes_restore(rd))]
            ):
                case()
            with one_percent_changed(self.ds, self.args.work, f"r{n}") as changed:
                log(f"round {n}: changed {changed} files (every {CHANGE_EVERY}th)")
                for case in ordered(
                    [
                        ("recipes", lambda: self.recipes_incr(rd)),
                        ("restic", lambda: self.restic_incr(rd)),
                        ("duplicity", lambda: self._duplicity_case(rd, "duplicity_incr", "incr")),
                    ]
                ):
                    case()
        finally:
            shutil.rmtree(rd, ignore_errors=True)


# --------------------------------------------------------------------------- downtime


def _sh(*cmd: str) -> str:
    """Run a command, fail loudly with its stderr, return its stdout."""
    res = subprocess.run(list(cmd), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {res.returncode}: {res.stderr.strip()[-2000:]}")
    return res.stdout


class Downtime:
    """How long the application is stopped per backup: ``recipes run dss`` with ``snapshot=none``
    (stop, archive, start) against ``snapshot=btrfs`` (stop, snapshot, start, archive the snapshot).

    The application is the DSS stand-in of the integration tests (``tests/integration/standins/
    dss.sh``: a real detached process, ``bin/dss stop`` / ``start`` / ``status``), laid out here
    with the standard library. Its DATA_DIR sits on a btrfs made on a loop device over a sparse
    file under the run's scratch, one subvolume per size: ``1x`` holds the dataset under
    ``managed_datasets/``, ``4x`` four reflink copies of it (the same bytes and files four times;
    making them costs no I/O). Everything is undone in ``stop`` whatever happened.
    """

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.dir = bench.dir / "downtime"
        self.image = self.dir / "btrfs.img"
        self.mnt = self.dir / "mnt"
        self.kit = self.dir / "dataiku-dss"
        self.events = self.dir / "dss-events.log"
        self.device = ""
        self.mounted = False
        self.data_dirs: dict[str, Path] = {}

    def setup(self) -> None:
        ds = self.bench.ds
        self.dir.mkdir()
        self.mnt.mkdir()
        size = max(2 * GIB, 2 * ds.total_bytes + GIB)
        with open(self.image, "wb") as f:
            f.truncate(size)
        self.device = _sh("losetup", "-f", "--show", str(self.image)).strip()
        _sh("mkfs.btrfs", "-q", self.device)
        _sh("mount", "-t", "btrfs", self.device, str(self.mnt))
        self.mounted = True
        log(f"downtime: btrfs of {size / GIB:.1f} GiB (sparse) on {self.device} at {self.mnt}")
        self.events.touch()
        self._kit()
        started = time.monotonic()
        for size_name, copies in DOWNTIME_COPIES.items():
            vol = self.mnt / f"vol-{size_name}"
            _sh("btrfs", "-q", "subvolume", "create", str(vol))
            data_dir = vol / "dss_data"
            self._data_dir(data_dir)
            target = data_dir / "managed_datasets" / "BENCH"
            target.mkdir(parents=True)
            for n in range(copies):
                if size_name == "1x":
                    _sh("cp", "-a", str(ds.root), str(target / f"copy-{n}"))
                else:
                    src = self.data_dirs["1x"] / "managed_datasets" / "BENCH" / "copy-0"
                    _sh("cp", "-a", "--reflink=always", str(src), str(target / f"copy-{n}"))
            self.data_dirs[size_name] = data_dir
        os.sync()
        log(f"downtime: DATA_DIRs 1x and 4x laid out in {time.monotonic() - started:.1f}s")
        for data_dir in self.data_dirs.values():
            _sh(str(data_dir / "bin" / "dss"), "start")

    def _kit(self) -> None:
        """INSTALL_DIR: the stand-in's ``bin/dss`` and the ``dss-version.json`` it checks."""
        (self.kit / "bin").mkdir(parents=True)
        script = self.kit / "bin" / "dss"
        script.write_text(DSS_STANDIN.read_text().replace("@EVENTS@", str(self.events)))
        script.chmod(0o755)
        (self.kit / "dss-version.json").write_text(json.dumps({"product_version": DSS_VERSION}) + "\n")

    def _data_dir(self, d: Path) -> None:
        """A DATA_DIR as the recipe expects it: install.ini, dss-version.json, bin/dss into the kit."""
        (d / "bin").mkdir(parents=True)
        (d / "install.ini").write_text("[general]\nnodetype = design\ninstallid = bench\n")
        (d / "dss-version.json").write_text(json.dumps({"product_version": DSS_VERSION}) + "\n")
        (d / "config").mkdir()
        (d / "config" / "general-settings.json").write_text('{"studioName": "bench"}\n')
        os.symlink(self.kit / "bin" / "dss", d / "bin" / "dss")

    def running(self, data_dir: Path) -> bool:
        res = subprocess.run(
            [str(data_dir / "bin" / "dss"), "status"], capture_output=True, stdin=subprocess.DEVNULL
        )
        return res.returncode == 0

    def case(self, rd: Path, mode: str, size_name: str) -> None:
        """One backup of one DATA_DIR in one mode into a fresh repository (a full each time)."""
        b = self.bench
        name = f"downtime_{mode}_{size_name}"
        data_dir = self.data_dirs[size_name]
        if not self.running(data_dir):
            raise RuntimeError(f"{name}: the DSS stand-in is not running before the backup")
        repo = rd / f"repo-{mode}-{size_name}"
        sets = [f"data_dir={data_dir}", "user=root", f"snapshot={mode}", "include_config=false"]
        cmd = b._recipes(
            "run", "dss", "--host", "bench", "--repo", str(repo), *[w for s in sets for w in ("--set", s)]
        )
        sample, out = b.runner.run(cmd, what=name, warm=data_dir)
        manifest = json.loads(out)
        down = manifest.get("downtime", {})
        if list(down) != ["dss@bench"]:
            raise RuntimeError(f"{name}: the manifest's downtime is {down!r}, not one entry for dss@bench")
        sample.downtime = float(down["dss@bench"])
        sample.stored_bytes = tree_bytes(repo)
        sample.detail["steps"] = {s["name"]: s["seconds"] for s in manifest.get("steps", [])}
        if not self.running(data_dir):
            raise RuntimeError(f"{name}: the DSS stand-in is not running after the backup")
        leftovers = [p.name for p in self.mnt.iterdir() if p.name.startswith(".recipes-snap-")]
        if leftovers:
            raise RuntimeError(f"{name}: snapshots left behind: {leftovers}")
        shutil.rmtree(repo)
        b.add(name, sample)
        log(f"{name}: DSS stopped for {sample.downtime:.2f}s of a {sample.wall:.2f}s backup")

    def round(self, n: int) -> None:
        """Every mode at every size; even rounds in reverse (ABBA), like the other cases."""
        rd = self.bench.dir / f"downtime-round-{n}"
        rd.mkdir()
        cases = [(m, z) for z in DOWNTIME_COPIES for m in DOWNTIME_MODES]
        try:
            for mode, size_name in cases[::-1] if n % 2 == 0 else cases:
                self.case(rd, mode, size_name)
        finally:
            shutil.rmtree(rd, ignore_errors=True)

    def stop(self) -> None:
        """Stop the stand-ins, unmount, detach the loop device, remove the image; each step tried."""
        for data_dir in self.data_dirs.values():
            with contextlib.suppress(OSError):
                subprocess.run(
                    [str(data_dir / "bin" / "dss"), "stop"], capture_output=True, stdin=subprocess.DEVNULL
                )
        if self.mounted:
            res = subprocess.run(["umount", str(self.mnt)], capture_output=True, text=True)
            if res.returncode != 0:
                log(f"downtime: umount {self.mnt} failed: {res.stderr.strip()}")
            self.mounted = res.returncode != 0
        if self.device:
            subprocess.run(["losetup", "-d", self.device], capture_output=True)
            self.device = ""
        if not self.mounted:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- report


def summarize(samples: list[Sample]) -> dict[str, Any]:
    walls = [s.wall for s in samples]
    stored = [s.stored_bytes for s in samples if s.stored_bytes is not None]
    remote = [s.remote_cpu for s in samples if s.remote_cpu is not None]
    down = [s.downtime for s in samples if s.downtime is not None]
    return {
        "n": len(samples),
        "min": round(min(walls), 3),
        "median": round(statistics.median(walls), 3),
        "max": round(max(walls), 3),
        "cpu_median": round(statistics.median(s.cpu for s in samples), 2),
        "remote_cpu_median": round(statistics.median(remote), 2) if remote else None,
        "peak_rss_mb": round(max(s.max_rss_kb for s in samples) / 1024, 1),
        "stored_bytes": int(statistics.median(stored)) if stored else None,
        "downtime_min": round(min(down), 3) if down else None,
        "downtime_median": round(statistics.median(down), 3) if down else None,
        "downtime_max": round(max(down), 3) if down else None,
    }


def paired_ratio(results: dict[str, list[Sample]], a: str, b: str, key: str = "wall") -> float | None:
    """Median of the round-by-round ratios a/b (rounds are interleaved, so drift cancels)."""
    if a not in results or b not in results:
        return None
    ratios = []
    for sa, sb in zip(results[a], results[b], strict=False):
        va, vb = getattr(sa, key), getattr(sb, key)
        if va is not None and vb:
            ratios.append(va / vb)
    return round(statistics.median(ratios), 3) if ratios else None


RATIOS: list[tuple[str, str, str, str]] = [
    ("recipes_full / limit_full", "recipes_full", "limit_full", "wall"),
    ("recipes_full / restic_full", "recipes_full", "restic_full", "wall"),
    ("recipes_full / duplicity_full", "recipes_full", "duplicity_full", "wall"),
    ("recipes_incr / restic_incr", "recipes_incr", "restic_incr", "wall"),
    ("recipes_incr / duplicity_incr", "recipes_incr", "duplicity_incr", "wall"),
    ("recipes_restore / limit_restore", "recipes_restore", "limit_restore", "wall"),
    ("stored: recipes_incr / recipes_full", "recipes_incr", "recipes_full", "stored_bytes"),
    ("stored: restic_incr / restic_full", "restic_incr", "restic_full", "stored_bytes"),
    ("stored: duplicity_incr / duplicity_full", "duplicity_incr", "duplicity_full", "stored_bytes"),
    ("stored: recipes_full / limit_full", "recipes_full", "limit_full", "stored_bytes"),
    ("stored: recipes_full / restic_full", "recipes_full", "restic_full", "stored_bytes"),
    ("downtime: btrfs_1x / none_1x", "downtime_btrfs_1x", "downtime_none_1x", "downtime"),
    ("downtime: btrfs_4x / none_4x", "downtime_btrfs_4x", "downtime_none_4x", "downtime"),
    ("downtime: btrfs_4x / btrfs_1x", "downtime_btrfs_4x", "downtime_btrfs_1x", "downtime"),
    ("downtime: none_4x / none_1x", "downtime_none_4x", "downtime_none_1x", "downtime"),
    ("backup wall: btrfs_1x / none_1x", "downtime_btrfs_1x", "downtime_none_1x", "wall"),
    ("backup wall: btrfs_4x / none_4x", "downtime_btrfs_4x", "downtime_none_4x", "wall"),
]


def rss_of_recipes(cases: dict[str, dict[str, Any]]) -> float | None:
    names = [c for c in ("recipes_full", "recipes_incr", "recipes_restore") if c in cases]
    if not names:
        return None
    return float(max(cases[c]["summary"]["peak_rss_mb"] for c in names))


def other_scale_rss(scale: float, out: Path) -> tuple[float, float, str] | None:
    """The recipes peak RSS of the newest saved run at the other scale (1 <-> 4), if any."""
    other = {1.0: 4.0, 4.0: 1.0}.get(scale)
    if other is None:
        return None
    best: tuple[str, float, str] | None = None
    for d in {out.parent.resolve(), RESULTS_DIR.resolve()}:
        for p in sorted(d.glob("*.json")):
            if p.resolve() == out.resolve():
                continue
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                data = json.loads(p.read_text())
                if float(data["scale"]) != other:
                    continue
                rss = rss_of_recipes(data["cases"])
                if rss is not None and (best is None or data["finished"] > best[0]):
                    best = (data["finished"], rss, p.name)
    return (other, best[1], best[2]) if best else None


def goals(
    cases: dict[str, dict[str, Any]], ratios: dict[str, float | None], scale: float, out: Path
) -> list[dict[str, Any]]:
    """The targets of the performance issues (3, and 9 for the full/restore ratios and downtime);
    ok is None when a needed case was not run."""

    def check(goal: str, value: float | None, limit: float, unit: str = "x") -> dict[str, Any]:
        return {
            "goal": goal,
            "value": value,
            "limit": limit,
            "unit": unit,
            "ok": None if value is None else value <= limit,
        }

    rows = [
        check("full backup <= 1.1 x limit_full", ratios.get("recipes_full / limit_full"), 1.1),
        check("full backup <= 0.8 x restic_full", ratios.get("recipes_full / restic_full"), 0.8),
        check("incremental <= 0.7 x restic_incr", ratios.get("recipes_incr / restic_incr"), 0.7),
        check(
            "incremental stores <= 3% of the full's bytes",
            ratios.get("stored: recipes_incr / recipes_full"),
            0.03,
        ),
        check("restore <= 1.0 x limit_restore", ratios.get("recipes_restore / limit_restore"), 1.0),
        check("peak RSS <= 100 MB", rss_of_recipes(cases), 100.0, "MB"),
    ]
    help_case = cases.get("recipes_help")
    rows.append(
        check("recipes --help <= 0.3 s", help_case["summary"]["median"] if help_case else None, 0.3, "s")
    )
    down = {
        name.removeprefix("downtime_"): c["summary"]["downtime_median"]
        for name, c in cases.items()
        if name.startswith("downtime_")
    }
    rows.append(check("downtime with a btrfs snapshot <= 2 s at 1x", down.get("btrfs_1x"), 2.0, "s"))
    rows.append(check("downtime with a btrfs snapshot <= 2 s at 4x", down.get("btrfs_4x"), 2.0, "s"))
    same = check("snapshot downtime the same at 1x and 4x (+- 0.5 s)", None, 0.5, "s")
    if down.get("btrfs_1x") is not None and down.get("btrfs_4x") is not None:
        diff = round(abs(down["btrfs_4x"] - down["btrfs_1x"]), 3)
        same.update(value=diff, ok=diff <= 0.5)
        same["detail"] = f"{down['btrfs_1x']:.2f} s at 1x, {down['btrfs_4x']:.2f} s at 4x (medians)"
    rows.append(same)
    mine = rss_of_recipes(cases)
    other = other_scale_rss(scale, out)
    row = check("peak RSS within +-10% between scale 1 and 4", None, 0.10, "rel")
    if mine is not None and other is not None:
        other_scale, other_rss, name = other
        rel = abs(mine - other_rss) / other_rss if other_rss else None
        row.update(value=None if rel is None else round(rel, 3), ok=None if rel is None else rel <= 0.10)
        row["detail"] = (
            f"{mine:.1f} MB at scale {scale:g} vs {other_rss:.1f} MB at scale {other_scale:g} ({name})"
        )
    else:
        row["detail"] = "needs a saved run at scale 1 and one at scale 4"
    rows.append(row)
    return rows


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def render(report: dict[str, Any]) -> str:
    ds, mach = report["dataset"], report["machine"]
    lines = [
        f"recipes benchmark: scale {report['scale']:g}, {report['rounds']} round(s), "
        f"groups {','.join(report['groups'])}",
        f"dataset: {ds['files']} files, {ds['bytes'] / MIB:.0f} MiB in {ds['root']}",
        f"machine: {mach['nproc']} CPUs ({mach['cpu_model']}), {mach['mem_total_mb']} MB, "
        f"Linux {mach['kernel']}, Python {mach['python']}",
        f"source: {mach.get('source', 'unknown')}",
        "",
    ]
    header = f"{'case':<17}{'n':>3}{'min s':>9}{'median s':>10}{'cpu s':>8}{'sshd cpu s':>12}"
    header += f"{'peak RSS MB':>13}{'stored MB':>11}"
    lines += [header, "-" * len(header)]
    order = [
        "limit_full",
        "recipes_full",
        "restic_full",
        "duplicity_full",
        "recipes_incr",
        "restic_incr",
        "duplicity_incr",
        "limit_restore",
        "recipes_restore",
        "recipes_help",
    ]
    for name in order:
        if name not in report["cases"]:
            continue
        s = report["cases"][name]["summary"]
        stored = None if s["stored_bytes"] is None else s["stored_bytes"] / MIB
        lines.append(
            f"{name:<17}{s['n']:>3}{s['min']:>9.2f}{s['median']:>10.2f}{s['cpu_median']:>8.1f}"
            f"{fmt(s['remote_cpu_median'], '.1f'):>12}{s['peak_rss_mb']:>13.1f}{fmt(stored, '.1f'):>11}"
        )
    down = [n for n in report["cases"] if n.startswith("downtime_")]
    if down:
        lines += ["", "downtime: DSS stand-in stopped per backup (manifest `downtime`), recipes run dss"]
        head = f"{'mode':<8}{'data':>6}{'n':>3}{'down min s':>12}{'down median s':>15}{'down max s':>12}"
        head += f"{'backup median s':>17}{'stored MB':>11}"
        lines += [head, "-" * len(head)]
        for size_name in DOWNTIME_COPIES:
            for mode in DOWNTIME_MODES:
                c = report["cases"].get(f"downtime_{mode}_{size_name}")
                if c is None:
                    continue
                s = c["summary"]
                stored = None if s["stored_bytes"] is None else s["stored_bytes"] / MIB
                lines.append(
                    f"{mode:<8}{size_name:>6}{s['n']:>3}{s['downtime_min']:>12.2f}{s['downtime_median']:>15.2f}"
                    f"{s['downtime_max']:>12.2f}{s['median']:>17.2f}{fmt(stored, '.1f'):>11}"
                )
    lines += ["", "ratios (median of round-by-round ratios):"]
    for name, value in report["ratios"].items():
        if value is not None:
            lines.append(f"  {name:<42} {value:.3f}")
    lines += ["", "goals:"]
    for g in report["goals"]:
        mark = {True: "✓", False: "✗", None: "-"}[g["ok"]]
        if g["value"] is None:
            shown = "not measured"
        elif g["unit"] == "x":
            shown = f"{g['value']:.3f}"
        elif g["unit"] == "rel":
            shown = f"{g['value'] * 100:.1f}%"
        else:
            shown = f"{g['value']:.2f} {g['unit']}"
        lines.append(f"  {mark} {g['goal']:<46} {shown}")
        if g.get("detail"):
            lines.append(f"      {g['detail']}")
    lines.append("")
    verified = report["verified"]
    lines.append(f"restores verified: {'not run' if verified is None else verified}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--scale", type=float, default=1.0, help="multiply dataset sizes and counts (default 1)")
    p.add_argument("--rounds", type=int, default=4, help="timed rounds of each case (default 4: ABBA)")
    p.add_argument("--help-rounds", type=int, default=10, help="rounds of `recipes --help` (default 10)")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/<time>-scale<S>.json)")
    p.add_argument("--quick", action="store_true", help="1 round, no duplicity: for development")
    p.add_argument(
        "--only",
        default=",".join(GROUPS),
        help=f"comma-separated groups to run, from {','.join(GROUPS)} (default: all)",
    )
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=90.0,
        help="longest wait for a quiet disk before each case (default 90 s; lower on a shared machine)",
    )
    p.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help=f"dataset cache and scratch ({DEFAULT_WORK})"
    )
    args = p.parse_args(argv)
    groups = {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = groups - set(GROUPS)
    if unknown or not groups:
        p.error(
            f"--only: unknown group(s) {', '.join(sorted(unknown)) or '(none given)'}; use {','.join(GROUPS)}"
        )
    if args.quick:
        args.rounds = 1
        groups.discard("duplicity")
    if args.scale <= 0 or args.rounds < 1 or args.help_rounds < 1:
        p.error("--scale must be > 0, --rounds and --help-rounds >= 1")
    args.groups = groups
    args.work = args.work.resolve()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out = (args.out or RESULTS_DIR / f"{stamp}-scale{args.scale:g}.json").resolve()
    return args


def remove_stale_runs(work: Path) -> None:
    """Scratch left by a run that was killed outright (its PID is gone): never the dataset."""
    for d in work.glob("run-*"):
        pid = d.name.removeprefix("run-")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            log(f"removing {d}, left by a run that was killed")
            shutil.rmtree(d, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.UTC)

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    ensure_tools(args.groups)
    args.work.mkdir(parents=True, exist_ok=True)
    ds = ensure_dataset(args.work, DatasetSpec.at(args.scale))
    remove_stale_runs(args.work)
    run_dir = args.work / f"run-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    sshd: Sshd | None = None
    downtime: Downtime | None = None
    try:
        if args.groups & {"limit", "recipes", "downtime"}:
            sshd = Sshd(run_dir)
            sshd.start()
        bench = Bench(args, ds, run_dir, sshd)
        bench.setup()
        if args.groups - {"downtime"}:
            for n in range(1, args.rounds + 1):
                log(f"round {n} of {args.rounds}")
                bench.round(n)
        if "recipes" in args.groups:
            bench.recipes_help()
        if "downtime" in args.groups:
            downtime = Downtime(bench)
            downtime.setup()
            for n in range(1, args.rounds + 1):
                log(f"downtime round {n} of {args.rounds}")
                downtime.round(n)
        results = bench.results
    finally:
        if downtime is not None:
            downtime.stop()
        if sshd is not None:
            sshd.stop()
        shutil.rmtree(run_dir, ignore_errors=True)

    cases = {
        name: {"summary": summarize(samples), "rounds": [dataclasses.asdict(s) for s in samples]}
        for name, samples in results.items()
    }
    ratios = {name: paired_ratio(results, a, b, key) for name, a, b, key in RATIOS}
    restores = [s for name in ("limit_restore", "recipes_restore") for s in results.get(name, [])]
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "scale": args.scale,
        "rounds": args.rounds,
        "quick": args.quick,
        "groups": sorted(args.groups),
        "machine": machine_info(args.groups),
        "dataset": ds.info(),
        "cases": cases,
        "ratios": ratios,
        "goals": goals(cases, ratios, args.scale, args.out),
        "verified": all(s.verified for s in restores) if restores else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(render(report))
    print(f"\nresults: {args.out}")
    return 1 if report["verified"] is False else 0


if __name__ == "__main__":
    sys.exit(main())
