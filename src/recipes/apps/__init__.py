"""The registry: every recipe class, listed explicitly."""

from __future__ import annotations

from recipes.apps.deis import Deis
from recipes.apps.django import Django
from recipes.apps.dss import Dss
from recipes.apps.govuk import GovukAssets, GovukDatastore
from recipes.apps.looker import Looker
from recipes.errors import ConfigError
from recipes.recipe import Recipe

RECIPES: tuple[type[Recipe], ...] = (Django, Looker, Dss, Deis, GovukDatastore, GovukAssets)


def names() -> list[str]:
    return [r.name for r in RECIPES]


def get(name: str) -> Recipe:
    """The recipe called ``name``, or a ConfigError listing the known ones."""
    for cls in RECIPES:
        if cls.name == name:
            return cls()
    raise ConfigError(f"unknown recipe {name!r}: known recipes are {', '.join(names())}")
