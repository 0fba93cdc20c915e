"""Where zstd runs: config keys, per-host overrides, and the engine's decision at the Host boundary."""

from __future__ import annotations

import attrs
import pytest

from recipes import config
from recipes.compression import HAS_ZSTD, Compression
from recipes.engine import zstd_on_host
from recipes.errors import ConfigError
from recipes.model import Command


@attrs.define
class FakeProcess:
    status: int

    def write(self, data: bytes, /) -> None:
        pass

    def close_stdin(self) -> None:
        pass

    def read(self, n: int = -1, /) -> bytes:
        return b""

    def wait(self, timeout: float | None = None) -> int:
        return self.status

    def stderr(self) -> str:
        return ""

    def kill(self) -> None:
        pass


@attrs.define
class FakeHost:
    """Answers the zstd probe; records every command it was asked to start."""

    has_zstd: bool
    name: str = "web1"
    started: list[Command] = attrs.Factory(list)

    def start(self, command: Command) -> FakeProcess:
        self.started.append(command)
        return FakeProcess(0 if self.has_zstd or command != HAS_ZSTD else 1)


@pytest.mark.parametrize(
    ("mode", "has_zstd", "expected"),
    [("auto", True, True), ("auto", False, False), ("remote", True, True), ("controller", True, False)],
)
def test_where_zstd_runs(mode: str, has_zstd: bool, expected: bool) -> None:
    host = FakeHost(has_zstd)
    assert zstd_on_host(host, Compression(mode)) is expected  # type: ignore[arg-type]
    # controller never asks the host anything
    assert host.started == ([] if mode == "controller" else [HAS_ZSTD])


def test_remote_without_zstd_on_the_host_is_one_clear_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        zstd_on_host(FakeHost(False), Compression("remote"))  # type: ignore[arg-type]
    assert str(info.value).startswith('compression = "remote" but web1 has no zstd: install zstd')


def test_host_setting_overrides_the_repository_and_level_is_shared() -> None:
    cfg = config.parse(
        {
            "repository": {"compression": "remote", "compression_level": 3},
            "hosts": {"tiny": {"address": "10.0.0.2", "compression": "controller"}},
        },
        "r.toml",
    )
    assert cfg.compression("tiny") == Compression("controller", 3)
    assert cfg.compression("web1") == Compression("remote", 3)
    assert config.parse({}, "r.toml").compression("x") == Compression("auto", 1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"repository": {"compression": "fast"}}, "repository.compression: must be one of auto, remote"),
        ({"repository": {"compression_level": 0}}, "repository.compression_level: must be a zstd level"),
        ({"repository": {"compression_level": 22}}, "repository.compression_level: must be a zstd level"),
        ({"hosts": {"h": {"compression": "host"}}}, "hosts.h.compression: must be one of"),
    ],
)
def test_bad_compression_settings_are_one_line_naming_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(data, "/etc/recipes.toml")
    assert str(info.value).startswith("/etc/recipes.toml: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_levels_on_the_zstd_command_line() -> None:
    assert Compression(level=3).on_host(Command("tar c .")).script == "{ tar c .; } | zstd -q -3 -T0 -c"
    assert Compression(level=-4).cli_flag() == "--fast=4"
    assert Compression.decompress_on_host(Command("tar x")).script == "zstd -d -q -c | { tar x; }"
