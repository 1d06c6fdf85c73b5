"""Bad config values are refused when the config is built, at their key, for every recipe and every bounded key."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from qualcl.recipes import RECIPES
from qualcl.recipes.config import FIELD_BOUNDS


def _numeric_keys(config: Any, prefix: str = "") -> dict[str, float]:
    keys: dict[str, float] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys.update(_numeric_keys(value, f"{prefix}{f.name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            keys[f"{prefix}{f.name}"] = value
    return keys


def _bad_value(name: str, current: float) -> float | None:
    if name.endswith("_weight") and name not in FIELD_BOUNDS:
        return -1.0
    if name not in FIELD_BOUNDS:
        return None
    text, low, high = FIELD_BOUNDS[name]
    bad = low - 1 if text != "in [0, 1]" else high + 0.5
    if text == "> 0":
        bad = low
    return int(bad) if isinstance(current, int) and float(bad).is_integer() else float(bad)


CASES = []
for recipe_name, entry in RECIPES.items():
    spec = entry.load_spec()
    for key, value in _numeric_keys(spec.config("smoke" if "smoke" in spec.presets else "default")).items():
        bad = _bad_value(key.rsplit(".", 1)[-1], value)
        if bad is not None:
            CASES.append(pytest.param(recipe_name, key, bad, id=f"{recipe_name}:{key}"))


@pytest.mark.parametrize(("recipe", "key", "bad"), CASES)
def test_out_of_range_values_are_refused_at_their_key(recipe, key, bad):
    spec = RECIPES[recipe].load_spec()
    with pytest.raises(ValueError, match=rf"{key.replace('.', '[.]')}\b"):
        spec.config(overrides=[f"{key}={bad}"])


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_non_finite_floats_are_refused_everywhere(recipe):
    spec = RECIPES[recipe].load_spec()
    floats = [k for k, v in _numeric_keys(spec.config()).items() if isinstance(v, float)]
    assert floats
    for key in floats:
        for bad in (".nan", ".inf"):
            with pytest.raises(ValueError, match=rf"{key.replace('.', '[.]')} must be"):
                spec.config(overrides=[f"{key}={bad}"])


def test_every_bounded_key_is_used_by_some_recipe():
    """The table names real fields: a renamed field would silently lose its check."""
    used = {
        key.rsplit(".", 1)[-1]
        for entry in RECIPES.values()
        for key in _numeric_keys(entry.load_spec().config())
    }
    assert set(FIELD_BOUNDS) <= used, sorted(set(FIELD_BOUNDS) - used)
    assert math.inf not in {low for _, low, _ in FIELD_BOUNDS.values()}
