"""Gradient descent on the retain set only (Cyber for AI at SemEval-2025 Task 4): loss = CE(retain answers)."""
from __future__ import annotations

from .gradient import GradientEditor, answer_nll, mean_ce


class GD(GradientEditor):
    name = "gd"
    uses = ("retain",)
    defaults = {"lr": 1e-2, "epochs": 20}
    presets = {"cyber-1b": dict(lr=2e-5, weight_decay=2e-4, epochs=20, params=("*",))}

    def loss(self, batch):
        retain = mean_ce(*answer_nll(self.model, batch["retain"]))
        return retain, {"retain_loss": retain.item()}
