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

from .errors import ConfigError, clip, quote


MAX_CONFIG_BYTES = 10 << 20   # a config file is a short mapping; a larger file is refused before it is parsed


def _no_alias_loader():
    """PyYAML's SafeLoader, refusing aliases (`*name`): ten nested aliases expand a 200-byte file into a billion
    values for whatever walks the result (the alias bomb). A config writes its values out."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(f"line {event.start_mark.line + 1}: YAML alias *{event.anchor} is not allowed in "
                                     "a config file (aliases can expand a small file without bound); write the "
                                     "value out instead")
            return super().compose_node(parent, index)

    return NoAliasLoader


def read_mapping(path: str | Path, what: str = "config file") -> dict:
    """The mapping in `path` (.yaml/.yml as YAML, anything else as JSON). `what` names the file in errors.

    YAML aliases are refused and a file over MAX_CONFIG_BYTES is refused unread: what a config holds stays small."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist (expected a YAML or JSON mapping of config fields)")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is {size} bytes; a config file is a mapping of a few fields "
                          f"(at most {MAX_CONFIG_BYTES} bytes)")
    try:
        text = path.read_bytes().decode("utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.load(text, Loader=_no_alias_loader()) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # UTF-8, yaml and json raise different types; all mean "not parseable"
        raise ConfigError(f"{what} {path} could not be parsed ({type(e).__name__}: {clip(e)})"
                          ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def read_json(path: str | Path, what: str = "JSON file"):
    """The JSON value in `path` (an artifact: a selection, an importance); bad UTF-8, bad JSON or nesting too deep
    for the parser is a ConfigError naming the file, never a decode traceback."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start}: {quote(e.object[e.start:e.start + 8])}); "
                          "expected a JSON file") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(f"{what} {path} is not valid JSON ({clip(e)})") from None


# ---------------------------------------------------------------- bounds on numbers that size work
# A seed feeds torch, numpy and random, whose common range is 0..2**32-1 (a larger one overflowed inside torch). The
# counts below size allocations: ROME draws 10 noise samples, and a trillion asked a CPU run for 256 TB.
MAX_SEED = 2**32 - 1
MAX_SAMPLES = 10_000
MAX_BOOT = 100_000


def check_seed(seed, what: str = "seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what} {quote(seed)}: expected a whole number from 0 to {MAX_SEED}")


def check_count(value, what: str, top: int, low: int = 1) -> None:
    """`value` is a whole number in [low, top]: a count that sizes memory, refused before it is allocated."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be a whole number, got {quote(value)}")
    if value < low:
        raise ConfigError(f"{what} must be >= {low}, got {value}")
    if value > top:
        raise ConfigError(f"{what} must be <= {top} (it sizes memory), got {value}")


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
    expected = f"{where}: expected {_type_name(tp)}, got {quote(value)}"
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _as_union(value, args, where, expected)
    if tp is bool:
        return _as_bool(value, expected)
    if tp is int:
        return _as_int(value, expected)
    if tp is float:
        return _as_float(value, where, expected)
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


def _as_union(value: Any, args: tuple, where: str, expected: str) -> Any:
    """`value` as the first of the union's types `args` that takes it (None when the union allows it)."""
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


def _as_bool(value: Any, expected: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(expected)


def _as_int(value: Any, expected: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(expected)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.match(value.strip()):
        return int(value.strip())
    raise ConfigError(expected)


def _as_float(value: Any, where: str, expected: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(expected)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(expected) from None
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {quote(value)}")
        return float(value)
    raise ConfigError(expected)


def field_types(cls) -> dict[str, Any]:
    """The resolved type of each field of dataclass `cls`."""
    return typing.get_type_hints(cls)


def coerce_fields(cls, values: dict, what: str) -> dict:
    """`values` checked against dataclass `cls`: unknown names and wrong types are ConfigErrors naming `what`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {quote(unknown)}; expected some of {sorted(names)}")
    types_ = field_types(cls)
    return {k: coerce_value(v, types_[k], f"{what} field {quote(k)}") for k, v in values.items()}


def build(cls, values: dict, what: str):
    """An instance of dataclass `cls` from a mapping of its fields (see `coerce_fields`)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{what} must be a mapping of field names to values, got {type(values).__name__}")
    return cls(**coerce_fields(cls, values, what))
