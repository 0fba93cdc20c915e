"""When a backup whose steps all succeeded may still be committed though an undo failed: only
when every undo that did not start something ran and failed (the controller's claim took it, so
no guard fired). An undo that could not run, a guard lost or fired, an interrupt: void."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from recipes.execute import Interpreter

FAILED = "start svc failed on web1 (exit 4: boom): run it by hand: svc start"


def comp(**kw: object) -> SimpleNamespace:
    base: dict[str, object] = {
        "by_guard": [],
        "interrupted": False,
        "lost": False,
        "still_stopped": [],
        "ran_and_failed": [],
    }
    return SimpleNamespace(**{**base, **kw})


def decide(*comps: SimpleNamespace) -> bool:
    return Interpreter.only_not_started(SimpleNamespace(comps=dict(enumerate(comps))))  # type: ignore[arg-type]


def test_a_start_that_ran_and_failed_commits() -> None:
    assert decide(comp(still_stopped=[FAILED], ran_and_failed=[FAILED]), comp())


@pytest.mark.parametrize(
    "other",
    [
        comp(still_stopped=["svc is stopped on node2 (unreachable; gave up after 5 tries): …"]),
        comp(still_stopped=["start svc on node2: the host's guard directory … is gone"]),
        comp(lost=True),
        comp(by_guard=["the host's guard on node2 already ran start svc at …"]),
        comp(interrupted=True),
    ],
    ids=["unreachable", "guard-gone", "guard-lost", "guard-fired", "interrupted"],
)
def test_anything_that_leaves_a_guard_in_doubt_voids_it(other: SimpleNamespace) -> None:
    assert not decide(comp(still_stopped=[FAILED], ran_and_failed=[FAILED]), other)


def test_nothing_failed_is_not_this_case() -> None:
    assert not decide(comp(), comp())
