"""What a real backup and restore say, through the local host: plain timestamped lines when
stderr is not a terminal (cron, journald), nothing but warnings with -q, the commands with -v,
and progress bars plus summary tables when stderr is a terminal (a pseudo-terminal here)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ recipes: ")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Controller:
    """A controller of its own (HOME, cache, config from ``recipes init``) backing up a local tree."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.site = tmp / "site"
        self.repo = tmp / "repo"
        (self.site / "data").mkdir(parents=True)
        (self.site / "data" / "random").write_bytes(os.urandom(3 << 20))
        (self.site / "data" / "text").write_text("".join(f"line {i}\n" for i in range(300_000)))
        self.env = {**os.environ, "HOME": str(tmp), "XDG_CACHE_HOME": str(tmp / "cache")}
        self.env.pop("RECIPES_CONFIG", None)
        self.cli("init", "--repo", str(self.repo), check=True)
        config = tmp / ".config/recipes/recipes.toml"
        # zstd on the controller: the raw size is seen, so the table can show the ratio
        text = config.read_text().replace("[repository]\n", '[repository]\ncompression = "controller"\n')
        config.write_text(text)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "recipes", *args]

    def cli(
        self, *args: str, env: dict[str, str] | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.tmp,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"recipes {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    def on_terminal(self, *args: str) -> tuple[int, str, str]:
        """Run with stderr on a pseudo-terminal (120 columns) and stdout on a pipe."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc = subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            env={**self.env, "TERM": "xterm-256color"},
            cwd=self.tmp,
        )
        os.close(slave)
        seen = bytearray()
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: the child closed its end
                    break
                if not data:
                    break
                seen += data
            elif proc.poll() is not None:
                break
        os.close(master)
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        proc.stdout.close()
        return proc.wait(timeout=120), out, seen.decode("utf-8", "replace")

    def run_args(self) -> list[str]:
        return ["run", "django", "--host", "local", "--set", f"root={self.site}"]


@pytest.fixture
def controller(tmp_path: Path) -> Controller:
    return Controller(tmp_path)


def test_not_on_a_terminal_every_line_is_timestamped_and_plain(controller: Controller) -> None:
    done = controller.cli(*controller.run_args())
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(STAMPED.match(line) for line in lines), done.stderr
    assert any(line.endswith("recipes: step archive files") for line in lines)
    assert "\x1b" not in done.stderr + done.stdout and "━" not in done.stderr
    assert "run on local" not in done.stderr  # commands only with -v
    assert done.stdout.startswith("snapshot ") and "MiB" in done.stdout


def test_verbose_adds_each_command_masked_and_timestamped(controller: Controller) -> None:
    done = controller.cli("-v", *controller.run_args())
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stderr.splitlines() if "recipes: run on local: " in line]
    assert any("tar --create" in line for line in commands), done.stderr
    assert all(STAMPED.match(line) for line in done.stderr.splitlines())


def test_quiet_says_nothing_on_success_and_only_the_warning_when_there_is_one(controller: Controller) -> None:
    quiet = controller.cli("-q", *controller.run_args())
    assert quiet.returncode == 0 and (quiet.stdout, quiet.stderr) == ("", ""), quiet.stderr
    listed = json.loads(controller.cli("snapshots", "--json", check=True).stdout)
    assert len(listed) == 1  # it did back up
    # a state cache that cannot be written: the backup succeeds, with one warning
    blocked = controller.tmp / "not-a-directory"
    blocked.write_text("")
    warned = controller.cli("-q", *controller.run_args(), env={"XDG_CACHE_HOME": str(blocked)})
    assert warned.returncode == 0 and warned.stdout == ""
    lines = warned.stderr.splitlines()
    assert len(lines) == 1 and STAMPED.match(lines[0]), warned.stderr
    assert "cannot write the state cache" in lines[0]
    restore = controller.cli(
        "-q", "restore", "django", "--host", "local", "--set", f"root={controller.tmp}/out"
    )
    assert restore.returncode == 0 and (restore.stdout, restore.stderr) == ("", ""), restore.stderr
    assert (controller.tmp / "out/data/text").read_bytes() == (controller.site / "data/text").read_bytes()


def test_on_a_terminal_progress_then_summary_tables(controller: Controller) -> None:
    code, out, err = controller.on_terminal(*controller.run_args())
    assert code == 0, err
    plain = ANSI.sub("", err)
    assert "━" in plain and "archive files: files.tar" in plain  # the step's bar, on its object
    table = plain[plain.index("object") :]
    assert all(h in table for h in ("kind", "stored", "ratio", "seconds", "warnings"))
    row = next(line for line in table.splitlines() if "files.tar " in line)
    assert re.search(r"\d+\.\d (KiB|MiB)", row) and re.search(r"\d+\.\dx", row), row  # human size, ratio
    assert "downtime: none recorded" in table
    assert out.startswith("snapshot ")  # stdout stays the one-line result

    code, out, err = controller.on_terminal(
        "restore", "django", "--host", "local", "--set", f"root={controller.tmp}/out"
    )
    assert code == 0, err
    plain = ANSI.sub("", err)
    assert "extract files: files.tar" in plain
    row = next(line for line in plain[plain.index("outcome") :].splitlines() if "extract" in line)
    assert "files" in row and "ok" in row and re.search(r"\d+\.\ds", row), row
    assert (controller.tmp / "out/data/random").read_bytes() == (controller.site / "data/random").read_bytes()

    quiet_code, _, quiet_err = controller.on_terminal("-q", *controller.run_args())
    assert quiet_code == 0 and quiet_err == ""  # -q on a terminal too: no bars, no table


def test_json_after_the_command_name_on_every_reporting_command(controller: Controller) -> None:
    ran = json.loads(controller.cli(*controller.run_args(), "--json", check=True).stdout)
    assert ran["recipe"] == "django" and ran["objects"]
    out = controller.tmp / "out"
    restored = controller.cli(
        "restore", "django", "--host", "local", "--set", f"root={out}", "--json", check=True
    )
    assert [s["kind"] for s in json.loads(restored.stdout)["steps"]] == ["extract"]
    reports = {
        "snapshots": ["snapshots"],
        "verify": ["verify", "--all"],
        "prune": ["prune", "--dry-run"],
        "copy": ["copy", "--to", str(controller.tmp / "offline"), "--all"],
        "estimate": ["estimate", "django", "--host", "local", "--set", f"root={controller.site}"],
    }
    for name, args in reports.items():
        done = controller.cli(*args, "--json")
        assert done.returncode == 0, (name, done.stderr)
        json.loads(done.stdout)  # one JSON document, nothing else on stdout


RECORD = """
import atexit, json, sys
from recipes import progress
seen, out = [], sys.argv[1]
plain = progress.Progress.meter
def meter(self, name, total=None, files_total=None):
    m = plain(self, name, total, files_total)
    seen.append(m)
    return m
progress.Progress.meter = meter
def report():
    with open(out, "w") as fh:
        json.dump({m.name: [m.total, m.files_total, m.files_done] for m in seen}, fh)
atexit.register(report)
from recipes.cli import main
sys.argv = ["recipes", *sys.argv[2:]]
main()
"""


def test_a_full_expects_the_last_fulls_size_and_files_and_counts_its_own(controller: Controller) -> None:
    """What the bars are given (the watcher's meters, recorded in the real CLI): a first backup
    knows no size; a later full expects the last full's archive size and file count (an ETA and
    ``N / M files`` on a terminal), and counts its own files as they pass."""
    config = controller.tmp / ".config/recipes/recipes.toml"
    text = config.read_text()
    assert text.count('full_every = "3M"') == 1
    config.write_text(text.replace('full_every = "3M"', 'full_every = "0s"'))

    def recorded(n: int) -> dict[str, list[int | None]]:
        out = controller.tmp / f"meters-{n}.json"
        argv = [sys.executable, "-c", RECORD, str(out), "--json", *controller.run_args()]
        done = subprocess.run(
            argv, capture_output=True, text=True, env=controller.env, cwd=controller.tmp, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["level"] == 0  # full_every 0s: every backup is a full
        data: dict[str, list[int | None]] = json.loads(out.read_text())
        return data

    first = recorded(1)
    assert first["files.tar"] == [None, None, 2]  # nothing known yet; 2 files counted
    (manifest,) = controller.repo.glob("django/*/*/manifest.json")
    size = next(o["size"] for o in json.loads(manifest.read_text())["objects"] if o["name"] == "files.tar")
    assert recorded(2)["files.tar"] == [size, 2, 2]
