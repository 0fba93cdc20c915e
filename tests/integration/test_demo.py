"""The README's first command: the bundled example backed up and restored with --host local."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_demo_command_backs_up_and_restores_the_bundled_example(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RECIPES_CONFIG"}
    env["HOME"] = str(tmp_path)  # a fresh user: no config, no key, default repository
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run(
        [str(ROOT / "scripts" / "demo")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SECRET KEY written to" in proc.stdout
    assert (tmp_path / ".config/recipes/identity.txt").stat().st_mode & 0o777 == 0o600
    manifests = list((tmp_path / ".local/share/recipes/repo/django/local").glob("*/manifest.json"))
    assert len(manifests) == 1
    restored = next(tmp_path.glob("recipes-demo-restore.*"))
    assert (restored / "etc/opt/mysite/settings.py").read_bytes() == (
        ROOT / "examples/django-site/etc/opt/mysite/settings.py"
    ).read_bytes()
    assert proc.stdout.count("2 questions, 16 votes") == 2
    assert not (restored / "tmp").exists()
