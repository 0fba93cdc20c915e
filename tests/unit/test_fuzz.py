"""Hypothesis: config and manifest parsing fail only in their documented way, whatever the input.

``config.parse`` returns a Config or raises ConfigError (one line); ``manifest.loads`` returns a
Manifest or raises ValueError. Anything else would be a traceback for the operator.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipes import config
from recipes import manifest as mf
from recipes.errors import ConfigError

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Keys the parser knows, so generated documents reach deep into the structure, plus noise.
KEYS = st.sampled_from(
    [
        *(f.name for f in attrs.fields(config.Config)),
        *(f.name for f in attrs.fields(config.RepositoryConfig)),
        *(f.name for f in attrs.fields(config.RetentionConfig)),
        *(f.name for f in attrs.fields(config.HostConfig)),
        "django",
        "web1",
        "root",
        "postgres",
        "sqlite",
        "excludes",
        "",
        "x y",
    ]
) | st.text(max_size=8)
SCALARS = (
    st.text(max_size=12)
    | st.sampled_from(["3M", "2Y", "0s", "99999999999999Y", "auto", "remote", "controller", "/", "age1x"])
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.booleans()
    | st.floats(allow_nan=True)
)
TOML_LIKE = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)
DOCUMENTS = st.dictionaries(KEYS, TOML_LIKE, max_size=5)


@FUZZ
@given(DOCUMENTS)
def test_config_parse_returns_a_config_or_one_config_error(data: dict[str, Any]) -> None:
    try:
        result = config.parse(data, "fuzz.toml")
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.toml")
    else:
        assert isinstance(result, config.Config)


SECTIONS = st.fixed_dictionaries(
    {},
    optional={
        "repository": st.dictionaries(
            st.sampled_from([f.name for f in attrs.fields(config.RepositoryConfig)]), TOML_LIKE, max_size=4
        ),
        "retention": st.dictionaries(
            st.sampled_from([f.name for f in attrs.fields(config.RetentionConfig)]), TOML_LIKE, max_size=4
        ),
        "hosts": st.dictionaries(
            st.text(max_size=6),
            st.dictionaries(
                st.sampled_from([f.name for f in attrs.fields(config.HostConfig)]), TOML_LIKE, max_size=4
            ),
            max_size=2,
        ),
        "recipes": st.dictionaries(st.just("django"), st.dictionaries(KEYS, TOML_LIKE, max_size=4)),
    },
)


@FUZZ
@given(SECTIONS, st.lists(st.text(max_size=20), max_size=3))
def test_well_shaped_configs_and_sets_fail_only_as_config_errors(
    data: dict[str, Any], sets: list[str]
) -> None:
    """Closer to real files: the right sections and keys with arbitrary values, then --set."""
    from recipes import apps
    from recipes.recipe import make_params

    try:
        cfg = config.parse(data, "fuzz.toml")
        make_params(apps.get("django"), config.recipe_values(cfg, "django", sets), "fuzz")
        for name in cfg.hosts:
            cfg.host(name)
            cfg.compression(name)
    except ConfigError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(st.text(max_size=40))
def test_host_specs_parse_or_fail_as_config_errors(text: str) -> None:
    try:
        config.Config().host(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)


GOOD = json.loads(
    mf.dumps(
        mf.Manifest(
            snapshot="20261122T101500Z-abcdef",
            recipe="django",
            host="web1",
            started="2026-11-22T10:15:00Z",
            finished="2026-11-22T10:16:00Z",
            params={"root": "/"},
            objects=(mf.StoredObject("files.tar", "files", "files.tar.zst.age", 10, "ab" * 32),),
        )
    )
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _loads_or_value_error(text: str) -> None:
    try:
        result = mf.loads(text)
    except ValueError as exc:
        assert str(exc).startswith("malformed manifest") and "\n" not in str(exc)
    else:
        assert isinstance(result, mf.Manifest)


@FUZZ
@given(st.text(max_size=200))
def test_manifest_loads_on_any_text_only_raises_value_error(text: str) -> None:
    _loads_or_value_error(text)


@FUZZ
@given(JSON)
def test_manifest_loads_on_any_json_only_raises_value_error(value: Any) -> None:
    _loads_or_value_error(json.dumps(value))


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(GOOD)), JSON, max_size=4))
def test_manifest_with_fields_replaced_only_raises_value_error(replaced: dict[str, Any]) -> None:
    """A real manifest with some fields swapped for arbitrary JSON: typed checks, not coercion."""
    _loads_or_value_error(json.dumps({**GOOD, **replaced}))
