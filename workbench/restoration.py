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
                   at positions >= t, from the recorded corrupted run (`CorruptedRun`: its resid_pre and keys/values);
                   jobs of different (l, t) share forwards packed as one token sequence (`Packing`)
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from .errors import TraceError
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


def restore_masks(jobs: list[Job], S: int, clean: dict[str, torch.Tensor], n_pos: int | None = None,
                  t0: int = 0) -> dict[str, torch.Tensor]:
    """{site: bool [len(jobs) * S, n_pos - t0] or [.., n_heads]}: rows j*S..(j+1)*S are True where job j sets
    (site, position) back to clean. n_pos: the batch's positions (None: the site's own clean length); positions are
    counted from t0. Head sites take positions as (pos, head) pairs."""
    masks: dict[str, torch.Tensor] = {}
    for j, job in enumerate(jobs):
        for site, positions in job:
            width = (clean[site].shape[0] if n_pos is None else n_pos) - t0
            shape = (len(jobs) * S, width) + tuple(clean[site].shape[1:-1])
            m = masks.setdefault(site, torch.zeros(shape, dtype=torch.bool, device=clean[site].device))
            for p in positions:
                idx = (p[0] - t0,) + tuple(p[1:]) if isinstance(p, tuple) else (p - t0,)
                m[(slice(j * S, (j + 1) * S),) + idx] = True
    return masks


def restore_edits(jobs: list[Job], S: int, clean: dict[str, torch.Tensor], t0: int = 0) -> dict[str, Callable]:
    """{site: edit} for a chunk of jobs: rows j*S..(j+1)*S set job j's (site, positions) back to their clean values.

    Activations cover positions t0.. (0: all)."""
    # x: [B, pos - t0, d_model] or [B, pos - t0, n_heads, d_head]
    return {site: (lambda x, m=m, v=clean[site][t0:]: torch.where(m[..., None], v.to(x.dtype)[None], x))
            for site, m in restore_masks(jobs, S, clean, t0=t0).items()}


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
            for site, m in restore_masks([job], S, sources[i].clean, T).items():
                masks.setdefault(site, torch.zeros((B,) + m.shape[1:], dtype=torch.bool, device=m.device))
                masks[site][j * S:(j + 1) * S] = m

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
PACKED_ATTENTION = "workbench_packed"


class CorruptedRun:
    """The corrupted forward, recorded once so each restoration recomputes only its downstream part.

    A job whose first restored site is in layer l0 leaves every layer below l0 as in the corrupted run; within
    layer l0 only the restored positions change (the other positions' inputs, keys and values are the corrupted
    run's); from layer l0 + 1 on, positions before the earliest restored one t0 stay corrupted (causal attention:
    earlier positions never see later ones). So a job's row (one noise draw) computes layer l0 at its restored
    positions, layers l0+1.. at positions t0..T-1, and reads every other position's input, key and value from this
    record. Torch backend, HF OLMo-family blocks only.
    """
    MODEL_TYPES = ("olmo", "olmo2", "olmo3")

    @classmethod
    def supported(cls, model) -> bool:
        return getattr(model.config, "model_type", None) in cls.MODEL_TYPES

    @torch.no_grad()
    def __init__(self, model, ids: torch.Tensor, noise: torch.Tensor, subject_range: tuple[int, int], keep: int = 1,
                 record: Sequence[str] = ()):
        """ids: [1, T]; noise: [S, n_subject, d_model]. With `record`, the same forward also runs the clean prompt
        (as ROME's batches do, in row 0) and keeps `clean` {site: [T, ...]} and `clean_logits` [1, keep, vocab]."""
        self.model = model
        s, e = subject_range
        S, T = noise.shape[0], ids.shape[1]
        L = len(decoder_layers(model))
        c = 1 if record else 0                                                # rows before the noised ones
        resid: list[torch.Tensor] = [None] * (L + 1)
        self.clean: dict[str, torch.Tensor] = {}

        def add_noise(x):  # x: [c + S, pos, d_model]
            x = x.clone()
            x[c:, s:e] += noise.to(x.dtype)
            return x

        def recorder(l):
            def fn(x):
                resid[l] = x[c:].detach().clone()
            return fn

        def clean_recorder(site):
            def fn(x):
                self.clean[site] = x[0].detach().clone()
            return fn
        edits: dict[str, list] = {"embed": [add_noise], site_name("resid_post", L - 1): [recorder(L)]}
        for l in range(L):
            edits.setdefault(site_name("resid_pre", l), []).append(recorder(l))
        for site in record:
            edits.setdefault(site, []).append(clean_recorder(site))
        rotary: list = [None] * L  # each layer's (cos, sin) as the model passes them (OLMo-3: per layer type)

        def grab(l):
            def fn(module, args, kwargs):
                rotary[l] = kwargs.get("position_embeddings")
            return fn
        handles = [layer.register_forward_pre_hook(grab(l), with_kwargs=True)
                   for l, layer in enumerate(decoder_layers(model))]
        # a cache without a configuration keeps every position of every layer (a configured one keeps only the last
        # window of OLMo-3's sliding layers); transformers >= 5.24 names the argument `cache`
        cache = DynamicCache()
        arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        try:
            with hooks(model, edits):
                out = model(ids.expand(c + S, -1), use_cache=True, logits_to_keep=keep, **{arg: cache})
        finally:
            for h in handles:
                h.remove()
        if any(pe is None for pe in rotary):
            raise TraceError(f"{type(model).__name__}'s decoder layers get no position_embeddings argument: the suffix "
                             f"engine cannot run them (trace with suffix=False)")
        self.clean_logits = out.logits[:c]                                    # [c, keep, vocab]
        self.logits = out.logits[c:]                                          # [S, keep, vocab] the corrupted metric's
        self.resid = resid                     # L + 1 x [S, T, d_model]: resid_pre of each layer, then the last output
        self.keys = [cache.layers[l].keys[c:] for l in range(L)]              # L x [S, n_kv_heads, T, d_head]
        self.values = [cache.layers[l].values[c:] for l in range(L)]          # L x [S, n_kv_heads, T, d_head]
        self.rotary = [(cos[:1], sin[:1]) for cos, sin in rotary]             # L x ([1, T, d_head], [1, T, d_head])
        self.S, self.T, self.L = S, T, L

    def run(self, packing: "Packing", edits) -> torch.Tensor:
        """Logits [n_rows, keep, vocab] of the packed rows, with `edits` hooked (they see [1, tokens, ...])."""
        model, layers = self.model, decoder_layers(self.model)
        h, prev = None, None                                                    # h: [1, tokens, d_model]
        with hooks(model, edits), _packed_attention(model):
            for l in range(packing.first, self.L + 1):
                here = packing.layers[l - packing.first]
                x = self.resid[l][packing.draw[here.row], here.pos]              # [tokens, d_model] corrupted inputs
                if prev is not None:                                             # computed tokens carry over
                    at = here.index[prev.row, prev.pos]                          # [previous tokens], -1: not needed
                    x[at[at >= 0]] = h[0, at >= 0]
                if l == self.L:
                    break
                cos, sin = self.rotary[l]
                pe = (cos[:, here.pos], sin[:, here.pos])                        # [1, tokens, d_head] each
                h = layers[l](x[None], None, here.pos[None], _RowKV(self, packing, here), use_cache=True,
                              position_embeddings=pe, packed=here)
                h, prev = (h[0] if isinstance(h, tuple) else h), here
        keep = packing.keep
        return model.lm_head(model.model.norm(x.reshape(-1, keep, x.shape[-1])))  # [n_rows, keep, vocab]


@dataclass
class TokenLayout:
    """The (row, position) tokens a packed forward computes at one layer, in row-major order."""
    row: torch.Tensor    # [tokens]
    pos: torch.Tensor    # [tokens]
    rows: torch.Tensor   # [rows here] the rows with a token here, ascending
    slot: torch.Tensor   # [tokens] each token's row as an index into `rows`
    index: torch.Tensor  # [n_rows, T] a (row, position)'s token index here, -1 where absent

    @classmethod
    def of(cls, grid: torch.Tensor) -> "TokenLayout":
        """From a boolean [n_rows, T] grid of the tokens present."""
        row, pos = torch.nonzero(grid, as_tuple=True)
        rows, slot = torch.unique(row, return_inverse=True)
        index = torch.full(grid.shape, -1, dtype=torch.long, device=grid.device)
        index[row, pos] = torch.arange(len(row), device=grid.device)
        return cls(row, pos, rows, slot, index)


@dataclass
class Packing:
    """Rows of a suffix forward packed as one token sequence per layer. Row r (noise draw draw[r]) enters at layer
    l0[r] with its restored positions there (`entry[r]`), runs positions t0[r]..T-1 from layer l0[r] + 1 on, and
    the last `keep` positions of every row feed the logits (`layers[-1]`, after the last decoder layer)."""
    draw: torch.Tensor              # [n_rows]
    first: int                      # the first layer any row enters
    keep: int
    layers: list[TokenLayout]       # layouts of layers first..L-1, then the final one

    @classmethod
    def of(cls, l0: torch.Tensor, t0: torch.Tensor, entry: torch.Tensor, draw: torch.Tensor, L: int,
           keep: int) -> "Packing":
        """l0, t0, draw: [n_rows]; entry: [n_rows, T] bool, the positions each row restores in its entry layer."""
        T = entry.shape[1]
        after = torch.arange(T, device=entry.device)[None] >= t0[:, None]       # [n_rows, T]
        first = int(l0.min())
        layouts = [TokenLayout.of(((l0 < l)[:, None] & after) | ((l0 == l)[:, None] & entry))
                   for l in range(first, L)]
        layouts.append(TokenLayout.of((torch.arange(T, device=entry.device) >= T - keep)[None].expand(len(l0), T)))
        return cls(draw, first, keep, layouts)


class _RowKV:
    """Cache stand-in for one layer of a packed suffix forward: each present row's keys/values over all T positions,
    the corrupted run's where the row computes nothing at this layer, the packed tokens' own elsewhere."""

    def __init__(self, corrupted: CorruptedRun, packing: Packing, here: TokenLayout):
        self.corrupted, self.packing, self.here = corrupted, packing, here

    def update(self, key, value, layer_idx, *args, **kwargs):  # key, value: [1, n_kv_heads, tokens, d_head]
        here, draw = self.here, self.packing.draw[self.here.rows]
        out = []
        for new, old in ((key, self.corrupted.keys[layer_idx]), (value, self.corrupted.values[layer_idx])):
            full = old[draw].to(new.dtype)                                     # [rows here, n_kv_heads, T, d_head]
            full[here.slot, :, here.pos] = new[0].transpose(0, 1)
            out.append(full)
        return out[0], out[1]


def _packed_attention_fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, packed=None,
                         sliding_window=None, **kwargs):
    """Causal attention of packed query tokens against their own rows' full-length keys/values (`_RowKV`); with
    `sliding_window` w (OLMo-3's sliding layers) a query sees the last w positions only, as transformers' masks do.

    query: [1, n_heads, tokens, d_head]; key/value: [rows here, n_kv_heads, T, d_head] -> [1, tokens, n_heads, d_head]"""
    here = packed
    R, T = key.shape[0], key.shape[2]
    q = query.new_zeros(R, query.shape[1], T, query.shape[3])               # [rows here, n_heads, T, d_head]
    q[here.slot, :, here.pos] = query[0].transpose(0, 1)
    if key.shape[1] != q.shape[1]:                                          # grouped-query attention
        rep = q.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    if sliding_window is not None and T > sliding_window:
        i = torch.arange(T, device=q.device)
        seen = (i[None] <= i[:, None]) & (i[:, None] - i[None] < sliding_window)  # [T query, T key]
        out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=seen, scale=scaling)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(q, key, value, is_causal=True, scale=scaling)
    return out[here.slot, :, here.pos][None], None                          # [1, tokens, n_heads, d_head]


class _packed_attention:
    """Context: the model's attention layers use `_packed_attention_fn` (registered with transformers'
    AttentionInterface), restored on exit."""

    def __init__(self, model):
        from transformers import AttentionInterface
        AttentionInterface.register(PACKED_ATTENTION, _packed_attention_fn)
        self.configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")
                        and hasattr(m.config, "_attn_implementation")}.values()

    def __enter__(self):
        self.saved = [(c, c._attn_implementation) for c in self.configs]
        for c, _ in self.saved:
            c._attn_implementation = PACKED_ATTENTION

    def __exit__(self, *exc):
        for c, impl in self.saved:
            c._attn_implementation = impl


def packed_edits(model, jobs: list[Job], S: int, packing: Packing, clean: dict[str, torch.Tensor]) -> dict[str, Callable]:
    """`restore_edits` for a packed suffix forward: job j owns rows j*S..(j+1)*S; a site's hook sees the tokens its
    layer computes, [1, tokens, ...], and sets back the clean value where the token's job restores that position."""
    grids = restore_masks(jobs, S, clean, packing.layers[-1].index.shape[1])  # site -> [n_rows, T] or [.., n_heads]
    def edit(site):
        here = packing.layers[parse(model, site)[1] - packing.first]
        m = grids[site][here.row, here.pos]                       # [tokens] or [tokens, n_heads]
        v = clean[site][here.pos]                                 # [tokens, d_model] or [tokens, n_heads, d_head]

        def fn(x):  # x: [1, tokens, ...]
            return torch.where(m[None, ..., None], v[None].to(x.dtype), x)
        return fn
    return {site: edit(site) for site in grids}


def run_jobs_suffix(corrupted: CorruptedRun, jobs: list[Job], clean: dict[str, torch.Tensor], metric: Callable,
                    keep: int, *, rows: int = 64, progress: bool = False, desc: str = "restoring") -> torch.Tensor:
    """`run_jobs` for causal tracing, recomputing only what each job can change (see `CorruptedRun`).

    Every job costs its own tokens x layers whatever it shares a forward with, so jobs of any start share packed
    forwards (`Packing`): their tokens form one sequence per layer, and attention runs per row over its T positions
    (`_RowKV`, `_packed_attention_fn`). A forward holds at most rows x T tokens and 2 x rows rows.
    Returns [n_jobs, n_samples] in the order of `jobs`."""
    model, S, L, T = corrupted.model, corrupted.S, corrupted.L, corrupted.T

    def start(job):  # (first layer, first position, positions restored in the first layer)
        cells = [(parse(model, site)[1], p[0] if isinstance(p, tuple) else p)
                 for site, positions in job for p in positions]
        if any(l < 0 for l, _ in cells):
            raise TraceError("the suffix engine restores decoder-layer sites only (not 'embed')")
        if not cells:
            return L, T - keep, ()
        l0 = min(l for l, _ in cells)
        return l0, min(t for _, t in cells), tuple(sorted({t for l, t in cells if l == l0}))

    starts = [start(job) for job in jobs]
    order = sorted(range(len(jobs)), key=lambda i: starts[i][:2])
    chunks, chunk, tokens = [], [], 0
    for i in order:
        need = S * (T - starts[i][1])
        # attention holds every row at full length T: at most 2 x rows rows, as well as rows x T tokens
        if chunk and (tokens + need > rows * T or (len(chunk) + 1) * S > 2 * rows):
            chunks.append(chunk)
            chunk, tokens = [], 0
        chunk.append(i)
        tokens += need
    if chunk:
        chunks.append(chunk)
    out = torch.zeros(len(jobs), S)
    device = corrupted.resid[0].device
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, leave=False)
    for chunk in chunks:
        rep = lambda xs: torch.tensor(xs, device=device).repeat_interleave(S)  # noqa: E731  one value per row
        entry = torch.zeros(len(chunk), T, dtype=torch.bool, device=device)
        for j, i in enumerate(chunk):
            entry[j, list(starts[i][2])] = True
        packing = Packing.of(rep([starts[i][0] for i in chunk]), rep([starts[i][1] for i in chunk]),
                             entry.repeat_interleave(S, dim=0), torch.arange(S, device=device).repeat(len(chunk)),
                             L, keep)
        logits = corrupted.run(packing, packed_edits(model, [jobs[i] for i in chunk], S, packing, clean))
        out[chunk] = metric(logits).reshape(len(chunk), S).float().cpu()
        bar.update(len(chunk))
    bar.close()
    return out
