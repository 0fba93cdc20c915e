"""Retention on synthetic manifests: duply's max_age and max_fulls_with_incrs (the seed's worked
example), restic's GFS keeps, and the rule that a kept snapshot's chain is never broken."""

from __future__ import annotations

import datetime as dt
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from recipes import chain
from recipes import manifest as mf
from recipes.config import RetentionConfig
from recipes.retention import Policy, Verdict, decide

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def snap(when: dt.datetime, level: int = 0, parent: str | None = None, n: int = 0) -> mf.Manifest:
    sid = f"{when:%Y%m%dT%H%M%SZ}-{n:06x}"
    started = f"{when:%Y-%m-%dT%H:%M:%SZ}"
    return mf.Manifest(
        snapshot=sid,
        recipe="django",
        host="web1",
        started=started,
        finished=started,
        params={},
        objects=(),
        level=level,
        parent=parent,
    )


def history(days: int, full_every: str = "3M", per_day: int = 1) -> list[mf.Manifest]:
    """Nightly runs for ``days`` days up to NOW, as `recipes run` chains them: a full when the
    chain's full is full_every old, else an incremental on the latest."""
    every = chain.parse_duration(full_every)
    out: list[mf.Manifest] = []
    full: mf.Manifest | None = None
    for day in range(days, -1, -1):
        for k in range(per_day):
            when = NOW - dt.timedelta(days=day) + dt.timedelta(minutes=k) - dt.timedelta(hours=10)
            if full is None or when - chain.parse_time(full.started) >= every:
                full = snap(when, n=len(out))
                out.append(full)
            else:
                out.append(snap(when, out[-1].level + 1, out[-1].snapshot, n=len(out)))
    return out


def kept(verdicts: list[Verdict]) -> set[str]:
    return {v.snapshot for v in verdicts if v.keep}


def chains(snapshots: list[mf.Manifest]) -> list[list[mf.Manifest]]:
    out: list[list[mf.Manifest]] = []
    for m in snapshots:
        if m.level == 0:
            out.append([])
        out[-1].append(m)
    return out


SEED = Policy(max_age=chain.parse_duration("2Y"), max_age_text="2Y", max_fulls_with_incrs=2)


def test_the_seeds_worked_example_quarterly_fulls_for_two_years_daily_for_the_last_two_chains() -> None:
    snapshots = history(3 * 365)
    verdicts = decide(snapshots, SEED, NOW)
    every_chain = chains(snapshots)
    fulls = [c[0] for c in every_chain]
    two_years_ago = NOW - dt.timedelta(days=730)
    expected = {f.snapshot for f in fulls if chain.parse_time(f.started) >= two_years_ago}
    expected |= {m.snapshot for c in every_chain[-2:] for m in c}
    assert kept(verdicts) == expected

    left = [m for m in snapshots if m.snapshot in expected]
    left_fulls = [m for m in left if m.level == 0]
    assert 8 <= len(left_fulls) <= 9  # "a total of about eight full backups"
    gaps = {
        (chain.parse_time(b.started) - chain.parse_time(a.started)).days
        for a, b in itertools.pairwise(left_fulls)
    }
    assert gaps == {90}  # quarterly
    incrementals = [m for m in left if m.level > 0]
    assert {m.parent for m in incrementals} <= {m.snapshot for m in left}
    assert 90 <= len(incrementals) <= 180  # daily history of the last three to six months
    assert min(chain.parse_time(m.started) for m in incrementals) > NOW - dt.timedelta(days=181)
    # Every removal names its rule.
    reasons = {v.reason.split(":")[0] for v in verdicts if not v.keep}
    assert reasons == {"max_age 2Y", "max_fulls_with_incrs 2"}


def test_one_prune_equals_a_prune_every_week() -> None:
    """max_age judges a chain by what max_fulls_with_incrs leaves of it, as duply's nightly
    purge does, so pruning late removes exactly what pruning every night would have."""
    snapshots = history(3 * 365)
    at_once = kept(decide(snapshots, SEED, NOW))
    alive: list[mf.Manifest] = []
    for m in snapshots:
        alive.append(m)
        when = chain.parse_time(m.started)
        if when.weekday() == 0:
            survivors = kept(decide(alive, SEED, when))
            alive = [a for a in alive if a.snapshot in survivors]
    assert kept(decide(alive, SEED, NOW)) == at_once


def test_no_rule_removes_nothing() -> None:
    snapshots = history(800)
    verdicts = decide(snapshots, Policy(), NOW)
    assert all(v.keep for v in verdicts)
    assert verdicts[0].reason == "no retention rule is configured"


def test_policy_from_config_defaults_and_zero_turns_a_rule_off() -> None:
    p = Policy.from_config(RetentionConfig())
    assert p.max_age == dt.timedelta(days=730)
    assert p.max_fulls_with_incrs == 2
    assert not p.keeps
    off = Policy.from_config(RetentionConfig(max_age="0s", max_fulls_with_incrs=0, keep_daily=3))
    assert (off.max_age, off.max_fulls_with_incrs, off.keep_daily) == (None, None, 3)
    assert off.describe() == "keep_daily 3"


def test_keep_last_alone_keeps_the_newest_n_and_removes_the_rest() -> None:
    fulls = [snap(NOW - dt.timedelta(days=d), n=d) for d in range(10, 0, -1)]
    verdicts = decide(fulls, Policy(keep_last=3), NOW)
    assert [v.keep for v in verdicts] == [False] * 7 + [True] * 3
    assert verdicts[0].reason == "no keep_* rule keeps it"
    assert verdicts[-1].reason == "keep_last 3"


def test_keep_daily_keeps_the_newest_of_each_of_the_last_days_that_have_snapshots() -> None:
    base = dt.datetime(2026, 11, 20, 1, 0, tzinfo=dt.UTC)
    days = [
        base,
        base + dt.timedelta(hours=5),
        base + dt.timedelta(days=2),
        base + dt.timedelta(days=2, hours=3),
    ]
    older = [snap(base - dt.timedelta(days=5), n=9)]
    snapshots = older + [snap(t, n=i) for i, t in enumerate(days)]
    verdicts = decide(snapshots, Policy(keep_daily=2), NOW)
    # Nov 21 has no snapshot, so the last two days with snapshots are Nov 22 and Nov 20.
    assert [v.keep for v in verdicts] == [False, False, True, False, True]
    assert verdicts[2].reason == "keep_daily 2: the newest of 2026-11-20"


def test_gfs_weekly_monthly_yearly_keep_old_fulls_past_max_age() -> None:
    snapshots = history(4 * 365, full_every="1M")
    policy = Policy(
        max_age=chain.parse_duration("1Y"),
        max_age_text="1Y",
        max_fulls_with_incrs=1,
        keep_monthly=18,
        keep_yearly=4,
    )
    verdicts = decide(snapshots, policy, NOW)
    by_id = {m.snapshot: m for m in snapshots}
    kept_ids = kept(verdicts)
    years = {by_id[s].started[:4] for s in kept_ids}
    assert years == {"2023", "2024", "2025", "2026"}  # keep_yearly 4; history starts 2022-11-24
    months = {by_id[s].started[:7] for s in kept_ids}
    assert len(months) >= 18  # 18 months with snapshots keep one each, past max_age 1Y
    yearly = [v for v in verdicts if v.reason.startswith("keep_yearly")]
    assert len(yearly) >= 1
    # A yearly/monthly keep of an incremental keeps its whole chain.
    for sid in kept_ids:
        m = by_id[sid]
        assert m.parent is None or m.parent in kept_ids


def test_a_kept_incremental_keeps_its_whole_chain() -> None:
    snapshots = history(40, full_every="3M")  # one chain: a full and 40 incrementals
    verdicts = decide(snapshots, Policy(keep_last=1), NOW)
    assert all(v.keep for v in verdicts)
    assert verdicts[-1].reason == "keep_last 1"
    assert verdicts[0].reason == f"needed by kept snapshot {snapshots[-1].snapshot} (its chain)"


def test_max_fulls_with_incrs_removes_incrementals_of_older_fulls_and_keeps_the_fulls() -> None:
    snapshots = history(300, full_every="1M")
    verdicts = decide(snapshots, Policy(max_fulls_with_incrs=2), NOW)
    every_chain = chains(snapshots)
    expected = {c[0].snapshot for c in every_chain} | {m.snapshot for c in every_chain[-2:] for m in c}
    assert kept(verdicts) == expected


def test_the_latest_chain_stays_even_when_everything_is_older_than_max_age() -> None:
    old = NOW - dt.timedelta(days=1000)
    full = snap(old, n=1)
    incr = snap(old + dt.timedelta(days=1), 1, full.snapshot, n=2)
    older = snap(old - dt.timedelta(days=100), n=0)
    verdicts = decide([older, full, incr], SEED, NOW)
    assert [v.keep for v in verdicts] == [False, True, True]
    assert verdicts[2].reason == "the latest snapshot is always kept"


def test_an_untrusted_snapshot_is_pinned_keeps_its_parents_and_counts_for_nothing() -> None:
    snapshots = history(200, full_every="1M")
    every_chain = chains(snapshots)
    # A forged full at the end, and a forged incremental on an old chain's middle.
    forged_full = snap(NOW + dt.timedelta(minutes=1), n=999)
    victim = every_chain[1][5]
    forged_incr = snap(NOW + dt.timedelta(minutes=2), victim.level + 1, victim.snapshot, n=998)
    pinned = {forged_full.snapshot: "untrusted", forged_incr.snapshot: "untrusted"}
    verdicts = decide([*snapshots, forged_full, forged_incr], Policy(max_fulls_with_incrs=2), NOW, pinned)
    ids = kept(verdicts)
    assert {forged_full.snapshot, forged_incr.snapshot} <= ids
    assert {m.snapshot for m in every_chain[1][:6]} <= ids  # the forged one's parents
    assert every_chain[1][6].snapshot not in ids
    # The forged full does not push the second-newest real chain out of the newest two.
    assert {m.snapshot for c in every_chain[-2:] for m in c} <= ids


def test_a_broken_chain_is_judged_as_its_own_chain() -> None:
    f1 = snap(NOW - dt.timedelta(days=30), n=1)
    orphan = snap(NOW - dt.timedelta(days=20), 2, "20200101T000000Z-gone", n=2)
    f2 = snap(NOW - dt.timedelta(days=10), n=3)
    f3 = snap(NOW - dt.timedelta(days=5), n=4)
    verdicts = decide([f1, orphan, f2, f3], Policy(max_fulls_with_incrs=2), NOW)
    assert [v.keep for v in verdicts] == [True, False, True, True]
    assert "not one of the newest 2 fulls" in verdicts[1].reason


@st.composite
def histories(draw: st.DrawFn) -> list[mf.Manifest]:
    out: list[mf.Manifest] = []
    t = NOW - dt.timedelta(days=draw(st.integers(0, 3000)))
    for i in range(draw(st.integers(1, 40))):
        t += dt.timedelta(hours=draw(st.integers(1, 24 * 120)))
        incremental: bool = draw(st.booleans())
        if out and incremental:
            out.append(snap(t, out[-1].level + 1, out[-1].snapshot, n=i))
        else:
            out.append(snap(t, n=i))
    return out


maybe = st.one_of(st.none(), st.integers(1, 6))


@settings(max_examples=200, deadline=None)
@given(
    snapshots=histories(),
    max_age=st.one_of(st.none(), st.integers(1, 2000)),
    fulls=maybe,
    last=maybe,
    daily=maybe,
    weekly=maybe,
    monthly=maybe,
    yearly=maybe,
    pin=st.integers(0, 50),
)
def test_the_kept_set_is_closed_under_parents(
    snapshots: list[mf.Manifest],
    max_age: int | None,
    fulls: int | None,
    last: int | None,
    daily: int | None,
    weekly: int | None,
    monthly: int | None,
    yearly: int | None,
    pin: int,
) -> None:
    policy = Policy(
        max_age=dt.timedelta(days=max_age) if max_age else None,
        max_fulls_with_incrs=fulls,
        keep_last=last,
        keep_daily=daily,
        keep_weekly=weekly,
        keep_monthly=monthly,
        keep_yearly=yearly,
    )
    pinned = {snapshots[pin].snapshot: "untrusted"} if pin < len(snapshots) else {}
    verdicts = decide(snapshots, policy, NOW, pinned)
    assert [v.snapshot for v in verdicts] == [m.snapshot for m in snapshots]
    ids = kept(verdicts)
    for m in snapshots:
        if m.snapshot in ids and m.parent is not None:
            assert m.parent in ids
    assert snapshots[-1].snapshot in ids
    assert set(pinned) <= ids
    assert all(v.reason for v in verdicts)
    if not policy.duply and not policy.keeps:
        assert len(ids) == len(snapshots)


def test_the_longest_max_age_keeps_everything_without_overflowing() -> None:
    """``max_age = "1000Y"``, the longest taken, is a date arithmetic away from any snapshot."""
    snapshots = history(400)
    longest = Policy(max_age=chain.parse_duration("1000Y"), max_age_text="1000Y")
    assert kept(decide(snapshots, longest, NOW)) == {m.snapshot for m in snapshots}
