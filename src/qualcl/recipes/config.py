"""Recipe configs: nested dataclasses that round-trip to YAML, with presets and dotted overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

__all__ = ["apply_overrides", "config_from_dict", "config_to_dict", "load_config", "save_config"]

C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain ``dict`` of a (nested) dataclass config; tuples become lists."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config must be a dataclass instance, got {type(config).__name__}")

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    result: dict[str, Any] = plain(config)
    return result


def _coerce(kind: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return None
        return _coerce(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping for {kind.__name__}, got {value!r}")
        return config_from_dict(kind, value, _where=where)
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is list:
        (item,) = typing.get_args(kind)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and not isinstance(value, kind):
        raise ValueError(f"{where} must be {kind.__name__}, got {value!r}")
    return value


def config_from_dict(cls: type[C], data: dict[str, Any], *, _where: str = "config") -> C:
    """Build dataclass ``cls`` from a ``dict``; unknown keys and wrong types raise ``ValueError``."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"cls must be a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{_where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{_where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def save_config(config: Any, path: str | Path) -> Path:
    """Write ``config`` as YAML; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return target


def load_config(cls: type[C], path: str | Path) -> C:
    """Read a YAML file written by :func:`save_config` back into ``cls``."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    return config_from_dict(cls, data)


def apply_overrides(config: C, overrides: list[str]) -> C:
    """Return a copy of ``config`` with ``key.sub=value`` overrides (values parsed as YAML).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Cfg:
        ...     lr: float = 0.1
        ...     epochs: int = 1
        >>> apply_overrides(Cfg(), ["lr=0.01", "epochs=3"])
        Cfg(lr=0.01, epochs=3)
    """
    data = config_to_dict(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        key, text = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section of the config")
            node = node[part]
        if parts[-1] not in node:
            raise ValueError(f"override {item!r}: unknown key {parts[-1]!r}; known: {sorted(node)}")
        node[parts[-1]] = yaml.safe_load(text)
    return config_from_dict(type(config), data)
