"""Nothing half-written looks complete: a backup that is still running, or was killed, is never
listed as a snapshot, though its objects are already in the repository."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.integration.test_compensation import _launch, _wait_for, running, svc  # noqa: F401
from tests.integration.world import World


def test_a_running_then_killed_backup_is_never_listed(world: World, svc: tuple[str, Path]) -> None:  # noqa: F811
    inside, outside = svc
    proc = _launch(world, inside)
    _wait_for(lambda: not running(outside))  # quiesced, now inside the hanging dump
    _wait_for(lambda: any(world.repo.glob("svc-test/source/*/**/*.zst.age")))  # objects are written
    listed = world.cli("--json", "snapshots", check=True)
    assert json.loads(listed.stdout) == []
    assert not list(world.repo.glob("svc-test/source/*/manifest.*"))
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert json.loads(world.cli("--json", "snapshots", check=True).stdout) == []
