#!/usr/bin/env python3
"""Nightly operations at scale (issue 11): listing, prune and verify timings.

Run with the project's interpreter::

    .venv/bin/python bench/nightly.py [--snapshots 10000] [--s3-snapshots 1000]
                                      [--verify-mib 256] [--work DIR] [--out FILE.json]

What it measures, each with the real ``recipes`` CLI in a subprocess:

* ``snapshots`` and ``prune --dry-run`` over N synthetic signed snapshots in a local
  repository, cold (empty controller cache) and warm (the verified-manifest cache filled by the
  cold run). Goal: warm <= 2 s at 10,000 snapshots.
* ``prune`` (for real) of a recipe@host with 1,000 snapshots in S3 (``rclone serve s3``, as the
  test fixture starts it), and its dry run: reported, no goal.
* ``verify --all`` (no key) against ``sha256sum`` over the same objects: a ratio (goal <= 1.25).

Only the standard library and the project (its test helpers start rclone) are used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recipes import manifest as mf  # noqa: E402
from recipes import signing  # noqa: E402
from recipes.repository import ID_TIME  # noqa: E402

RECIPE, HOST = "django", "web1"
MIB = 1 << 20


def synthetic(index: int, start: dt.datetime, parent: str | None, level: int) -> mf.Manifest:
    """One daily snapshot's manifest: a full every 90 days, incrementals between."""
    when = start + dt.timedelta(days=index)
    sid = when.strftime(ID_TIME) + f"-{index:06x}"
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    objects = tuple(
        mf.StoredObject(
            name=name,
            kind=kind,
            path=f"{name}.zst.age",
            size=1000 + index,
            sha256=f"{index:064x}",
        )
        for name, kind in (("files.tar", "files"), ("dumps/sqlite.sql", "dump"), ("state.snar", "state"))
    )
    return mf.Manifest(
        snapshot=sid,
        recipe=RECIPE,
        host=HOST,
        started=stamp,
        finished=stamp,
        params={"root": "/srv/site", "sqlite": ["/srv/site/db.sqlite3"]},
        objects=objects,
        level=level,
        parent=parent,
        recipients=("age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq",),
        facts={"django_version": "5.1"},
    )


def chain_of(n: int, now: dt.datetime) -> list[mf.Manifest]:
    """``n`` daily snapshots ending today: a full every 90 days, each day an incremental."""
    start = now - dt.timedelta(days=n)
    out: list[mf.Manifest] = []
    for i in range(n):
        full = i % 90 == 0
        parent = None if full else out[-1]
        out.append(synthetic(i, start, parent.snapshot if parent else None, 0 if full else parent.level + 1))  # type: ignore[union-attr]
    return out


def write_local(repo: Path, manifests: list[mf.Manifest], key: signing.SigningKey) -> None:
    """Signed manifests (and no objects: listing and prune never read them)."""
    for m in manifests:
        d = repo / RECIPE / HOST / m.snapshot
        d.mkdir(parents=True)
        text = mf.dumps(m).encode()
        (d / "manifest.sig").write_bytes(key.sign(text, signing.MANIFEST_NAMESPACE))
        (d / "manifest.json").write_bytes(text)


def config(path: Path, url: str, key: signing.SigningKey, options: str = "") -> Path:
    lines = [
        "[repository]",
        f'url = "{url}"',
        f'signers = ["{key.public.line}"]',
        *([options] if options else []),
        "",
        "[retention]",
        'max_age = "2Y"',
        "max_fulls_with_incrs = 2",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def cli(cfg: Path, cache: Path, *args: str, env: dict[str, str] | None = None) -> float:
    """Seconds one ``recipes`` run takes (it must succeed)."""
    environ = {**os.environ, "XDG_CACHE_HOME": str(cache), **(env or {})}
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "recipes", "--config", str(cfg), *args],
        env=environ,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"recipes {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    return took


def listing(work: Path, n: int, key: signing.SigningKey) -> dict[str, Any]:
    """``snapshots`` and ``prune --dry-run`` over ``n`` snapshots, cold and warm."""
    repo = work / "repo-local"
    t0 = time.perf_counter()
    write_local(repo, chain_of(n, dt.datetime.now(dt.UTC)), key)
    made = time.perf_counter() - t0
    cfg = config(work / "local.toml", str(repo), key)
    cache = work / "cache-local"
    out: dict[str, Any] = {"snapshots": n, "make_seconds": round(made, 2)}
    for cmd in (("snapshots",), ("prune", "--dry-run")):
        name = cmd[0] + ("_dry_run" if len(cmd) > 1 else "")
        shutil.rmtree(cache, ignore_errors=True)
        out[f"{name}_cold_s"] = round(cli(cfg, cache, "--json", *cmd), 3)
        out[f"{name}_warm_s"] = round(min(cli(cfg, cache, "--json", *cmd) for _ in range(3)), 3)
    return out


def s3_prune(work: Path, n: int, key: signing.SigningKey, verify_mib: int) -> dict[str, Any]:
    """Prune of ``n`` snapshots on rclone's S3 server, and verify vs sha256sum there."""
    from tests import servers

    server = servers.start_s3()
    try:
        server.make_bucket("bench")
        data = Path(server.data_dir) / "bench" / "repo"
        # rclone serves a folder: the snapshots are written straight into it
        write_local(data, chain_of(n, dt.datetime.now(dt.UTC)), key)
        opts = f'options = {{ endpoint_url = "{server.endpoint}" }}'
        cfg = config(work / "s3.toml", "s3://bench/repo", key, opts)
        cache = work / "cache-s3"
        env = {**server.env(), "AWS_EC2_METADATA_DISABLED": "true"}
        out: dict[str, Any] = {"snapshots": n}
        out["prune_dry_run_cold_s"] = round(cli(cfg, cache, "--json", "prune", "--dry-run", env=env), 3)
        out["prune_dry_run_warm_s"] = round(cli(cfg, cache, "--json", "prune", "--dry-run", env=env), 3)
        before = sum(1 for _ in data.glob(f"{RECIPE}/{HOST}/*/manifest.json"))
        out["prune_s"] = round(cli(cfg, cache, "--json", "prune", env=env), 3)
        after = sum(1 for _ in data.glob(f"{RECIPE}/{HOST}/*/manifest.json"))
        out["removed"] = before - after
        out.update(verify_ratio(work, server, key, verify_mib, env))
        return out
    finally:
        server.stop()


def verify_ratio(
    work: Path, server: Any, key: signing.SigningKey, mib: int, env: dict[str, str]
) -> dict[str, Any]:
    """``verify --all`` (no key) vs ``sha256sum`` over the same object files, local and S3."""
    now = dt.datetime.now(dt.UTC)
    objects = 4
    size = mib * MIB // objects
    local = work / "repo-verify"
    sid = now.strftime(ID_TIME) + "-0b0b0b"
    d = local / RECIPE / HOST / sid
    d.mkdir(parents=True)
    stored = []
    chunk = os.urandom(MIB)
    for i in range(objects):
        path = d / f"part{i}.zst.age"
        with open(path, "wb") as fh:
            for _ in range(size // MIB):
                fh.write(chunk)
        digest = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
        stored.append(mf.StoredObject(f"part{i}", "extra", path.name, size, digest.stdout.split()[0]))
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    m = mf.Manifest(sid, RECIPE, HOST, stamp, stamp, {}, tuple(stored))
    text = mf.dumps(m).encode()
    (d / "manifest.sig").write_bytes(key.sign(text, signing.MANIFEST_NAMESPACE))
    (d / "manifest.json").write_bytes(text)
    bucket = Path(server.data_dir) / "bench"
    shutil.copytree(local, bucket / "verify")
    files = [str(p) for p in sorted(d.glob("*.zst.age"))]

    def sha() -> float:
        t0 = time.perf_counter()
        subprocess.run(["sha256sum", *files], capture_output=True, check=True)
        return time.perf_counter() - t0

    cache = work / "cache-verify"
    out: dict[str, Any] = {"verify_mib": mib}
    local_cfg = config(work / "verify-local.toml", str(local), key)
    s3_cfg = config(
        work / "verify-s3.toml",
        "s3://bench/verify",
        key,
        f'options = {{ endpoint_url = "{server.endpoint}" }}',
    )
    base = min(sha() for _ in range(3))
    out["sha256sum_s"] = round(base, 3)
    v_local = min(cli(local_cfg, cache, "verify", "--all") for _ in range(3))
    v_s3 = min(cli(s3_cfg, cache, "verify", "--all", env=env) for _ in range(3))
    out["verify_local_s"] = round(v_local, 3)
    out["verify_s3_s"] = round(v_s3, 3)
    out["verify_local_vs_sha256sum"] = round(v_local / base, 2)
    out["verify_s3_vs_sha256sum"] = round(v_s3 / base, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshots", type=int, default=10_000)
    ap.add_argument("--s3-snapshots", type=int, default=1_000)
    ap.add_argument("--verify-mib", type=int, default=256)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recipes-nightly-", dir=args.work))
    try:
        key = signing.generate_signing_key(work / "signing", "bench")
        result = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "listing": listing(work, args.snapshots, key),
            "s3": s3_prune(work, args.s3_snapshots, key, args.verify_mib),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
