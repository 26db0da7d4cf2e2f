"""UNDIAL (Dong et al. 2024, "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language
Models", arXiv 2402.10052, NAACL 2025): self-distillation towards the model's own frozen logits with the answer
token's logit lowered by a fixed gamma. At each forget answer position t (predicting answer token y_t):

    q_t = softmax(z_t - gamma * onehot(y_t))     z_t: the frozen model's logits, cached once before training
    loss = w_f * mean_t KL(q_t || p_theta(. | x, y_<t))  [+ w * CE(retain answers)]

w_f = `forget_weight`, w = `retain_weight` (0: no retain batches). The target is fixed, so the loss is bounded
below by 0 and is 0 exactly when the student's distribution is the adjusted teacher's: unlike ascent there is
nothing to push past, and every other token keeps its frozen relative probability. With gamma = 0 the target is
the frozen model itself and nothing is unlearned. The paper and open-unlearning write the term as the cross-entropy
to q_t, which is this KL plus q_t's entropy, a constant: the same gradients.

Published settings (open-unlearning configs/trainer/UNDIAL.yaml, where the strength is called `beta`): strength 10,
forget weight 1, retain weight 0, lr 1e-4, 10 epochs, every parameter trained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import LoopConfig
from .gradient import plus_retain
from .loop import Batch, Editor


@dataclass
class UndialConfig(LoopConfig):
    """UNDIAL: distil towards the frozen logits with the answer token's logit lowered by gamma."""
    lr: float = 2e-3
    epochs: int = 6
    batch_size: int = 8
    gamma: float = 10.0          # how far the answer token's logit is lowered in the target (open-unlearning: 10)
    forget_weight: float = 1.0   # weight of the distillation term on the forget answers
    retain_weight: float = 1.0   # weight of the retain CE (0: no retain batches)
    params: tuple[str, ...] = ("model.layers.{layer}.*",)

    def check(self, need) -> None:
        super().check(need)
        need(self.gamma >= 0, f"gamma must be >= 0 (0: the target is the frozen model itself), got {self.gamma}")
        need(self.forget_weight > 0 and self.retain_weight >= 0, "forget_weight > 0 and retain_weight >= 0 required")


def answer_positions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits that predict answer tokens, packed to the left in order. logits [batch, pos, vocab], labels
    [batch, pos] -> logits [batch, A, vocab], the answer tokens [batch, A], mask [batch, A] (A: the batch's most
    answer tokens; rows with fewer are padded and masked out)."""
    target = labels[:, 1:]
    mask = target != -100                                                   # [batch, pos-1]
    width = int(mask.sum(1).max()) if mask.numel() else 0
    # a stable sort on "not an answer position" puts each row's answer positions first, in their order
    order = torch.sort((~mask).to(torch.int32), dim=1, stable=True).indices[:, :width]   # [batch, A]
    picked = logits[:, :-1].gather(1, order.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    return picked, target.gather(1, order).clamp(min=0), mask.gather(1, order)


def adjusted_logits(ref_logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """The teacher's logits with the answer token's lowered by gamma. ref_logits [..., vocab], target [...]."""
    return ref_logits - gamma * F.one_hot(target, ref_logits.shape[-1]).to(ref_logits.dtype)


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                gamma: float) -> torch.Tensor:
    """Mean over the masked positions of KL(softmax(ref_logits - gamma * onehot(target)) || softmax(logits)).
    logits, ref_logits [batch, A, vocab]; target, mask [batch, A]."""
    q_log = F.log_softmax(adjusted_logits(ref_logits.float(), target, gamma), -1)
    p_log = F.log_softmax(logits.float(), -1)
    kl = (q_log.exp() * (q_log - p_log)).sum(-1)                            # [batch, A]
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def frozen_answer_logits(model, batch: Batch) -> torch.Tensor:
    """The frozen model's logits at the batch's answer positions, packed: [batch, A, vocab]. The Reference keeps
    each example's first n rows (n, its token count, is at least its answer count), so the cache holds the answer
    positions only, not the prompt's."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    return answer_positions(logits.float(), batch.labels)[0]


class Undial(Editor):
    name = "undial"
    Config = UndialConfig
    # defaults: tuned on the micro organism (tests/test_editors.py); open-unlearning: the published settings
    defaults = {}
    presets = {"open-unlearning": dict(lr=1e-4, gamma=10.0, forget_weight=1.0, retain_weight=0.0,
                                       weight_decay=0.01, epochs=10, params=("*",))}

    def __init__(self, model, cfg, layers):
        super().__init__(model, cfg, layers)
        self.uses = ("forget", "retain") if cfg.retain_weight > 0 else ("forget",)

    def reference_fns(self):
        return {"forget": frozen_answer_logits}

    def loss(self, batch):
        f = batch["forget"]
        logits = self.model(input_ids=f.input_ids, attention_mask=f.attention_mask, use_cache=False).logits
        student, target, mask = answer_positions(logits, f.labels)
        ref = self.ref.get("forget", f)[:, :student.shape[1]].to(student.device)
        term = undial_loss(student, ref, target, mask, self.cfg.gamma)
        with torch.no_grad():
            answer_p = F.softmax(student.float(), -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        stats = {"undial_loss": term.item(),
                 "answer_prob": ((answer_p * mask).sum() / mask.sum().clamp(min=1)).item()}
        total = self.cfg.forget_weight * term
        return plus_retain(self, total, batch, stats), stats

    def describe(self):
        return {"method": self.name, "uses": list(self.uses), "gamma": self.cfg.gamma}
