"""Incremental chains: when a backup is full, what it builds on, what a restore applies, and ids
that sort by time even for two backups in one second."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from recipes import chain
from recipes import manifest as mf
from recipes.errors import RepositoryError
from recipes.repository import Repository, new_snapshot_id

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
PARAMS = {"root": "/srv/site", "sqlite": ["/var/opt/x.db"]}
KEYS = ("age1abc",)
STATES = ["files.snar"]


def snap(
    sid: str,
    level: int = 0,
    parent: str | None = None,
    *,
    days_ago: float = 1,
    params: dict[str, object] | None = None,
    recipients: tuple[str, ...] = KEYS,
    objects: tuple[str, ...] = ("files.tar", "files.snar"),
) -> mf.Manifest:
    started = (NOW - dt.timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return mf.Manifest(
        snapshot=sid,
        recipe="django",
        host="web1",
        started=started,
        finished=started,
        params=PARAMS if params is None else params,
        objects=tuple(mf.StoredObject(o, "files", f"{o}.zst.age", 1, "00" * 32) for o in objects),
        level=level,
        parent=parent,
        recipients=recipients,
    )


def choose(previous: list[mf.Manifest], **kw: object) -> chain.Decision:
    args: dict[str, object] = {
        "params": PARAMS,
        "recipients": KEYS,
        "states": STATES,
        "full_every": chain.parse_duration("7D"),
        "now": NOW,
    }
    args.update(kw)
    return chain.choose(previous, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3M", dt.timedelta(days=90)),
        ("1W", dt.timedelta(days=7)),
        ("12h", dt.timedelta(hours=12)),
        ("30m", dt.timedelta(minutes=30)),
        ("1Y2M", dt.timedelta(days=425)),
        ("0s", dt.timedelta(0)),
    ],
)
def test_durations_use_duplicitys_units(text: str, expected: dt.timedelta) -> None:
    assert chain.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "3", "M", "3 months", "1d", "-1D", "3M x"])
def test_bad_durations_are_refused_with_the_units(text: str) -> None:
    with pytest.raises(ValueError, match="s m h D W M Y"):
        chain.parse_duration(text)


@pytest.mark.parametrize("text", ["1001Y", "9999Y", "99999999Y", "999999999999999999999D"])
def test_durations_past_1000_years_are_refused_in_one_line(text: str) -> None:
    """Past 1000 years ``now - max_age`` is no longer a date (9999Y overflowed prune), and huge
    numbers overflowed timedelta itself: both are a config error naming the value."""
    with pytest.raises(ValueError, match=f"'{text}' is longer than 1000 years"):
        chain.parse_duration(text)


def test_first_backup_is_full_and_the_next_builds_on_it() -> None:
    assert choose([]).level == 0
    full = snap("20261122T120000Z-aaaaaa")
    d = choose([full])
    assert (d.level, d.parent) == (1, full)
    incr = snap("20261122T130000Z-bbbbbb", 1, full.snapshot)
    d = choose([full, incr])
    assert (d.level, d.parent) == (2, incr)


def test_params_read_back_from_json_still_match() -> None:
    """A manifest's params come back from JSON (lists); a plan's hold tuples."""
    full = snap("20261122T120000Z-aaaaaa")
    assert choose([full], params={"sqlite": ("/var/opt/x.db",), "root": "/srv/site"}).level == 1


@pytest.mark.parametrize(
    ("parent", "kw", "reason"),
    [
        (snap("20261122T120000Z-aaaaaa"), {"force_full": True}, "--full"),
        (snap("20261122T120000Z-aaaaaa", params={"root": "/"}), {}, "parameters differ"),
        (snap("20261122T120000Z-aaaaaa", recipients=("age1other",)), {}, "recipients differ"),
        (snap("20261122T120000Z-aaaaaa", objects=("files.tar",)), {}, "has no files.snar"),
        (snap("20261115T120000Z-aaaaaa", days_ago=8), {}, "full_every reached"),
        (snap("20261122T120000Z-aaaaaa"), {"states": []}, "nothing in this recipe"),
    ],
)
def test_a_new_chain_starts_when_the_parent_cannot_carry_one(
    parent: mf.Manifest, kw: dict[str, object], reason: str
) -> None:
    d = choose([parent], **kw)
    assert d.level == 0 and d.parent is None
    assert reason in d.reason


def test_the_age_that_counts_is_the_chains_full() -> None:
    full = snap("20261115T120000Z-aaaaaa", days_ago=8)
    incr = snap("20261122T120000Z-bbbbbb", 1, full.snapshot, days_ago=1)
    assert choose([full, incr]).level == 0
    assert choose([full, incr], full_every=chain.parse_duration("9D")).level == 2


def test_restore_chain_runs_from_the_full_to_the_target() -> None:
    a = snap("20261120T000000Z-aaaaaa")
    b = snap("20261121T000000Z-bbbbbb", 1, a.snapshot)
    c = snap("20261122T000000Z-cccccc", 2, b.snapshot)
    by_id = {m.snapshot: m for m in (a, b, c)}
    assert chain.resolve(c, by_id.get) == [a, b, c]
    assert chain.resolve(b, by_id.get) == [a, b]
    assert chain.resolve(a, by_id.get) == [a]


def test_a_broken_chain_is_named() -> None:
    b = snap("20261121T000000Z-bbbbbb", 1, "20261120T000000Z-gone00")
    with pytest.raises(RepositoryError, match="needs its parent 20261120T000000Z-gone00"):
        chain.resolve(b, {}.get)
    # and a backup on top of it starts a new chain instead of extending a broken one
    d = choose([b])
    assert d.level == 0 and "chain is broken" in d.reason


def test_a_chain_with_wrong_levels_is_refused() -> None:
    a = snap("20261120T000000Z-aaaaaa", 1, "20261119T000000Z-zzzzzz")
    b = snap("20261121T000000Z-bbbbbb", 1, a.snapshot)
    with pytest.raises(RepositoryError, match="inconsistent"):
        chain.resolve(b, {a.snapshot: a}.get)


def test_snapshot_ids_in_the_same_second_still_sort_by_time() -> None:
    now = dt.datetime(2026, 11, 23, 12, 0, 0, tzinfo=dt.UTC)
    first = new_snapshot_id(now)
    ids = [first]
    for _ in range(20):
        ids.append(new_snapshot_id(now, after=ids[-1]))
    assert sorted(ids) == ids and len(set(ids)) == len(ids)
    # a clock that is already past the last id is used as it is
    later = now + dt.timedelta(minutes=5)
    assert new_snapshot_id(later, after=first).startswith("20261123T120500Z-")


def test_a_stray_name_in_the_repository_does_not_break_the_order(tmp_path: Path) -> None:
    repo = Repository(str(tmp_path))
    first = repo.begin("django", "web2")  # nothing there yet
    assert first.snapshot[:8].isdigit()
    ahead = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)).strftime("%Y%m%dT%H%M%SZ") + "-ffffff"
    (tmp_path / "django/web1" / ahead).mkdir(parents=True)
    (tmp_path / "django/web1/notes").mkdir()  # sorts after every id
    writer = repo.begin("django", "web1")
    assert writer.snapshot > ahead
