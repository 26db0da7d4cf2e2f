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

Engine: every restoration is a "job" = a list of (site, positions) to set back to clean. Jobs x noise draws become rows
of a few large batched forwards (rows per forward from a memory budget, or `batch_size`); each site gets one hook
that swaps in clean values where a boolean [rows, pos] mask says so. Positions before the subject see no noise,
so restoring them is a no-op: the batched engine skips them and reports the corrupted metric there (the naive loop
computes them, and the tests check both agree). `naive=True` runs ROME's reference loop: one forward per job.
On the torch backend the jobs also skip what they cannot change (`CorruptedRun`): a restoration at (layer l,
position t) recomputes only layers >= l at positions >= t, from the recorded corrupted run (its resid_pre and
keys/values): 4.7x faster on a long prompt whose subject comes late (OLMo-1B shape, CPU); by default only there.
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
from .hooks import hooks, n_heads, n_layers, parse_site
from .models import decoder_layers
from .provenance import provenance
from .results import KINDS, TraceResult

METRICS = ("prob", "logprob_mean")
KIND_SITE = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}

Job = list  # list[tuple[str, Sequence[int]]]: (site name, positions to restore)


# --- prompt preparation ------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A tokenised prompt + answer, checked."""
    prompt: str
    answer: str
    prompt_ids: list[int]              # [n_prompt]
    answer_ids: list[int]              # [n_answer], the answer's tokens as they appear after the prompt
    tokens: list[str]                  # readable prompt tokens
    subject_range: tuple[int, int] | None = None  # [start, end) token positions

    @property
    def n_prompt(self) -> int:
        return len(self.prompt_ids)

    def input_ids(self, metric: str, device) -> torch.Tensor:
        """[1, pos]: the prompt, plus the answer minus its last token when the metric reads the whole answer."""
        ids = self.prompt_ids + (self.answer_ids[:-1] if metric in ("logprob_mean", "logprob") else [])
        return torch.tensor([ids], device=device)


def continuation(prompt: str, answer: str) -> str:
    """The text after the prompt: `answer`, separated by one space (the corpus convention `input + ' ' + output`)."""
    return answer if answer[:1].isspace() or prompt[-1:].isspace() else " " + answer


def prepare(model, tok, prompt: str, answer: str, subject: str | None = None) -> Prepared:
    """Tokenise and check a prompt/answer(/subject); raises TraceError before any forward pass."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise TraceError(f"empty prompt {prompt!r}")
    if not isinstance(answer, str) or not answer.strip():
        raise TraceError(f"empty answer {answer!r} for prompt {prompt!r}")
    enc = tok(prompt, return_offsets_mapping=True)
    prompt_ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    full = list(tok(prompt + continuation(prompt, answer))["input_ids"])
    if full[:len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
        raise TraceError(f"answer {answer!r} tokenises differently in context: prompt {prompt!r} alone is "
                         f"{tok.convert_ids_to_tokens(prompt_ids)}, but prompt + answer starts "
                         f"{tok.convert_ids_to_tokens(full[:len(prompt_ids)])}; choose a prompt/answer split at a "
                         f"token boundary")
    answer_ids = full[len(prompt_ids):]
    # A whitespace-only first answer token (e.g. 'Ġ' before digits split one by one) says nothing about the
    # fact and is predicted with p ~ 1 even when corrupted: it joins the prompt, the metric reads the content.
    while len(answer_ids) > 1 and not tok.decode([answer_ids[0]]).strip():
        prompt_ids.append(answer_ids.pop(0))
    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len is not None and len(full) > max_len:
        raise TraceError(f"prompt {prompt[:80]!r}... + answer is {len(full)} tokens, longer than the model's context "
                         f"of {max_len}")
    sub = None
    if subject is not None:
        start = prompt.rfind(subject) if subject else -1
        if start < 0:
            raise TraceError(f"subject {subject!r} not found in prompt {prompt!r}")
        end = start + len(subject)
        # tokens whose character span overlaps the subject's (a leading-space token counts)
        pos = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
        if not pos:
            raise TraceError(f"subject {subject!r} covers no token of prompt {prompt!r}")
        sub = (pos[0], pos[-1] + 1)
    tokens = [tok.decode([i]) for i in prompt_ids]
    return Prepared(prompt, answer, prompt_ids, answer_ids, tokens, sub)


# --- metrics -----------------------------------------------------------------------------------------------
def metric_fn(name: str, answer_ids: list[int], wrong_ids: list[int] | None = None) -> tuple[Callable, int]:
    """(fn(logits [rows, keep, vocab]) -> [rows], keep): the metric and how many last-position logits it reads."""
    if name == "prob":
        return (lambda lg: lg[:, -1].float().softmax(-1)[:, answer_ids[0]]), 1
    if name in ("logprob_mean", "logprob"):
        target = torch.tensor(answer_ids)  # [n_answer]; logits[:, j] predicts answer_ids[j]

        def mean_logprob(lg):
            lp = lg.float().log_softmax(-1)  # [rows, n_answer, vocab]
            return lp.gather(-1, target.to(lg.device)[None, :, None].expand(lg.shape[0], -1, 1))[..., 0].mean(-1)
        return mean_logprob, len(answer_ids)
    if name == "logit_diff":
        if not wrong_ids:
            raise TraceError("metric 'logit_diff' needs a wrong answer (wrong_answer=...)")
        return (lambda lg: lg[:, -1, answer_ids[0]].float() - lg[:, -1, wrong_ids[0]].float()), 1
    raise TraceError(f"unknown metric {name!r}; expected one of prob, logprob_mean, logit_diff")


# --- batched restoration engine ----------------------------------------------------------------------------
def rows_per_forward(model, n_pos: int, keep: int, budget_bytes: float | None = None) -> int:
    """How many rows fit one forward: a rough activation-size estimate per row against a memory budget.

    Default budget: a quarter of free GPU memory, or 1 GiB on CPU (where bigger batches stop paying off anyway).
    """
    cfg = model.config
    p = next(model.parameters())
    if budget_bytes is None:
        if p.is_cuda:
            free, _ = torch.cuda.mem_get_info(p.device)
            budget_bytes = free / 4
        else:
            budget_bytes = 2 ** 30
    d, d_ff, H = cfg.hidden_size, getattr(cfg, "intermediate_size", 4 * cfg.hidden_size), cfg.num_attention_heads
    per_row = p.element_size() * (n_pos * (8 * d + 3 * d_ff) + 2 * H * n_pos * n_pos) + 4 * keep * cfg.vocab_size * 2
    return max(1, int(budget_bytes // per_row))


def clean_run(run, ids: torch.Tensor, sites: Sequence[str], keep: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One clean forward: (logits [1, keep, vocab], {site: activation [pos, ...] of the single row})."""
    acts: dict[str, torch.Tensor] = {}

    def recorder(site):
        def fn(x):
            acts[site] = x[0].detach().clone()
        return fn
    logits = run(ids, {s: recorder(s) for s in sites}, keep)
    return logits, acts


def restore_edits(jobs: list[Job], S: int, clean: dict[str, torch.Tensor], t0: int = 0) -> dict[str, Callable]:
    """{site: edit} for a chunk of jobs: rows j*S..(j+1)*S set job j's (site, positions) back to their clean values.

    Activations cover positions t0.. (0: all; the suffix engine passes its first position). Head sites take
    positions as (pos, head) pairs."""
    B = len(jobs) * S
    masks: dict[str, torch.Tensor] = {}  # site -> [B, pos - t0] or [B, pos - t0, n_heads]: True = restore clean
    for j, job in enumerate(jobs):
        for site, positions in job:
            shape = (B, clean[site].shape[0] - t0) + tuple(clean[site].shape[1:-1])
            m = masks.setdefault(site, torch.zeros(shape, dtype=torch.bool, device=clean[site].device))
            for p in positions:
                idx = (p[0] - t0,) + tuple(p[1:]) if isinstance(p, tuple) else (p - t0,)
                m[(slice(j * S, (j + 1) * S),) + idx] = True
    # x: [B, pos - t0, d_model] or [B, pos - t0, n_heads, d_head]
    return {site: (lambda x, m=m, v=clean[site][t0:]: torch.where(m[..., None], v.to(x.dtype)[None], x))
            for site, m in masks.items()}


def run_jobs(run, ids: torch.Tensor, jobs: list[Job], clean: dict[str, torch.Tensor], metric: Callable, keep: int,
             *, noise: torch.Tensor | None = None, subject_range: tuple[int, int] | None = None,
             rows: int = 64, progress: bool = False, desc: str = "restoring") -> torch.Tensor:
    """Metric after each job, batched. Returns [n_jobs, n_samples].

    ids:     [1, pos] the input of every row (for tracing the clean prompt, noised via `noise`; for patching the
             counterfactual prompt)
    noise:   [n_samples, n_subject, d_model] added to the embeddings at `subject_range`; row r uses draw r % n_samples
    clean:   {site: [pos, ...]} values to restore; a job's (site, positions) sets those positions back to them.
             Head sites take positions as (pos, head) pairs so single heads can be patched.
    """
    S = 1 if noise is None else noise.shape[0]
    per_chunk = max(1, rows // S)
    out = []
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, leave=False)
    for c0 in range(0, len(jobs), per_chunk):
        chunk = jobs[c0:c0 + per_chunk]
        B = len(chunk) * S
        edits = restore_edits(chunk, S, clean)
        if noise is not None:
            s, e = subject_range
            draws = noise.repeat(len(chunk), 1, 1)  # [B, n_subject, d_model], row r = draw r % S

            def add_noise(x, draws=draws, s=s, e=e):  # x: [B, pos, d_model]
                x = x.clone()
                x[:, s:e] += draws.to(x.dtype)
                return x
            restore = edits.get("embed")  # restoring the embedding itself: noise first, then restore
            edits["embed"] = add_noise if restore is None else (lambda x, r=restore, a=add_noise: r(a(x)))
        logits = run(ids.expand(B, -1), edits, keep)
        out.append(metric(logits).reshape(len(chunk), S).float().cpu())
        bar.update(len(chunk))
    bar.close()
    return torch.cat(out) if out else torch.zeros(0, S)


def run_jobs_naive(run, ids, jobs, clean, metric, keep, *, noise=None, subject_range=None, progress=False,
                   desc="naive") -> torch.Tensor:
    """Reference loop, written independently of the masks above: one forward (of n_samples rows) per job."""
    S = 1 if noise is None else noise.shape[0]
    out = []
    for job in tqdm(jobs, desc=desc, disable=not progress, leave=False):
        edits = {}
        for site, positions in job:
            def restore(x, site=site, positions=positions):
                x = x.clone()
                for p in positions:
                    idx = tuple(p) if isinstance(p, tuple) else (p,)
                    x[(slice(None),) + idx] = clean[site][idx].to(x.dtype)
                return x
            edits[site] = restore
        if noise is not None:
            s, e = subject_range

            def add_noise(x):
                x = x.clone()
                x[:, s:e] += noise.to(x.dtype)
                return x
            edits["embed"] = (lambda x, r=edits["embed"]: r(add_noise(x))) if "embed" in edits else add_noise
        out.append(metric(run(ids.expand(S, -1), edits, keep)).float().cpu())
    return torch.stack(out) if out else torch.zeros(0, S)


# --- suffix engine: recompute only what a restoration can change ---------------------------------------
class CorruptedRun:
    """The corrupted forward, recorded once so each restoration recomputes only its downstream part.

    Restoring site(s) of layers >= l0 at positions >= t0 leaves every layer below l0 and every position before t0
    exactly as in the corrupted run (causal attention: earlier positions never see later ones). So a job runs the
    decoder layers l0..L-1 on positions t0..T-1 only, starting from the corrupted resid_pre.l0 and reading the
    corrupted keys/values of positions < t0 from this record. Torch backend, HF OLMo-family blocks only.
    """
    MODEL_TYPES = ("olmo", "olmo2", "olmo3")

    @classmethod
    def supported(cls, model) -> bool:
        return getattr(model.config, "model_type", None) in cls.MODEL_TYPES

    @torch.no_grad()
    def __init__(self, model, ids: torch.Tensor, noise: torch.Tensor, subject_range: tuple[int, int]):
        self.model = model
        s, e = subject_range
        S, T = noise.shape[0], ids.shape[1]
        layers = decoder_layers(model)
        resid_pre: list[torch.Tensor] = [None] * len(layers)

        def add_noise(x):  # x: [S, pos, d_model]
            x = x.clone()
            x[:, s:e] += noise.to(x.dtype)
            return x

        def recorder(l):
            def fn(x):
                resid_pre[l] = x.detach().clone()
            return fn
        edits = {"embed": add_noise, **{f"resid_pre.{l}": recorder(l) for l in range(len(layers))}}
        with hooks(model, edits):
            out = model(ids.expand(S, -1), use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        self.resid_pre = resid_pre                                            # L x [S, T, d_model]
        self.keys = [cache.layers[l].keys for l in range(len(layers))]        # L x [S, n_kv_heads, T, d_head]
        self.values = [cache.layers[l].values for l in range(len(layers))]    # L x [S, n_kv_heads, T, d_head]
        pos = torch.arange(T, device=ids.device)[None]                        # [1, T]
        self.cos, self.sin = model.model.rotary_emb(resid_pre[0], position_ids=pos)  # [1, T, d_head] each
        self.S, self.T = S, T

    def run(self, n_jobs: int, l0: int, t0: int, edits, keep: int) -> torch.Tensor:
        """Logits [n_jobs * S, keep, vocab] of layers l0.. on positions t0.. with `edits` hooked (positions sliced)."""
        model, S, T = self.model, self.S, self.T
        dtype = self.resid_pre[l0].dtype
        h = self.resid_pre[l0][:, t0:].repeat(n_jobs, 1, 1)                   # [B, T - t0, d_model]
        q = torch.arange(t0, T, device=h.device)[:, None]                      # [T - t0, 1] absolute query positions
        k = torch.arange(T, device=h.device)[None, :]                          # [1, T]
        mask = torch.zeros(T - t0, T, dtype=dtype, device=h.device).masked_fill(k > q, torch.finfo(dtype).min)
        prefix = _PrefixKV({l: (self.keys[l][:, :, :t0].repeat(n_jobs, 1, 1, 1),
                                self.values[l][:, :, :t0].repeat(n_jobs, 1, 1, 1))
                            for l in range(l0, len(self.keys))})
        pe = (self.cos[:, t0:], self.sin[:, t0:])
        pos_ids = q.T                                                           # [1, T - t0]
        with hooks(model, edits):
            for layer in decoder_layers(model)[l0:]:
                h = layer(h, attention_mask=mask[None, None], position_ids=pos_ids, past_key_values=prefix,
                          use_cache=True, position_embeddings=pe)
                h = h[0] if isinstance(h, tuple) else h
        return model.lm_head(model.model.norm(h[:, -keep:]))                   # [B, keep, vocab]


class _PrefixKV:
    """Duck-typed KV cache: prepends the corrupted run's keys/values of positions < t0 (never stores the new ones)."""

    def __init__(self, kv: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        self.kv = kv

    def update(self, key, value, layer_idx, *args, **kwargs):
        pk, pv = self.kv[layer_idx]
        return torch.cat([pk.to(key.dtype), key], dim=2), torch.cat([pv.to(value.dtype), value], dim=2)


def run_jobs_suffix(corrupted: CorruptedRun, jobs: list[Job], clean: dict[str, torch.Tensor], metric: Callable,
                    keep: int, *, rows: int = 64, by_position: bool = False, progress: bool = False,
                    desc: str = "restoring") -> torch.Tensor:
    """`run_jobs` for causal tracing, recomputing only downstream of each chunk's earliest (layer, position).

    Jobs are grouped by the first layer they restore (and, if `by_position`, by their first position too), and each
    group runs in chunks of at most `rows` rows. Per-position groups do the fewest FLOPs but run many small batches,
    which measured 2x slower on a CPU; per-layer groups are the default.
    Returns [n_jobs, n_samples] in the order of `jobs`."""
    S, L, T = corrupted.S, len(corrupted.keys), corrupted.T
    per_chunk = max(1, rows // S)

    def start(job):  # (first layer, first position) a job restores; an empty job restores nothing
        cells = [(parse_site(corrupted.model, site)[1], p) for site, positions in job for p in positions]
        if not cells:
            return L - 1, T - keep
        return min(l for l, _ in cells), min(min(t for _, t in cells), T - keep)

    starts = [start(job) for job in jobs]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (l0, t0) in enumerate(starts):
        groups.setdefault((l0, t0 if by_position else 0), []).append(i)
    out = torch.zeros(len(jobs), S)
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, leave=False)
    for idx in groups.values():
        for c0 in range(0, len(idx), per_chunk):
            chunk = idx[c0:c0 + per_chunk]
            l0, t0 = min(starts[i][0] for i in chunk), min(starts[i][1] for i in chunk)
            edits = restore_edits([jobs[i] for i in chunk], S, clean, t0)
            logits = corrupted.run(len(chunk), l0, t0, edits, keep)
            out[chunk] = metric(logits).reshape(len(chunk), S).float().cpu()
            bar.update(len(chunk))
    bar.close()
    return out


# --- public API --------------------------------------------------------------------------------------------
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


def _check_kinds(kinds) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise TraceError(f"unknown trace kind(s) {bad or kinds!r}; expected some of {KINDS}")
    return kinds


@torch.no_grad()
def causal_trace(model, tok, prompt: str, answer: str, subject: str, *, kinds=KINDS, n_samples: int = 10,
                 noise: float | None = None, window: int | None = None, metric: str = "prob", backend: str = "torch",
                 seed: int = 0, batch_size: int | None = None, memory_budget: float | None = None,
                 naive: bool = False, suffix: bool | None = None, progress: bool = False) -> TraceResult:
    """ROME causal trace of one fact. effects[kind] = metric after restoring (layer, position)  # [n_layers, n_prompt]

    noise: sigma of the Gaussian (absolute); None = `noise_scale(model, tok, [prompt])` (3 x std of the prompt's token
    embeddings; `trace_facts` measures it once over all subjects, as ROME does).
    batch_size: rows (restorations x noise samples) per forward; None = from `memory_budget` bytes.
    suffix: recompute only downstream of each restored (layer, position) (`CorruptedRun`); None = where supported
    (torch backend, OLMo-family model) and the subject sits in the prompt's second half, so most positions are
    skipped. False runs every restoration as a full forward (same numbers to ~1e-6).
    """
    kinds = _check_kinds(kinds)
    if metric not in METRICS:
        raise TraceError(f"unknown metric {metric!r} for causal tracing; expected one of {METRICS}")
    if n_samples < 1:
        raise TraceError(f"n_samples must be >= 1, got {n_samples}")
    check_noise(noise)
    if batch_size is not None and batch_size < 1:
        raise TraceError(f"batch_size must be >= 1 row per forward (or None: from the memory budget), got {batch_size}")
    prep = prepare(model, tok, prompt, answer, subject)
    L = n_layers(model)
    window = default_window(L) if window is None else int(window)
    if not 1 <= window <= L:
        raise TraceError(f"window must be between 1 and the model's {L} layers, got {window} (wider windows restore "
                         "every layer at once, so every layer would get the same importance)")
    sigma = noise_scale(model, tok, [prompt]) if noise is None else float(noise)
    run = get_backend(model, tok, backend)
    if suffix is None:  # measured on OLMo-1B's shape (4 layers, CPU): 4.7x faster with the subject at token 83 of
        # 88, but 15% slower with it at token 3 of 8 (small suffix batches); so only when it skips most positions
        first_subject = prep.subject_range[0]
        suffix = (backend == "torch" and not naive and CorruptedRun.supported(model)
                  and prep.n_prompt - first_subject <= prep.n_prompt / 2)
    elif suffix and (backend != "torch" or naive or not CorruptedRun.supported(model)):
        raise TraceError(f"suffix=True needs backend='torch', naive=False and an OLMo-family model "
                         f"(model_type in {CorruptedRun.MODEL_TYPES}); got backend={backend!r}, naive={naive}, "
                         f"model_type={getattr(model.config, 'model_type', None)!r}")
    device = next(model.parameters()).device
    t0 = time.perf_counter()

    ids = prep.input_ids(metric, device)  # [1, pos]
    fn, keep = metric_fn(metric, prep.answer_ids)
    s, e = prep.subject_range
    g = torch.Generator().manual_seed(seed)
    noise_draws = (torch.randn(n_samples, e - s, model.config.hidden_size, generator=g) * sigma).to(device)

    sites = [f"{KIND_SITE[k]}.{l}" for k in kinds for l in range(L)]
    clean_logits, clean = clean_run(run, ids, sites, keep)
    p_clean = float(fn(clean_logits)[0])
    p_corr = float(run_jobs(run, ids, [[]], clean, fn, keep, noise=noise_draws, subject_range=(s, e)).mean())

    T = prep.n_prompt
    first = 0 if naive else s  # positions before the subject are never noised: restoring them is a no-op
    rows = batch_size or rows_per_forward(model, ids.shape[1], keep, memory_budget)
    corrupted = CorruptedRun(model, ids, noise_draws, (s, e)) if suffix else None
    effects, spread = {}, {}
    for kind in kinds:
        site = KIND_SITE[kind]
        layers_of = (lambda l: [l]) if kind == "resid" else (lambda l: window_layers(l, window, L))
        cells = [(l, t) for l in range(L) for t in range(first, T)]
        jobs = [[(f"{site}.{ll}", [t]) for ll in layers_of(l)] for l, t in cells]
        if corrupted is not None:
            vals = run_jobs_suffix(corrupted, jobs, clean, fn, keep, rows=rows, progress=progress,
                                   desc=f"trace {kind}")  # [n_cells, n_samples]
        else:
            engine = run_jobs_naive if naive else run_jobs
            kw = {} if naive else {"rows": rows}
            vals = engine(run, ids, jobs, clean, fn, keep, noise=noise_draws, subject_range=(s, e),
                          progress=progress, desc=f"trace {kind}", **kw)  # [n_cells, n_samples]
        eff = np.full((L, T), p_corr, dtype=np.float64)
        std = np.zeros((L, T), dtype=np.float64)
        for (l, t), v in zip(cells, vals):
            eff[l, t], std[l, t] = float(v.mean()), float(v.std()) if n_samples > 1 else 0.0
        effects[kind], spread[f"{kind}_std"] = eff, std

    config = {"kinds": list(kinds), "n_samples": n_samples, "noise_sigma": sigma, "noise": "gaussian",
              "window": window, "metric": metric, "backend": backend, "seed": seed, "rows_per_forward": rows,
              "naive": naive, "suffix": bool(suffix), "answer_ids": prep.answer_ids, "wall_s": round(time.perf_counter() - t0, 4)}
    return TraceResult(method="causal_trace", prompt=prompt, answer=answer, tokens=prep.tokens,
                       subject_range=(s, e), effects=effects, clean=p_clean, corrupted=p_corr, metric=metric,
                       config=config, provenance=provenance(model=model, config=config, seed=seed,
                                                            subject=subject),
                       extra=spread)


def causal_trace_naive(model, tok, prompt, answer, subject, **kw) -> TraceResult:
    """ROME's reference loop (one forward per restored site); the batched engine must reproduce it."""
    return causal_trace(model, tok, prompt, answer, subject, naive=True, **kw)


def check_noise(noise) -> None:
    """A noise sigma must be a finite number > 0 (NaN noise makes every importance 0, a negative one is meaningless)."""
    if noise is not None and not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise > 0):
        raise TraceError(f"noise sigma must be a finite number > 0 (or None: 3 x the subjects' embedding std), "
                         f"got {noise!r}")


def trace_facts(model, tok, records, *, noise: float | None = None, progress: bool = True, **kw) -> list[TraceResult]:
    """Causal trace of each Record (.input prompt, .output answer, .subject). One sigma for the whole set, measured
    over all subjects (as ROME does) unless `noise` is given. Under `accelerate launch` each process traces its
    share of the facts (each fact's trace depends on that fact alone) and every process gets them all."""
    from . import distributed

    records = list(records)
    missing = [r.id for r in records if not getattr(r, "subject", None)]
    if missing:
        raise TraceError(f"records without a subject cannot be traced: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} (use corpus.facts() to get traceable QA records)")
    check_noise(noise)
    for r in records:  # fail on a bad record before hours of tracing
        prepare(model, tok, r.input, r.output, r.subject)
    sigma = noise_scale(model, tok, [r.subject for r in records]) if noise is None else noise
    found: dict[int, TraceResult] = {}
    mine = distributed.split(range(len(records)), model)
    for i in tqdm(mine, desc="tracing facts", disable=not progress):
        r = records[i]
        found[i] = causal_trace(model, tok, r.input, r.output, r.subject, noise=sigma, **kw)
        found[i].config["record_id"] = r.id
    found = distributed.gather(found)
    return [found[i] for i in range(len(records))]
