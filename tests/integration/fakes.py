"""A test-only recipe with a real quiesce: a long-running process on the host stands in for a
service that must be stopped for the backup and started again whatever happens."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from recipes.model import Command, sh
from recipes.recipe import param
from recipes.steps import Archive, Dump, Extract, Quiesce, Step


@attrs.frozen
class SvcParams:
    dir: str = param("/srv/site/svc", "directory holding the service's pidfile and data")
    then: str = param("ok", "what the step after the quiesce does: ok, fail, hang or stream (endless bytes)")
    stop: str = param("ok", "how the stop command ends: ok, or hang (after stopping the service)")
    start: str = param(
        "ok", "how the start command ends: ok, fail (without starting it), or hang (after starting it)"
    )


def service_commands(d: str) -> tuple[Command, Command, Command]:
    pid = sh(f"{d}/svc.pid")
    check = Command(f'test -s {pid} && kill -0 "$(cat {pid})" 2>/dev/null')
    stop = Command(f'kill "$(cat {pid})" && rm -f {pid}')
    start = Command(
        f"setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $! > {pid}; "
        f"echo started >> {sh(d + '/starts.log')}"
    )
    return check, stop, start


def hang_marker(d: str) -> str:
    """The command line of the hanging dump's sleeping process (``then=hang``)."""
    return f"svc-hang:{d}"


class Svc:
    name: ClassVar[str] = "svc-test"
    summary: ClassVar[str] = "test-only: a quiesced service"
    seed: ClassVar[str] = "none"
    Params: ClassVar[type[Any]] = SvcParams

    def backup_steps(self, p: SvcParams) -> list[Step]:
        check, stop, start = service_commands(p.dir)
        body = {
            "ok": Command("echo data"),
            "fail": Command("echo 'dump: simulated failure' >&2; exit 3"),
            # The sleeping process is named after the service's dir, so a test can look for orphans.
            "hang": Command(f"echo started-dump; (exec -a {sh(hang_marker(p.dir))} sleep 600)"),
            "stream": Command("head -c 20G /dev/urandom"),
        }[p.then]
        if p.start == "fail":
            start = Command("echo 'start: simulated failure' >&2; exit 4")
        if p.start == "hang":
            start = Command(f"{start.script} && (exec -a {sh(hang_marker(p.dir))} sleep 600)")
        if p.stop == "hang":
            stop = Command(f"{stop.script} && echo stopped && (exec -a {sh(hang_marker(p.dir))} sleep 600)")
        return [
            Quiesce(name="svc", check=check, stop=stop, start=start, about="stop the service"),
            Dump(name="d", engine="test", command=body),
            Archive(root=p.dir, excludes=("/svc.pid",)),
        ]

    def restore_steps(self, p: SvcParams) -> list[Step]:
        return [Extract(root=p.dir)]
