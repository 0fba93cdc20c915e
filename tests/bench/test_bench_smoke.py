"""Smoke test of the benchmark suite: bench/run.py runs end to end on a tiny dataset.

No timing is asserted (timings on a shared machine are not a test); the test checks that every
case ran, that the report has its shape, and that the restores reproduced the dataset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench" / "run.py"
CASES = (
    "limit_full",
    "limit_restore",
    "recipes_full",
    "recipes_incr",
    "recipes_restore",
    "recipes_help",
)


def test_bench_runs_end_to_end_and_restores_the_data(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the benchmark starts its own sshd for root: run ./scripts/test as root")
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        str(RUN),
        "--scale",
        "0.002",
        "--rounds",
        "1",
        "--quick",
        "--only",
        "recipes,limit",
        "--work",
        str(tmp_path / "work"),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert proc.returncode == 0, f"bench/run.py exited {proc.returncode}:\n{proc.stderr[-4000:]}"

    report = json.loads(out.read_text())
    for key in ("schema", "scale", "rounds", "machine", "dataset", "cases", "ratios", "goals", "verified"):
        assert key in report, key
    assert report["scale"] == 0.002
    assert report["machine"]["nproc"] >= 1
    assert "recipes" in report["machine"]["tools"]
    assert report["dataset"]["files"] > 0 and report["dataset"]["bytes"] > 0
    assert set(CASES) <= set(report["cases"])
    for name in CASES:
        case = report["cases"][name]
        assert case["rounds"], name
        for sample in case["rounds"]:
            assert sample["wall"] > 0, name
            assert sample["max_rss_kb"] > 0, name
        assert case["summary"]["min"] > 0 and case["summary"]["median"] > 0, name
    for name in ("limit_full", "recipes_full", "recipes_incr"):
        assert report["cases"][name]["summary"]["stored_bytes"] > 0, name
    for name in ("limit_restore", "recipes_restore"):
        for sample in report["cases"][name]["rounds"]:
            assert sample["verified"] is True, (name, sample["detail"])
    assert report["verified"] is True
    assert report["ratios"]["recipes_full / limit_full"] is not None
    assert {g["goal"] for g in report["goals"]} >= {"peak RSS <= 100 MB", "recipes --help <= 0.3 s"}
    assert "restic_full" not in report["cases"] and "duplicity_full" not in report["cases"]

    # Everything but the dataset cache and the results is gone.
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["dataset", "dataset.json"]
    assert "results:" in proc.stdout
