"""Sequential gradient stages (Cyber for AI at SemEval-2025 Task 4): a schedule of gradient editors, each stage
with its own epochs and lr and a fresh optimizer, as separate runs would have."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..configfile import build
from ..errors import ConfigError
from .ga import GA
from .gd import GD
from .graddiff import GradDiff
from .gradient import GradientConfig, GradientEditor
from .loop import Phase
from .npo import NPO

# The gradient editors a stage may run, by method name. They are imported here, not looked up in the registry,
# because the registry imports this module.
STAGE_EDITORS = {cls.name: cls for cls in (GA, GD, GradDiff, NPO)}
STAGE_METHODS = tuple(STAGE_EDITORS)


@dataclass
class Stage:
    method: str
    epochs: int
    lr: float


def stages_from(value, where: str) -> tuple[Stage, ...]:
    """Stages from a list of {method, epochs, lr} mappings, [method, epochs, lr] lists or Stage objects."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list of {{method, epochs, lr}}, got {value!r}")
    stages = []
    for i, s in enumerate(value):
        if isinstance(s, Stage):
            s = dataclasses.asdict(s)
        elif isinstance(s, (list, tuple)) and len(s) == 3:
            s = dict(zip(("method", "epochs", "lr"), s))
        elif not isinstance(s, dict):
            raise ConfigError(f"{where}: stage {s!r}: expected {{method, epochs, lr}} or [method, epochs, lr]")
        missing = [k for k in ("method", "epochs", "lr") if k not in s]
        if missing:
            raise ConfigError(f"{where}: stage {s} lacks {missing}; expected {{method, epochs, lr}}")
        stages.append(build(Stage, s, f"{where}[{i}]"))
    return tuple(stages)


@dataclass
class SequentialConfig(GradientConfig):
    """A schedule of gradient stages, each with its own epochs and lr (fresh optimizer per stage)."""
    stages: tuple[Stage, ...] = (Stage("ga", 3, 2e-3), Stage("graddiff", 6, 2e-3), Stage("gd", 1, 5e-4))

    @classmethod
    def coerce(cls, name, value, where):
        return stages_from(value, where) if name == "stages" else super().coerce(name, value, where)

    def check(self, need) -> None:
        super().check(need)
        need(len(self.stages) > 0, "stages must list at least one {method, epochs, lr}")
        for s in self.stages:
            need(s.method in STAGE_METHODS, f"stage method {s.method!r} must be one of {STAGE_METHODS}")
            need(s.epochs >= 1 and s.lr > 0, f"stage {s}: epochs >= 1 and lr > 0 required")


class Sequential(GradientEditor):
    """Never an editor itself: its phases are its stages' editors, all on this config."""

    name = "sequential"
    Config = SequentialConfig
    defaults = {"retain_weight": 2.0}
    presets = {"organism": dict(retain_weight=4.0, stages=(Stage("ga", 2, 1e-3), Stage("graddiff", 30, 1e-3),
                                                           Stage("gd", 1, 3e-4))),
               "cyber-7b": dict(params=("*",), weight_decay=2e-4, forget_floor=None,
                                stages=(Stage("ga", 3, 1e-5), Stage("gd", 3, 2e-6), Stage("ga", 1, 2e-5)))}

    @classmethod
    def phases(cls, model, cfg, layers):
        return [Phase(STAGE_EDITORS[s.method](model, cfg, layers), s.epochs, s.lr) for s in cfg.stages]
