"""Bad config values are refused when the config is built, at their key, for every recipe and every bounded key."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from qualcl.recipes import RECIPES
from qualcl.recipes.config import FIELD_BOUNDS, _parse_rule


def _numeric_keys(config: Any, prefix: str = "") -> dict[str, tuple[float, str | None]]:
    """``{dotted key: (value, its bounds rule or None)}`` for every number in the config."""
    keys: dict[str, tuple[float, str | None]] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys.update(_numeric_keys(value, f"{prefix}{f.name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rule = f.metadata.get("bounds") or FIELD_BOUNDS.get(f.name)
            keys[f"{prefix}{f.name}"] = (value, rule or (">= 0" if f.name.endswith("_weight") else None))
    return keys


def _bad_value(rule: str | None, current: float) -> float | None:
    if rule is None:
        return None
    low, _, (closed_low, _) = _parse_rule(rule)
    bad = low - 1 if closed_low else low
    return int(bad) if isinstance(current, int) and float(bad).is_integer() else float(bad)


CASES = []
for recipe_name, entry in RECIPES.items():
    spec = entry.load_spec()
    for key, (value, rule) in _numeric_keys(spec.config("smoke" if "smoke" in spec.presets else "default")).items():
        bad = _bad_value(rule, value)
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
    floats = [k for k, (v, _) in _numeric_keys(spec.config()).items() if isinstance(v, float)]
    assert floats
    for key in floats:
        for bad in (".nan", ".inf"):
            with pytest.raises(ValueError, match=rf"{key.replace('.', '[.]')} must be"):
                spec.config(overrides=[f"{key}={bad}"])


def test_every_bounded_key_is_used_by_some_recipe():
    """The table names real fields: a renamed field would silently lose its check."""
    used = {key.rsplit(".", 1)[-1] for entry in RECIPES.values() for key in _numeric_keys(entry.load_spec().config())}
    assert set(FIELD_BOUNDS) <= used, sorted(set(FIELD_BOUNDS) - used)
    assert all(math.isfinite(_parse_rule(rule)[0]) for rule in FIELD_BOUNDS.values())


def test_a_field_bound_is_refused_at_its_key_with_the_multiple():
    from dataclasses import dataclass

    from qualcl.recipes.config import bounded, config_from_dict

    @dataclass
    class Data:
        image_size: int = bounded(64, ">= 32", multiple_of=16)
        val_fraction: float = bounded(0.1, "in (0, 1)")

    assert config_from_dict(Data, {"image_size": 48, "val_fraction": 0.5}) == Data(48, 0.5)
    for key, bad, message in [
        ("image_size", 40, "must be >= 32 and a multiple of 16, got 40"),
        ("image_size", 16, "must be >= 32 and a multiple of 16, got 16"),
        ("val_fraction", 1.0, "must be in \\(0, 1\\), got 1.0"),
        ("val_fraction", 0, "must be in \\(0, 1\\), got 0"),
    ]:
        with pytest.raises(ValueError, match=f"config.{key} {message}"):
            config_from_dict(Data, {key: bad})
    with pytest.raises(ValueError, match="bounds rule"):
        bounded(1, "between 0 and 1")


def _replaced(config: Any, key: str, value: Any) -> Any:
    """``config`` with the dotted ``key`` set to ``value`` through ``dataclasses.replace`` (no checks)."""
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: _replaced(getattr(config, head), rest, value)})


# one nested key of each recipe's own sections (not the shared trainer) per recipe
FIRST_CASE = {c.values[0]: c for c in reversed(CASES) if "." in c.values[1] and not c.values[1].startswith("trainer.")}


@pytest.mark.parametrize(("recipe", "key", "bad"), list(FIRST_CASE.values()))
def test_a_config_built_in_python_is_refused_before_the_run_writes(recipe, key, bad, tmp_path):
    """``run_recipe`` checks the bounds too: a config from ``dataclasses.replace`` skipped ``config_from_dict``."""
    from qualcl.recipes.driver import run_recipe

    spec = RECIPES[recipe].load_spec()
    config = _replaced(spec.config("smoke" if "smoke" in spec.presets else "default"), key, bad)
    with pytest.raises(ValueError, match=rf"config[.]{key.replace('.', '[.]')} must be"):
        run_recipe(RECIPES[recipe].load(), config, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
