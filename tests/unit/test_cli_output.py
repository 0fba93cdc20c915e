"""How much the CLI says: -q keeps only warnings and errors (cron mails only when something is
wrong), the default adds progress lines, and -q with -v is a usage error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("RECIPES_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "recipes", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_quiet_keeps_stderr_empty_on_success_and_errors_still_show(tmp_path: Path) -> None:
    plan = ["plan", "django", "--host", "local", "--set", f"root={tmp_path}"]
    loud = _cli(tmp_path, *plan)
    assert loud.returncode == 0 and "recipes: no config file: defaults" in loud.stderr
    quiet = _cli(tmp_path, "-q", *plan)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and quiet.stdout == loud.stdout
    bad = _cli(tmp_path, "-q", "plan", "django", "--host", "local", "--set", "root=relative")
    assert bad.returncode == 2 and bad.stderr.startswith("recipes: error: ")


def test_quiet_and_verbose_together_is_one_usage_line(tmp_path: Path) -> None:
    both = _cli(tmp_path, "-q", "-v", "list")
    assert both.returncode == 2
    assert both.stderr.strip().splitlines() == [both.stderr.strip()]
    assert "contradict" in both.stderr


def test_json_is_accepted_after_the_command_name_too(tmp_path: Path) -> None:
    before = _cli(tmp_path, "--json", "snapshots", "--repo", str(tmp_path / "repo"))
    after = _cli(tmp_path, "snapshots", "--repo", str(tmp_path / "repo"), "--json")
    assert before.returncode == after.returncode == 0, after.stderr
    assert before.stdout == after.stdout == "[]\n"
    assert _cli(tmp_path, "list", "--json").stdout.lstrip().startswith("[")
