"""Apply retention to a repository: per recipe@host, under its lock, remove the snapshots
``retention.decide`` lets go (newest first, manifest first) and the debris of killed runs.

Never deleted: a snapshot whose manifest is damaged or untrusted (what cannot be read or
believed), any parent of a kept snapshot, and a directory without a manifest that is younger
than ``DEBRIS_AGE`` (a run may still be writing it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
from typing import Any

import attrs

from recipes import retention
from recipes.errors import RepositoryError
from recipes.locks import LOCKS
from recipes.repository import ID_TIME, MANIFEST, SIGNATURE, SNAPSHOT_ID, Repository, safe_name
from recipes.trust import Trust

log = logging.getLogger("recipes")

DEBRIS_AGE = dt.timedelta(days=1)


@attrs.frozen
class Entry:
    """One snapshot of a pair: kept or removed, and why."""

    snapshot: str
    level: int
    started: str
    keep: bool
    reason: str


@attrs.frozen
class Report:
    """What prune did (or, with ``dry_run``, would do) to one recipe@host."""

    recipe: str
    host: str
    policy: str
    dry_run: bool
    entries: tuple[Entry, ...]
    damaged: tuple[str, ...]
    """Snapshots left alone because their manifest cannot be read: ``id: reason``."""
    debris: tuple[str, ...]
    """Directories without a manifest older than DEBRIS_AGE (killed runs, half-removed snapshots)."""

    @property
    def removed(self) -> list[Entry]:
        return [e for e in self.entries if not e.keep]

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "host": self.host,
            "policy": self.policy,
            "dry_run": self.dry_run,
            "snapshots": [attrs.asdict(e) for e in self.entries],
            "damaged": list(self.damaged),
            "debris": list(self.debris),
        }


def pairs(repo: Repository, recipe: str | None = None, host: str | None = None) -> list[tuple[str, str]]:
    """Every recipe@host folder in the repository (as stored: safe names), sorted."""
    if repo.local and os.path.isfile(repo.root):  # ls would list the file itself: "no snapshots"
        raise RepositoryError(
            f"repository {repo.url}: {repo.root} is a file where a folder must be; move that file "
            "away, or point --repo / [repository] url at a folder"
        )
    found = []
    for recipe_dir in _dirs(repo, repo.root):
        name = recipe_dir.rsplit("/", 1)[-1]
        if name == LOCKS or (recipe is not None and name != safe_name(recipe)):
            continue
        for host_dir in _dirs(repo, recipe_dir):
            h = host_dir.rsplit("/", 1)[-1]
            if host is None or h == safe_name(host):
                found.append((name, h))
    return sorted(found)


def _dirs(repo: Repository, path: str) -> list[str]:
    try:
        entries = repo.fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/") for e in entries if e.get("type") == "directory")


def plan(
    repo: Repository, trust: Trust, policy: retention.Policy, recipe: str, host: str, now: dt.datetime
) -> Report:
    """Decide for one recipe@host without changing anything."""
    damaged: list[str] = []
    items = repo.listed(recipe, host, damaged)
    pinned = {}
    manifests = []
    for item in items:
        m = item.manifest
        problem = trust.problem(item)
        if problem is not None:
            # Known by where it lies, not by the id it claims: a copy or a forgery naming a real
            # snapshot's id must never make prune delete (or keep) that real snapshot.
            m = attrs.evolve(m, snapshot=item.snapshot_dir)
            pinned[m.snapshot] = f"left alone: untrusted ({problem})"
        manifests.append(m)
    verdicts = retention.decide(manifests, policy, now, pinned)
    by_id = {m.snapshot: m for m in manifests}
    entries = tuple(
        Entry(v.snapshot, by_id[v.snapshot].level, by_id[v.snapshot].started, v.keep, v.reason)
        for v in verdicts
    )
    bad = [_damaged(d) for d in damaged]
    listed = set(by_id) | {sid for sid, _ in bad}
    debris = []
    base = repo._path(recipe, host)
    # A killed upload leaves no object, only a pending multipart upload: its snapshot is debris too.
    uploading = {
        f"{base}/{key[len(base) + 1 :].split('/', 1)[0]}" for key, _ in repo.unfinished_uploads(base)
    }
    for path in sorted(set(_dirs(repo, base)) | uploading):
        sid = path.rsplit("/", 1)[-1]
        if sid in listed or not SNAPSHOT_ID.match(sid):
            continue  # a listed snapshot, or nothing of ours
        started = dt.datetime.strptime(sid[: len("20261122T101500Z")], ID_TIME).replace(tzinfo=dt.UTC)
        if now - started < DEBRIS_AGE or repo.fs.exists(f"{path}/{MANIFEST}"):
            continue  # perhaps a run still writing it; or a manifest appeared meanwhile
        debris.append(sid)
    return Report(
        recipe,
        host,
        policy.describe(),
        True,
        entries,
        tuple(f"{sid}: left alone: its manifest cannot be read ({why})" for sid, why in bad),
        tuple(debris),
    )


def _damaged(entry: str) -> tuple[str, str]:
    """``recipe/host/snapshot: reason`` (from ``Repository.listed``) as (snapshot, reason)."""
    path, _, why = entry.partition(": ")
    return path.rsplit("/", 1)[-1], why


def apply(repo: Repository, report: Report) -> Report:
    """Remove what ``report`` lets go: snapshots newest first (a child before its parent, so an
    interrupted prune never leaves a listed snapshot whose parent is gone), each one's manifest
    and signature before its objects (a half-removed snapshot is never listed), then debris."""
    for entry in reversed(report.removed):
        remove_snapshot(repo, report.recipe, report.host, entry.snapshot)
        log.info("removed snapshot %s of %s@%s: %s", entry.snapshot, report.recipe, report.host, entry.reason)
    for sid in report.debris:
        repo.abort_uploads(repo._path(report.recipe, report.host, sid))
        _rm_tree(repo, repo._path(report.recipe, report.host, sid))
        log.info("removed debris %s of %s@%s (no manifest: a killed run)", sid, report.recipe, report.host)
    return attrs.evolve(report, dry_run=False)


def remove_snapshot(repo: Repository, recipe: str, host: str, snapshot: str) -> None:
    """Delete one snapshot: manifest.json first (it stops being listed), its signature, then the rest."""
    base = repo._path(recipe, host, snapshot)
    for name in (MANIFEST, SIGNATURE):
        with contextlib.suppress(FileNotFoundError):
            repo.fs.rm_file(f"{base}/{name}")
    _rm_tree(repo, base)


def _rm_tree(repo: Repository, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        repo.fs.rm(path, recursive=True)


def prune(
    repo: Repository,
    trust: Trust,
    policy: retention.Policy,
    *,
    recipe: str | None = None,
    host: str | None = None,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> list[Report]:
    """Prune every recipe@host in ``repo`` (or those matching ``recipe``/``host``); each under its
    lock unless ``dry_run`` (which reads only, so it never waits for or blocks a backup)."""
    reports = []
    for r, h in pairs(repo, recipe, host):
        if dry_run:
            reports.append(plan(repo, trust, policy, r, h, now or dt.datetime.now(dt.UTC)))
            continue
        with repo.lock(r, h, "prune"):
            report = plan(repo, trust, policy, r, h, now or dt.datetime.now(dt.UTC))
            reports.append(apply(repo, report))
    return reports
