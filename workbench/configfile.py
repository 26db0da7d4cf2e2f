"""A YAML or JSON config file read into a mapping: the one reader behind `workbench run --config` and the editors'
`--config`. Each failure is a ConfigError naming the file and what was expected."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError


def read_mapping(path: str | Path, what: str = "config file") -> dict:
    """The mapping in `path` (.yaml/.yml as YAML, anything else as JSON). `what` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist (expected a YAML or JSON mapping of config fields)")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # yaml and json raise different types; both mean "not parseable"
        raise ConfigError(f"{what} {path} could not be parsed ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data
