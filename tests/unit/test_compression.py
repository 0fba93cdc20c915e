"""Where zstd runs: config keys, per-host overrides, and the engine's decision at the Host boundary."""

from __future__ import annotations

import shutil
import subprocess

import attrs
import pytest

from recipes import config
from recipes.compression import ZSTD_FACT, Compression
from recipes.engine import resolve_zstd
from recipes.errors import ConfigError
from recipes.model import Command


@attrs.define
class FakeHost:
    name: str = "web1"


@pytest.mark.parametrize(
    ("mode", "has_zstd", "expected"),
    [
        ("auto", True, True),
        ("auto", False, False),
        ("remote", True, True),
        ("controller", True, False),
        ("controller", False, False),
    ],
)
def test_where_zstd_runs(mode: str, has_zstd: bool, expected: bool) -> None:
    """The host's answer (from the facts command the engine runs first) against the mode."""
    assert resolve_zstd(FakeHost(), Compression(mode), has_zstd) is expected  # type: ignore[arg-type]


def test_remote_without_zstd_on_the_host_is_one_clear_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_zstd(FakeHost(), Compression("remote"), False)  # type: ignore[arg-type]
    assert str(info.value).startswith('compression = "remote" but web1 has no zstd: install zstd')


def test_the_zstd_fact_answers_for_this_machine() -> None:
    """The shell line the facts commands use, run by a real bash."""
    out = subprocess.run(["bash", "-c", ZSTD_FACT], capture_output=True, text=True, check=True).stdout
    assert out == ("zstd=yes\n" if shutil.which("zstd") else "zstd=no\n")
    missing = subprocess.run(
        ["/bin/bash", "-c", ZSTD_FACT],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/nonexistent"},
    ).stdout
    assert missing == "zstd=no\n"


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
