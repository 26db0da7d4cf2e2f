"""Causal tracing (Meng et al. 2022, ROME): where along layers x tokens does the model recall a fact?

Three runs per prompt:
  clean                     the prompt as is: metric p_clean (probability of the first answer token, or mean log-prob
                            of the whole teacher-forced answer)
  corrupted                 Gaussian noise (sigma = 3 x embedding std, `noise_scale`) added to the subject tokens'
                            embeddings, `n_samples` noise draws from a seeded generator (the same draws on every backend)
  corrupted + restoration   one site set back to its clean value; metric averaged over the noise draws

Kinds of restoration at (layer l, position t):
  resid   the block output (resid_post.l) at t
  mlp     the MLP outputs (mlp_out) at t of a window of layers centred on l
  attn    the attention outputs (attn_out) at t, same window
ROME restores 10 of GPT-2 XL's 48 layers for mlp/attn; we scale that to depth: window = max(1, round(10 * n_layers / 48))
(OLMo-1B, 16 layers: 3; OLMo-7B, 32 layers: 7; micro organism, 4 layers: 1). Window layers are [l - w//2, l + w - w//2)
clipped to the model, as in ROME.

Three levels, as in ROME's causal_trace.py:
  `restore`       one corrupted run with restorations: a batch of jobs (each a list of (site, positions) set back to
                  clean) through the restoration engine (workbench.restoration) -> metric per job and noise draw
  `trace_cells`   the loop over (layer, position) cells of each kind: one job per cell -> effects [n_layers, n_prompt]
  `causal_trace`  one fact: checks, the clean and corrupted runs, every kind; `trace_facts` runs it over a fact set
`causal_trace_batch` (`trace_facts(facts_per_batch=k)`) traces k facts at once: their prompts, of different lengths,
share right-padded forwards (`restore_many`, `restoration.run_jobs_padded`), each fact with its own noise draws and
clean values, equal to one-at-a-time traces up to float rounding.
Positions before the subject see no noise, so restoring them is a no-op: the batched engine skips them and reports
the corrupted metric there (the naive loop computes them, and the tests check both agree). `naive=True` runs ROME's
reference loop: one forward per job. On OLMo-family models and the torch backend the jobs also skip what they cannot
change (`restoration.CorruptedRun`: only layers >= l at positions >= t are recomputed, jobs of every start packed into
shared forwards).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .backends import get_backend
from .errors import TraceError
from .prompts import metric_fn, prepare
from .provenance import provenance
from .restoration import (CorruptedRun, Job, Source, clean_run, clean_runs, rows_per_forward, run_jobs, run_jobs_naive,
                          run_jobs_padded, run_jobs_suffix)
from .results import TraceResult
from .sites import KINDS, n_layers
from .sites import name as site_name

METRICS = ("prob", "logprob_mean")


def default_window(n_layers: int) -> int:
    """ROME's 10-of-48-layers window scaled to depth."""
    return max(1, round(10 * n_layers / 48))


def window_layers(l: int, window: int, n_layers: int) -> list[int]:
    return list(range(max(0, l - window // 2), min(n_layers, l + window - window // 2)))


@torch.no_grad()
def noise_scale(model, tok, texts: Sequence[str], factor: float = 3.0) -> float:
    """factor x std of the token embeddings of `texts` (ROME measures it over the subjects of its fact set)."""
    texts = [t for t in texts if t]
    if not texts:
        raise TraceError("noise_scale needs at least one non-empty text to measure embedding std on")
    ids = torch.tensor([i for t in texts for i in tok(t)["input_ids"]], device=model.device)
    return float(factor * model.get_input_embeddings()(ids).float().std())


def _check_args(model, kinds, metric, n_samples, noise, batch_size, window) -> tuple[tuple[str, ...], int]:
    """(kinds, window) after checking every tracing argument; raises TraceError before any forward pass."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise TraceError(f"unknown trace kind(s) {bad or kinds!r}; expected some of {KINDS}")
    if metric not in METRICS:
        raise TraceError(f"unknown metric {metric!r} for causal tracing; expected one of {METRICS}")
    if n_samples < 1:
        raise TraceError(f"n_samples must be >= 1, got {n_samples}")
    check_noise(noise)
    if batch_size is not None and batch_size < 1:
        raise TraceError(f"batch_size must be >= 1 row per forward (or None: from the memory budget), got {batch_size}")
    L = n_layers(model)
    window = default_window(L) if window is None else int(window)
    if not 1 <= window <= L:
        raise TraceError(f"window must be between 1 and the model's {L} layers, got {window} (wider windows restore "
                         "every layer at once, so every layer would get the same importance)")
    return kinds, window


@dataclass
class Corruption:
    """One fact's corrupted run, ready for restorations: everything `restore` and `trace_cells` read."""
    run: Callable                      # the backend's forward (workbench.backends)
    ids: torch.Tensor                  # [1, pos] the clean input; rows are noised at `subject_range`
    noise: torch.Tensor                # [n_samples, n_subject, d_model] the noise draws
    subject_range: tuple[int, int]     # [start, end) token positions of the subject
    n_layers: int
    n_prompt: int                      # prompt positions (ids may add the teacher-forced answer)
    clean: dict[str, torch.Tensor]     # {site: [pos, ...]} clean activations to restore
    metric: Callable                   # logits [rows, keep, vocab] -> [rows]
    keep: int                          # last-position logits the metric reads
    p_clean: float                     # metric of the clean run
    p_corr: float                      # metric of the corrupted run, averaged over the noise draws
    rows: int                          # rows per forward
    naive: bool                        # ROME's loop: one forward per job, every position traced
    suffix: CorruptedRun | None        # the recorded corrupted run, when restorations recompute only their suffix
    progress: bool = False

    @property
    def n_samples(self) -> int:
        return self.noise.shape[0]


def restore(c: Corruption, jobs: list[Job], desc: str = "restoring") -> torch.Tensor:
    """Level 1, one corrupted run with restorations: the metric after each job.  # [n_jobs, n_samples]"""
    if c.suffix is not None:
        return run_jobs_suffix(c.suffix, jobs, c.clean, c.metric, c.keep, rows=c.rows, progress=c.progress, desc=desc)
    engine = run_jobs_naive if c.naive else run_jobs
    kw = {} if c.naive else {"rows": c.rows}
    return engine(c.run, c.ids, jobs, c.clean, c.metric, c.keep, noise=c.noise, subject_range=c.subject_range,
                  progress=c.progress, desc=desc, **kw)


def restore_many(cs: list[Corruption], jobs: list[tuple[int, Job]], desc: str = "restoring") -> torch.Tensor:
    """Level 1 for several facts: job (i, job) restores on fact cs[i]; the facts share right-padded forwards
    (`restoration.run_jobs_padded`).  # [n_jobs, n_samples]"""
    sources = [Source(c.ids, c.clean, c.metric, c.keep, c.noise, c.subject_range) for c in cs]
    return run_jobs_padded(cs[0].run, sources, jobs, rows=cs[0].rows, progress=cs[0].progress, desc=desc)


def cell_jobs(c: Corruption, kind: str, window: int) -> tuple[list[tuple[int, int]], list[Job]]:
    """The (layer l, position t) cells of `kind` and one job per cell: restore the site at t, for mlp/attn over the
    window of layers around l."""
    L = c.n_layers
    first = 0 if c.naive else c.subject_range[0]  # positions before the subject are never noised: a no-op
    layers_of = (lambda l: [l]) if kind == "resid" else (lambda l: window_layers(l, window, L))
    cells = [(l, t) for l in range(L) for t in range(first, c.n_prompt)]
    return cells, [[(site_name(kind, ll), [t]) for ll in layers_of(l)] for l, t in cells]


def kinds_jobs(c: Corruption, kinds: Sequence[str], window: int) -> tuple[list[tuple], list[Job]]:
    """Every kind's `cell_jobs` in one list: (spans [(kind, cells, first job)], jobs)."""
    spans, jobs = [], []
    for kind in kinds:
        cells, js = cell_jobs(c, kind, window)
        spans.append((kind, cells, len(jobs)))
        jobs += js
    return spans, jobs


def cell_effects(c: Corruption, cells: list[tuple[int, int]], vals: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) over the noise draws of each cell's metric [n_cells, n_samples]; cells not run hold the corrupted
    metric.  # [n_layers, n_prompt] each"""
    eff = np.full((c.n_layers, c.n_prompt), c.p_corr, dtype=np.float64)
    std = np.zeros((c.n_layers, c.n_prompt), dtype=np.float64)
    for (l, t), v in zip(cells, vals):
        eff[l, t], std[l, t] = float(v.mean()), float(v.std()) if c.n_samples > 1 else 0.0
    return eff, std


def trace_cells(c: Corruption, kinds: Sequence[str], window: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Level 2, the loop over cells: the effect of restoring each kind at each (layer, position) cell, every kind's
    jobs in one `restore`. {kind: (mean, std) over the noise draws}  # [n_layers, n_prompt] each"""
    spans, jobs = kinds_jobs(c, kinds, window)
    vals = restore(c, jobs, desc="trace")  # [n_jobs, n_samples]
    return {kind: cell_effects(c, cells, vals[j0:j0 + len(cells)]) for kind, cells, j0 in spans}


@torch.no_grad()
def causal_trace(model, tok, prompt: str, answer: str, subject: str, *, kinds=KINDS, n_samples: int = 10,
                 noise: float | None = None, window: int | None = None, metric: str = "prob", backend: str = "torch",
                 seed: int = 0, batch_size: int | None = None, memory_budget: float | None = None,
                 naive: bool = False, suffix: bool | None = None, progress: bool = False) -> TraceResult:
    """Level 3, one fact: effects[kind] = metric after restoring (layer, position)  # [n_layers, n_prompt]

    noise: sigma of the Gaussian (absolute); None = `noise_scale(model, tok, [prompt])` (3 x std of the prompt's token
    embeddings; `trace_facts` measures it once over all subjects, as ROME does).
    batch_size: rows (restorations x noise samples) per forward; None = from `memory_budget` bytes.
    suffix: recompute only downstream of each restored (layer, position) (`CorruptedRun`); None = where supported
    (torch backend, OLMo-family model). False runs every restoration as a full forward (same numbers to ~1e-6).
    """
    kinds, window = _check_args(model, kinds, metric, n_samples, noise, batch_size, window)
    prep = prepare(model, tok, prompt, answer, subject)
    L = n_layers(model)
    sigma = noise_scale(model, tok, [prompt]) if noise is None else float(noise)
    run = get_backend(model, tok, backend)
    supported = backend == "torch" and not naive and CorruptedRun.supported(model)
    if suffix and not supported:
        raise TraceError(f"suffix=True needs backend='torch', naive=False and an OLMo-family model "
                         f"(model_type in {CorruptedRun.MODEL_TYPES}); got backend={backend!r}, naive={naive}, "
                         f"model_type={getattr(model.config, 'model_type', None)!r}")
    suffix = supported if suffix is None else suffix
    device = next(model.parameters()).device
    t0 = time.perf_counter()

    ids = prep.input_ids(metric, device)  # [1, pos]
    fn, keep = metric_fn(metric, prep.answer_ids)
    s, e = prep.subject_range
    g = torch.Generator().manual_seed(seed)
    noise_draws = (torch.randn(n_samples, e - s, model.config.hidden_size, generator=g) * sigma).to(device)

    sites = [site_name(k, l) for k in kinds for l in range(L)]
    if suffix:  # one forward: the clean row and the noised ones
        corrupted = CorruptedRun(model, ids, noise_draws, (s, e), keep, record=sites)
        clean_logits, clean = corrupted.clean_logits, corrupted.clean
        p_corr = float(fn(corrupted.logits).mean())
    else:
        corrupted = None
        clean_logits, clean = clean_run(run, ids, sites, keep)
        p_corr = float(run_jobs(run, ids, [[]], clean, fn, keep, noise=noise_draws, subject_range=(s, e)).mean())
    p_clean = float(fn(clean_logits)[0])
    rows = batch_size or rows_per_forward(model, ids.shape[1], keep, memory_budget)
    c = Corruption(run, ids, noise_draws, (s, e), L, prep.n_prompt, clean, fn, keep, p_clean, p_corr, rows, naive,
                   corrupted, progress)
    traced = trace_cells(c, kinds, window)
    effects = {kind: mean for kind, (mean, _) in traced.items()}
    spread = {f"{kind}_std": std for kind, (_, std) in traced.items()}

    config = {"kinds": list(kinds), "n_samples": n_samples, "noise_sigma": sigma, "noise": "gaussian",
              "window": window, "metric": metric, "backend": backend, "seed": seed, "rows_per_forward": rows,
              "naive": naive, "suffix": bool(suffix), "answer_ids": prep.answer_ids,
              "wall_s": round(time.perf_counter() - t0, 4)}
    return TraceResult(method="causal_trace", prompt=prompt, answer=answer, tokens=prep.tokens,
                       subject_range=(s, e), effects=effects, clean=p_clean, corrupted=p_corr, metric=metric,
                       config=config, provenance=provenance(model=model, config=config, seed=seed,
                                                            subject=subject),
                       extra=spread)


@torch.no_grad()
def causal_trace_batch(model, tok, facts: Sequence[tuple[str, str, str]], *, kinds=KINDS, n_samples: int = 10,
                       noise: float | None = None, window: int | None = None, metric: str = "prob",
                       backend: str = "torch", seed: int = 0, batch_size: int | None = None,
                       memory_budget: float | None = None, progress: bool = False) -> list[TraceResult]:
    """Level 3 for several facts in shared forwards: `causal_trace` of each (prompt, answer, subject), with the
    facts' clean runs in one right-padded forward and their corrupted runs and restorations as rows of the same
    batches (`restoration.run_jobs_padded`). Each fact gets its own noise draws (the same as `causal_trace` with
    this seed), so the results equal one-at-a-time traces up to float rounding. Full forwards only (no suffix
    engine, no naive loop); config["wall_s"] is the batch's time divided by its facts."""
    kinds, window = _check_args(model, kinds, metric, n_samples, noise, batch_size, window)
    facts = list(facts)
    if not facts:
        return []
    preps = [prepare(model, tok, p, a, s) for p, a, s in facts]
    L = n_layers(model)
    run = get_backend(model, tok, backend)
    device = next(model.parameters()).device
    t0 = time.perf_counter()

    ids = [prep.input_ids(metric, device) for prep in preps]        # [1, pos_i] each
    fns = [metric_fn(metric, prep.answer_ids) for prep in preps]
    sites = [site_name(k, l) for k in kinds for l in range(L)]
    cleans = clean_runs(run, ids, sites, [keep for _, keep in fns])
    rows = batch_size or rows_per_forward(model, max(x.shape[1] for x in ids), max(k for _, k in fns), memory_budget)
    cs, sigmas = [], []
    for (prompt, _, _), prep, x, (fn, keep), (clean_logits, clean) in zip(facts, preps, ids, fns, cleans):
        sigma = noise_scale(model, tok, [prompt]) if noise is None else float(noise)
        s, e = prep.subject_range
        g = torch.Generator().manual_seed(seed)
        draws = (torch.randn(n_samples, e - s, model.config.hidden_size, generator=g) * sigma).to(device)
        cs.append(Corruption(run, x, draws, (s, e), L, prep.n_prompt, clean, fn, keep, float(fn(clean_logits)[0]),
                             math.nan, rows, False, None, progress))
        sigmas.append(sigma)
    for c, v in zip(cs, restore_many(cs, [(i, []) for i in range(len(cs))], desc="corrupted")):
        c.p_corr = float(v.mean())
    jobs, spans = [], []  # spans: (fact, kind, cells, first job)
    for i, c in enumerate(cs):
        fact_spans, js = kinds_jobs(c, kinds, window)
        spans += [(i, kind, cells, len(jobs) + j0) for kind, cells, j0 in fact_spans]
        jobs += [(i, j) for j in js]
    vals = restore_many(cs, jobs, desc="trace")  # [n_jobs, n_samples]
    effects: list[dict] = [{} for _ in cs]
    spread: list[dict] = [{} for _ in cs]
    for i, kind, cells, j0 in spans:
        effects[i][kind], spread[i][f"{kind}_std"] = cell_effects(cs[i], cells, vals[j0:j0 + len(cells)])

    wall = round((time.perf_counter() - t0) / len(facts), 4)
    out = []
    for (prompt, answer, subject), prep, c, sigma, eff, sd in zip(facts, preps, cs, sigmas, effects, spread):
        config = {"kinds": list(kinds), "n_samples": n_samples, "noise_sigma": sigma, "noise": "gaussian",
                  "window": window, "metric": metric, "backend": backend, "seed": seed, "rows_per_forward": rows,
                  "naive": False, "suffix": False, "facts_per_batch": len(facts), "answer_ids": prep.answer_ids,
                  "wall_s": wall}
        out.append(TraceResult(method="causal_trace", prompt=prompt, answer=answer, tokens=prep.tokens,
                               subject_range=c.subject_range, effects=eff, clean=c.p_clean, corrupted=c.p_corr,
                               metric=metric, config=config,
                               provenance=provenance(model=model, config=config, seed=seed, subject=subject),
                               extra=sd))
    return out


def causal_trace_naive(model, tok, prompt, answer, subject, **kw) -> TraceResult:
    """ROME's reference loop (one forward per restored site); the batched engine must reproduce it."""
    return causal_trace(model, tok, prompt, answer, subject, naive=True, **kw)


def check_noise(noise) -> None:
    """A noise sigma must be a finite number > 0 (NaN noise makes every importance 0, a negative one is meaningless)."""
    if noise is not None and not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise > 0):
        raise TraceError(f"noise sigma must be a finite number > 0 (or None: 3 x the subjects' embedding std), "
                         f"got {noise!r}")


def trace_facts(model, tok, records, *, noise: float | None = None, facts_per_batch: int = 1, progress: bool = True,
                **kw) -> list[TraceResult]:
    """Causal trace of each Record (.input prompt, .output answer, .subject), `causal_trace` per fact, or with
    `facts_per_batch` > 1 `causal_trace_batch` over that many facts at a time (facts of similar token length
    together, so little padding). One sigma for the whole set, measured over all subjects (as ROME does) unless
    `noise` is given. Under `accelerate launch` each process traces its share of the facts (each fact's trace depends
    on that fact alone) and every process gets them all."""
    from . import distributed

    records = list(records)
    missing = [r.id for r in records if not getattr(r, "subject", None)]
    if missing:
        raise TraceError(f"records without a subject cannot be traced: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} (use corpus.facts() to get traceable QA records)")
    check_noise(noise)
    if not isinstance(facts_per_batch, int) or facts_per_batch < 1:
        raise TraceError(f"facts_per_batch must be an integer >= 1, got {facts_per_batch!r}")
    if facts_per_batch > 1 and (kw.get("naive") or kw.get("suffix")):
        raise TraceError("facts_per_batch > 1 runs full batched forwards: it cannot be combined with naive=True or "
                         "suffix=True")
    # fail on a bad record before hours of tracing
    lengths = [len(prepare(model, tok, r.input, r.output, r.subject).prompt_ids) for r in records]
    sigma = noise_scale(model, tok, [r.subject for r in records]) if noise is None else noise
    found: dict[int, TraceResult] = {}
    mine = distributed.split(range(len(records)), model)
    if facts_per_batch > 1:
        mine = sorted(mine, key=lambda i: lengths[i])
        kw = {k: v for k, v in kw.items() if k not in ("naive", "suffix")}
    bar = tqdm(total=len(mine), desc="tracing facts", disable=not progress)
    for b0 in range(0, len(mine), facts_per_batch):
        batch = mine[b0:b0 + facts_per_batch]
        if facts_per_batch == 1:
            r = records[batch[0]]
            traced = [causal_trace(model, tok, r.input, r.output, r.subject, noise=sigma, **kw)]
        else:
            traced = causal_trace_batch(model, tok, [(records[i].input, records[i].output, records[i].subject)
                                                     for i in batch], noise=sigma, **kw)
        for i, t in zip(batch, traced):
            found[i] = t
            found[i].config["record_id"] = records[i].id
        bar.update(len(batch))
    bar.close()
    found = distributed.gather(found)
    return [found[i] for i in range(len(records))]
