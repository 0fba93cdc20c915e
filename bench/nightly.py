#!/usr/bin/env python3
"""Nightly operations at scale (issue 11): listing, prune and verify timings.

Run with the project's interpreter::

    .venv/bin/python bench/nightly.py [--snapshots 10000] [--s3-snapshots 1000]
                                      [--verify-mib 256] [--backup-scale 1] [--backup-rounds 2]
                                      [--only listing,s3,backup] [--data DIR] [--work DIR]
                                      [--out FILE.json]

What it measures, each with the real ``recipes`` CLI in a subprocess:

* ``snapshots`` and ``prune --dry-run`` over N synthetic signed snapshots in a local
  repository, cold (empty controller cache) and warm (the verified-manifest cache filled by the
  cold run). Goal: warm <= 2 s at 10,000 snapshots.
* ``prune`` (for real) of a recipe@host with 1,000 snapshots in S3 (``rclone serve s3``, as the
  test fixture starts it), and its dry run: reported, no goal.
* ``verify --all`` (no key) against ``sha256sum`` over the same objects: a ratio (goal <= 1.25),
  on a local repository against ``sha256sum FILES``, on S3 against ``rclone cat | sha256sum``.
* A full backup (``recipes run django`` over a private sshd) into S3 against ``ssh tar | zstd -1
  | age -r | rclone rcat`` to the same server, at 1x and 4x of bench/run.py's reference dataset
  (1x = ``--backup-scale``: 1 is issue 11's "1.5 GB set", 0.25 shows the fixed start-up costs at
  a quarter of it), ABBA-ordered, with peak RSS under GNU time (goals <= 1.0, 100 MB);
  then ``verify --deep`` against ``rclone cat | age -d | zstd -d | tar t`` over the objects the
  last full stored (goal <= 1.2), and against the same pipeline over the stored files.

Only the standard library, standard tools (age, zstd, tar, GNU time, sshd) and the project
(its test helpers start rclone; bench/run.py's dataset, sshd and runner) are used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
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
    """``verify --all`` (no key) vs ``sha256sum`` over the same object files (local repository),
    and vs ``rclone cat | sha256sum`` per object over the same S3 server (S3 repository)."""
    from tests import servers

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
    files = [str(p) for p in sorted(d.glob("*.zst.age"))]
    remote = "benchs3"
    rclone_env = {**os.environ, **_rclone_env(server, remote)}
    # through the server (not into its folder): its listing then knows the names at once
    subprocess.run(
        [servers.rclone_binary(), "copy", str(local), f"{remote}:bench/verify"],
        env=rclone_env,
        capture_output=True,
        check=True,
    )

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
    rel = d.relative_to(local)
    script = " && ".join(
        f"{servers.rclone_binary()} cat {remote}:bench/verify/{rel}/{Path(f).name} | sha256sum" for f in files
    )
    want = [o.sha256 for o in sorted(stored, key=lambda o: o.path)]

    def sha_s3() -> float:
        t0 = time.perf_counter()
        done = subprocess.run(
            ["bash", "-c", "set -o pipefail; " + script],
            env=rclone_env,
            capture_output=True,
            check=True,
            text=True,
        )
        took = time.perf_counter() - t0
        got = [line.split()[0] for line in done.stdout.splitlines()]
        if got != want:  # rclone cat of a name it cannot see prints nothing and succeeds
            raise SystemExit(f"rclone cat | sha256sum did not read the objects: {got} != {want}")
        return took

    base = min(sha() for _ in range(3))
    base_s3 = min(sha_s3() for _ in range(3))
    out["sha256sum_s"] = round(base, 3)
    out["rclone_cat_sha256sum_s"] = round(base_s3, 3)
    v_local = min(cli(local_cfg, cache, "verify", "--all") for _ in range(3))
    v_s3 = min(cli(s3_cfg, cache, "verify", "--all", env=env) for _ in range(3))
    out["verify_local_s"] = round(v_local, 3)
    out["verify_s3_s"] = round(v_s3, 3)
    out["verify_local_vs_sha256sum"] = round(v_local / base, 2)
    out["verify_s3_vs_rclone_cat_sha256sum"] = round(v_s3 / base_s3, 2)
    out["verify_s3_vs_sha256sum_on_files"] = round(v_s3 / base, 2)
    return out


# --------------------------------------------------------------------------- full backup into S3


def _rclone_env(server: Any, remote: str) -> dict[str, str]:
    """An rclone remote named ``remote`` for the S3 server, from the environment (no config file)."""
    up = f"RCLONE_CONFIG_{remote.upper()}_"
    return {
        up + "TYPE": "s3",
        up + "PROVIDER": "Other",
        up + "ACCESS_KEY_ID": server.key,
        up + "SECRET_ACCESS_KEY": server.secret,
        up + "ENDPOINT": server.endpoint,
        up + "ENV_AUTH": "false",
    }


def _backup_config(
    path: Path, url: str, server: Any, sshd: Any, recipient: str, identity: Path, signing_key: Path
) -> Path:
    """A ``recipes.toml``: the S3 repository with its endpoint in ``options``, keys in the env."""
    signer = signing_key.with_suffix(".pub").read_text().strip()
    host_key = " ".join((sshd.dir / "host_key.pub").read_text().split()[:2])
    path.write_text(
        "\n".join(
            [
                "[repository]",
                f'url = "{url}"',
                f'options = {{ endpoint_url = "{server.endpoint}" }}',
                f'recipients = ["{recipient}"]',
                f'identity_file = "{identity}"',
                f'cache_dir = "{path.parent / "recipes-cache"}"',
                f'signing_key = "{signing_key}"',
                f'signers = ["{signer}"]',
                "",
                "[hosts.bench]",
                'address = "127.0.0.1"',
                'user = "root"',
                f"port = {sshd.port}",
                f'key_file = "{sshd.key}"',
                f'host_key = "{host_key}"',
                "",
            ]
        )
    )
    return path


def backup_s3(work: Path, data_work: Path, scale: float, rounds: int, settle: float) -> dict[str, Any]:
    """Full backup into S3 vs ``ssh tar | zstd -1 | age | rclone rcat`` to the same server, at 1x
    and 4x of the reference dataset at ``scale``; then ``verify --deep`` vs ``age -d | zstd -d |
    tar t`` over the objects the last full stored. Wall time and peak RSS under GNU time."""
    from tests import servers

    from bench import run as br

    remote = "benchs3"
    server = servers.start_s3()
    sshd = br.Sshd(work)
    out: dict[str, Any] = {"scale_1x": scale, "rounds": rounds}
    try:
        sshd.start()
        server.make_bucket("backup")
        bucket = Path(server.data_dir) / "backup"
        identity = work / "identity.txt"
        res = subprocess.run(["age-keygen", "-o", str(identity)], capture_output=True, text=True, check=True)
        recipient = next(w for w in (res.stderr + res.stdout).split() if w.startswith("age1"))
        signing_key = work / "signing_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(signing_key)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        subprocess.run([*sshd.ssh_words(), "true"], check=True, stdin=subprocess.DEVNULL)
        scratch = work / "scratch"
        scratch.mkdir()
        runner = br.Runner(scratch, sshd, settle)
        env = {**server.env(), "AWS_EC2_METADATA_DISABLED": "true", **_rclone_env(server, remote)}
        rclone = servers.rclone_binary()
        # Once per machine and botocore version a first S3 command writes the trimmed botocore
        # data into the cache (about 0.4 s): a nightly job pays it once, so it is not measured.
        warm = _backup_config(
            work / "warm.toml", "s3://backup/warm", server, sshd, recipient, identity, signing_key
        )
        subprocess.run(
            [sys.executable, "-m", "recipes", "--config", str(warm), "snapshots"],
            env={**os.environ, **env},
            capture_output=True,
            check=True,
            cwd=ROOT,
        )
        for label, factor in (("1x", 1), ("4x", 4)):
            ds = br.ensure_dataset(data_work / f"scale-{scale * factor:g}", br.DatasetSpec.at(scale * factor))
            case: dict[str, Any] = {"bytes": ds.total_bytes, "files": len(ds.files), "dataset": str(ds.root)}
            walls: dict[str, list[float]] = {"recipes": [], "limit": []}
            rss: dict[str, list[int]] = {"recipes": [], "limit": []}
            last = ""
            for n in range(rounds):
                order = ("limit", "recipes") if n % 2 == 0 else ("recipes", "limit")
                for who in order:
                    prefix = f"{label}-r{n}-{who}"
                    if who == "limit":
                        tar = f"tar cf - -C {shlex.quote(str(ds.root))} . | zstd -q -1 -T0"
                        script = (
                            f"set -o pipefail; {shlex.join(sshd.ssh_words())} {shlex.quote(tar)}"
                            f" | age -r {recipient} | {rclone} rcat"
                            f" {remote}:backup/{prefix}/files.tar.zst.age"
                        )
                        sample, _ = runner.run(["bash", "-c", script], env=env, what=prefix, warm=ds.root)
                    else:
                        cfg = _backup_config(
                            work / f"{prefix}.toml",
                            f"s3://backup/{prefix}",
                            server,
                            sshd,
                            recipient,
                            identity,
                            signing_key,
                        )
                        cmd = [sys.executable, "-m", "recipes", "--config", str(cfg), "--json", "run", RECIPE]
                        cmd += ["--host", "bench", "--set", f"root={ds.root}"]
                        sample, stdout = runner.run(cmd, env=env, what=prefix, warm=ds.root)
                        if json.loads(stdout).get("level") != 0:
                            raise SystemExit(f"{prefix}: not a full snapshot")
                        last = prefix
                    stored = br.tree_bytes(bucket / prefix)
                    walls[who].append(sample.wall)
                    rss[who].append(sample.max_rss_kb)
                    br.log(
                        f"backup {prefix}: {sample.wall:.2f}s, peak RSS {sample.max_rss_kb / 1024:.0f} MB, "
                        f"stored {stored / MIB:.0f} MiB"
                    )
                    if who == "limit" or n < rounds - 1:
                        shutil.rmtree(bucket / prefix)
            for who in walls:
                case[f"{who}_wall_s"] = walls[who]
                case[f"{who}_peak_rss_mb"] = round(max(rss[who]) / 1024, 1)
            case["ratio_recipes_vs_rcat"] = round(
                statistics.median(r / lim for r, lim in zip(walls["recipes"], walls["limit"], strict=True)), 2
            )
            case["verify_deep"] = deep_ratio(
                runner, work / f"{last}.toml", bucket / last, identity, env, remote
            )
            shutil.rmtree(bucket / last)
            out[label] = case
        return out
    finally:
        sshd.stop()
        server.stop()


DEEP_ROUNDS = 6
"""Rounds of the four ``verify --deep`` cases (a best of three in one block drifted: 1.2x-1.6x)."""


def deep_ratio(
    runner: Any, cfg: Path, stored: Path, identity: Path, env: dict[str, str], remote: str
) -> dict[str, Any]:
    """``verify --deep`` (over S3) vs ``rclone cat | age -d | zstd -d | tar t`` per object (over the
    same S3 server) and ``age -d FILE | zstd -d | tar t`` (the objects' files in rclone's folder);
    and ``verify --deep`` over those files as a local-folder repository vs the latter; medians of
    ``DEEP_ROUNDS`` interleaved rounds."""
    from tests import servers

    snap = next(stored.glob(f"{RECIPE}/*/*/manifest.json")).parent
    manifest = json.loads((snap / "manifest.json").read_text())
    rel = snap.relative_to(stored.parent)
    listing = " | tar tf - >/dev/null"
    s3_parts, local_parts = [], []
    for obj in manifest["objects"]:
        tail = " | zstd -q -d" + (listing if obj["path"].endswith(".tar.zst.age") else " >/dev/null")
        age = f"age -d -i {shlex.quote(str(identity))}"
        s3_parts.append(f"{servers.rclone_binary()} cat {remote}:backup/{rel}/{obj['path']} | {age}{tail}")
        local_parts.append(f"{age} {shlex.quote(str(snap / obj['path']))}{tail}")
    # The same objects as a local-folder repository (rclone's folder is the bucket's layout).
    local_cfg = cfg.with_name(cfg.stem + "-local.toml")
    local_cfg.write_text(
        "\n".join(
            f'url = "{stored}"' if line.startswith("url = ") else line
            for line in cfg.read_text().splitlines()
            if not line.startswith("options = ")
        )
        + "\n"
    )
    cases = {
        "verify_deep": [sys.executable, "-m", "recipes", "--config", str(cfg), "verify", "--deep", "--all"],
        "verify_deep_local": [
            *(sys.executable, "-m", "recipes", "--config", str(local_cfg)),
            *("verify", "--deep", "--all"),
        ],
        "pipeline_s3": ["bash", "-c", "set -o pipefail; " + " && ".join(s3_parts)],
        "pipeline_local": ["bash", "-c", "set -o pipefail; " + " && ".join(local_parts)],
    }
    out: dict[str, Any] = {"objects": [o["path"] for o in manifest["objects"]], "rounds": DEEP_ROUNDS}
    walls: dict[str, list[float]] = {name: [] for name in cases}
    rss: dict[str, int] = dict.fromkeys(cases, 0)
    # interleaved like the backups (the order reversed every other round), so drift in the
    # machine hits every case alike; each ratio is the median of the rounds' own ratios
    for n in range(DEEP_ROUNDS):
        for name in list(cases) if n % 2 == 0 else list(reversed(cases)):
            sample = runner.run(cases[name], env=env, what=name)[0]
            walls[name].append(sample.wall)
            rss[name] = max(rss[name], sample.max_rss_kb)
    for name in cases:
        out[f"{name}_walls_s"] = [round(w, 3) for w in walls[name]]
        out[f"{name}_s"] = round(statistics.median(walls[name]), 3)
        out[f"{name}_peak_rss_mb"] = round(rss[name] / 1024, 1)

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(walls[a], walls[b], strict=True)), 2)

    out["ratio_vs_pipeline_s3"] = ratio("verify_deep", "pipeline_s3")
    out["ratio_vs_pipeline_local"] = ratio("verify_deep", "pipeline_local")
    out["ratio_local_vs_pipeline_local"] = ratio("verify_deep_local", "pipeline_local")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshots", type=int, default=10_000)
    ap.add_argument("--s3-snapshots", type=int, default=1_000)
    ap.add_argument("--verify-mib", type=int, default=256)
    ap.add_argument(
        "--backup-scale", type=float, default=1.0, help="dataset scale of the 1x backup (1: the 1.5 GB set)"
    )
    ap.add_argument("--backup-rounds", type=int, default=2)
    ap.add_argument("--settle-timeout", type=float, default=30.0)
    ap.add_argument("--data", type=Path, default=Path("/var/tmp/recipes-nightly"), help="cached datasets")
    ap.add_argument("--only", default="listing,s3,backup", help="comma-separated: listing,s3,backup")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    only = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="recipes-nightly-", dir=args.work))
    from bench import run as br

    result: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": br.source_revision(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    try:
        key = signing.generate_signing_key(work / "signing", "bench")
        if "listing" in only:
            result["listing"] = listing(work, args.snapshots, key)
        if "s3" in only:
            result["s3"] = s3_prune(work, args.s3_snapshots, key, args.verify_mib)
        if "backup" in only:
            args.data.mkdir(parents=True, exist_ok=True)
            result["backup"] = backup_s3(
                work, args.data, args.backup_scale, args.backup_rounds, args.settle_timeout
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
