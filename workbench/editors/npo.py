"""NPO (Zhang et al. 2024): GradDiff with the ascent term replaced by negative preference optimisation,

    -(2/beta) * mean log sigmoid(-beta * (log p(y|x) - log p_ref(y|x)))  [+ w * CE(retain)]

log p summed over the answer tokens; p_ref from the frozen model, cached before training. w = `retain_weight`
(0: plain NPO, no retain batches)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .graddiff import GradDiff
from .gradient import answer_nll, sequence_logprob


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: -(2/beta) * mean log sigmoid(-beta * (log p - log p_ref)). At logp = ref_logp it is (2/beta) log 2."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


class NPO(GradDiff):
    name = "npo"
    defaults = {"lr": 3e-3, "epochs": 10}
    presets = {"organism": dict(lr=1e-3, epochs=20, retain_weight=8.0),
               "open-unlearning": dict(lr=1e-5, npo_beta=0.1, retain_weight=1.0, epochs=10, params=("*",))}

    def __init__(self, model, cfg, layers):
        super().__init__(model, cfg, layers)
        self.uses = ("forget", "retain") if cfg.retain_weight > 0 else ("forget",)

    def reference_fns(self):
        return {"forget": lambda m, b: sequence_logprob(*answer_nll(m, b))}

    def forget_term(self, forget, nll, mask, stats):
        ref = self.ref.get("forget", forget).to(nll.dtype)
        logp = sequence_logprob(nll, mask)
        term = npo_loss(logp, ref, self.cfg.npo_beta)
        stats["npo_loss"] = term.item()
        stats["logp_minus_ref"] = (logp - ref).mean().item()
        return term
