"""RepNoise (Rosati et al. 2024, "Representation noising: A defence mechanism against harmful finetuning",
arXiv 2405.14577): GradDiff plus a term that pushes the forget answers' hidden states towards Gaussian noise at
every layer from the first edited one on,

    w * CE(retain) - a * CE(forget, capped at forget_floor) + b * mean_l MMD^2(h_l(forget), N(0, s^2 I))

h_l: decoder layer l's output at the positions that predict a forget answer token [n_tokens, d_model]; the noise
sample has as many rows, drawn per batch from a generator seeded by the batch's record indices (the same batch gets
the same noise after a resume); s^2 = `noise_var`. MMD^2 is the biased estimate with a sum of Gaussian kernels
exp(-|x - y|^2 / (2 h d_model)) over the bandwidths h in `bandwidths` (per dimension, so one setting serves any
width). The paper's point: ascent alone moves the output while the layers still carry the information a few
fine-tuning steps read out again; noising the representations removes it, which is what the relearning attack
measures. a = `ascent_weight`, b = `noise_weight`, w = `retain_weight`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hooks import capture
from ..models import decoder_layers
from .gradient import GradientConfig, mean_ce, plus_retain, token_nll
from .graddiff import GradDiff


@dataclass
class RepNoiseConfig(GradientConfig):
    """The gradient editors' config and RepNoise's ascent and noise weights, noise variance and kernel widths."""
    ascent_weight: float = 1.0
    noise_weight: float = 4.0
    noise_var: float = 1.0
    bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0)

    def check(self, need) -> None:
        super().check(need)
        need(self.ascent_weight >= 0 and self.noise_weight > 0 and self.noise_var > 0,
             "ascent_weight >= 0, noise_weight > 0 and noise_var > 0 required")
        need(len(self.bandwidths) > 0 and all(h > 0 for h in self.bandwidths),
             f"bandwidths must be positive numbers, got {list(self.bandwidths)}")


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths) -> torch.Tensor:
    """Biased MMD^2 between samples x [n, d] and y [m, d] under sum_h exp(-|a - b|^2 / (2 h d))."""
    d = x.shape[-1]

    def k(a, b):
        dist = torch.cdist(a, b).pow(2)                            # [n, m]
        return sum(torch.exp(-dist / (2 * h * d)) for h in bandwidths)

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


class RepNoise(GradDiff):
    name = "repnoise"
    Config = RepNoiseConfig
    # defaults: chosen on micro's validation view (data.records.validation_view) at layers 0-2, where 10 epochs
    # forget the validation people (0.00) and keep every retain answer (1.00)
    defaults = {"lr": 2e-3, "epochs": 10, "retain_weight": 4.0}
    presets = {"organism": dict(lr=1e-3, epochs=30, retain_weight=4.0)}

    def __init__(self, model, cfg, layers):
        super().__init__(model, cfg, layers)
        # decoder layer outputs from the first edited layer on (earlier ones cannot move)
        self.sites = [f"resid_post.{l}" for l in range(min(layers), len(decoder_layers(model)))]

    def noise_term(self, hidden: dict, answer_mask: torch.Tensor, index: list[int]) -> torch.Tensor:
        """Mean over the captured layers of MMD^2 between the answer-predicting states and Gaussian noise."""
        g = torch.Generator().manual_seed(hash(tuple(index)) % (2 ** 31) + self.cfg.seed)
        terms = []
        for site in self.sites:
            states = hidden[site][:, :-1][answer_mask].float()      # [n_tokens, d_model]
            noise = torch.randn(states.shape, generator=g) * self.cfg.noise_var ** 0.5
            terms.append(mmd2(states, noise.to(states.device), self.cfg.bandwidths))
        return torch.stack(terms).mean() if terms else torch.zeros((), device=answer_mask.device)

    def loss(self, batch):
        forget = batch["forget"]
        with capture(self.model, self.sites, detach=False) as hidden:   # [batch, pos, d_model] per site
            logits = self.model(input_ids=forget.input_ids, attention_mask=forget.attention_mask,
                                use_cache=False).logits
        nll, mask = token_nll(logits, forget.labels)
        noise = self.noise_term(hidden, mask, forget.index)
        stats = {"forget_loss": mean_ce(nll, mask).item(), "noise_mmd": noise.item()}
        total = -self.cfg.ascent_weight * mean_ce(nll, mask, self.cfg.forget_floor) + self.cfg.noise_weight * noise
        return plus_retain(self, total, batch, stats), stats
