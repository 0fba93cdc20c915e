"""The annotated recipes.toml and the README's recipe sections stay true to the code."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from recipes import apps, cli, config, signing
from recipes.errors import VerifyError
from recipes.recipe import make_params

ROOT = Path(__file__).resolve().parents[2]


def test_annotated_example_config_loads_and_its_recipes_structure() -> None:
    cfg = config.load(str(ROOT / "recipes.toml"))
    assert cfg.repository.url == "/var/backups/recipes"
    assert cfg.host("web1").address == "203.0.113.5"
    for name, values in cfg.recipes.items():
        make_params(apps.get(name), values, f"recipes.toml [recipes.{name}]")


def test_every_recipe_parameter_is_mentioned_in_the_example_config() -> None:
    text = (ROOT / "recipes.toml").read_text()
    from recipes.recipe import describe_params

    for recipe in apps.RECIPES:
        for name, _, _ in describe_params(recipe()):
            assert name in text, f"{recipe.name}.{name} is not documented in recipes.toml"


def test_every_config_key_is_mentioned_in_the_example_config() -> None:
    import attrs

    text = (ROOT / "recipes.toml").read_text()
    for table in (config.RepositoryConfig, config.RetentionConfig, config.HostConfig):
        for field in attrs.fields(table):
            assert f"{field.name} =" in text, (
                f"{table.__name__}.{field.name} is not documented in recipes.toml"
            )


# The placeholder keys in recipes.toml are invalid on purpose, each failing where it matters.
P = 2**255 - 19
D = (-121665 * pow(121666, P - 2, P)) % P


def _is_ed25519_point(enc: bytes) -> bool:
    """RFC 8032 point decoding: does ``enc`` encode a point on edwards25519?"""
    n = int.from_bytes(enc, "little")
    y, sign = n & ((1 << 255) - 1), n >> 255
    if y >= P:
        return False
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    return (x * x - x2) % P == 0 and not (x == 0 and sign)


def test_placeholder_signer_is_a_key_nobody_holds() -> None:
    """Its 32 bytes are a hash output, so nobody knows its secret half; config loads with it."""
    cfg = config.load(str(ROOT / "recipes.toml"))
    (signer,) = cfg.signers()
    assert "PLACEHOLDER" in signer.comment
    derived = hashlib.sha256(b"recipes.toml placeholder signer 0").digest()
    assert signer.raw() == derived and _is_ed25519_point(derived)


def test_placeholder_signer_makes_a_restore_check_fail_with_one_line(tmp_path: Path) -> None:
    cfg = config.load(str(ROOT / "recipes.toml"))
    key = signing.generate_signing_key(tmp_path / "sk", "real")
    sig = key.sign(b"{}", signing.MANIFEST_NAMESPACE)
    with pytest.raises(VerifyError) as exc:
        signing.verify(b"{}", sig, cfg.signers(), signing.MANIFEST_NAMESPACE)
    assert "\n" not in str(exc.value) and key.public.fingerprint in str(exc.value)


def test_placeholder_recipient_makes_a_backup_fail_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup run with the example file unchanged stops before anything is written."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "site").mkdir()
    args = ["--config", str(ROOT / "recipes.toml"), "run", "django", "--host", "local"]
    args += [
        "--repo",
        str(tmp_path / "repo"),
        "--set",
        f"root={tmp_path / 'site'}",
        "--set",
        "postgres=false",
    ]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("recipes: error: [repository] recipients: age1-REPLACE")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("manifest.json"))
