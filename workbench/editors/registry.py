"""The editors by method name: the one table the CLI's choices, config resolution, the pipeline and `unlearn` read.

Adding an editor: a file with an `Editor` subclass (its `name`, `Config`, `defaults`, `presets`, `loss`) and
one line in EDITORS below.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from .adaptive_rmu import AdaptiveRMU
from .config import LoopConfig, read_config_file, validate
from .ga import GA
from .gd import GD
from .graddiff import GradDiff
from .joint import Joint
from .loop import Editor, Phase
from .npo import NPO
from .repnoise import RepNoise
from .rmu import RMU
from .sam_npo import SamNPO
from .sequential import Sequential
from .simnpo import SimNPO
from .undial import Undial
from .undo import Undo

EDITORS: dict[str, type[Editor]] = {cls.name: cls for cls in (
    RMU,
    AdaptiveRMU,
    Joint,
    GA,
    GD,
    GradDiff,
    NPO,
    SimNPO,
    Undial,
    Sequential,
    Undo,
    RepNoise,
    SamNPO,
)}


def editor_class(method: str) -> type[Editor]:
    if method not in EDITORS:
        raise ConfigError(f"unknown unlearning method {method!r}; expected one of {list(EDITORS)}")
    return EDITORS[method]


def optimised_statistics(method: str, cfg: LoopConfig) -> list[str]:
    """The membership-inference statistics (workbench.evaluation.mia.ATTACKS names) `method` under `cfg` drives
    towards a target: the verdict decides privacy by the attacks outside them (Editor.optimises)."""
    return sorted(editor_class(method).optimises(cfg))


def build_phases(model, method: str, cfg: LoopConfig, layers: Sequence[int]) -> list[Phase]:
    """The phases the loop runs for `method`: its editor(s) on `model`, each with its epochs and lr."""
    return editor_class(method).phases(model, cfg, layers)


def resolve_config(method: str, preset: str | None = None, file: str | Path | None = None,
                   overrides: dict | None = None, base: LoopConfig | None = None) -> LoopConfig:
    """The config a run uses: defaults < preset < file < overrides (a `base` config replaces the defaults).
    Unknown names are a ConfigError."""
    cls = editor_class(method)
    values: dict[str, Any] = dict(cls.defaults)
    if base is not None:
        values.update(dataclasses.asdict(base))
    if preset is not None:
        if preset not in cls.presets:
            raise ConfigError(f"unknown preset {preset!r} for {method}; expected one of {sorted(cls.presets)}")
        values.update(cls.presets[preset])
    if file is not None:
        values.update(read_config_file(file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    names = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(str(k) for k in set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown} for {method}; expected some of {sorted(names)}")
    cfg = cls.Config(**{k: cls.Config.coerce(k, v, f"{method} config field {k!r}") for k, v in values.items()})
    validate(method, cfg)
    return cfg
