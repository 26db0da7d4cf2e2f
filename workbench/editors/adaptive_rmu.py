"""Adaptive RMU (Dang et al. 2024; Mr. Snuffleupagus at SemEval-2025 Task 4): RMU with the steering coefficient
c = beta * the mean norm of the frozen model's layer-l activations over the forget set (editors/rmu.py)."""
from __future__ import annotations

from dataclasses import replace

from .rmu import RMU


class AdaptiveRMU(RMU):
    name = "adaptive-rmu"
    defaults = {"adaptive": True}
    # snuffleupagus-1b/7b: Dosajh & Sanghi 2025 (Mr. Snuffleupagus); organism: tuned on the default organism
    presets = {"organism": dict(epochs=160, lr=1e-2, alpha=40.0, adaptive=True),
               "snuffleupagus-1b": dict(lr=5e-5, batch_size=8, epochs=1, alpha=900.0, beta=3.0, adaptive=True,
                                        max_grad_norm=None),
               "snuffleupagus-7b": dict(lr=5e-5, batch_size=8, epochs=1, alpha=900.0, beta=5.0, adaptive=True,
                                        max_grad_norm=None)}

    def __init__(self, model, cfg, layers):
        super().__init__(model, cfg if cfg.adaptive else replace(cfg, adaptive=True), layers)
