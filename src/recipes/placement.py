"""Where zstd runs for one run: the host's answer (has it zstd) against the configured mode."""

from __future__ import annotations

import logging

from recipes.compression import Compression
from recipes.errors import ConfigError
from recipes.hosts import Host

log = logging.getLogger("recipes")


def resolve_zstd(host: Host, compression: Compression, has: bool) -> bool:
    """Where zstd runs, given whether the host has it; ``remote`` without it is a config error."""
    if compression.mode == "controller":
        return False
    if not has and compression.mode == "remote":
        raise ConfigError(
            f'compression = "remote" but {host.name} has no zstd: install zstd there, '
            'or set compression = "auto" or "controller"'
        )
    if not has:
        log.info("%s has no zstd: compressing on the controller", host.name)
    return has
