"""Listing at scale takes shortcuts; each must decide exactly as the general path it replaces.

* a local repository is walked with ``os.scandir`` instead of fsspec's ``glob`` + ``cat_many``:
  the same snapshots, bytes, signatures and damaged list, whatever lies in the folder;
* a manifest is structured by a plain path that takes only exactly-typed JSON and otherwise
  leaves the verdict (and its wording) to cattrs: whenever it accepts, cattrs accepts the same;
* ``started``/``finished`` are checked with ``fromisoformat`` when zero-padded, else ``strptime``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import nightly
from recipes import manifest as mf
from recipes import signing
from recipes.errors import ConfigError
from recipes.repository import DamagedSnapshot, Listed, Repository

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _both(repo: Path, recipe: str | None = None, host: str | None = None) -> tuple[Any, Any]:
    """``listed`` by the scandir walk and by fsspec's glob + cat_many, with the damaged lists."""
    out = []
    for local in (True, False):
        r = Repository(str(repo))
        assert r.local
        r.local = local  # False: the path S3 takes, over the same folder
        damaged: list[str] = []
        items = r.listed(recipe, host, damaged)
        out.append(([_fields(i) for i in items], damaged))
    return out[0], out[1]


def _fields(item: Listed) -> tuple[Any, ...]:
    return (item.manifest, item.raw, item.signature, item.recipe_dir, item.host_dir, item.snapshot_dir)


def test_the_scandir_walk_lists_what_glob_lists(tmp_path: Path) -> None:
    key = signing.generate_signing_key(tmp_path / "signing", "test")
    repo = tmp_path / "repo"
    manifests = nightly.chain_of(6, dt.datetime.now(dt.UTC))
    nightly.write_local(repo, manifests, key)
    snaps = sorted((repo / "django" / "web1").iterdir())
    # the oddities a real repository holds
    (snaps[1] / "manifest.sig").unlink()  # unsigned
    (snaps[2] / "manifest.json").write_text("{ not json")  # damaged
    (snaps[3] / "manifest.json").unlink()  # a run still writing, or killed
    (repo / "django" / "web1" / "notes.txt").write_text("a file, not a snapshot")
    (repo / "django" / "web1" / ".hidden").mkdir()  # fsspec's * matches hidden names too
    (repo / "django" / "web1" / ".hidden" / "manifest.json").write_bytes(
        (snaps[0] / "manifest.json").read_bytes()
    )
    (repo / "README").write_text("not a recipe")
    other = repo / "looker" / "db1" / manifests[4].snapshot  # same id under another recipe@host
    other.mkdir(parents=True)
    for name in ("manifest.json", "manifest.sig"):
        (other / name).write_bytes((snaps[4] / name).read_bytes())
    (repo / "django" / "web1" / "linked").symlink_to(snaps[5], target_is_directory=True)
    (repo / "linked-recipe").symlink_to(repo / "django", target_is_directory=True)

    walk, glob = _both(repo)
    assert walk == glob
    names = [f[5] for f in walk[0]]
    assert ".hidden" in names and snaps[3].name not in names
    assert "linked" not in names  # fsspec's walk does not follow a symlink it finds
    assert [d.split(":")[0] for d in walk[1]] == [f"django/web1/{snaps[2].name}"]
    assert [f[2] is None for f in walk[0] if f[5] == snaps[1].name] == [True]
    for recipe, host in (
        ("django", None),
        ("looker", "db1"),
        ("django", "db1"),
        ("nope", None),
        ("linked-recipe", None),
    ):
        walk, glob = _both(repo, recipe, host)
        assert walk == glob, (recipe, host)
    assert _both(tmp_path / "absent") == (([], []), ([], []))


def test_an_unreadable_repository_is_one_line(tmp_path: Path) -> None:
    """A folder the controller may not read is a RepositoryError, never a traceback or "none"."""
    import os

    from recipes.errors import RepositoryError

    if os.geteuid() == 0:  # root reads anything: a manifest that is a symlink loop instead
        snap = tmp_path / "django" / "web1" / "20261122T101500Z-abcdef"
        snap.mkdir(parents=True)
        (snap / "manifest.json").symlink_to(snap / "manifest.json")
    else:
        (tmp_path / "django").mkdir()
        (tmp_path / "django").chmod(0)
    with pytest.raises(RepositoryError, match="repository"):
        Repository(str(tmp_path)).listed()


def test_a_folder_in_place_of_a_manifest_or_signature_is_damaged_not_a_failed_listing(tmp_path: Path) -> None:
    """Listed, loaded by id and chosen alike: the snapshot is damaged; the others are listed."""
    key = signing.generate_signing_key(tmp_path / "signing", "test")
    repo = tmp_path / "repo"
    manifests = nightly.chain_of(3, dt.datetime.now(dt.UTC))
    nightly.write_local(repo, manifests, key)
    snaps = sorted((repo / "django" / "web1").iterdir())
    for snap, name in ((snaps[1], "manifest.json"), (snaps[2], "manifest.sig")):
        (snap / name).unlink()
        (snap / name).mkdir()
    r = Repository(str(repo))
    damaged: list[str] = []
    assert [i.snapshot_dir for i in r.listed(None, None, damaged)] == [snaps[0].name]
    assert damaged == [
        f"django/web1/{snaps[1].name}: manifest.json is a folder, not a file",
        f"django/web1/{snaps[2].name}: manifest.sig is a folder, not a file",
    ]
    assert r.load_listed("django", "web1", snaps[2].name) is None  # as a garbled one: None
    with pytest.raises(DamagedSnapshot, match="the latest snapshot of django@web1 is damaged") as info:
        r.find_listed("django", "web1")
    assert info.value.exit_code == 3 and info.value.entry == damaged[1]
    with pytest.raises(DamagedSnapshot, match=f"{snaps[1].name}: manifest.json is a folder"):
        r.find_listed("django", "web1", snaps[1].name[:20])
    assert r.find_listed("django", "web1", snaps[0].name).snapshot_dir == snaps[0].name
    with pytest.raises(ConfigError, match="matches 3 snapshots") as many:  # two of them damaged
        r.find_listed("django", "web1", snaps[0].name[:4])
    assert many.value.exit_code == 2 and "give more of its id" in str(many.value)


GOOD = json.loads(mf.dumps(nightly.synthetic(3, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "p", 1)))
GOOD["steps"] = [{"name": "archive", "kind": "archive", "seconds": 1, "outcome": "ok"}]
GOOD["objects"][0]["facts"] = {"files": 3, "sample": ["ab"]}
GOOD["downtime"] = {"stop@web1": 2}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)


def _cattrs(data: Any) -> mf.Manifest | str:
    try:
        return mf._converter.structure(data, mf.Manifest)
    except Exception as exc:
        return f"refused: {type(exc).__name__}"


def _replace(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    target: Any = out
    for step in path[:-1]:
        try:
            target = target[step]
        except (KeyError, IndexError, TypeError):
            return out  # an earlier change replaced the parent: nothing to change here
    last = path[-1]
    fits = (isinstance(target, dict) and isinstance(last, str)) or (
        isinstance(target, list) and isinstance(last, int) and last < len(target)
    )
    if not fits:
        return out  # the parent is now of another kind
    if value is _DROP:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return out


_DROP = object()
PLACES = [(k,) for k in GOOD] + [("objects", 0, k) for k in GOOD["objects"][0]] + [("steps", 0, "seconds")]
PLACES += [("objects", 0, "facts", "files"), ("params", "root"), ("downtime", "stop@web1"), ("extra",)]


VALUES = [_DROP, None, True, False, 0, 7, 1.5, "", "x", [], ["x"], [1], {}, {"k": "v"}, {"k": 1}]


def test_every_field_with_every_json_type_is_decided_as_cattrs_decides() -> None:
    for place in PLACES:
        for value in VALUES:
            _agree(_replace(GOOD, place, value))


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(PLACES), JSON | st.sampled_from(VALUES)),
        min_size=1,
        max_size=3,
    )
)
def test_the_plain_path_accepts_only_what_cattrs_accepts_and_builds_the_same(
    changes: list[tuple[tuple[Any, ...], Any]],
) -> None:
    doc = GOOD
    for path, value in changes:
        doc = _replace(doc, path, value)
    _agree(doc)


def _agree(doc: dict[str, Any]) -> None:
    """Whatever the plain path accepts, cattrs accepts and builds equal; ``loads`` is cattrs' verdict."""
    plain = mf._plain(mf.Manifest)
    try:
        fast: mf.Manifest | None = plain(doc)
    except Exception:
        fast = None  # declined: cattrs decides
    slow = _cattrs(doc)
    if fast is not None:
        assert fast == slow
    got: mf.Manifest | str
    try:
        got = mf.loads(json.dumps(doc))
    except ValueError:
        got = "refused"
    assert got == slow if isinstance(slow, mf.Manifest) else got == "refused"


def test_the_plain_path_takes_a_real_manifest() -> None:
    """The shortcut is taken (not silently always declined) for what recipes writes."""
    assert mf._plain(mf.Manifest)(GOOD) == _cattrs(GOOD)


@FUZZ
@given(
    st.from_regex(r"\A[0-9]{1,5}-[0-9 ]{1,3}-[0-9 ]{1,3}T[0-9]{1,3}:[0-9]{1,3}:[0-9]{1,3}Z?\Z")
    | st.text(max_size=22)
)
def test_the_stamp_check_agrees_with_strptime(value: str) -> None:
    try:
        dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
        expected = True
    except ValueError:
        expected = False
    try:
        mf._utc_stamp(value)
        got = True
    except ValueError:
        got = False
    assert got == expected
