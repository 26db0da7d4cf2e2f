"""Gradient ascent (Cyber for AI at SemEval-2025 Task 4): loss = -CE(forget answers), each token's CE capped at
`forget_floor`."""
from __future__ import annotations

from .gradient import GradientEditor, answer_nll, mean_ce


class GA(GradientEditor):
    name = "ga"
    uses = ("forget",)
    defaults = {"lr": 1e-3, "epochs": 8, "eval_every": 1}  # evaluated at every step: the best model of the run is kept
    presets = {"cyber-1b": dict(lr=2e-5, weight_decay=2e-4, epochs=3, params=("*",), forget_floor=None)}

    def loss(self, batch):
        nll, mask = answer_nll(self.model, batch["forget"])
        return -mean_ce(nll, mask, self.cfg.forget_floor), {"forget_loss": mean_ce(nll, mask).item()}
