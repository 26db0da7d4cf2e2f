"""What the gradient editors (ga, gd, graddiff, npo, simnpo, sequential) share: their config and answer-token losses.

Every loss here is on answer tokens only (the record's `output` + EOS; the prompt is context).
`forget_floor` caps each forget token's CE in an ascent term: a token whose CE is already above the floor gives
no more gradient, so ascent stops pushing facts that are gone instead of wrecking the rest of the model
(None: plain ascent).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import LoopConfig
from .loop import Batch, Editor


@dataclass
class GradientConfig(LoopConfig):
    """Cyber for AI baselines: ga (ascent on forget), gd (descent on retain), graddiff, npo."""
    lr: float = 2e-3
    epochs: int = 6
    batch_size: int = 8
    retain_weight: float = 1.0           # graddiff / npo: weight of the retain CE (npo: 0 = plain NPO)
    npo_beta: float = 0.1                # NPO inverse temperature (Zhang et al. 2024, open-unlearning default)
    forget_floor: float | None = 3.0     # ga / graddiff: stop pushing a token's CE above this
    params: tuple[str, ...] = ("model.layers.{layer}.*",)

    def check(self, need) -> None:
        super().check(need)
        need(self.npo_beta > 0 and self.retain_weight >= 0, "npo_beta > 0 and retain_weight >= 0 required")


class GradientEditor(Editor):
    """Base of the gradient editors: a GradientConfig, described by the method and the splits it trains on."""

    Config = GradientConfig

    def describe(self):
        return {"method": self.name, "uses": list(self.uses)}


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL of each next token and the answer mask. logits [batch, pos, vocab], labels [batch, pos]
    -> nll [batch, pos-1], mask [batch, pos-1] (True where the next token is an answer token)."""
    target = labels[:, 1:]
    mask = target != -100
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # [batch, pos-1, vocab]
    nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll * mask, mask


def answer_nll(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return token_nll(logits, batch.labels)


def mean_ce(nll: torch.Tensor, mask: torch.Tensor, floor: float | None = None) -> torch.Tensor:
    """Mean answer-token CE; with `floor`, each token's CE is capped there (no gradient beyond it)."""
    if floor is not None:
        nll = nll.clamp(max=floor)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def sequence_logprob(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(answer | prompt) per example: minus the summed answer-token NLL. [batch]"""
    return -(nll * mask).sum(-1)


def plus_retain(editor: Editor, total: torch.Tensor, batch: dict[str, Batch], stats: dict) -> torch.Tensor:
    """total + retain_weight * CE(retain answers) when `editor` trains on retain batches (stats gain retain_loss)."""
    if "retain" not in editor.uses:
        return total
    retain = mean_ce(*answer_nll(editor.model, batch["retain"]))
    stats["retain_loss"] = retain.item()
    return total + editor.cfg.retain_weight * retain
