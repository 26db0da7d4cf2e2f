"""Gradient difference (Cyber for AI at SemEval-2025 Task 4): loss = -CE(forget answers) + w * CE(retain answers),
each forget token's CE capped at `forget_floor`; w = `retain_weight`."""
from __future__ import annotations

import torch

from .gradient import GradientEditor, answer_nll, mean_ce, plus_retain
from .loop import Batch


class GradDiff(GradientEditor):
    name = "graddiff"
    uses = ("forget", "retain")
    defaults = {"epochs": 12, "retain_weight": 4.0}
    presets = {"organism": dict(lr=1e-3, epochs=30, retain_weight=4.0),
               "cyber-1b": dict(lr=2e-5, weight_decay=2e-4, epochs=3, params=("*",), forget_floor=None)}

    def forget_term(self, forget: Batch, nll: torch.Tensor, mask: torch.Tensor, stats: dict) -> torch.Tensor:
        """The loss term on the forget answers (nll, mask: their per-token NLL); may add to `stats`."""
        return -mean_ce(nll, mask, self.cfg.forget_floor)

    def loss(self, batch):
        nll, mask = answer_nll(self.model, batch["forget"])
        stats = {"forget_loss": mean_ce(nll, mask).item()}
        total = self.forget_term(batch["forget"], nll, mask, stats)
        return plus_retain(self, total, batch, stats), stats
