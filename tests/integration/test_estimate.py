"""``recipes estimate`` on a real host: the measured size is what a full archive really is, the
dumps come from the latest snapshot, and the cost follows seed 002's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pyrage
import zstandard

from tests.integration.django_site import SQLITE_DB, seed_tree
from tests.integration.world import World


def test_estimate_measures_the_host_and_prices_it(world: World, site: tuple[str, Path, Path]) -> None:
    root, src, _ = site
    seed_tree(src)
    sets = ["--set", f"root={root}", "--set", f'sqlite=["{SQLITE_DB}"]']
    before = world.cli("--json", "estimate", "django", "--host", "source", *sets)
    assert before.returncode == 0, before.stderr
    first = json.loads(before.stdout)
    assert first["dumps_bytes"] == 0 and first["fulls_kept"] == 8  # no snapshot yet; 2Y / 3M

    manifest = json.loads(world.cli("--json", "run", "django", "--host", "source", *sets, check=True).stdout)
    snap = world.repo / "django/source" / manifest["snapshot"]
    identity = pyrage.x25519.Identity.from_str(world.identity.read_text().strip())
    plain = (
        zstandard.ZstdDecompressor()
        .decompressobj()
        .decompress(pyrage.decrypt((snap / "files.tar.zst.age").read_bytes(), [identity]))
    )
    after = json.loads(
        world.cli("--json", "estimate", "django", "--host", "source", *sets, check=True).stdout
    )
    # a full archive of the same tree (the backup's carries tar's incremental directory records)
    assert abs(after["files_bytes"] - len(plain)) < 0.02 * len(plain)
    dumps = sum(o["size"] for o in manifest["objects"] if o["kind"] == "dump")
    assert after["dumps_bytes"] == dumps > 0
    gb = after["per_full_bytes"] / 1e9
    assert after["cost_per_year"] == round(gb * 8 * 0.005 * 12 + 2 * gb * 0.05, 2)
    text = world.cli("estimate", "django", "--host", "source", *sets, "--price-gb-month", "0.01", check=True)
    assert "retention keeps 8 fulls" in text.stdout and "$0.01/GB-month" in text.stdout
