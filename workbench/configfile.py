"""A YAML or JSON config file read into a mapping: the one reader behind `workbench run --config` and the editors'
`--config`, and the values of a mapping coerced to the types of the dataclass fields they set (`build`). Each
failure is a ConfigError naming the file or field and what was expected."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from .errors import ConfigError


def read_mapping(path: str | Path, what: str = "config file") -> dict:
    """The mapping in `path` (.yaml/.yml as YAML, anything else as JSON). `what` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist (expected a YAML or JSON mapping of config fields)")
    try:
        text = path.read_bytes().decode("utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # UTF-8, yaml and json raise different types; all mean "not parseable"
        raise ConfigError(f"{what} {path} could not be parsed ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------- values coerced by the dataclass field types
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_INT = re.compile(r"^[+-]?\d+$")


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is tuple or typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    return getattr(tp, "__name__", str(tp))


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """`value` (from YAML, JSON or a --set flag) as the type `tp` a dataclass field declares, or a ConfigError.

    Numbers may come as strings (PyYAML reads `lr: 1e-3` as the string '1e-3'); an int field takes an integral
    number only, a float field a finite one; a bool field takes true/false/yes/no/on/off/1/0; a list field takes a
    single string as a one-element list."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    expected = f"{where}: expected {_type_name(tp)}, got {value!r}"
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce_value(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(expected)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(expected)
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(expected)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT.match(value.strip()):
            return int(value.strip())
        raise ConfigError(expected)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(expected)
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(expected) from None
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(expected)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(expected)
    if tp is tuple or origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(expected)
        elem = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(coerce_value(v, elem, f"{where}[{i}]") for i, v in enumerate(items))
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(expected)
    return value


def field_types(cls) -> dict[str, Any]:
    """The resolved type of each field of dataclass `cls`."""
    return typing.get_type_hints(cls)


def coerce_fields(cls, values: dict, what: str) -> dict:
    """`values` checked against dataclass `cls`: unknown names and wrong types are ConfigErrors naming `what`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {unknown}; expected some of {sorted(names)}")
    types_ = field_types(cls)
    return {k: coerce_value(v, types_[k], f"{what} field {k!r}") for k, v in values.items()}


def build(cls, values: dict, what: str):
    """An instance of dataclass `cls` from a mapping of its fields (see `coerce_fields`)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{what} must be a mapping of field names to values, got {type(values).__name__}")
    return cls(**coerce_fields(cls, values, what))
