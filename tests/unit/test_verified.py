"""The verified-manifest cache: listing at scale without ever trusting what it should not.

A real local repository, real signatures and the real CLI: with a warm cache a tampered,
moved, unsigned or badly signed manifest is still refused, and a forged cache file changes
nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import nightly
from recipes import signing
from recipes.repository import Repository
from recipes.trust import Trust
from recipes.verified import VerifiedManifests

N = 12


@pytest.fixture
def made(tmp_path: Path) -> tuple[Path, Path, signing.SigningKey]:
    """A local repository with N signed daily snapshots of django@web1, and its config."""
    key = signing.generate_signing_key(tmp_path / "signing", "test")
    repo = tmp_path / "repo"
    nightly.write_local(repo, nightly.chain_of(N, dt.datetime.now(dt.UTC)), key)
    return repo, nightly.config(tmp_path / "recipes.toml", str(repo), key), key


def cli(cfg: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recipes", "--config", str(cfg), "--json", *args],
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        capture_output=True,
        text=True,
    )


def problems(cfg: Path, cache: Path) -> dict[str, str | None]:
    out = cli(cfg, cache, "snapshots")
    assert out.returncode == 0, out.stderr
    return {s["snapshot"]: s.get("problem") for s in json.loads(out.stdout)}


def snapshot_dirs(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "django" / "web1").iterdir())


def test_a_tampered_manifest_is_refused_with_a_warm_cache(
    made: tuple[Path, Path, signing.SigningKey], tmp_path: Path
) -> None:
    repo, cfg, _ = made
    cache = tmp_path / "cache"
    assert set(problems(cfg, cache).values()) == {None}  # cold: every signature checked
    entries = (cache / "recipes" / "verified").glob("[0-9a-f]*")
    assert sum(len(p.read_text().split()) for p in entries) == N  # one entry per verified manifest
    assert set(problems(cfg, cache).values()) == {None}  # warm: the same

    victim = snapshot_dirs(repo)[3] / "manifest.json"
    victim.write_bytes(victim.read_bytes().replace(b'"size": 1003', b'"size": 1004', 1))
    other = snapshot_dirs(repo)[5]  # a validly signed manifest moved onto another snapshot
    (other / "manifest.json").write_bytes((snapshot_dirs(repo)[6] / "manifest.json").read_bytes())
    (other / "manifest.sig").write_bytes((snapshot_dirs(repo)[6] / "manifest.sig").read_bytes())
    (snapshot_dirs(repo)[7] / "manifest.sig").unlink()  # unsigned now

    out = cli(cfg, cache, "snapshots")
    assert out.returncode == 0, out.stderr
    seen = [(s["snapshot"], s["problem"]) for s in json.loads(out.stdout)]
    bad = [(sid, str(why)) for sid, why in seen if why is not None]
    assert len(seen) == N and len(bad) == 3, bad
    assert bad[0][0] == snapshot_dirs(repo)[3].name and "signature does not verify" in bad[0][1]
    # the moved manifest is listed under the id it claims, and refused for where it lies
    assert bad[1][0] == snapshot_dirs(repo)[6].name and f"lies at django/web1/{other.name}" in bad[1][1]
    assert bad[2][0] == snapshot_dirs(repo)[7].name and "not signed" in bad[2][1]
    dry = cli(cfg, cache, "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    left = {s["snapshot"]: s["reason"] for r in json.loads(dry.stdout) for s in r["snapshots"]}
    for d in (snapshot_dirs(repo)[3], snapshot_dirs(repo)[5], snapshot_dirs(repo)[7]):
        assert left[d.name].startswith("left alone: untrusted"), left


def test_a_forged_cache_file_trusts_nothing(
    made: tuple[Path, Path, signing.SigningKey], tmp_path: Path
) -> None:
    """An attacker's entries (without this controller's key) match nothing; an unsigned or
    badly signed snapshot stays untrusted even when every plausible entry is in the cache."""
    repo, cfg, key = made
    cache = tmp_path / "cache"
    problems(cfg, cache)
    unsigned = snapshot_dirs(repo)[2]
    (unsigned / "manifest.sig").unlink()
    forged = snapshot_dirs(repo)[4]
    (forged / "manifest.json").write_bytes(
        (forged / "manifest.json").read_bytes().replace(b"1004", b"9999", 1)
    )
    store = VerifiedManifests(cache / "recipes", str(repo))
    assert store.path.exists()
    # entries made with another key (another controller's cache, a hand-made line)
    rogue = VerifiedManifests(tmp_path / "rogue", str(repo))
    lines = []
    for d in (unsigned, forged):
        raw = (d / "manifest.json").read_bytes()
        sig = (forged / "manifest.sig").read_bytes()
        lines.append(rogue.digest(f"django/web1/{d.name}", raw, sig, [key.public]))
        lines.append(rogue.digest(f"django/web1/{d.name}", raw, b"", [key.public]))
    with open(store.path, "a") as fh:
        fh.write("\n".join(str(x) for x in lines) + "\n")
    seen = problems(cfg, cache)
    assert "not signed" in str(seen[unsigned.name])
    assert "signature does not verify" in str(seen[forged.name])


def test_a_cache_others_may_write_is_ignored(
    made: tuple[Path, Path, signing.SigningKey], tmp_path: Path
) -> None:
    repo, _, key = made
    cache = tmp_path / "cache"
    trust = Trust((key.public,)).remembering(VerifiedManifests(cache, str(repo)))
    items = Repository(str(repo)).listed()
    assert all(trust.problem(i) is None for i in items)
    (cache / "verified").chmod(0o777)
    again = Trust((key.public,)).remembering(VerifiedManifests(cache, str(repo)))
    bad = Repository(str(repo)).listed()[0]
    tampered = type(bad)(
        bad.manifest, bad.raw + b" ", bad.signature, bad.recipe_dir, bad.host_dir, bad.snapshot_dir
    )
    assert again.problem(tampered) is not None and again.verified is not None
    assert again.verified.digest("x", b"", b"", [key.public]) is None  # not used at all
    assert all(again.problem(i) is None for i in items)  # every signature checked instead


def test_other_signers_miss_the_cache(made: tuple[Path, Path, signing.SigningKey], tmp_path: Path) -> None:
    """An entry made while key A was trusted is no entry once only key B is."""
    repo, _, key = made
    cache = tmp_path / "cache"
    items = Repository(str(repo)).listed()
    first = Trust((key.public,)).remembering(VerifiedManifests(cache, str(repo)))
    assert all(first.problem(i) is None for i in items)
    other = signing.generate_signing_key(tmp_path / "other", "other")
    second = Trust((other.public,)).remembering(VerifiedManifests(cache, str(repo)))
    assert all("does not verify" in str(second.problem(i)) for i in items)
