"""The README's Python example, run as written against a real sshd host (names substituted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.django_site import seed_tree
from tests.integration.world import World

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_example_backs_up_and_the_cli_lists_it(
    world: World, site: tuple[str, Path, Path]
) -> None:
    root, src, _ = site
    seed_tree(src)
    code = README.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('"web1"', '"source"')
    code = code.replace('{"root": "/", "postgres": True}', f'{{"root": "{root}"}}')
    assert code.count('"source"') == 3 and root in code, "the README example changed: update this test"
    code += "\nassert text.startswith('# Restore runbook: django on source, snapshot '), text[:200]"
    env = {**world.env(), "RECIPES_CONFIG": str(world.config)}
    for _ in range(2):  # the second run is an incremental on the first
        out = subprocess.run(
            [sys.executable, "-c", code + "\nprint(manifest.snapshot, manifest.level)"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
    listed = json.loads(world.cli("--json", "snapshots", "django", "--host", "source", check=True).stdout)
    assert [s["level"] for s in listed] == [0, 1]
    assert out.stdout.split() == [listed[1]["snapshot"], "1"]
