"""Gradient baselines (Cyber for AI at SemEval-2025 Task 4) and NPO, on answer tokens.

    ga        -CE(forget)                       gradient ascent
    gd        CE(retain)                        gradient descent on retain only
    graddiff  -CE(forget) + w * CE(retain)
    npo       -(2/beta) * mean log sigmoid(-beta * (log p(y|x) - log p_ref(y|x)))  [+ w * CE(retain)]
              (Zhang et al. 2024; log p summed over the answer tokens; p_ref from the frozen model, cached)
    sequential  stages of the above, each with its own epochs and lr (see config.Stage)

`forget_floor` caps each forget token's CE in the ascent term: a token whose CE is
already above the floor gives no more gradient, so ascent stops pushing facts
that are gone instead of wrecking the rest of the model (None: plain ascent).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .loop import Batch, Editor


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


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: -(2/beta) * mean log sigmoid(-beta * (log p - log p_ref)). At logp = ref_logp it is (2/beta) log 2."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


class Gradient(Editor):
    """One gradient objective; `method` in ga, gd, graddiff, npo."""

    def __init__(self, model, cfg, layers, method: str):
        super().__init__(model, cfg, layers)
        self.name = method
        self.uses = {"ga": ("forget",), "gd": ("retain",), "graddiff": ("forget", "retain"),
                     "npo": ("forget", "retain") if cfg.retain_weight > 0 else ("forget",)}[method]

    def reference_fns(self):
        if self.name != "npo":
            return {}
        return {"forget": lambda m, b: sequence_logprob(*answer_nll(m, b))}

    def loss(self, batch):
        stats, total = {}, 0.0
        if "forget" in self.uses:
            nll, mask = answer_nll(self.model, batch["forget"])
            stats["forget_loss"] = mean_ce(nll, mask).item()
            if self.name == "npo":
                ref = self.ref.get("forget", batch["forget"]).to(nll.dtype)
                logp = sequence_logprob(nll, mask)
                forget_term = npo_loss(logp, ref, self.cfg.npo_beta)
                stats["npo_loss"] = forget_term.item()
                stats["logp_minus_ref"] = (logp - ref).mean().item()
                total = total + forget_term
            else:
                total = total - mean_ce(nll, mask, self.cfg.forget_floor)
        if "retain" in self.uses:
            nll, mask = answer_nll(self.model, batch["retain"])
            retain = mean_ce(nll, mask)
            stats["retain_loss"] = retain.item()
            w = 1.0 if self.name == "gd" else self.cfg.retain_weight
            total = total + w * retain
        return total, stats

    def describe(self):
        return {"method": self.name, "uses": list(self.uses)}
