"""Calibrated forgetting: drive the forget documents' membership statistics to those of documents the model never saw.

A membership-inference attack compares a statistic of a document (its mean loss; the mean of its least likely
tokens, Min-K%; the same on z-scored log-probs, Min-K%++) with the statistics of non-members. An edit that only
removes the answers leaves the rest of each forget document (names, contexts) at its memorised, low loss, and the
attack still sees members. An edit that ascends without bound pushes the losses far above any non-member's, and
an edit that makes the memorised tokens confidently wrong (a peaked prediction on another token) leaves z-scores no
never-seen document has: the attacks see both. The target is in between: what a model that never trained on the
document gives.

Calibration documents stand in for that model: documents of the same kind the model never saw, disjoint from the
non-members the evaluation scores (a test checks it). For each statistic s, each forget document gets a target by
quantile matching within its (task, kind) group: the forget document with the r-th lowest s under the original
model targets the quantile (r + 0.5) / n of the calibration documents' s under the model being edited (refreshed
every `refresh` optimizer steps: the attacks compare with non-members under the edited model). The term

    weight * sum_s mean_i ((s_i - target_s,i) / scale_s)^2        s in `statistics`, scale_s: the calibration
                                                                   documents' standard deviation of s
  + anchor * KL(p_frozen || p) over every token of a batch of anchor documents: the calibration documents and
             the general text the model learnt besides forget and retain (a sample of its pretraining data; the
             organism's general-knowledge sentences and training questions), if given

pulls a document's statistics to their targets from either side: the edit stops at never-seen, never above. The
anchor's batches (`anchor_batch` documents, drawn by the step) come from the wrapper, not the loop. The
second term holds the model where it was on never-seen documents and general text: forget and calibration documents
share their templates ("was born on", "can be reached by phone at"), and without it the cheapest way up for a forget document
is to make those shared words unlikely, which raises every document's loss and damages the model. A
document-level anchor (each calibration document's loss kept) is not enough: the edit then learns those documents
in particular while other never-seen documents drift up. Without the anchor, targets that follow the edited model
would be met the degenerate way, by raising every loss at once; with it, they follow only the drift the anchor
lets through. The targets are part of the editor's state, so a resumed run continues with the very targets the
killed one had.

`Calibrated` adds the term to any editor's loss (every editor has the mode: `calibrate=True`). At every evaluation
the AUC of each statistic (forget vs calibration documents, as the attacks compute it) is logged, and the largest
distance from 0.5 enters the evaluation score.

Users with their own data give their own calibration documents, or per-document target losses (for example a
retain-only model's losses on the forget documents), which replace the quantile matching of the mean loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import EditError
from ..provenance import stable_hash
from .joint import answer_kl
from .loop import Batch, Editor, Example, collate

MIN_CALIBRATION_DOCS = 8
STATISTICS = ("loss", "min_k", "min_k_pp")   # the attacks' per-document statistics (lower = more member-like)


def encode_documents(tok, records, max_len: int) -> list[Example]:
    """Whole documents (input + ' ' + output, tokenised as the MIA attacks do), every token labelled."""
    return [Example(tok(r.text)["input_ids"][:max_len], 0, r.task, i) for i, r in enumerate(records)]


def _lowest_k_mean(x: torch.Tensor, mask: torch.Tensor, k: float) -> torch.Tensor:
    """Per row, the mean of the floor(k * n) (at least one) smallest values among the masked-in ones. [batch]"""
    rows = []
    for values, keep in zip(x, mask):
        v = values[keep]
        rows.append(torch.topk(v, max(1, math.floor(k * v.numel())), largest=False).values.mean())
    return torch.stack(rows)


def document_statistics(model, batch: Batch, names: Sequence[str] = STATISTICS, k: float = 0.4) -> dict:
    """Each document's LOSS, Min-K% and Min-K%++ statistics (tokens 1..T-1), differentiable; the definitions of
    workbench.evaluation.mia. {name: [batch]}"""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)                      # [batch, pos-1, vocab]
    tok_logp = logp.gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [batch, pos-1]
    mask = batch.attention_mask[:, 1:].bool()                                      # [batch, pos-1]
    out = {}
    if "loss" in names:
        out["loss"] = -(tok_logp * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    if "min_k" in names:
        out["min_k"] = -_lowest_k_mean(tok_logp, mask, k)
    if "min_k_pp" in names:
        p = logp.exp()
        mu = (p * logp).sum(-1)                                                    # [batch, pos-1]
        sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(0).sqrt()
        out["min_k_pp"] = -_lowest_k_mean((tok_logp - mu) / sigma.clamp_min(1e-12), mask, k)
    return out


def length_groups(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Row indices in groups of at most `size`, by increasing length: a group padded to its own longest row wastes
    little, where a batch of documents and short sentences padded together is mostly padding. With right padding
    and causal attention a row's outputs do not depend on the rows beside it, so grouping changes no result."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[s:s + size] for s in range(0, len(order), size)]


def sub_batch(batch: Batch, rows: Sequence[int]) -> Batch:
    """The given rows of a right-padded batch, cut to their longest row."""
    width = int(batch.attention_mask[rows].sum(1).max())
    return Batch(batch.input_ids[rows, :width], batch.attention_mask[rows, :width], batch.labels[rows, :width],
                 [batch.index[i] for i in rows], [batch.tasks[i] for i in rows])


def grouped_statistics(model, batch: Batch, names: Sequence[str] = STATISTICS, group: int = 8) -> dict:
    """document_statistics over groups of similar length, in the batch's row order. {name: [batch]}"""
    groups = length_groups(batch.lengths, group)
    parts = [document_statistics(model, sub_batch(batch, rows), names) for rows in groups]
    back = torch.tensor([r for rows in groups for r in rows]).argsort()          # grouped order -> row order
    return {n: torch.cat([p[n] for p in parts])[back.to(batch.input_ids.device)] for n in names}


@torch.no_grad()
def documents_statistics(model, docs: Sequence[Example], pad_id: int, names: Sequence[str] = STATISTICS,
                         batch_size: int = 32) -> dict[str, np.ndarray]:
    """document_statistics of every document, batched by length; in the documents' order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    groups = length_groups([len(d.ids) for d in docs], batch_size)
    parts = [document_statistics(model, collate([docs[i] for i in rows], pad_id, device), names) for rows in groups]
    model.train(was_training)
    back = torch.tensor([r for rows in groups for r in rows]).argsort()
    return {n: torch.cat([p[n].cpu() for p in parts])[back].double().numpy() for n in names}


def loss_auc(member_stat: np.ndarray, nonmember_stat: np.ndarray) -> float:
    """An attack's AUC: members labelled 1, score = -statistic."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.ones(len(member_stat)), np.zeros(len(nonmember_stat))]
    return float(roc_auc_score(labels, -np.r_[member_stat, nonmember_stat]))


def quantile_targets(rank_stat: np.ndarray, groups: Sequence, calib_stat: np.ndarray,
                     calib_groups: Sequence) -> np.ndarray:
    """Per forget document, the calibration quantile at its rank within its group (all calibration documents when
    its group has none)."""
    targets = np.empty(len(rank_stat))
    groups, calib_groups = list(groups), list(calib_groups)
    for g in sorted(set(groups), key=str):
        idx = np.array([i for i, x in enumerate(groups) if x == g])
        pool = calib_stat[[i for i, x in enumerate(calib_groups) if x == g]]
        if len(pool) == 0:
            pool = calib_stat
        ranks = np.argsort(np.argsort(rank_stat[idx], kind="stable"), kind="stable")
        targets[idx] = np.quantile(pool, (ranks + 0.5) / len(idx))
    return targets


@dataclass
class Calibration:
    """Forget and calibration documents, the forget documents' targets, and the matching term."""

    forget: list[Example]
    groups: list[tuple]                 # (task, kind) per forget document
    weight: float
    anchor: float = 1.0
    statistics: tuple = STATISTICS
    calib: list[Example] | None = None
    calib_groups: list[tuple] | None = None
    anchor_docs: list[Example] = field(default_factory=list)   # what the KL anchor holds: calibration + general
    fixed_targets: np.ndarray | None = None   # given per-document target losses (no quantile matching)
    targets: dict = field(default_factory=dict)   # statistic -> [n_forget] tensor
    scales: dict = field(default_factory=dict)    # statistic -> float
    rank: dict = field(default_factory=dict)      # statistic -> the original model's forget statistics
    source_hash: str = ""                         # of the calibration documents / targets and the general text
    pad_id: int = 0

    @classmethod
    def build(cls, tok, forget_records, calibration_records=None, targets: dict | None = None, *,
              weight: float, max_len: int, pad_id: int, statistics: Sequence[str] = STATISTICS,
              anchor: float = 1.0, general: Sequence[str] = ()) -> "Calibration":
        if (calibration_records is None) == (targets is None):
            raise EditError("calibrated forgetting needs either calibration documents or per-document target "
                            "losses (exactly one of them)")
        unknown = sorted(set(statistics) - set(STATISTICS))
        if unknown or not statistics:
            raise EditError(f"calibration statistics {list(statistics)}: expected a non-empty subset of {STATISTICS}")
        forget_records = list(forget_records)
        groups = [(r.task, r.kind) for r in forget_records]
        docs = encode_documents(tok, forget_records, max_len)
        general_ids = [tok(t)["input_ids"][:max_len] for t in general]
        anchored = lambda first: [Example(ids, 0, "general", first + i)  # noqa: E731
                                  for i, ids in enumerate(general_ids) if len(ids) >= 2]
        if targets is not None:
            fixed = _target_losses(targets, forget_records)
            return cls(docs, groups, weight, anchor, ("loss",), fixed_targets=fixed, anchor_docs=anchored(0),
                       source_hash=stable_hash({"targets": fixed.tolist(), "general": list(general)}),
                       targets={"loss": torch.tensor(fixed, dtype=torch.float32)},
                       scales={"loss": float(max(fixed.std(), 1e-3))}, pad_id=pad_id)
        calibration_records = _calibration_documents(calibration_records, forget_records)
        calib = encode_documents(tok, calibration_records, max_len)
        return cls(docs, groups, weight, anchor, tuple(statistics), calib=calib, anchor_docs=calib + anchored(len(calib)),
                   source_hash=stable_hash({"calibration": [(r.id, r.text) for r in calibration_records],
                                            "general": list(general)}),
                   calib_groups=[(r.task, r.kind) for r in calibration_records], pad_id=pad_id)

    def measure(self, model) -> dict:
        """Where the forget documents stand against the calibration documents (or the given targets)."""
        forget = documents_statistics(model, self.forget, self.pad_id, self.statistics)
        if self.fixed_targets is not None:
            gap = forget["loss"] - self.fixed_targets
            return {"calibration_gap": float(gap.mean()), "calibration_abs_gap": float(np.abs(gap).mean()),
                    "forget_doc_nll": float(forget["loss"].mean())}
        calib = documents_statistics(model, self.calib, self.pad_id, self.statistics)
        out = {"forget_doc_nll": float(forget["loss"].mean()), "calibration_doc_nll": float(calib["loss"].mean())} \
            if "loss" in self.statistics else {}
        for s in self.statistics:
            out["calibration_auc" if s == "loss" else f"calibration_auc_{s}"] = loss_auc(forget[s], calib[s])
        return out

    def set_targets(self, model) -> None:
        """The targets under `model` (given targets are kept as they are). The first call fixes the ranks and the
        scales: it is made on the model before its edit."""
        if self.fixed_targets is not None:
            return
        if not self.rank:
            self.rank = documents_statistics(model, self.forget, self.pad_id, self.statistics)
        calib = documents_statistics(model, self.calib, self.pad_id, self.statistics)
        for s in self.statistics:
            self.targets[s] = torch.tensor(quantile_targets(self.rank[s], self.groups, calib[s], self.calib_groups),
                                           dtype=torch.float32)
            self.scales.setdefault(s, float(max(calib[s].std(), 1e-3)))

    @staticmethod
    def anchor_kl(model, batch: Batch, ref_logp, group: int = 8) -> torch.Tensor:
        """KL(p_frozen || p) averaged over every labelled token of the batch, computed over groups of similar
        length (`ref_logp(sub_batch)`: the frozen model's log-probs of a group)."""
        total, count = 0.0, 0
        for rows in length_groups(batch.lengths, group):
            b = sub_batch(batch, rows)
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
            n = int((b.labels[:, 1:] != -100).sum())
            total = total + answer_kl(logits, ref_logp(b), b.labels) * n
            count += n
        return total / max(count, 1)

    @staticmethod
    def score(stats: dict) -> float:
        """Penalty added to an evaluation score: 1 - SemEval MIA score of the calibration AUC farthest from 0.5 (or
        the mean absolute gap to given targets, in nats)."""
        aucs = [v for k, v in stats.items() if k.startswith("calibration_auc")]
        if aucs:
            return 2.0 * max(abs(a - 0.5) for a in aucs)
        return stats["calibration_abs_gap"]

    def loss(self, model, forget: Batch, calib: Batch | None = None,
             calib_ref_logp=None) -> tuple[torch.Tensor, dict]:
        """The matching term on a batch of forget documents and the anchor on a batch of calibration documents
        (Example.index points into self.forget and self.anchor_docs; calib_ref_logp(batch): the frozen model's
        log-probs of those documents)."""
        values = grouped_statistics(model, forget, self.statistics)
        term, stats = 0.0, {}
        for s, v in values.items():
            gap = (v - self.targets[s][forget.index].to(v.device)) / self.scales[s]    # [batch]
            term = term + gap.pow(2).mean()
            stats[f"{s}_minus_target"] = (gap.mean() * self.scales[s]).item()
        term = self.weight * term
        stats["calibration_loss"] = term.item()
        if calib is not None:
            kl = self.anchor_kl(model, calib, calib_ref_logp)
            term = term + self.anchor * kl
            stats["calibration_kl"] = kl.item()
        return term, stats


def _target_losses(targets: dict, forget_records: list) -> np.ndarray:
    """The given target loss of each forget record, in order: one per record id, each finite and non-negative."""
    missing = [r.id for r in forget_records if r.id not in targets]
    if missing:
        raise EditError(f"calibration targets lack {len(missing)} forget document(s), e.g. {missing[:3]}; "
                        "expected one target loss per forget record id")
    fixed = np.array([float(targets[r.id]) for r in forget_records])
    if not np.all(np.isfinite(fixed)) or np.any(fixed < 0):
        raise EditError("calibration targets must be finite, non-negative losses (mean token NLL)")
    return fixed


def _calibration_documents(calibration_records, forget_records: list) -> list:
    """The calibration records as a list: enough of them, and none of them a forget document."""
    calibration_records = list(calibration_records)
    if len(calibration_records) < MIN_CALIBRATION_DOCS:
        raise EditError(f"calibrated forgetting needs at least {MIN_CALIBRATION_DOCS} calibration documents "
                        f"(never-trained-on documents like the forget set), got {len(calibration_records)}")
    overlap = {r.text for r in calibration_records} & {r.text for r in forget_records}
    if overlap:
        raise EditError(f"{len(overlap)} calibration document(s) are also forget documents; calibration "
                        "documents must be ones the model never trained on")
    return calibration_records


class Calibrated(Editor):
    """Any editor plus the matching term on a batch of whole forget documents (the split "forget_doc")."""

    def __init__(self, inner: Editor, calibration: Calibration, refresh: int = 0, grad_accum: int = 1,
                 anchor_batch: int = 32):
        super().__init__(inner.model, inner.cfg, inner.layers)
        self.inner, self.calibration = inner, calibration
        self.refresh_calls = refresh * grad_accum   # loss() runs once per micro-batch; 0: targets never refreshed
        self.calls = 0
        self.anchor_batch = anchor_batch
        self.anchored = bool(calibration.anchor > 0 and calibration.anchor_docs)
        self.name = f"{inner.name}+calibrated"
        self.uses = tuple(inner.uses) + ("forget_doc",)   # the anchor's batches are drawn here, not by the loop

    def param_patterns(self):
        return self.inner.param_patterns()

    def reference_fns(self):
        fns = dict(self.inner.reference_fns())
        if self.anchored:
            fns["anchor_doc"] = lambda m, b: torch.log_softmax(
                m(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits.float(), -1)
        return fns

    def setup(self, ref, data):
        self.inner.setup(ref, data)
        self.ref = ref

    def bind(self, model):
        super().bind(model)
        self.inner.bind(model)

    def start_epoch(self, epoch):
        self.inner.start_epoch(epoch)

    def loss(self, batch):
        if self.refresh_calls and self.calls and self.calls % self.refresh_calls == 0:
            self.calibration.set_targets(self.model)
        anchor = self._anchor_batch(batch["forget_doc"].input_ids.device) if self.anchored else None
        self.calls += 1
        loss, stats = self.inner.loss({k: v for k, v in batch.items() if k != "forget_doc"})
        term, cstats = self.calibration.loss(self.model, batch["forget_doc"], anchor,
                                             lambda b: self.ref.get("anchor_doc", b))
        return loss + term, {**stats, **cstats}

    def _anchor_batch(self, device) -> Batch:
        """`anchor_batch` anchor documents, half never-seen documents and half general text when there are both
        (the two hold different things: never-seen losses in place, and the knowledge the model keeps), a function
        of (seed, call): a resumed run draws what the killed one would."""
        docs = self.calibration.anchor_docs
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.calls)
        general = [d.task == "general" for d in docs]
        pools = [p for p in ([i for i, x in enumerate(general) if not x], [i for i, x in enumerate(general) if x]) if p]
        sizes = [self.anchor_batch // len(pools) + (k < self.anchor_batch % len(pools)) for k in range(len(pools))]
        idx = [p[j] for p, n in zip(pools, sizes) for j in torch.randperm(len(p), generator=g)[:n].tolist()]
        return collate([docs[i] for i in idx], self.calibration.pad_id, device)

    def state_dict(self):
        c = self.calibration
        return {"inner": self.inner.state_dict(), "calls": self.calls,
                "targets": {k: v.clone() for k, v in c.targets.items()}, "scales": dict(c.scales),
                "rank": {k: torch.tensor(v) for k, v in c.rank.items()}}

    def load_state_dict(self, state):
        self.inner.load_state_dict(state["inner"])
        self.calls = state["calls"]
        c = self.calibration
        c.targets = {k: v.clone() for k, v in state["targets"].items()}
        c.scales = dict(state["scales"])
        c.rank = {k: v.double().numpy() for k, v in state["rank"].items()}

    def describe(self):
        return {**self.inner.describe(), "calibrated": True, "calibration_weight": self.calibration.weight,
                "calibration_anchor": self.calibration.anchor, "calibration_refresh": self.refresh_calls,
                "calibration_statistics": list(self.calibration.statistics),
                "calibration_docs": len(self.calibration.calib or []),
                "anchor_docs": len(self.calibration.anchor_docs),
                "calibration_targets_given": self.calibration.fixed_targets is not None}
