"""The engine's public names in one place, kept so ``from recipes import engine`` goes on working.

Each job lives in its own module (see docs/index.md, "Layers"); none of those modules imports
this one, so the facade can never close a circle.
"""

from __future__ import annotations

from recipes.backup import backup, check_recipients
from recipes.backupjob import TAR_WARNING_EXIT, Backup
from recipes.interrupts import interrupts_as_exceptions
from recipes.parents import DEFAULT_FULL_EVERY, Chaining
from recipes.placement import resolve_zstd
from recipes.restore import restore
from recipes.undo import UNDO_BUDGET, Compensation, Interrupted

__all__ = [
    "DEFAULT_FULL_EVERY",
    "TAR_WARNING_EXIT",
    "UNDO_BUDGET",
    "Backup",
    "Chaining",
    "Compensation",
    "Interrupted",
    "backup",
    "check_recipients",
    "interrupts_as_exceptions",
    "resolve_zstd",
    "restore",
]
