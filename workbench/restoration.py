"""The restoration engine: forwards of a corrupted input with chosen activations set back to recorded values.

Causal tracing (workbench.tracing: noised subject, clean values restored) and activation patching
(workbench.patching: counterfactual prompt, clean values patched in) both reduce to this. A "job" is a list of
(site, positions) to set back; the engine returns the metric after each job.

  clean_run        one forward recording the values to restore at each site
  run_jobs         jobs x noise draws as rows of a few large batched forwards (rows per forward from a memory budget,
                   `rows_per_forward`); each site gets one hook that swaps in recorded values where a boolean
                   [rows, pos] mask says so (`restore_edits`)
  run_jobs_naive   ROME's reference loop, written independently of the masks: one forward per job
  run_jobs_suffix  tracing on the torch backend: a restoration at (layer l, position t) recomputes only layers >= l
                   at positions >= t, from the recorded corrupted run (`CorruptedRun`: its resid_pre and keys/values)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .hooks import hooks
from .models import decoder_layers
from .sites import name as site_name
from .sites import parse

Job = list  # list[tuple[str, Sequence[int]]]: (site name, positions to restore)


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


# --- several prompts per forward: right-padded -----------------------------------------------------------------
@dataclass
class Source:
    """One prompt the padded engine restores on: its input, the values to restore, its noise and its metric."""
    ids: torch.Tensor                        # [1, pos]
    clean: dict[str, torch.Tensor]           # {site: [pos, ...]} values a job sets back
    metric: Callable                         # logits [rows, keep, vocab] -> [rows]
    keep: int                                # last positions of `ids` the metric reads
    noise: torch.Tensor | None = None        # [n_samples, n_subject, d_model] added at subject_range
    subject_range: tuple[int, int] | None = None

    @property
    def n_pos(self) -> int:
        return self.ids.shape[1]


def _pad(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """`x` zero-padded at the end of `dim` to length n."""
    if x.shape[dim] == n:
        return x
    shape = list(x.shape)
    shape[dim] = n - x.shape[dim]
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def _gather_logits(logits: torch.Tensor, sources: list[Source], row_source: list[int], T: int, S: int):
    """Per run of consecutive jobs on one source: (first job, n jobs, source, logits [rows, keep, vocab] of that
    source's last `keep` positions). `logits` holds the last K positions of a width-T padded batch."""
    K = logits.shape[1]
    j = 0
    while j < len(row_source):
        i = row_source[j]
        n = 1
        while j + n < len(row_source) and row_source[j + n] == i:
            n += 1
        src = sources[i]
        end = src.n_pos - (T - K)                                   # where this source's positions end among the K
        yield j, n, src, logits[j * S:(j + n) * S, end - src.keep:end]
        j += n


@torch.no_grad()
def clean_runs(run, sources_ids: list[torch.Tensor], sites: Sequence[str], keeps: list[int]):
    """`clean_run` of several prompts in one right-padded forward: [(logits [1, keep, vocab], {site: [pos, ...]})]."""
    T = max(ids.shape[1] for ids in sources_ids)
    ids = torch.cat([_pad(x, T, 1) for x in sources_ids])          # [n_prompts, T]
    acts: dict[str, torch.Tensor] = {}

    def recorder(site):
        def fn(x):
            acts[site] = x.detach().clone()
        return fn
    K = T - min(x.shape[1] - k for x, k in zip(sources_ids, keeps))
    logits = run(ids, {s: recorder(s) for s in sites}, K)          # [n_prompts, K, vocab]
    out = []
    for i, (x, k) in enumerate(zip(sources_ids, keeps)):
        end = x.shape[1] - (T - K)
        out.append((logits[i:i + 1, end - k:end], {s: a[i, :x.shape[1]] for s, a in acts.items()}))
    return out


def run_jobs_padded(run, sources: list[Source], jobs: list[tuple[int, Job]], *, rows: int = 64,
                    progress: bool = False, desc: str = "restoring") -> torch.Tensor:
    """`run_jobs` over several prompts at once: job (i, job) restores on sources[i]. Returns [n_jobs, n_samples].

    Prompts of different lengths share a forward right-padded: causal attention keeps each real position blind to
    the padding after it, so positions (and rotary embeddings), noise, restored values and the metric's positions
    are those of the prompt alone, and no attention mask is needed. Each row restores its own prompt's clean values
    and reads the logits of its own last positions. Equal to `run_jobs` per prompt up to float rounding."""
    S = 1 if sources[0].noise is None else sources[0].noise.shape[0]
    if any((src.noise is None and S != 1) or (src.noise is not None and src.noise.shape[0] != S) for src in sources):
        raise ValueError("every source needs the same number of noise draws")
    per_chunk = max(1, rows // S)
    out = []
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, leave=False)
    for c0 in range(0, len(jobs), per_chunk):
        chunk = jobs[c0:c0 + per_chunk]
        row_source = [i for i, _ in chunk]
        used = sorted(set(row_source))
        slot = {i: u for u, i in enumerate(used)}
        T = max(sources[i].n_pos for i in used)
        B = len(chunk) * S
        row_slot = torch.tensor([slot[i] for i in row_source]).repeat_interleave(S)       # [B]
        device = sources[used[0]].ids.device
        ids = torch.cat([_pad(sources[i].ids, T, 1) for i in used])[row_slot.to(device)]  # [B, T]

        masks: dict[str, torch.Tensor] = {}   # site -> [B, T] or [B, T, n_heads]: True = restore clean
        for j, (i, job) in enumerate(chunk):
            for site, positions in job:
                clean = sources[i].clean[site]
                m = masks.setdefault(site, torch.zeros((B, T) + tuple(clean.shape[1:-1]), dtype=torch.bool,
                                                       device=clean.device))
                for p in positions:
                    idx = tuple(p) if isinstance(p, tuple) else (p,)
                    m[(slice(j * S, (j + 1) * S),) + idx] = True

        def restorer(site, m):
            values = torch.stack([_pad(sources[i].clean[site], T, 0) for i in used])  # [n_used, T, ...]

            def fn(x):  # x: [B, T, d_model] or [B, T, n_heads, d_head]
                return torch.where(m[..., None], values[row_slot.to(values.device)].to(x.dtype), x)
            return fn
        edits = {site: restorer(site, m) for site, m in masks.items()}
        if sources[used[0]].noise is not None:
            d = sources[used[0]].noise.shape[-1]
            draws = torch.zeros(len(used), S, T, d, device=device)                       # [n_used, S, T, d_model]
            for i in used:
                s, e = sources[i].subject_range
                draws[slot[i], :, s:e] = sources[i].noise
            draws = draws[row_slot.to(device), torch.arange(B, device=device) % S]     # [B, T, d_model]

            def add_noise(x, draws=draws):  # x: [B, T, d_model]; zero draws outside the subject leave x as it is
                return x + draws.to(x.dtype)
            restore = edits.get("embed")  # restoring the embedding itself: noise first, then restore
            edits["embed"] = add_noise if restore is None else (lambda x, r=restore, a=add_noise: r(a(x)))
        K = T - min(sources[i].n_pos - sources[i].keep for i in used)
        logits = run(ids, edits, K)                                                       # [B, K, vocab]
        for j, n, src, lg in _gather_logits(logits, sources, row_source, T, S):
            out.append(src.metric(lg).reshape(n, S).float().cpu())
        bar.update(len(chunk))
    bar.close()
    return torch.cat(out) if out else torch.zeros(0, S)


# --- suffix engine: recompute only what a restoration can change ---------------------------------------------
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
        edits = {"embed": add_noise, **{site_name("resid_pre", l): recorder(l) for l in range(len(layers))}}
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
        model, T = self.model, self.T
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
        cells = [(parse(corrupted.model, site)[1], p) for site, positions in job for p in positions]
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
