"""The settings every editor shares (`LoopConfig`), their checks, and the reading of an editor config file.

Each editor extends `LoopConfig` with its own dataclass, in its own file, and names its method's organism-tuned
`defaults` and the papers' settings as `presets` (workbench.editors.registry.resolve_config layers them):

    resolve_config("rmu", preset="wmdp")                      # Li et al. 2024
    resolve_config("adaptive-rmu", preset="snuffleupagus-1b")  # Dang et al. / SemEval-2025
    resolve_config("joint", preset="sha256")                   # SHA256, SemEval-2025
    resolve_config("sequential", preset="cyber-7b")            # Cyber for AI, SemEval-2025

The dataclass defaults are tuned on the micro organism (4 layers, d_model 64): each editor is to take forget QA
exact match to <= 0.2 while keeping retain exact match >= 0.8 of its start (tests/test_editors.py checks it).
Precedence: dataclass defaults < method defaults < preset < config file (YAML/JSON) < explicit overrides (CLI flags).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..configfile import MAX_SEED, coerce_value, field_types, read_mapping
from ..errors import ConfigError

Need = Callable[[bool, str], None]   # need(ok, message): a ConfigError naming the method when not ok


@dataclass
class LoopConfig:
    """Shared training-loop settings. One step = one optimizer update (batch_size x grad_accum examples)."""
    lr: float = 1e-3
    lr_schedule: str = "constant"  # "constant" | "cosine" (linear warm-up over warmup_steps, then cosine to 0)
    warmup_steps: int = 10
    epochs: int = 1               # passes over the forget set (over retain for `gd`)
    max_steps: int | None = None  # cap on optimizer steps (None: epochs decide)
    batch_size: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_len: int = 256            # tokens per example, longer ones are cut
    eval_every: int = 0           # steps between evaluations on the eval slice (0: only at the end)
    eval_size: int = 32           # QA records per split in the eval slice
    eval_metric: str = "qa"       # "qa": retain EM - forget EM (higher better); "loss": editor loss (lower better)
    keep_best: bool = True        # restore the best evaluated weights at the end
    checkpoint_every: int = 25    # steps between resumable checkpoints
    cache_reference: bool = True  # cache frozen activations / reference log-probs once (else keep a frozen copy)
    dtype: str = "float32"        # float32 | bfloat16
    seed: int = 0
    # calibrated forgetting (editors/calibration.py): also drive the forget documents' loss distribution to that of
    # never-trained-on calibration documents, and no further; the calibration AUC enters the evaluation score
    calibrate: bool = False
    calibration_weight: float = 1.0   # weight of the matching term
    calibration_anchor: float = 1.0   # weight of the KL anchor on the calibration documents and general text
    calibration_anchor_batch: int = 8   # anchor documents per micro-batch
    calibration_refresh: int = 10     # optimizer steps between target refreshes (0: the original model's, fixed)
    calibration_statistics: tuple[str, ...] = ("loss",)   # the attacks' statistics to match (of loss, min_k, min_k_pp)

    @classmethod
    def coerce(cls, name: str, value: Any, where: str) -> Any:
        """A JSON/YAML/CLI value as field `name`'s type (workbench.configfile.coerce_value)."""
        return coerce_value(value, field_types(cls)[name], where)

    def check(self, need: Need) -> None:
        """The loop settings' ranges; an editor's config extends this with its own fields' checks."""
        need(isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED,
             f"seed must be a whole number from 0 to {MAX_SEED}, got {self.seed}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(self.lr_schedule in ("constant", "cosine"),
             f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 or None, got {self.max_steps}")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.max_grad_norm is None or self.max_grad_norm > 0,
             f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        need(self.max_len >= 2, f"max_len must be >= 2 tokens (a prompt and an answer token), got {self.max_len}")
        need(self.eval_every >= 0, f"eval_every must be >= 0 (0: only at the end), got {self.eval_every}")
        need(self.eval_size >= 1, f"eval_size must be >= 1, got {self.eval_size}")
        params = getattr(self, "params", None)   # the trained-parameter patterns, where the editor's config has them
        need(params is None or (len(params) > 0 and all(p.strip() for p in params)),
             f"params must list at least one non-empty parameter pattern, got {params!r}")
        need(self.eval_metric in ("qa", "loss"), f"eval_metric must be 'qa' or 'loss', got {self.eval_metric!r}")
        need(self.dtype in ("float32", "bfloat16", "fp32", "bf16"),
             f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        need(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        need(self.calibration_weight > 0, f"calibration_weight must be > 0, got {self.calibration_weight}")
        need(self.calibration_anchor >= 0, f"calibration_anchor must be >= 0, got {self.calibration_anchor}")
        need(self.calibration_anchor_batch >= 1,
             f"calibration_anchor_batch must be >= 1, got {self.calibration_anchor_batch}")
        need(self.calibration_refresh >= 0, f"calibration_refresh must be >= 0, got {self.calibration_refresh}")


def validate(method: str, cfg: LoopConfig) -> None:
    """Every field of `cfg` in range, or a ConfigError naming `method` and the field."""
    def need(ok, msg):
        if not ok:
            raise ConfigError(f"{method}: {msg}")

    cfg.check(need)


def read_config_file(path: str | Path) -> dict:
    """An editor config file: its mapping (a top-level `config:` section if present), `method` dropped."""
    data = read_mapping(path, "editor config file")
    data.pop("method", None)
    return data.get("config", data)
