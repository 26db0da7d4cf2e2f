"""Hook-driven unlearning editors, one method per file, and the one entry point `unlearn` (editors/unlearn.py).

    from workbench.editors import unlearn
    out = unlearn(model, tok, corpus, "adaptive-rmu", layers=[1, 2, 3], config={"beta": 3}, out_dir="runs/armu")

The methods by name: editors/registry.py (EDITORS). The shared training loop: editors/loop.py.
"""
from __future__ import annotations

from .config import LoopConfig
from .gradient import GradientConfig
from .joint import JointConfig
from .registry import EDITORS, build_phases, editor_class, resolve_config
from .rmu import RMUConfig
from .sequential import SequentialConfig, Stage
from .simnpo import SimNPOConfig
from .undial import UndialConfig
from .unlearn import resolve_layers, unlearn

__all__ = ["EDITORS", "unlearn", "resolve_layers", "resolve_config", "build_phases", "editor_class",
           "LoopConfig", "RMUConfig", "JointConfig", "GradientConfig", "SequentialConfig", "SimNPOConfig",
           "UndialConfig", "Stage"]
