"""Activation patching, clean -> counterfactual.

Two prompts of the same template and token length (e.g. another subject). Run the counterfactual ("corrupt") prompt and
patch in one clean activation at a time; the metric (logit difference answer vs wrong answer, or the answer's mean
log-prob, teacher-forced) says how much of the clean behaviour that one site carries.

    effects[site]  = metric after patching (layer, position)          # [n_layers, n_pos], site in resid_pre/attn_out/mlp_out
    effects["head"] = metric after patching head (layer, h), all positions  # [n_layers, n_heads]
    TraceResult.normalised(kind) = (effect - corrupt) / (clean - corrupt): 0 = nothing restored, 1 = all of it.

Attribution patching, the gradient estimate of every patch at once, is workbench.attribution (it shares `_setup` and
`_result`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .backends import get_backend
from .errors import TraceError
from .prompts import Prepared, metric_fn, prepare
from .provenance import provenance
from .restoration import clean_run, rows_per_forward, run_jobs, run_jobs_naive
from .results import TraceResult
from .sites import n_heads, n_layers
from .sites import name as site_name

PATCH_SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out")
PATCH_METRICS = ("logit_diff", "logprob", "logprob_mean", "prob")


@dataclass
class Pair:
    """A clean/counterfactual prompt pair, checked and tokenised: what exact and attribution patching share."""
    sites: tuple[str, ...]             # site kinds patched per (layer, position)
    clean: Prepared
    corrupt: Prepared
    metric: Callable                   # logits [rows, keep, vocab] -> [rows]
    keep: int                          # last-position logits the metric reads
    changed: tuple[int, int]           # [start, end) positions where the prompts' tokens differ
    device: torch.device

    def site_names(self, L: int, heads: bool) -> list[str]:
        """Every site to record: each kind at each layer, then the heads of each layer."""
        return ([site_name(s, l) for s in self.sites for l in range(L)]
                + ([site_name("head", l) for l in range(L)] if heads else []))


def _setup(model, tok, clean_prompt, corrupt_prompt, answer, wrong_answer, sites, metric) -> Pair:
    """Checks + tokenisation shared by exact and attribution patching (all errors before any forward)."""
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    bad = [s for s in sites if s not in PATCH_SITES]
    if bad:
        raise TraceError(f"unknown patching site(s) {bad}; expected some of {PATCH_SITES} (heads: heads=True)")
    if metric not in PATCH_METRICS:
        raise TraceError(f"unknown metric {metric!r} for patching; expected one of {PATCH_METRICS}")
    pc = prepare(model, tok, clean_prompt, answer)
    px = prepare(model, tok, corrupt_prompt, answer)
    if pc.n_prompt != px.n_prompt:
        raise TraceError(f"clean and corrupt prompts must tokenise to the same length: {clean_prompt!r} is "
                         f"{pc.n_prompt} tokens {pc.tokens}, {corrupt_prompt!r} is {px.n_prompt} tokens {px.tokens}")
    if pc.answer_ids != px.answer_ids:
        raise TraceError(f"answer {answer!r} tokenises differently after {clean_prompt!r} and {corrupt_prompt!r}")
    wrong_ids = None
    if metric == "logit_diff":
        if wrong_answer is None:
            raise TraceError("metric 'logit_diff' needs wrong_answer= (e.g. the counterfactual prompt's answer)")
        wrong_ids = prepare(model, tok, corrupt_prompt, wrong_answer).answer_ids
        if wrong_ids[0] == pc.answer_ids[0]:
            raise TraceError(f"answer {answer!r} and wrong answer {wrong_answer!r} share their first token "
                             f"{tok.convert_ids_to_tokens(wrong_ids[:1])}: the logit difference would be 0; use "
                             f"metric='logprob'")
    diff = [i for i, (a, b) in enumerate(zip(pc.prompt_ids, px.prompt_ids)) if a != b]
    if not diff:
        raise TraceError(f"clean and corrupt prompts are the same tokens: {clean_prompt!r}")
    fn, keep = metric_fn(metric, pc.answer_ids, wrong_ids)
    device = next(model.parameters()).device
    return Pair(sites, pc, px, fn, keep, (diff[0], diff[-1] + 1), device)


def _result(method, clean_prompt, corrupt_prompt, answer, wrong_answer, pc, changed, effects, m_clean, m_corr, metric,
            config, model, extra=None):
    config = {"corrupt_prompt": corrupt_prompt, "wrong_answer": wrong_answer, **config}
    return TraceResult(method=method, prompt=clean_prompt, answer=answer, tokens=pc.tokens, subject_range=changed,
                       effects=effects, clean=m_clean, corrupted=m_corr, metric=metric, config=config,
                       provenance=provenance(model=model, config=config), extra=extra or {})


@torch.no_grad()
def activation_patching(model, tok, clean_prompt: str, corrupt_prompt: str, answer: str, *,
                        wrong_answer: str | None = None, sites=("resid_pre", "attn_out", "mlp_out"), heads: bool = True,
                        metric: str = "logit_diff", backend: str = "torch", batch_size: int | None = None,
                        memory_budget: float | None = None, naive: bool = False, progress: bool = False) -> TraceResult:
    """Exact activation patching of every (site, layer, position) and every (layer, head), batched.

    subject_range of the result = the span of positions where the two prompts' tokens differ; earlier positions are
    identical in both runs, so patching them is a no-op (the batched engine skips them, the naive loop does not).
    """
    pair = _setup(model, tok, clean_prompt, corrupt_prompt, answer, wrong_answer, sites, metric)
    sites, pc, fn, keep = pair.sites, pair.clean, pair.metric, pair.keep
    run = get_backend(model, tok, backend)
    t0 = time.perf_counter()
    L, H, T = n_layers(model), n_heads(model), pc.n_prompt
    clean_ids, corr_ids = pc.input_ids(metric, pair.device), pair.corrupt.input_ids(metric, pair.device)  # [1, pos]
    clean_logits, clean = clean_run(run, clean_ids, pair.site_names(L, heads), keep)
    m_clean = float(fn(clean_logits)[0])
    m_corr = float(fn(run(corr_ids, {}, keep))[0])

    first = 0 if naive else pair.changed[0]
    cells = {s: [(l, t) for l in range(L) for t in range(first, T)] for s in sites}
    jobs = [[(site_name(s, l), [t])] for s in sites for l, t in cells[s]]
    if heads:
        cells["head"] = [(l, h) for l in range(L) for h in range(H)]
        jobs += [[(site_name("head", l), [(t, h) for t in range(T)])] for l, h in cells["head"]]
    rows = batch_size or rows_per_forward(model, corr_ids.shape[1], keep, memory_budget)
    if naive:
        vals = run_jobs_naive(run, corr_ids, jobs, clean, fn, keep, progress=progress, desc="patching (naive)")
    else:
        vals = run_jobs(run, corr_ids, jobs, clean, fn, keep, rows=rows, progress=progress, desc="patching")
    vals = vals[:, 0].numpy().astype(np.float64)  # [n_jobs]

    effects, i = {}, 0
    for s in list(sites) + (["head"] if heads else []):
        eff = np.full((L, H if s == "head" else T), m_corr, dtype=np.float64)
        for (l, t) in cells[s]:
            eff[l, t] = vals[i]
            i += 1
        effects[s] = eff
    config = {"sites": list(sites), "heads": heads, "metric": metric, "backend": backend, "rows_per_forward": rows,
              "naive": naive, "answer_ids": pc.answer_ids, "wall_s": round(time.perf_counter() - t0, 4)}
    return _result("activation_patching", clean_prompt, corrupt_prompt, answer, wrong_answer, pc, pair.changed,
                   effects, m_clean, m_corr, metric, config, model)


def find_counterfactual(tok, fact, records):
    """A record asking the same question about another subject, with a prompt of the same token length and a
    different answer: the corrupt prompt for activation patching of `fact`. Raises TraceError if none exists."""
    template = fact.input.replace(fact.subject, "{}")
    n = len(tok(fact.input)["input_ids"])
    for r in records:
        if (r.subject and r.subject != fact.subject and r.output != fact.output
                and r.input.replace(r.subject, "{}") == template and len(tok(r.input)["input_ids"]) == n):
            return r
    raise TraceError(f"no counterfactual for {fact.input!r}: no other subject with the template {template!r} "
                     f"tokenises to {n} tokens")
