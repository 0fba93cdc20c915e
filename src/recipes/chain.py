"""Incremental chains (duply's model): when a backup is full, which snapshot it builds on, and
which snapshots a restore applies, oldest first. Pure logic over manifests; reads no host."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Sequence

import attrs

from recipes import manifest as mf
from recipes.errors import RepositoryError

# duplicity's time units, as in duply's MAX_FULLBKP_AGE ("1M", "2W", "1Y2M"): s m h D W M Y.
_UNITS = {
    "s": dt.timedelta(seconds=1),
    "m": dt.timedelta(minutes=1),
    "h": dt.timedelta(hours=1),
    "D": dt.timedelta(days=1),
    "W": dt.timedelta(weeks=1),
    "M": dt.timedelta(days=30),
    "Y": dt.timedelta(days=365),
}
_DURATION = re.compile(r"(\d+)([smhDWMY])")


# The longest duration taken: ``now - LONGEST`` is still a date (9999Y would not be).
LONGEST = dt.timedelta(days=1000 * 365)


def parse_duration(text: str) -> dt.timedelta:
    """``"3M"`` -> 90 days; duplicity's units, case-sensitive (``m`` minutes, ``M`` months)."""
    text = text.strip()
    if not text or _DURATION.sub("", text):
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit, as in duply "
            "(s m h D W M Y: 12h, 7D, 2W, 3M, 1Y)"
        )
    try:
        total = sum((int(n) * _UNITS[unit] for n, unit in _DURATION.findall(text)), dt.timedelta())
    except OverflowError:
        total = LONGEST + LONGEST
    if total > LONGEST:  # further back than any date arithmetic from today can go
        raise ValueError(f"{text!r} is longer than 1000 years, the longest duration recipes takes")
    return total


def parse_time(stamp: str) -> dt.datetime:
    """A manifest's ``started``/``finished`` (``2026-11-23T10:15:00Z``) as an aware datetime."""
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


@attrs.frozen
class Decision:
    """What this backup will be: a full (level 0), or level N on top of ``parent``."""

    level: int
    parent: mf.Manifest | None
    reason: str
    previous: tuple[mf.Manifest, ...] = attrs.field(default=(), eq=False, repr=False)
    """The snapshots listed to decide (oldest first): what progress expects of a full."""


def choose(
    previous: Sequence[mf.Manifest],
    *,
    params: dict[str, object],
    recipients: Sequence[str],
    states: Sequence[str],
    full_every: dt.timedelta,
    now: dt.datetime,
    force_full: bool = False,
    lookup: Callable[[str], mf.Manifest | None] | None = None,
) -> Decision:
    """Full unless the latest snapshot can carry an incremental.

    ``previous`` is every committed snapshot of this recipe@host, oldest first; ``params`` the
    parameters whose change starts a new chain (``recipe.chain_of``: paths and excludes, not
    connections); ``states`` the tar state objects this backup needs from its parent
    (``files.snar``). The parent must have been made with the same such parameters and keys,
    hold every state, and its chain's full must be
    younger than ``full_every``; anything else starts a new chain.
    """
    if force_full:
        return Decision(0, None, "full requested (--full)")
    if not states:
        return Decision(0, None, "full: nothing in this recipe is archived incrementally")
    if not previous:
        return Decision(0, None, "full: no earlier snapshot of this recipe and host")
    parent = previous[-1]
    if _plain({k: parent.params.get(k) for k in params}) != _plain(params):
        return Decision(0, None, f"full: parameters differ from snapshot {parent.snapshot}")
    if tuple(parent.recipients) != tuple(recipients):
        return Decision(0, None, f"full: recipients differ from snapshot {parent.snapshot}")
    missing = [s for s in states if parent.object(s) is None]
    if missing:
        return Decision(0, None, f"full: snapshot {parent.snapshot} has no {', '.join(missing)}")
    by_id = {m.snapshot: m for m in previous}
    try:
        first = resolve(parent, lambda sid: by_id.get(sid) or (lookup(sid) if lookup else None))[0]
    except RepositoryError as exc:
        return Decision(0, None, f"full: {exc}")
    age = now - parse_time(first.started)
    if age >= full_every:
        days = age.total_seconds() / 86400
        return Decision(
            0, None, f"full: the chain's full {first.snapshot} is {days:.1f} days old (full_every reached)"
        )
    return Decision(parent.level + 1, parent, f"incremental level {parent.level + 1} on {parent.snapshot}")


def _plain(value: object) -> object:
    """As stored in a manifest: JSON types (tuples become lists)."""
    return json.loads(json.dumps(value, sort_keys=True))


def resolve(target: mf.Manifest, lookup: Callable[[str], mf.Manifest | None]) -> list[mf.Manifest]:
    """The chain a restore of ``target`` applies: its full first, ``target`` last."""
    chain = [target]
    seen = {target.snapshot}
    while chain[0].level > 0:
        parent_id = chain[0].parent
        if not parent_id:
            raise RepositoryError(
                f"snapshot {chain[0].snapshot} is level {chain[0].level} but names no parent"
            )
        parent = lookup(parent_id)
        if parent is None:
            raise RepositoryError(
                f"snapshot {chain[0].snapshot} needs its parent {parent_id}, which is not in the "
                "repository (the chain is broken: restore an older full, or copy the parent back)"
            )
        if parent.snapshot in seen or parent.level != chain[0].level - 1:
            raise RepositoryError(
                f"snapshot {chain[0].snapshot} (level {chain[0].level}) has parent {parent_id} "
                f"at level {parent.level}: the chain is inconsistent"
            )
        seen.add(parent.snapshot)
        chain.insert(0, parent)
    return chain
