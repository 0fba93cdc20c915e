"""Golden plans of the deis recipe (seed 003), and what they must never show: a gateway key."""

from __future__ import annotations

import json

import pytest

from recipes import apps, plan
from recipes.apps.deis import ETCD_KEYS, RESYNC, DeisRestoreOptions
from recipes.errors import ConfigError
from recipes.recipe import make_params
from tests.unit.test_plan_golden import _check

PARAMS = {"gateway": "http://deis-store.local3.deisapp.com", "etcd": "172.17.8.100:4001"}


@pytest.mark.parametrize("action", ["backup", "restore", "restore-database"])
def test_deis_plan_matches_golden(action: str) -> None:
    recipe = apps.get("deis")
    params = make_params(recipe, json.loads(json.dumps(PARAMS)), "test")
    if action == "backup":
        p = plan.backup_plan(recipe, params, "deis-1")
    else:
        only = "database" if action == "restore-database" else "all"
        p = plan.restore_plan(recipe, params, "deis-1", options=DeisRestoreOptions(only=only))
    _check(f"deis-{action}.txt", "\n".join(p.lines()) + "\n")
    _check(f"deis-{action}.json", json.dumps(p.to_dict(), indent=2, sort_keys=True) + "\n")


def test_restore_runs_the_seeds_steps_in_the_seeds_order() -> None:
    recipe = apps.get("deis")
    params = make_params(recipe, dict(PARAMS), "test")
    names = [s.name for s in recipe.restore_steps(params)]
    assert names == [
        "install-platform",
        "start-store-monitor",
        "start-store-daemon",
        "start-store-metadata",
        "start-store-gateway",
        "start-store-volume",
        "start-router",
        "router-body-size",
        "gw_access",
        "gw_secret",
        "bucket-db_wal",
        "bucket-registry",
        "store",
        "database",
        "start-platform",
        "etcd_endpoint",
        "etcd-resync",
        "scale",
    ]


def test_missing_gateway_is_a_config_error_before_any_step() -> None:
    recipe = apps.get("deis")
    params = make_params(recipe, {}, "test")
    for build in (
        lambda: plan.backup_plan(recipe, params, "h"),
        lambda: plan.restore_plan(recipe, params, "h"),
    ):
        with pytest.raises(ConfigError, match=r"^deis needs gateway, .*--set gateway=") as caught:
            build()
        assert "\n" not in str(caught.value) and caught.value.exit_code == 2
    # loading the dump into the running database needs no gateway
    only = plan.restore_plan(recipe, params, "h", options=DeisRestoreOptions(only="database"))
    assert [s.name for s in only.steps] == ["database"]


def test_the_resync_saves_latest_configs_and_certificates_beyond_the_seed_and_says_so() -> None:
    recipe = apps.get("deis")
    params = make_params(recipe, dict(PARAMS), "test")
    resync = next(s for s in recipe.restore_steps(params) if s.name == "etcd-resync")
    assert "[a.config_set.latest().save() for a in App.objects.all() if a.config_set.exists()]" in RESYNC
    assert "[c.save() for c in Certificate.objects.all()]" in RESYNC
    assert "Config.objects" not in RESYNC  # an older Config saved would publish its stale values
    assert "BEYOND the seed's script" in resync.about and "/deis/certs" in resync.about
    assert "/deis/config" in ETCD_KEYS and "/deis/certs" in ETCD_KEYS
