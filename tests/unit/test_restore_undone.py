"""A failed restore's one line lists only what its undo really took back: a move aside that
never happened (a missing path, an empty mount point left in place) is not said to be moved back.
Real commands on ``--host local`` (the undo runs through the host's guard, as on any host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recipes.errors import StepFailed
from recipes.execute import Interpreter
from recipes.hosts import LocalHost
from recipes.model import Command
from recipes.plan import Plan
from recipes.restore import _run
from recipes.steps import MoveAside, Run


def _failed_restore(path: Path) -> str:
    """Move ``path`` aside, then a step that fails: the restore's error line."""
    plan = Plan("t", "local", "restore", {}, (MoveAside("data", str(path)), Run("load", Command("exit 3"))))
    interp = Interpreter({"main": [LocalHost()]}, {}, run_id="t1", deadman=30)
    with pytest.raises(StepFailed) as caught:
        _run(interp, plan)
    return str(caught.value)


def test_a_path_that_was_never_moved_is_not_said_to_be_moved_back(tmp_path: Path) -> None:
    line = _failed_restore(tmp_path / "missing")
    assert line.startswith("load failed on local (exit 3)"), line
    assert "back" not in line and "taken back" not in line, line
    assert not (tmp_path / "missing").exists()


def test_a_moved_path_is_said_to_be_moved_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep").write_text("before")
    line = _failed_restore(data)
    assert f"taken back after the failure: move {data} back on local" in line, line
    assert (data / "keep").read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
