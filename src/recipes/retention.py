"""Which snapshots ``prune`` removes: duply's rules (``max_age``, ``max_fulls_with_incrs``) plus
restic's GFS keeps (``keep_last``, ``keep_daily``...). Pure logic over the manifests of one
recipe@host; reads no repository.

A snapshot is kept when a ``keep_*`` rule keeps it or duply's rules do not remove it; every
parent of a kept snapshot is kept too (``chain.resolve``), so pruning never breaks a chain.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from recipes import chain
from recipes import manifest as mf
from recipes.errors import RepositoryError

if TYPE_CHECKING:
    from recipes.config import RetentionConfig

KEEPS = ("keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


@attrs.frozen
class Policy:
    """The retention rules; None (or 0) for a rule means it is not applied."""

    max_age: dt.timedelta | None = None
    max_age_text: str = ""
    max_fulls_with_incrs: int | None = None
    keep_last: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None

    @classmethod
    def from_config(cls, cfg: RetentionConfig) -> Policy:
        """From ``[retention]``; ``max_age = "0s"`` or ``max_fulls_with_incrs = 0`` turn a rule off."""
        age = chain.parse_duration(cfg.max_age) if cfg.max_age else None
        return cls(
            max_age=age or None,
            max_age_text=cfg.max_age if age else "",
            max_fulls_with_incrs=cfg.max_fulls_with_incrs or None,
            keep_last=cfg.keep_last or None,
            keep_daily=cfg.keep_daily or None,
            keep_weekly=cfg.keep_weekly or None,
            keep_monthly=cfg.keep_monthly or None,
            keep_yearly=cfg.keep_yearly or None,
        )

    @property
    def duply(self) -> bool:
        """Whether any of duply's removing rules is set."""
        return bool(self.max_age) or bool(self.max_fulls_with_incrs)

    @property
    def keeps(self) -> bool:
        return any(getattr(self, name) for name in KEEPS)

    def describe(self) -> str:
        parts = []
        if self.max_age:
            parts.append(f"max_age {self.max_age_text or self.max_age}")
        if self.max_fulls_with_incrs:
            parts.append(f"max_fulls_with_incrs {self.max_fulls_with_incrs}")
        parts += [f"{name} {getattr(self, name)}" for name in KEEPS if getattr(self, name)]
        return ", ".join(parts) or "no rules (nothing is removed)"


@attrs.frozen
class Verdict:
    """One snapshot's fate and the rule that decided it."""

    snapshot: str
    keep: bool
    reason: str


def _bucket(name: str) -> Callable[[dt.datetime], str]:
    """The period a snapshot falls in, by its UTC start: day, ISO week, month, year."""
    return {
        "keep_daily": lambda t: f"{t:%Y-%m-%d}",
        "keep_weekly": lambda t: f"{t.isocalendar()[0]}-W{t.isocalendar()[1]:02d}",
        "keep_monthly": lambda t: f"{t:%Y-%m}",
        "keep_yearly": lambda t: f"{t:%Y}",
    }[name]


def _gfs(snapshots: Sequence[mf.Manifest], policy: Policy) -> dict[str, str]:
    """restic's keeps: the newest N; the newest snapshot of each of the last N days (weeks,
    months, years) that have snapshots. Returns kept id -> rule."""
    kept: dict[str, str] = {}
    newest_first = list(reversed(snapshots))
    if policy.keep_last:
        for m in newest_first[: policy.keep_last]:
            kept.setdefault(m.snapshot, f"keep_last {policy.keep_last}")
    for name in KEEPS[1:]:
        n = getattr(policy, name)
        if not n:
            continue
        key = _bucket(name)
        seen: list[str] = []
        for m in newest_first:
            b = key(chain.parse_time(m.started))
            if b in seen:
                continue
            if len(seen) == n:
                break
            seen.append(b)
            kept.setdefault(m.snapshot, f"{name} {n}: the newest of {b}")
    return kept


def _ancestry(m: mf.Manifest, by_id: Mapping[str, mf.Manifest]) -> list[mf.Manifest]:
    """``m``'s chain, its full first (``chain.resolve``); for a chain already broken (a parent
    missing or inconsistent), the ancestors that are present, so none of them goes either."""
    try:
        return chain.resolve(m, by_id.get)
    except RepositoryError:
        found = [m]
        seen = {m.snapshot}
        while (pid := found[0].parent) and found[0].level > 0 and pid in by_id and pid not in seen:
            parent = by_id[pid]
            seen.add(parent.snapshot)
            found.insert(0, parent)
        return found


def _day(stamp: str) -> str:
    return stamp[:10]


def decide(
    snapshots: Sequence[mf.Manifest],
    policy: Policy,
    now: dt.datetime,
    pinned: Mapping[str, str] | None = None,
) -> list[Verdict]:
    """Keep or remove each snapshot of one recipe@host (oldest first), with its rule.

    ``pinned`` maps snapshots that must stay whatever the rules say (untrusted manifests: never
    delete what cannot be believed) to why; they take no part in the rules (a forged full must
    not push real chains out of ``max_fulls_with_incrs``) but their parents are kept.
    The latest trusted snapshot's chain is always kept, as duplicity keeps its newest chain.
    """
    pinned = dict(pinned or {})
    by_id = {m.snapshot: m for m in snapshots}
    rated = [m for m in snapshots if m.snapshot not in pinned]
    if not policy.duply and not policy.keeps:
        return [
            Verdict(m.snapshot, True, pinned.get(m.snapshot, "no retention rule is configured"))
            for m in snapshots
        ]

    roots = {m.snapshot: _ancestry(m, by_id)[0] for m in rated}
    chains: dict[str, list[mf.Manifest]] = {}
    for m in rated:
        chains.setdefault(roots[m.snapshot].snapshot, []).append(m)

    removed: dict[str, str] = {}
    if not policy.duply:  # keep_* rules alone: restic's meaning, everything they do not keep goes
        for m in rated:
            removed[m.snapshot] = "no keep_* rule keeps it"
    if policy.max_fulls_with_incrs:
        n = policy.max_fulls_with_incrs
        fulls = [m for m in rated if m.level == 0]
        newest_fulls = {m.snapshot for m in fulls[-n:]}
        for root_id, members in chains.items():
            root = by_id[root_id]
            if root.level == 0:
                if root_id in newest_fulls:
                    continue
            elif sum(1 for f in fulls if f.started > root.started) < n:
                continue  # a broken chain newer than the Nth newest full
            why = (
                f"max_fulls_with_incrs {n}: an incremental of {'full ' if root.level == 0 else ''}"
                f"{root_id}, not one of the newest {n} fulls"
            )
            for m in members:
                if m.snapshot != root_id or root.level > 0:
                    removed.setdefault(m.snapshot, why)
    if policy.max_age:
        # Judged on what the chain keeps after max_fulls_with_incrs, as duply's nightly purge
        # sees it: an old chain is its bare full, so one prune equals a prune every night.
        cutoff = now - policy.max_age
        for root_id, members in chains.items():
            left = [m for m in members if m.snapshot not in removed] or members
            newest = left[-1]
            if chain.parse_time(newest.started) < cutoff:
                why = (
                    f"max_age {policy.max_age_text or policy.max_age}: its chain (full {root_id}) "
                    f"ends {_day(newest.started)}, before {cutoff:%Y-%m-%d}"
                )
                for m in members:
                    removed.setdefault(m.snapshot, why)

    reasons: dict[str, str] = {}
    for m in rated:
        if m.snapshot not in removed:
            reasons[m.snapshot] = "no rule removes it"
    for sid, why in _gfs(rated, policy).items():
        reasons[sid] = why
    if rated:  # never prune to nothing: the latest snapshot and its chain stay
        reasons.setdefault(rated[-1].snapshot, "the latest snapshot is always kept")
    for sid, why in pinned.items():
        reasons[sid] = why

    # Closure: every parent of a kept snapshot is kept, newest first so the reason names the
    # newest snapshot that needs it.
    for m in reversed(snapshots):
        if m.snapshot not in reasons:
            continue
        for parent in _ancestry(m, by_id)[:-1]:
            reasons.setdefault(parent.snapshot, f"needed by kept snapshot {m.snapshot} (its chain)")
    return [
        Verdict(m.snapshot, True, reasons[m.snapshot])
        if m.snapshot in reasons
        else Verdict(m.snapshot, False, removed[m.snapshot])
        for m in snapshots
    ]
