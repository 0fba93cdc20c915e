"""The looker recipe's parameters: every mistake is one ConfigError line; the seed's table as excludes."""

from __future__ import annotations

from typing import Any

import pytest

from recipes import apps
from recipes.apps.looker import LookerParams, extra_object, only_member
from recipes.errors import ConfigError
from recipes.recipe import content_names, make_params


def params(**values: Any) -> LookerParams:
    result: LookerParams = make_params(apps.get("looker"), values, "[recipes.looker]")
    return result


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"keystore_independent": True}, "needs master_key_file and key_store"),
        ({"keystore_independent": True, "master_key_file": "/etc/looker/cmk"}, "needs key_store"),
        ({"keystore_independent": True, "key_store": "s3://keys/looker"}, "needs master_key_file"),
        ({"snapshot": "zfs"}, "snapshot: must be one of none, btrfs, lvm, auto"),
        ({"quiesce": "pause"}, "quiesce: must be one of stop, none"),
        ({"home": "looker"}, "home: must be an absolute path"),
        ({"user": "root; rm"}, "user: must be a user name"),
        ({"extra_paths": ["/etc/*.conf"]}, "must not contain * ? [ ] or"),
        ({"extra_paths": ["/"]}, "below /"),
        ({"extra_paths": ["/a-b/c", "/a/b-c"]}, "would share the object extra/a-b-c.tar"),
        ({"master_key_file": "cmk"}, "master_key_file: must be an absolute path"),
        ({"health_check": " "}, "health_check: must not be empty"),
        ({"nodes": ["looker 2"]}, "nodes: must be host names without blanks"),
    ],
)
def test_a_bad_parameter_is_one_config_error_line(values: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        params(**values)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_keystore_independent_with_both_is_accepted_and_is_content() -> None:
    p = params(keystore_independent=True, master_key_file="/etc/looker/cmk", key_store="s3://keys/looker")
    assert p.keystore_independent
    content = set(content_names(apps.get("looker")))
    assert content == {"include_logs", "include_ssl", "extra_paths", "keystore_independent"}


def test_excludes_follow_the_seed_table_and_the_maybe_rows_follow_the_parameters() -> None:
    never = {
        "looker/.cache",
        "looker/.tmp",
        "looker/.snapshots",
        "looker/models",
        "looker/.db/looker.lck",
        "looker/.deploying",
        "looker/looker-backup.key",  # a restored keystore-independent copy's key file: a secret
    }
    assert set(params().excludes()) == never | {"looker/log"}
    assert set(params(include_logs=True, include_ssl=False).excludes()) == never | {"looker/.ssl"}
    for kept in (".ssh", "looker/.db", "looker/deploy_keys", "looker/models-user-1"):
        assert not any(kept == e or kept.startswith(e + "/") for e in params().excludes())


def test_only_member_and_object_names() -> None:
    assert only_member("ab") == ("[!a]*", "a[!b]*", "ab[!/]*", "a")
    assert extra_object("/etc/init.d/looker") == "extra/etc-init.d-looker.tar"
