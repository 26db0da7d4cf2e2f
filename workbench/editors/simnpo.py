"""SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning",
arXiv 2410.07163): NPO without the reference model, its reward normalised by the answer length, with a margin,

    (w_f) * -(2/beta) * mean log sigmoid(-(beta/|y|) * log p(y|x) - gamma)  [+ w * CE(retain)]

log p(y|x) summed over the answer tokens, |y| their number (the answer and its EOS); w_f = `forget_weight`,
w = `retain_weight` (0: no retain batches). The gradient on an answer's mean log-probability is
2 * w_f * sigmoid((beta/|y|) * log p + gamma): it fades as the answer becomes unlikely, so, as in NPO, the ascent
slows by itself; unlike NPO there is no frozen model to compare with, and a long answer does not get a larger push
than a short one.

gamma is the paper's margin inside the sigmoid. open-unlearning's `delta` is a margin on the mean NLL before the
scaling by beta (its gamma = beta * delta here); both are 0 in the published TOFU settings, where the two coincide.
Published settings (open-unlearning configs/trainer/SimNPO.yaml, from the authors' TOFU forget10 run): beta 4.5,
margin 0, forget weight 0.125, retain weight 1 (NLL), lr 1e-5, 10 epochs, every parameter trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .gradient import GradientConfig, sequence_logprob
from .graddiff import GradDiff


@dataclass
class SimNPOConfig(GradientConfig):
    """The gradient editors' config and SimNPO's inverse temperature, margin and forget-term weight."""
    beta: float = 4.5            # inverse temperature on the length-normalised log-probability (paper, TOFU forget10)
    gamma: float = 0.0           # margin inside the sigmoid (0 in the published TOFU settings)
    forget_weight: float = 1.0   # weight of the SimNPO term (open-unlearning's `gamma`, 0.125 on TOFU)

    def check(self, need) -> None:
        super().check(need)
        need(self.beta > 0, f"beta must be > 0, got {self.beta}")
        need(self.forget_weight > 0, f"forget_weight must be > 0, got {self.forget_weight}")


def simnpo_loss(logp: torch.Tensor, length: torch.Tensor, beta: float, gamma: float = 0.0) -> torch.Tensor:
    """-(2/beta) * mean log sigmoid(-(beta/|y|) * log p - gamma). logp, length: [batch] (summed answer log-prob and
    answer token count; a count of 0 is read as 1 so that an answer cut away entirely adds a constant)."""
    return -(2.0 / beta) * F.logsigmoid(-(beta / length.clamp(min=1)) * logp - gamma).mean()


class SimNPO(GradDiff):
    name = "simnpo"
    Config = SimNPOConfig
    # defaults: tuned on the micro organism (tests/test_editors.py); open-unlearning: the published TOFU settings
    defaults = {"lr": 3e-3, "epochs": 10}
    presets = {"open-unlearning": dict(lr=1e-5, beta=4.5, gamma=0.0, forget_weight=0.125, retain_weight=1.0,
                                       weight_decay=0.01, epochs=10, params=("*",))}

    def __init__(self, model, cfg, layers):
        super().__init__(model, cfg, layers)
        self.uses = ("forget", "retain") if cfg.retain_weight > 0 else ("forget",)

    def forget_term(self, forget, nll, mask, stats):
        logp = sequence_logprob(nll, mask)
        length = mask.sum(-1).to(logp.dtype)
        term = self.cfg.forget_weight * simnpo_loss(logp, length, self.cfg.beta, self.cfg.gamma)
        stats["simnpo_loss"] = term.item()
        stats["mean_token_logp"] = (logp / length.clamp(min=1)).mean().item()
        return term

    def describe(self):
        return {**super().describe(), "beta": self.cfg.beta, "gamma": self.cfg.gamma}
