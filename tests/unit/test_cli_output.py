"""How much the CLI says: -q keeps only warnings and errors (cron mails only when something is
wrong), the default adds progress lines, and -q with -v is a usage error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("RECIPES_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "recipes", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_quiet_keeps_stderr_empty_on_success_and_errors_still_show(tmp_path: Path) -> None:
    plan = ["plan", "django", "--host", "local", "--set", f"root={tmp_path}"]
    loud = _cli(tmp_path, *plan)
    assert loud.returncode == 0 and "recipes: no config file: defaults" in loud.stderr
    quiet = _cli(tmp_path, "-q", *plan)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and quiet.stdout == loud.stdout
    bad = _cli(tmp_path, "-q", "plan", "django", "--host", "local", "--set", "root=relative")
    assert bad.returncode == 2 and bad.stderr.startswith("recipes: error: ")


def test_quiet_and_verbose_together_is_one_usage_line(tmp_path: Path) -> None:
    both = _cli(tmp_path, "-q", "-v", "list")
    assert both.returncode == 2
    assert both.stderr.strip().splitlines() == [both.stderr.strip()]
    assert "contradict" in both.stderr


def test_json_is_accepted_after_the_command_name_too(tmp_path: Path) -> None:
    before = _cli(tmp_path, "--json", "snapshots", "--repo", str(tmp_path / "repo"))
    after = _cli(tmp_path, "snapshots", "--repo", str(tmp_path / "repo"), "--json")
    assert before.returncode == after.returncode == 0, after.stderr
    assert before.stdout == after.stdout == "[]\n"
    assert _cli(tmp_path, "list", "--json").stdout.lstrip().startswith("[")


def test_runbook_with_json_is_a_json_document_holding_the_runbook(tmp_path: Path) -> None:
    plain = _cli(tmp_path, "runbook", "django", "--host", "local")
    as_json = _cli(tmp_path, "runbook", "django", "--host", "local", "--json")
    assert plain.returncode == as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["text"] == plain.stdout and doc["format"] == "md" and doc["file"] is None
    assert doc["text"].startswith("# Restore runbook: django on local")


# ---- formatting (recipes.output) and counting (recipes.progress)


def test_human_sizes_and_durations() -> None:
    from recipes.output import human_seconds, human_size, ratio

    assert [human_size(n) for n in (0, 1023, 1024, 1536, 1.2 * 2**30, 3 * 2**40, 2**50)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "1.2 GiB",
        "3.0 TiB",
        "1.0 PiB",
    ]
    assert [human_seconds(s) for s in (0.04, 59.94, 185, 7290)] == ["0.0s", "59.9s", "3m05s", "2h01m"]
    assert (ratio(300, 100), ratio(None, 100), ratio(0, 100), ratio(5, 0)) == ("3.0x", "-", "-", "-")


def test_timestamped_lines_are_utc_and_stamp_every_line() -> None:
    import logging

    from recipes.output import Timestamped

    record = logging.LogRecord("recipes", logging.INFO, __file__, 1, "step %s %s", ("archive", "files"), None)
    record.created = 1795471001.0  # 2026-11-23T21:56:41Z
    fmt = Timestamped("%(message)s")
    assert fmt.format(record) == "2026-11-23T21:56:41Z recipes: step archive files"
    record.msg, record.args = "two\nlines", ()
    assert fmt.format(record).splitlines() == [
        "2026-11-23T21:56:41Z recipes: two",
        "2026-11-23T21:56:41Z recipes: lines",
    ]


def _manifest() -> Any:
    from recipes import manifest as mf

    objects = (
        mf.StoredObject("files.tar", "files", "files.tar.zst.age", int(1.2 * 2**30), "0" * 64, seconds=93.25),
        mf.StoredObject(
            "dumps/mysql.sql",
            "dump",
            "dumps/mysql.sql.zst.age",
            2048,
            "1" * 64,
            seconds=1.5,
            warnings=("tar: ./x: file changed as we read it",),
        ),
    )
    return mf.Manifest(
        snapshot="20261123T215001Z-abcdef",
        recipe="looker",
        host="web1",
        started="2026-11-23T21:50:01Z",
        finished="2026-11-23T21:51:40Z",
        params={},
        objects=objects,
        downtime={"looker@web1": 4.25},
    )


def _render(renderable: Any) -> str:
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=120, color_system=None, force_terminal=False).print(renderable)
    return buf.getvalue()


def test_run_summary_table_per_object_with_downtime_and_warnings() -> None:
    from recipes import output

    m = _manifest()
    text = _render(output.run_table(m, {"dumps/mysql.sql": 8192}, ["manual step (not run, yours to do): x"]))
    files = next(line for line in text.splitlines() if "files.tar" in line)
    assert "1.2 GiB" in files and "1m33s" in files and " - " in files  # ratio unknown: zstd ran on the host
    dump = next(line for line in text.splitlines() if "dumps/mysql.sql" in line)
    assert "2.0 KiB" in dump and "4.0x" in dump and "1.5s" in dump and dump.rstrip(" │").endswith("1")
    assert "downtime: looker@web1 4.2s" in text
    assert "warning: dumps/mysql.sql: 1 warning(s), e.g. tar: ./x: file changed as we read it" in text
    assert "warning: manual step (not run, yours to do): x" in text
    assert "20261123T215001Z-abcdef (full): 1.2 GiB stored" in text


def test_restore_summary_table_per_step() -> None:
    from recipes import manifest as mf
    from recipes import output

    records = [
        mf.StepRecord("files", "extract", 12.5, "ok (a full and 2 incrementals)"),
        mf.StepRecord("db", "load", 61, "ok"),
    ]
    text = _render(output.restore_table("20261123T215001Z-abcdef", "target", records, []))
    assert "20261123T215001Z-abcdef onto target" in text
    extract = next(line for line in text.splitlines() if "extract" in line)
    assert "files" in extract and "12.5s" in extract and "ok (a full and 2 incrementals)" in extract
    assert "1m01s" in next(line for line in text.splitlines() if "load" in line)
    assert "2 steps in 1m14s" in text


def test_bars_read_the_counters_on_their_own_clock() -> None:
    import io

    from rich.console import Console

    from recipes import manifest as mf
    from recipes import output

    bars = output.Bars(Console(file=io.StringIO(), width=120, force_terminal=True))
    bars.step("archive", "files")
    meter = bars.meter("files.tar", total=4 << 20)
    meter(1 << 20)  # what a transfer does per chunk: add to a counter, nothing more
    assert bars.bars.tasks[0].completed == 0  # not drawn yet
    list(bars.bars.get_renderables())
    task = bars.bars.tasks[0]
    assert task.completed == 1 << 20 and task.total == 4 << 20
    assert task.description == "archive files: files.tar"
    assert task.fields["info"].startswith("1.0 MiB / 4.0 MiB")
    meter(8 << 20)  # more than the parent's size: the total is no longer a promise
    list(bars.bars.get_renderables())
    assert bars.bars.tasks[0].total is None
    bars.raw("files.tar")(3 << 20)
    bars.step_done(mf.StepRecord("files", "archive", 2.5, "ok"))
    assert bars.bars.tasks[0].finished and bars.bars.tasks[0].fields["info"] == "9.0 MiB  2.5s"
    assert bars.raw_sizes() == {"files.tar": 3 << 20}


def test_numbers_show_rate_and_eta_when_the_size_is_known() -> None:
    from types import SimpleNamespace

    from recipes.output import numbers

    moving = SimpleNamespace(
        fields={"moved": True, "seconds": None}, completed=1 << 30, total=2 << 30, speed=100 << 20, elapsed=10
    )
    assert numbers(moving) == "1.0 GiB / 2.0 GiB  100.0 MiB/s  ETA 10.2s"
    moving.total = None
    assert numbers(moving) == "1.0 GiB  100.0 MiB/s"
    waiting = SimpleNamespace(
        fields={"moved": False, "seconds": None}, completed=0, total=None, speed=None, elapsed=3
    )
    assert numbers(waiting) == "3.0s"


def test_counting_wrappers_only_add_lengths() -> None:
    import io

    from recipes import progress

    meter = progress.Meter("x")
    reader = progress.CountingReader(io.BytesIO(b"a" * 10), meter)
    assert reader.read(4) == b"aaaa" and reader.read() == b"a" * 6 and reader.read() == b""
    sink = io.BytesIO()
    progress.CountingWriter(sink, meter).write(b"bcd")
    assert meter.done == 13 and sink.getvalue() == b"bcd"
    assert isinstance(progress.current(), progress.Progress)  # the default watcher: counts, draws nothing


def test_a_command_is_logged_masked_for_verbose(caplog: Any, monkeypatch: Any) -> None:
    import logging

    from recipes.hosts import LocalHost
    from recipes.model import Command, Secret

    monkeypatch.setenv("OUT_TEST_PASSWORD", "hunter2")
    command = Command('PGPASSWORD="$PGPASSWORD" true', (("PGPASSWORD", Secret("OUT_TEST_PASSWORD")),))
    with caplog.at_level(logging.INFO, logger="recipes.commands"):
        proc = LocalHost().start(command)
        proc.close_stdin()
        assert proc.wait() == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "recipes.commands"]
    assert lines == ["run on local: PGPASSWORD=*** true"]
    assert "hunter2" not in caplog.text


def test_a_password_in_a_repository_url_is_never_shown(tmp_path: Path) -> None:
    """Errors, logs and runbooks show ``ftp://me:***@host``; the URL still reaches fsspec whole."""
    url = "ftp://me:SeCrEt-42@127.0.0.1:1/repo"
    listed = _cli(tmp_path, "snapshots", "--repo", url)
    assert listed.returncode == 1 and "ftp://me:***@127.0.0.1:1/repo" in listed.stderr, listed.stderr
    in_memory = "memory://me:SeCrEt-42@x/repo"  # opens without a server: the runbook renders
    book = _cli(tmp_path, "-v", "runbook", "django", "--host", "local", "--repo", in_memory)
    assert book.returncode == 0 and "memory://me:***@x/repo" in book.stdout, book.stderr
    for out in (listed, book):
        assert "SeCrEt-42" not in out.stdout + out.stderr


def test_masked_hides_only_the_password_of_each_url() -> None:
    from recipes.errors import masked

    text = "a http://u:p4ss@h:1/x and s3://k:s3cr%2Fet@b/p, user@host:22 and me@example.org stay"
    assert masked(text) == "a http://u:***@h:1/x and s3://k:***@b/p, user@host:22 and me@example.org stay"


def test_our_log_handlers_never_raise_on_a_malformed_call_and_still_mask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The redacting filter runs outside logging's own error handling: a library's bad format
    call must stay logging's problem (reported, not raised), and URL passwords stay hidden."""
    import io
    import logging

    from recipes.output import Output

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # ours is added (pytest's are put back after)
    stream = io.StringIO()
    Output(2, False, stream).setup_logging()
    monkeypatch.setattr(logging, "raiseExceptions", False)
    logging.getLogger("somelib").debug("bad %d args", "x")  # must not raise
    logging.getLogger("recipes").info("stored in ftp://me:p@ss@host/x")
    logging.getLogger("somelib").debug(
        "Authorization': b'AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=ab12'"
    )
    text = stream.getvalue()
    assert "ftp://me:***@host/x" in text and "p@ss" not in text
    assert "AKIA" not in text and "ab12" not in text


def test_a_one_letter_url_password_is_hidden_without_garbling_the_line(tmp_path: Path) -> None:
    out = _cli(tmp_path, "snapshots", "--repo", "s3://me:a@bucket/x")  # s3fs quotes the bucket
    line = out.stderr.strip().splitlines()[-1]
    assert "repository s3://me:***@bucket/x: check bucket ***@bucket: " in line, line
    assert "check [repository] options and the endpoint" in line  # the a's are still there
