"""Calibrated forgetting: drive the forget documents' loss distribution to that of documents the model never saw.

A membership-inference attack compares a document's loss with the losses of non-members. An edit that only
removes the answers leaves the rest of each forget document (names, contexts) at its memorised, low loss, and the
attack still sees members; an edit that ascends without bound pushes the losses far above any non-member's, which
the attack sees just as well. The target is in between: the loss a model that never trained on the document gives.

Calibration documents stand in for that model: documents of the same kind the model never saw, disjoint from the
non-members the evaluation scores (a test checks it). Each forget document gets a target loss by quantile
matching within its (task, kind) group: the forget document with the r-th lowest loss under the original model
targets the quantile (r + 0.5) / n of the calibration documents' losses under the original model. The term

    weight * mean_i (nll_i - target_i)^2          nll_i = mean token NLL of forget document i (every token)
  + weight * KL(p_frozen || p) over every token of a batch of calibration documents

pulls a document up to its target and, past it, back down: the edit stops at never-seen, never above. The second
term holds the model where it was on never-seen documents: forget and calibration documents share their templates
("was born on", "can be reached by phone at"), and without it the cheapest way up for a forget document is to
make those shared words unlikely, which raises every document's loss and damages the model. A document-level
anchor (each calibration document's loss kept) is not enough: the edit then learns those documents in particular
while other never-seen documents drift up. `Calibrated`
adds the term to any editor's loss (every editor has the mode: `calibrate=True`). The targets are fixed before
the first update: measured on the edited model instead, they would move with the edit, and raising every loss
at once (calibration documents' included) would meet them while damaging the model. They are part of the
editor's state, so a resumed run continues with the very targets the killed one had. `calibration_auc` (forget
documents vs calibration documents, score = -loss, as the LOSS attack) is logged at every evaluation and enters
the evaluation score: 0.5 means the two are indistinguishable.

Users with their own data give their own calibration documents, or per-document target losses (for example a
retain-only model's losses on the forget documents), which replace the quantile matching.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import EditError
from .joint import answer_kl
from .loop import Batch, Editor, Example, collate

MIN_CALIBRATION_DOCS = 8


def encode_documents(tok, records, max_len: int) -> list[Example]:
    """Whole documents (input + ' ' + output, tokenised as the MIA attacks do), every token labelled."""
    return [Example(tok(r.text)["input_ids"][:max_len], 0, r.task, i) for i, r in enumerate(records)]


def document_nll(model, batch: Batch) -> torch.Tensor:
    """Mean NLL over tokens 1..T-1 of each document (the LOSS attack's statistic). [batch]"""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)                     # [batch, pos-1, vocab]
    target = batch.input_ids[:, 1:]                                               # [batch, pos-1]
    mask = batch.attention_mask[:, 1:].to(logp.dtype)                             # [batch, pos-1]
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)                      # [batch, pos-1]
    return (nll * mask).sum(-1) / mask.sum(-1).clamp(min=1)


@torch.no_grad()
def documents_nll(model, docs: Sequence[Example], pad_id: int, batch_size: int = 32) -> np.ndarray:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [document_nll(model, collate(docs[s:s + batch_size], pad_id, device)).cpu()
           for s in range(0, len(docs), batch_size)]
    model.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def loss_auc(member_nll: np.ndarray, nonmember_nll: np.ndarray) -> float:
    """The LOSS attack's AUC: members labelled 1, score = -NLL."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(member_nll)), np.zeros(len(nonmember_nll))]
    return float(roc_auc_score(labels, -np.r_[member_nll, nonmember_nll]))


def quantile_targets(rank_nll: np.ndarray, groups: Sequence, calib_nll: np.ndarray,
                     calib_groups: Sequence) -> np.ndarray:
    """Per forget document, the calibration quantile at its rank within its group (all calibration documents when
    its group has none)."""
    targets = np.empty(len(rank_nll))
    groups, calib_groups = list(groups), list(calib_groups)
    for g in sorted(set(groups), key=str):
        idx = np.array([i for i, x in enumerate(groups) if x == g])
        pool = calib_nll[[i for i, x in enumerate(calib_groups) if x == g]]
        if len(pool) == 0:
            pool = calib_nll
        ranks = np.argsort(np.argsort(rank_nll[idx], kind="stable"), kind="stable")
        targets[idx] = np.quantile(pool, (ranks + 0.5) / len(idx))
    return targets


@dataclass
class Calibration:
    """Forget and calibration documents, the forget documents' targets, and the matching term."""

    forget: list[Example]
    groups: list[tuple]                 # (task, kind) per forget document
    weight: float
    calib: list[Example] | None = None
    calib_groups: list[tuple] | None = None
    fixed_targets: np.ndarray | None = None   # given per-document targets (no quantile matching)
    rank_nll: np.ndarray | None = None        # the original model's forget losses: the ranks quantiles follow
    targets: torch.Tensor | None = None       # [n_forget]
    pad_id: int = 0

    @classmethod
    def build(cls, tok, forget_records, calibration_records=None, targets: dict | None = None, *,
              weight: float, max_len: int, pad_id: int) -> "Calibration":
        if (calibration_records is None) == (targets is None):
            raise EditError("calibrated forgetting needs either calibration documents or per-document target "
                            "losses (exactly one of them)")
        forget_records = list(forget_records)
        groups = [(r.task, r.kind) for r in forget_records]
        docs = encode_documents(tok, forget_records, max_len)
        if targets is not None:
            missing = [r.id for r in forget_records if r.id not in targets]
            if missing:
                raise EditError(f"calibration targets lack {len(missing)} forget document(s), e.g. {missing[:3]}; "
                                "expected one target loss per forget record id")
            fixed = np.array([float(targets[r.id]) for r in forget_records])
            if not np.all(np.isfinite(fixed)) or np.any(fixed < 0):
                raise EditError("calibration targets must be finite, non-negative losses (mean token NLL)")
            return cls(docs, groups, weight, fixed_targets=fixed, targets=torch.tensor(fixed, dtype=torch.float32),
                       pad_id=pad_id)
        calibration_records = list(calibration_records)
        if len(calibration_records) < MIN_CALIBRATION_DOCS:
            raise EditError(f"calibrated forgetting needs at least {MIN_CALIBRATION_DOCS} calibration documents "
                            f"(never-trained-on documents like the forget set), got {len(calibration_records)}")
        overlap = {r.text for r in calibration_records} & {r.text for r in forget_records}
        if overlap:
            raise EditError(f"{len(overlap)} calibration document(s) are also forget documents; calibration "
                            "documents must be ones the model never trained on")
        return cls(docs, groups, weight, calib=encode_documents(tok, calibration_records, max_len),
                   calib_groups=[(r.task, r.kind) for r in calibration_records], pad_id=pad_id)

    def measure(self, model) -> dict:
        """Where the forget documents stand against the calibration documents (or the given targets)."""
        forget_nll = documents_nll(model, self.forget, self.pad_id)
        if self.fixed_targets is not None:
            gap = forget_nll - self.fixed_targets
            return {"calibration_gap": float(gap.mean()), "calibration_abs_gap": float(np.abs(gap).mean()),
                    "forget_doc_nll": float(forget_nll.mean())}
        calib_nll = documents_nll(model, self.calib, self.pad_id)
        return {"calibration_auc": loss_auc(forget_nll, calib_nll), "forget_doc_nll": float(forget_nll.mean()),
                "calibration_doc_nll": float(calib_nll.mean())}

    def set_targets(self, model) -> None:
        """The targets under `model`, the model before its edit (given targets are kept as they are)."""
        if self.fixed_targets is not None:
            return
        self.rank_nll = documents_nll(model, self.forget, self.pad_id)
        calib_nll = documents_nll(model, self.calib, self.pad_id)
        self.targets = torch.tensor(quantile_targets(self.rank_nll, self.groups, calib_nll, self.calib_groups),
                                    dtype=torch.float32)

    @staticmethod
    def score(stats: dict) -> float:
        """Penalty added to an evaluation score: 1 - SemEval MIA score of the calibration AUC (or the mean absolute
        gap to given targets, in nats)."""
        if "calibration_auc" in stats:
            return 2.0 * abs(stats["calibration_auc"] - 0.5)
        return stats["calibration_abs_gap"]

    def loss(self, model, forget: Batch, calib: Batch | None = None,
             calib_ref_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """The matching term on a batch of forget documents and the anchor on a batch of calibration documents
        (Example.index points into self.forget and self.calib; calib_ref_logp: the frozen model's log-probs)."""
        nll = document_nll(model, forget)                                             # [batch]
        gap = nll - self.targets[forget.index].to(nll.device)                         # [batch]
        term = self.weight * gap.pow(2).mean()
        stats = {"calibration_loss": term.item(), "doc_nll_minus_target": gap.mean().item()}
        if calib is not None:
            logits = model(input_ids=calib.input_ids, attention_mask=calib.attention_mask, use_cache=False).logits
            kl = answer_kl(logits, calib_ref_logp, calib.labels)
            term = term + self.weight * kl
            stats["calibration_kl"] = kl.item()
        return term, stats


class Calibrated(Editor):
    """Any editor plus the matching term on a batch of whole forget documents (the split "forget_doc")."""

    def __init__(self, inner: Editor, calibration: Calibration):
        super().__init__(inner.model, inner.cfg, inner.layers)
        self.inner, self.calibration = inner, calibration
        self.name = f"{inner.name}+calibrated"
        self.uses = tuple(inner.uses) + (("forget_doc", "calibration_doc") if calibration.calib else ("forget_doc",))

    def param_patterns(self):
        return self.inner.param_patterns()

    def reference_fns(self):
        fns = dict(self.inner.reference_fns())
        if "calibration_doc" in self.uses:
            fns["calibration_doc"] = lambda m, b: torch.log_softmax(
                m(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits.float(), -1)
        return fns

    def setup(self, ref, data):
        self.inner.setup(ref, data)
        self.ref = ref

    def start_epoch(self, epoch):
        self.inner.start_epoch(epoch)

    def loss(self, batch):
        loss, stats = self.inner.loss({k: v for k, v in batch.items() if not k.endswith("_doc")})
        calib = batch.get("calibration_doc")
        term, cstats = self.calibration.loss(self.model, batch["forget_doc"], calib,
                                             None if calib is None else self.ref.get("calibration_doc", calib))
        return loss + term, {**stats, **cstats}

    def state_dict(self):
        c = self.calibration
        return {"inner": self.inner.state_dict(), "targets": c.targets.clone()}

    def load_state_dict(self, state):
        self.inner.load_state_dict(state["inner"])
        self.calibration.targets = state["targets"].clone()

    def describe(self):
        return {**self.inner.describe(), "calibrated": True, "calibration_weight": self.calibration.weight,
                "calibration_docs": len(self.calibration.calib or []),
                "calibration_targets_given": self.calibration.fixed_targets is not None}
