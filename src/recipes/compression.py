"""Where zstd runs (on the host or on the controller) and at which level; one decision per run.

Every stored object is zstd-compressed, whatever the mode: only the CPU that does it and the bytes
that cross the link change. docs/performance.md explains the measurements behind ``auto``.
"""

from __future__ import annotations

from typing import Any

import attrs

from recipes.model import Command

MODES = ("auto", "remote", "controller")
MIN_LEVEL, MAX_LEVEL = -7, 19


def _check_mode(_inst: Any, _attr: attrs.Attribute[str], value: str) -> None:
    if value not in MODES:
        raise ValueError(f"must be one of {', '.join(MODES)}, not {value!r}")


def _check_level(_inst: Any, _attr: attrs.Attribute[int], value: int) -> None:
    if value == 0 or not MIN_LEVEL <= value <= MAX_LEVEL:
        raise ValueError(
            f"must be a zstd level from 1 to {MAX_LEVEL}, or {MIN_LEVEL} to -1 for "
            f"zstd's --fast levels, not {value}"
        )


@attrs.frozen
class Compression:
    """``auto`` compresses on the host when it has zstd, else on the controller.

    ``remote`` insists on the host (fewer bytes over the link; fails early without zstd there),
    ``controller`` never runs zstd on the host (spares a busy or weak host's CPU).
    """

    mode: str = attrs.field(default="auto", validator=_check_mode)
    level: int = attrs.field(default=1, validator=_check_level)

    def cli_flag(self) -> str:
        """zstd's command-line spelling of the level (``-3`` or ``--fast=2``)."""
        return f"-{self.level}" if self.level > 0 else f"--fast={-self.level}"

    def on_host(self, command: Command) -> Command:
        """``command`` with its stdout compressed by zstd on the host."""
        return attrs.evolve(command, script=f"{{ {command.script}; }} | zstd -q {self.cli_flag()} -T0 -c")

    @staticmethod
    def decompress_on_host(command: Command) -> Command:
        """``command`` reading stdin that zstd on the host has decompressed."""
        return attrs.evolve(command, script=f"zstd -d -q -c | {{ {command.script}; }}")

    def describe(self, action: str) -> str:
        """One line for plans: where zstd will run for this action."""
        verb = "zstd" if action == "backup" else "zstd -d"
        level = f" {self.cli_flag()}" if action == "backup" else ""
        if self.mode == "remote":
            return f"{verb}{level} on the host"
        if self.mode == "controller":
            return f"{verb}{level} on the controller"
        return f"{verb}{level} on the host when it has zstd, else on the controller"


HAS_ZSTD = Command("command -v zstd >/dev/null 2>&1")
# The same question as one line of a facts script: prints zstd=yes or zstd=no.
ZSTD_FACT = f"if {HAS_ZSTD.script}; then echo zstd=yes; else echo zstd=no; fi"

DEFAULT_COMPRESSION = Compression()
