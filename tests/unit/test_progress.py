"""The progress model: what a backup expects of each object (an ETA for full archives too) and an
archive's file count as it passes. No clock is asserted: rates come from fixed numbers."""

from __future__ import annotations

import io
import tarfile
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from recipes import facts, output, progress
from recipes import manifest as mf

STAMP = "2026-11-22T10:15:00Z"


def snap(
    sid: str, level: int, files_size: int, dump_size: int, files: Any = None, error: bool = False
) -> mf.Manifest:
    tar_facts: dict[str, Any] = {} if files is None else {"files": files, "bytes": 1}
    if error:
        tar_facts["error"] = "the tar stream ended without its end-of-archive blocks"
    return mf.Manifest(
        snapshot=sid,
        recipe="django",
        host="web1",
        started=STAMP,
        finished=STAMP,
        params={},
        objects=(
            mf.StoredObject("files.tar", "files", "files.tar.zst.age", files_size, "a" * 64, facts=tar_facts),
            mf.StoredObject("dumps/db.sql", "dump", "dumps/db.sql.zst.age", dump_size, "b" * 64),
            mf.StoredObject("state.snar", "state", "state.snar.zst.age", 7, "c" * 64),
        ),
        level=level,
    )


def test_a_full_expects_the_newest_full_archive_and_the_latest_dumps() -> None:
    old_full = snap("1", 0, 900, 10, files=90)
    full = snap("2", 0, 1000, 20, files=100)
    incr = snap("3", 1, 50, 30, files=5)
    got = progress.expected(None, [old_full, full, incr])
    assert got.sizes == {"files.tar": 1000, "dumps/db.sql": 30, "state.snar": 7}
    assert got.files == {"files.tar": 100}
    assert progress.expected(None, []) == progress.Expected()  # a first backup: nothing known


def test_an_incremental_expects_an_archive_only_after_an_incremental() -> None:
    full = snap("2", 0, 1000, 20, files=100)
    on_full = progress.expected(full)
    assert on_full.sizes == {"dumps/db.sql": 20, "state.snar": 7} and on_full.files == {}
    incr = snap("3", 1, 50, 30, files=5)
    assert progress.expected(incr) == progress.Expected(
        {"files.tar": 50, "dumps/db.sql": 30, "state.snar": 7}, {"files.tar": 5}
    )
    assert progress.expected_sizes(incr) == {"files.tar": 50, "dumps/db.sql": 30, "state.snar": 7}


def test_file_counts_come_only_from_whole_counted_facts() -> None:
    """Archives stored with zstd on the host have no facts; a tap that stopped counting is partial."""
    for odd in (snap("2", 0, 1, 1), snap("2", 0, 1, 1, files=100, error=True), snap("2", 0, 1, 1, files="9")):
        assert progress.expected(None, [odd]).files == {}


def _tar(n: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(n):
            data = b"x" * (i + 1)
            info = tarfile.TarInfo(f"dir/f{i}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_meter_counts_an_archives_files_with_the_tar_tap() -> None:
    meter = progress.Meter("files.tar", 100, files_total=3)
    assert meter.files_done is None  # nothing counts: no number shown
    tap, rows = facts.TarFacts(), facts.RowCounter("postgresql")
    meter.count_files([rows, tap])
    assert meter.files is tap
    data = _tar(3)
    tap.feed(data[:1024])  # the first file's header and data
    assert meter.files_done == 1
    tap.feed(data[1024:])
    assert meter.files_done == 3 == tap.result()["files"]
    dump = progress.Meter("dumps/db.sql")
    dump.count_files([rows])
    assert dump.files_done is None


def test_bars_show_eta_and_files_of_a_full_archive() -> None:
    """What ``recipes run`` draws for a full whose size and count the last full gave."""
    bars = output.Bars(Console(file=io.StringIO(), width=160, force_terminal=True))
    bars.step("archive", "files")
    meter = bars.meter("files.tar", total=4 << 20, files_total=5000)
    tap = facts.TarFacts()
    meter.count_files([tap])
    tap.feed(_tar(2))
    meter(1 << 20)
    list(bars.bars.get_renderables())  # rich's refresh clock: the counters are read here
    task = bars.bars.tasks[0]
    assert task.fields["files"] == 2 and task.fields["files_total"] == 5000
    assert task.fields["info"].startswith("1.0 MiB / 4.0 MiB") and task.fields["info"].endswith(
        "2 / 5,000 files"
    )
    bars.step_done(mf.StepRecord("files", "archive", 2.5, "ok"))
    assert bars.bars.tasks[0].fields["info"] == "1.0 MiB  2 files  2.5s"


def test_numbers_with_a_rate_give_the_eta_and_the_files() -> None:
    fields = {"moved": True, "seconds": None, "files": 1234, "files_total": 5000}
    moving = SimpleNamespace(fields=fields, completed=1 << 30, total=2 << 30, speed=100 << 20, elapsed=10)
    assert output.numbers(moving) == "1.0 GiB / 2.0 GiB  100.0 MiB/s  ETA 10.2s  1,234 / 5,000 files"
    fields["files"] = 6000  # past the expected count: no promise any more
    assert output.numbers(moving).endswith("ETA 10.2s  6,000 files")
    fields["files"] = None  # zstd ran on the host: the controller never saw the members
    assert output.numbers(moving) == "1.0 GiB / 2.0 GiB  100.0 MiB/s  ETA 10.2s"
