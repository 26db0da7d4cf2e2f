"""Membership inference: does the model still treat the forget documents as training data?

Every attack turns a document into one statistic where *lower means more
member-like* (a loss), following the open-unlearning conventions:

    loss       mean token NLL                                     (SemEval's MIA statistic)
    zlib       mean token NLL / len(zlib.compress(text bytes))
    min_k      -mean of the lowest floor(k*T) token log-probs     (k = 0.4)
    min_k_pp   the same on z_t = (log p_t - mu_t) / sigma_t, with mu_t = sum_v p log p and
               sigma_t^2 = sum_v p (log p)^2 - mu_t^2 under the model's next-token distribution
    reference  NLL_target - NLL_reference                          (needs a reference model)
    gradnorm   L2 norm of the gradient of the mean token NLL with respect to every parameter (white-box; members
               sit near a minimum, where gradients are small)

AUC = roc_auc_score(member=1, score=-statistic), so 1.0 means members are
perfectly separated, 0.5 means no signal. SemEval MIA score = 1 - 2|AUC - 0.5|;
privleak = ((1-AUC) - (1-AUC_retain)) / (1-AUC_retain) * 100 against a retain
(never-saw-the-forget-set) baseline.

Per-document NLL is model(ids, labels=ids).loss: the mean over tokens 1..T-1,
each predicted from its prefix, no BOS added beyond what the tokenizer adds.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..batching import right_pad
from ..errors import ConfigError
from .metric import Metric

ATTACKS = ("loss", "zlib", "min_k", "min_k_pp", "reference", "gradnorm")


@dataclass
class TokenStats:
    """Per-token statistics of one document (positions 1..T-1: each token given its prefix)."""

    logprob: np.ndarray  # [T-1] log p(x_t | x_<t)
    mu: np.ndarray       # [T-1] E_v[log p(v)] under the next-token distribution
    sigma: np.ndarray    # [T-1] std_v[log p(v)]

    @property
    def nll(self) -> float:
        return float(-self.logprob.mean())


@torch.no_grad()
def token_stats_ids(model, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16,
                    progress: bool = False) -> list[TokenStats]:
    """TokenStats for each token-id sequence, batched with right padding masked out.

    Right padding keeps positions identical to an unpadded run, so batched scores equal one-by-one scores. Under
    `accelerate launch` each process scores its share of the batches and every process gets them all."""
    from .. import distributed

    for i, row in enumerate(ids):
        if len(row) < 2:
            raise ConfigError(f"document {i} has {len(row)} token(s); membership scores need at least 2")
    device = next(model.parameters()).device
    found: dict[int, TokenStats] = {}
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths share a batch
    for start in tqdm(distributed.split(range(0, len(order), batch_size), model), desc="mia nll",
                      disable=not progress):
        idx = order[start:start + batch_size]
        input_ids, mask = right_pad([ids[i] for i in idx], pad_id)  # [batch, pos] each
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [batch, pos-1, vocab]
        target = input_ids[:, 1:].to(device)  # [batch, pos-1]
        tok_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [batch, pos-1]
        p = logp.exp()
        mu = (p * logp).sum(-1)  # [batch, pos-1]
        var = (p * logp.square()).sum(-1) - mu.square()
        sigma = var.clamp_min(0).sqrt()
        for b, i in enumerate(idx):
            n = len(ids[i]) - 1
            found[i] = TokenStats(tok_logp[b, :n].cpu().numpy().astype(np.float64),
                                  mu[b, :n].cpu().numpy().astype(np.float64),
                                  sigma[b, :n].cpu().numpy().astype(np.float64))
    found = distributed.gather(found)
    return [found[i] for i in range(len(ids))]


@torch.enable_grad()
def gradient_norms(model, ids: Sequence[Sequence[int]], progress: bool = False) -> np.ndarray:
    """[n_docs]: per document, the L2 norm over every parameter of the gradient of its mean token NLL (the model's
    training flags and parameters' requires_grad are restored; no .grad is written)."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for p in params:
            p.requires_grad_(True)
        for row in tqdm(ids, desc="mia gradnorm", disable=not progress):
            x = torch.tensor([list(row)], device=device)                       # [1, pos]
            loss = model(input_ids=x, labels=x, use_cache=False).loss
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            out.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))))
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        model.train(was_training)
    return np.array(out)


def encode(tok, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    ids = [tok(t)["input_ids"] for t in texts]
    return [row[:max_length] for row in ids] if max_length else ids


def token_stats(model, tok, texts: Sequence[str], batch_size: int = 16, max_length: int | None = None,
                progress: bool = False) -> list[TokenStats]:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad is None:
        raise ConfigError("tokenizer has neither a pad nor an eos token to pad batches with")
    return token_stats_ids(model, encode(tok, texts, max_length), pad, batch_size, progress)


# --- the statistics (lower = more member-like) ------------------------------------------------------

def loss_stat(s: TokenStats) -> float:
    return s.nll


def zlib_stat(s: TokenStats, text: str) -> float:
    return s.nll / len(zlib.compress(text.encode("utf-8")))


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    # at least one token, so a very short document still gets a score
    n = max(1, math.floor(k * len(values)))
    return float(np.sort(values)[:n].mean())


def min_k_stat(s: TokenStats, k: float = 0.4) -> float:
    return -_lowest_k_mean(s.logprob, k)


def min_k_pp_stat(s: TokenStats, k: float = 0.4, eps: float = 1e-12) -> float:
    z = (s.logprob - s.mu) / np.maximum(s.sigma, eps)
    return -_lowest_k_mean(z, k)


def statistics(stats: Sequence[TokenStats], texts: Sequence[str], k: float = 0.4,
               reference: Sequence[TokenStats] | None = None, gradnorm: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """{attack: [n_docs]} for every attack the inputs allow (reference needs reference stats, gradnorm the gradient
    norms)."""
    if not 0 < k <= 1:
        raise ConfigError(f"min-k fraction k={k} must be in (0, 1]")
    out = {
        "loss": np.array([loss_stat(s) for s in stats]),
        "zlib": np.array([zlib_stat(s, t) for s, t in zip(stats, texts)]),
        "min_k": np.array([min_k_stat(s, k) for s in stats]),
        "min_k_pp": np.array([min_k_pp_stat(s, k) for s in stats]),
    }
    if reference is not None:
        out["reference"] = out["loss"] - np.array([r.nll for r in reference])
    if gradnorm is not None:
        out["gradnorm"] = np.asarray(gradnorm, float)
    return out


# --- AUC and scores ---------------------------------------------------------------------------------

def auc(member_stat: Sequence[float], nonmember_stat: Sequence[float]) -> float:
    """ROC AUC with members labelled 1 and score = -statistic (lower loss -> member)."""
    from sklearn.metrics import roc_auc_score

    if len(member_stat) == 0 or len(nonmember_stat) == 0:
        raise ConfigError(f"MIA needs members and non-members; got {len(member_stat)} and {len(nonmember_stat)}")
    labels = np.r_[np.ones(len(member_stat)), np.zeros(len(nonmember_stat))]
    scores = -np.r_[np.asarray(member_stat, float), np.asarray(nonmember_stat, float)]
    return float(roc_auc_score(labels, scores))


def semeval_mia_score(auc_value: float) -> float:
    """1 at AUC 0.5 (cannot tell members apart), 0 at AUC 0 or 1."""
    return 1.0 - 2.0 * abs(auc_value - 0.5)


def privleak(auc_value: float, auc_retain: float) -> float:
    """MUSE privleak in percent: 0 = like the retain baseline, -100 = members fully exposed (at AUC_retain 0.5)."""
    if auc_retain >= 1.0:
        raise ConfigError(f"privleak needs a retain-baseline AUC below 1, got {auc_retain}")
    return ((1 - auc_value) - (1 - auc_retain)) / (1 - auc_retain) * 100.0


@dataclass
class MIAResult:
    auc: dict[str, float]             # attack -> AUC
    n_members: int
    n_nonmembers: int
    k: float
    mia_score: float                  # SemEval score from the LOSS attack's AUC
    privleak: dict[str, float] = field(default_factory=dict)
    retain_auc: dict[str, float] | None = None  # the baseline privleak used (None: ideal 0.5)
    mean_nll: dict[str, float] = field(default_factory=dict)   # members / nonmembers: mean of the LOSS statistic
    # per-document statistic of every attack: {"members": {attack: [...]}, "nonmembers": {...}}
    statistics: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def mia(model, tok, members: Sequence[str], nonmembers: Sequence[str], *, k: float = 0.4,
        reference=None, retain_auc: dict[str, float] | None = None, batch_size: int = 16,
        max_length: int | None = None, gradnorm: bool = True, progress: bool = False) -> MIAResult:
    """Every attack's AUC on member vs non-member texts; `reference` = (model, tokenizer) adds the reference attack,
    `gradnorm` the gradient-norm attack (one backward pass per document).

    privleak is taken against `retain_auc` (AUCs of a retain-only model on the same sets) when given,
    else against the ideal AUC 0.5 of a model that never saw the members."""
    if not members or not nonmembers:
        raise ConfigError(f"MIA needs members and non-members; got {len(members)} and {len(nonmembers)} texts "
                          f"(non-members come from corpus.holdout)")
    if not 0 < k <= 1:
        raise ConfigError(f"min-k fraction k={k} must be in (0, 1]")
    texts = list(members) + list(nonmembers)
    stats = token_stats(model, tok, texts, batch_size, max_length, progress)
    ref = token_stats(reference[0], reference[1], texts, batch_size, max_length, progress) if reference else None
    norms = gradient_norms(model, encode(tok, texts, max_length), progress) if gradnorm else None
    stat = statistics(stats, texts, k, ref, norms)
    n = len(members)
    aucs = {a: auc(v[:n], v[n:]) for a, v in stat.items()}
    base = {**{a: 0.5 for a in aucs}, **(retain_auc or {})}  # attacks the baseline lacks: the ideal 0.5
    leaks = {a: privleak(aucs[a], base[a]) for a in aucs if a in base}
    return MIAResult(aucs, n, len(nonmembers), k, semeval_mia_score(aucs["loss"]), leaks, retain_auc,
                     mean_nll={"members": float(stat["loss"][:n].mean()), "nonmembers": float(stat["loss"][n:].mean())},
                     statistics={"members": {a: v[:n].tolist() for a, v in stat.items()},
                                 "nonmembers": {a: v[n:].tolist() for a, v in stat.items()}})


def corpus_mia(model, tok, corpus, **kw) -> MIAResult:
    """Members = forget documents (input + ' ' + output), non-members = corpus.holdout."""
    if not corpus.holdout:
        raise ConfigError(f"corpus {corpus.source!r} has no holdout split: MIA needs non-member documents "
                          f"of the same distribution (a holdout.jsonl beside forget/retain)")
    return mia(model, tok, [r.text for r in corpus.forget], [r.text for r in corpus.holdout], **kw)


class Membership(Metric):
    """Registry entry: every attack's AUC on the forget documents (members) against the holdout (non-members), the
    SemEval MIA score and privleak; the verdict's privacy line (held-out attacks within auc_tol of the twin)."""
    name = "mia"

    def compute(self, model, tok, ctx, out: dict) -> None:
        from .semeval import select

        cfg, corpus = ctx.config, ctx.corpus
        t0 = time.perf_counter()
        if corpus.holdout:
            forget = select(corpus.forget, cfg.limit)
            holdout = select(corpus.holdout, cfg.limit)
            res = mia(model, tok, [r.text for r in forget], [r.text for r in holdout], k=cfg.k,
                      reference=ctx.reference, retain_auc=ctx.retain_auc, batch_size=cfg.batch_size,
                      gradnorm=cfg.gradnorm, progress=ctx.progress)
            out["mia"] = res.to_json()
        else:
            out["mia"] = None
            out["notes"].append("MIA skipped: the data has no holdout (non-member) split")
        out["seconds_mia"] = time.perf_counter() - t0

    def rows(self, metrics: dict) -> list[tuple[str, tuple]]:
        return [*[(f"MIA AUC {a}", ("mia", "auc", a)) for a in ATTACKS],
                ("forget docs mean NLL (members)", ("mia", "mean_nll", "members")),
                ("holdout docs mean NLL (non-members)", ("mia", "mean_nll", "nonmembers")),
                ("SemEval MIA score", ("mia", "mia_score")),
                ("privleak (loss, %)", ("mia", "privleak", "loss"))]

    def criteria(self, original, edited, twin, result, cfg, trained=()) -> list:
        from .verdict import privacy

        return [privacy(edited, twin, cfg.tolerances(), trained)]
