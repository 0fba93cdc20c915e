"""The manifest survives a JSON round trip and malformed ones are refused."""

from __future__ import annotations

import pytest

from recipes import manifest as mf


def test_round_trip() -> None:
    m = mf.Manifest(
        snapshot="20261122T101500Z-abcdef",
        recipe="django",
        host="web1",
        started="2026-11-22T10:15:00Z",
        finished="2026-11-22T10:16:00Z",
        params={"root": "/", "sqlite": ["/var/opt/p/p.db"], "postgres": {"password_env": "PGPW"}},
        objects=(
            mf.StoredObject("files.tar", "files", "files.tar.zst.age", 10, "ab" * 32, warnings=("w",)),
            mf.StoredObject(
                "dumps/postgresql.sql",
                "dump",
                "dumps/postgresql.sql.zst.age",
                5,
                "cd" * 32,
                engine="postgresql",
            ),
        ),
        steps=(mf.StepRecord("archive", "archive", 1.5, "ok"),),
        versions={"recipes": "0.1.0"},
        recipients=("age1xyz",),
    )
    again = mf.loads(mf.dumps(m))
    assert again == m
    assert again.size == 15
    assert again.object("dumps/postgresql.sql") is not None


@pytest.mark.parametrize("text", ["{", "[]", '{"snapshot": 1}'])
def test_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="malformed manifest"):
        mf.loads(text)


@pytest.mark.parametrize("stamp", ["2026-11-22T10:15:00+00:00", "2026-11-22 10:15:00", "yesterday"])
def test_a_time_in_another_format_is_a_malformed_manifest_not_a_later_crash(stamp: str) -> None:
    """Retention and chains compute with started/finished: a signed manifest whose time is in
    another format is damaged at load (listed as DAMAGED), never a traceback in prune."""
    good = mf.Manifest(
        "20261122T101500Z-abcdef", "django", "web1", "2026-11-22T10:15:00Z", "2026-11-22T10:16:00Z", {}, ()
    )
    text = mf.dumps(good).replace('"started": "2026-11-22T10:15:00Z"', f'"started": "{stamp}"')
    with pytest.raises(ValueError, match=r"malformed manifest.*YYYY-MM-DDTHH:MM:SSZ"):
        mf.loads(text)
