"""glibc malloc arenas: capped before a command starts its threads (each would get one)."""

from __future__ import annotations

import os

ARENAS = 1
"""glibc malloc arenas for the process once an S3 client exists (glibc's default: 8 per core)."""


def fewer_arenas() -> bool:
    """Cap glibc's malloc arenas at ``ARENAS``: each thread of the S3 path (the client's event
    loop, the part uploads, the facts and ssh threads) would get an arena of its own, each
    keeping what it freed. One arena, set before those threads start (``recipes run`` does it
    first), kept 2.5 MB off a backup's peak RSS beside two, with no CPU or wall time measured
    (docs/performance.md). Not on other C libraries, and never over the operator's own
    ``MALLOC_ARENA_MAX``."""
    import ctypes
    import platform

    if os.environ.get("MALLOC_ARENA_MAX") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_arena_max = -8  # malloc.h
    return bool(mallopt(m_arena_max, ARENAS))
