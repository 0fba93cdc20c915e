"""The guard's controller half without a host: what it refuses, and the [engine] config."""

from __future__ import annotations

import pytest

from recipes import config, guard
from recipes.errors import ConfigError, StepFailed
from recipes.model import Command, Secret


class NoHost:
    """A host that must never be reached (the refusal comes first)."""

    name = "web1"

    def start(self, command: Command) -> None:
        raise AssertionError("the host was reached")


def test_an_undo_with_secrets_is_refused_before_anything_stops() -> None:
    g = guard.Guard.__new__(guard.Guard)
    g.host = NoHost()  # type: ignore[assignment]
    undo = guard.Undo("start x", Command("start-x", secrets=(("PW", Secret("PW")),)))
    with pytest.raises(StepFailed, match=r"start x on web1 needs secrets \(PW\).*nothing was stopped"):
        g.push(undo)


def test_claimed_command_runs_the_undo_only_after_its_claim() -> None:
    g = guard.Guard.__new__(guard.Guard)
    g.dir = "/tmp/recipes-guard.X"
    entry = guard.Entry(7, guard.Undo("start x", Command("systemctl start x", user="app")))
    script = g.claimed(entry).script
    claim, _, rest = script.partition("fi; ")
    assert "mv -- /tmp/recipes-guard.X/undo/000007 /tmp/recipes-guard.X/ctl/000007" in claim
    assert f"exit {guard.TAKEN_BY_GUARD}" in claim and f"exit {guard.GUARD_GONE}" in claim
    assert rest.startswith("sudo -n -u app -- bash -c") and "systemctl start x" in rest


def test_engine_deadman_seconds() -> None:
    assert config.parse({}, "x.toml").engine.deadman_seconds == 60
    assert config.parse({"engine": {"deadman_seconds": 5}}, "x.toml").engine.deadman_seconds == 5
    for bad in (0, 100000):
        with pytest.raises(ConfigError, match=r"x.toml: engine.deadman_seconds must be 1 to 86400"):
            config.parse({"engine": {"deadman_seconds": bad}}, "x.toml")
    with pytest.raises(ConfigError, match="engine: unknown keys"):
        config.parse({"engine": {"deadman": 5}}, "x.toml")
