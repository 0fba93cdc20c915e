"""The annotated recipes.toml and the README's recipe sections stay true to the code."""

from __future__ import annotations

from pathlib import Path

from recipes import apps, config
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
