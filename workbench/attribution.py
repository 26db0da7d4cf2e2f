"""Attribution patching, AtP* (Kramár et al. 2024, arXiv 2403.00745) and the attribution prefilter.

Same grid and conventions as workbench.patching: clean -> counterfactual ("corrupt"), sites resid_pre / resid_post /
attn_out / mlp_out at (layer, position) and heads (layer, head; all prompt positions). For a site n with
dn = n(clean) - n(corrupt) and the metric M read on the corrupt run, the first-order estimate of patching n is
    metric(patch n) ~ metric(corrupt) + c(n)
(Nanda 2023): exact when the metric is linear in the site (tests/test_attribution.py builds such a case), poor where
attention saturates (what the QK fix below addresses).

  AtP       c(n) = dn . dM/dn |corrupt                   2 forwards + 1 backward (backend torch or transformer_lens)

  QK fix    (paper sec. 3.1.1) A site's patch reaches each attention layer m at or after it through the residual
            stream: resid_pre.l feeds layers m >= l, attn_out.l / mlp_out.l / resid_post.l / head.l feed m >= l + 1.
            Along that direct path the patch changes layer m's queries and keys, and AtP linearises the effect through
            m's softmax, which fails where attention saturates. The fix keeps everything else linear but, for each
            such m, recomputes m's attention pattern exactly with the patched residual (new queries and keys, softmax
            recomputed per query) and linearises only after the softmax:
                c_QK(n) = c(n) - sum_m dx_m . r_m  +  sum_m sum_{heads, queries} (A_m(x_m + dx_m) - A_m(x_m)) . dM/dA_m
            dx_m = the change of layer m's residual input on the direct path (dn itself; for a head, what its patch
            adds to attn_out); r_m = dM/dx_m through layer m's queries and keys only, so the subtracted term is exactly
            the first-order part that the exact-softmax term replaces; dM/dA_m = dM/dz_m . v_m (z = A v per head).
            The paper applies the fix to query and key nodes; its nodes are per-head q/k/v, ours are residual-stream
            sites, and a residual site's patch changes q and k of every downstream attention layer: all are fixed.
            For a head site on a post-norm (OLMo-2) block, dx_m is the exact change of attn_out, not its linearisation.

  GradDrop  (paper sec. 3.1.2) cancellation between paths can hide an effect. For each layer l, one backward pass with
            the gradient through layer l's residual contribution (attn_out.l and mlp_out.l) set to zero gives
            c^(l)(n); GradDrop scores |n| by
                c_GD(n) = 1 / (L - 1) * sum_{l=0..L-1} |c^(l)(n)|
            (dropping a site's own layer zeroes its gradient, so one term of L is 0 for attn_out/mlp_out/head sites;
            the paper divides by L - 1 for that reason). It is a magnitude: it ranks cells, it has no sign.

  AtP*      QK fix + GradDrop: c*(n) = 1 / (L - 1) * sum_l |c_QK^(l)(n)|, one forward, L + 1 backward passes.

`attribute` returns a TraceResult whose effects are metric(corrupt) + the signed estimate (AtP or AtP with the QK fix),
and, for AtP*, extra["graddrop_<kind>"] = c* (the score cells are ranked by; config["rank_by"] says which).

Prefilter (the paper's use of AtP*): rank every cell by |estimate| (or c*), patch only the top k exactly.
`prefilter` returns a TraceResult whose effects are exact at the k verified cells and NaN elsewhere.

Cross-check: `transformer_lens_atp` runs TransformerLens's own attribution patching
(`transformer_lens.tools.analysis.attribution_patching.attribution_patch`) on the model's TransformerBridge
(workbench.backends) and puts its node scores on our grid; `agreement` is the largest difference per kind.

The QK fix recomputes attention from the model's own modules (HF Olmo / Olmo2 attention: q/k/v projections, q/k norms,
clip_qkv, rotary embedding, causal softmax); other model types get a TraceError. Torch backend only.
"""
from __future__ import annotations

import dataclasses
import sys
import time

import einops
import numpy as np
import torch

from .backends import get_backend
from .errors import TraceError
from .models import decoder_layers
from .provenance import provenance
from .correlation import pearson, spearman
from .patching import _result, _setup
from .restoration import clean_run, rows_per_forward, run_jobs
from .sites import is_post_norm, n_heads, n_layers
from .sites import name as site_name

ATTRIBUTION_METHODS = ("atp", "atp_qk", "atp*")
QK_MODEL_TYPES = ("olmo", "olmo2")
_CHUNK = 2 ** 24  # floats per [patches, heads, queries, keys] block in the QK fix


class _GradGate(torch.autograd.Function):
    """Identity forward; backward zeroes the gradient when state["drop"] == layer (GradDrop)."""

    @staticmethod
    def forward(ctx, x, state, layer):
        ctx.state, ctx.layer = state, layer
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return (torch.zeros_like(g) if ctx.state["drop"] == ctx.layer else g), None, None


class _Attention:
    """Layer m's attention recomputed from its residual input x, as the HF Olmo/Olmo2 attention computes it."""

    @staticmethod
    def check(model) -> None:
        kind = getattr(model.config, "model_type", None)
        if kind not in QK_MODEL_TYPES:
            raise TraceError(f"the QK fix recomputes attention for model types {QK_MODEL_TYPES}, not {kind!r}; "
                             f"use method='atp'")

    def __init__(self, model, n_pos: int, dtype):
        self.check(model)
        self.model, self.layers = model, decoder_layers(model)
        attn = self.layers[0].self_attn
        self.H, self.dh, self.scale = n_heads(model), attn.head_dim, attn.scaling
        self.groups = self.H // model.config.num_key_value_heads
        self.clip = getattr(model.config, "clip_qkv", None)
        self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        p = next(model.parameters())
        self.param_dtype = p.dtype
        pos = torch.arange(n_pos, device=p.device)[None]
        self.cos, self.sin = model.model.rotary_emb(torch.zeros(1, device=p.device, dtype=p.dtype), position_ids=pos)
        self.dtype = dtype
        causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=p.device).tril()
        self.masked = ~causal                                                   # [q, k] True = k after q

    def qkv(self, m: int, x: torch.Tensor):
        """x [B, pos, d_model] -> q, k, v [B, n_heads, pos, d_head] (keys/values repeated over query groups)."""
        block = self.layers[m]
        attn = block.self_attn
        x = x.to(self.param_dtype)
        h = x if is_post_norm(block) else block.input_layernorm(x)
        q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        if self.clip is not None:
            q, k, v = (t.clamp(-self.clip, self.clip) for t in (q, k, v))
        q = einops.rearrange(q, "b t (h d) -> b h t d", d=self.dh)
        k, v = (einops.repeat(t, "b t (h d) -> b (h g) t d", d=self.dh, g=self.groups) for t in (k, v))
        T = x.shape[1]
        q, k = self.rope(q, k, self.cos[:, :T], self.sin[:, :T])
        return q.to(self.dtype), k.to(self.dtype), v.to(self.dtype)

    def pattern(self, q, k) -> torch.Tensor:
        """Causal softmax attention pattern [B, n_heads, q, k]."""
        s = torch.einsum("bhqd,bhkd->bhqk", q, k) * self.scale
        return s.masked_fill(self.masked, float("-inf")).softmax(-1)


class _Layer:
    """What the QK fix needs of attention layer m for one backward pass: corrupt q, k, pattern, dM/dA and r_m."""

    def __init__(self, att: _Attention, m: int, x: torch.Tensor, g_z: torch.Tensor):
        self.att, self.m, self.x = att, m, x.to(att.dtype)                     # x: [pos, d_model] corrupt resid_pre.m
        with torch.no_grad():
            q, k, v = att.qkv(m, self.x[None])
        self.q, self.k = q[0], k[0]                                             # [n_heads, pos, d_head]
        self.A = att.pattern(q, k)[0]                                           # [n_heads, q, k]
        self.gA = torch.einsum("qhd,hkd->hqk", g_z.to(att.dtype), v[0])         # dM/dA = dM/dz . v
        with torch.enable_grad():                                               # r_m: dM/dx through q and k only
            xg = self.x.detach().requires_grad_(True)
            qg, kg, _ = att.qkv(m, xg[None])
            f = (att.pattern(qg, kg)[0] * self.gA).sum()
            self.r = torch.autograd.grad(f, xg)[0]                               # [pos, d_model]

    @torch.no_grad()
    def positions(self, dx: torch.Tensor) -> torch.Tensor:
        """dx [n, d_model]: patch at position t = t-th row (t < n). Returns [n]: sum over heads and queries of
        (A(x + dx_t e_t) - A(x)) . dM/dA, the softmax recomputed for every query the patch reaches. A position the
        patch leaves unchanged (before the prompts differ) has no effect and is skipped."""
        att, (H, P, _) = self.att, self.A.shape
        out = torch.zeros(dx.shape[0], dtype=att.dtype, device=dx.device)
        moved = (dx != 0).any(-1).nonzero()[:, 0]                              # [n_moved] positions that change
        if len(moved) == 0:
            return out
        xp = self.x.clone()
        xp[moved] += dx[moved].to(att.dtype)
        q2, k2, _ = att.qkv(self.m, xp[None])                                 # row t: the patched position's q, k
        q2, k2 = q2[0][:, moved], k2[0][:, moved]                              # [n_heads, n_moved, d_head]
        s = torch.einsum("hqd,hkd->hqk", self.q, self.k) * att.scale          # [n_heads, P, P]
        col = torch.einsum("hqd,htd->thq", self.q, k2) * att.scale            # [n_moved, n_heads, P]: q_q . k'_t
        row = torch.einsum("htd,hkd->thk", q2, self.k) * att.scale            # [n_moved, n_heads, P]: q'_t . k_k
        diag = torch.einsum("htd,htd->th", q2, k2) * att.scale                # [n_moved, n_heads]: q'_t . k'_t
        idx = torch.arange(P, device=dx.device)
        step = max(1, _CHUNK // (H * P * P))
        for c0 in range(0, len(moved), step):
            j = torch.arange(c0, min(len(moved), c0 + step), device=dx.device)  # [c] into moved
            is_t = idx[None, :] == moved[j][:, None]                           # [c, P]
            r = torch.where(is_t[:, None], diag[j][..., None], row[j])         # [c, n_heads, P]
            sp = torch.where(is_t[:, None, None, :], col[j][..., None], s[None])  # key t's column replaced
            sp = torch.where(is_t[:, None, :, None], r[:, :, None, :], sp)     # query t's row replaced
            a2 = sp.masked_fill(att.masked, float("-inf")).softmax(-1)         # [c, n_heads, P, P]
            out[moved[j]] = ((a2 - self.A) * self.gA).sum((1, 2, 3))
        return out

    @torch.no_grad()
    def full(self, dx: torch.Tensor) -> torch.Tensor:
        """dx [B, P, d_model] (any positions): [B] sum of (A(x + dx) - A(x)) . dM/dA, attention fully recomputed."""
        att, (H, P, _) = self.att, self.A.shape
        out, step = [], max(1, _CHUNK // (H * P * P))
        for c0 in range(0, dx.shape[0], step):
            q2, k2, _ = att.qkv(self.m, self.x[None] + dx[c0:c0 + step].to(att.dtype))
            out.append(((att.pattern(q2, k2) - self.A) * self.gA).sum((1, 2, 3)))
        return torch.cat(out)


def _first_reader(kind: str, l: int) -> int:
    """The first attention layer a site's patch reaches through the residual stream."""
    return l if kind == "resid_pre" else l + 1


def _check_method(method: str) -> None:
    if method not in ATTRIBUTION_METHODS:
        raise TraceError(f"unknown attribution method {method!r}; expected one of {ATTRIBUTION_METHODS}")


def attribute(model, tok, clean_prompt: str, corrupt_prompt: str, answer: str, *, wrong_answer: str | None = None,
              sites=("resid_pre", "attn_out", "mlp_out"), heads: bool = True, metric: str = "logit_diff",
              method: str = "atp*", backend: str = "torch", _state: dict | None = None):
    """Attribution estimate of activation patching for every cell (see the module docstring for the methods).

    Returns a TraceResult: effects[kind] = metric(corrupt) + signed estimate  # [n_layers, n_pos | n_heads]
    (AtP for 'atp', AtP with the QK fix for 'atp_qk' and 'atp*'); for 'atp*' also extra["graddrop_<kind>"] = the
    GradDrop magnitude c*. config["rank_by"] names the score `scores()` ranks cells by.
    backend: 'torch', or for 'atp' also 'transformer_lens' (the forwards run through that backend's hooks; the QK
    fix recomputes attention from the model's own modules, so 'atp_qk' and 'atp*' are torch only)."""
    _check_method(method)
    _check_backend(method, backend)
    pair = _setup(model, tok, clean_prompt, corrupt_prompt, answer, wrong_answer, sites, metric)
    sites, pc, fn, keep, device = pair.sites, pair.clean, pair.metric, pair.keep, pair.device
    L, T = n_layers(model), pc.n_prompt
    qk, drop = method in ("atp_qk", "atp*"), method == "atp*"
    if drop and L < 2:
        raise TraceError(f"GradDrop (method 'atp*') averages over L - 1 dropped layers; this model has {L} layer")
    if qk:
        _Attention.check(model)
    t0 = time.perf_counter()
    run = get_backend(model, tok, backend)
    clean_ids, corr_ids = pc.input_ids(metric, device), pair.corrupt.input_ids(metric, device)  # [1, pos]
    want = pair.site_names(L, heads)
    qk_sites = [site_name(k, l) for k in ("resid_pre", "head") for l in range(L)] if qk else []
    need = list(dict.fromkeys(want + qk_sites))
    with torch.no_grad():
        clean_logits, clean = clean_run(run, clean_ids, want, keep)                # forward 1 (clean)
    m_clean = float(fn(clean_logits)[0])
    acts: dict[str, torch.Tensor] = {}
    state = {"drop": None}
    with torch.enable_grad():
        m = fn(run(corr_ids, _recording_edits(need, acts, state, L, drop), keep))[0]   # forward 2 (corrupt)
    m_corr = float(m.detach())
    cells = _Cells(model, m, acts, clean, want, need, list(sites) + (["head"] if heads else []), qk, heads, L, T,
                   corr_ids.shape[1])
    signed = cells.estimate(state, None)
    effects = {k: m_corr + v for k, v in signed.items()}
    extra = _graddrop(cells, state, L) if drop else {}
    config = {"sites": list(sites), "heads": heads, "metric": metric, "backend": backend, "method": method,
              "rank_by": "graddrop" if drop else "abs_estimate", "backward_passes": 1 + (L if drop else 0),
              "answer_ids": pc.answer_ids, "wall_s": round(time.perf_counter() - t0, 4)}
    res = _result("attribution_patching", clean_prompt, corrupt_prompt, answer, wrong_answer, pc, pair.changed,
                  effects, m_clean, m_corr, metric, config, model, extra)
    if _state is not None:  # the prefilter reuses the clean activations and inputs
        _state.update(clean=clean, corr_ids=corr_ids, fn=fn, keep=keep, run=run, T=T)
    return res


def _check_backend(method: str, backend: str) -> None:
    if backend not in ("torch", "transformer_lens"):
        raise TraceError(f"attribution patching needs gradients through hooks: backend 'torch' or 'transformer_lens', "
                         f"not {backend!r}")
    if method != "atp" and backend != "torch":
        raise TraceError(f"method {method!r} recomputes attention from the model's modules: backend 'torch', "
                         f"not {backend!r}")


def _recording_edits(need: list[str], acts: dict, state: dict, L: int, drop: bool) -> dict:
    """The corrupt forward's edits: every needed site's activation recorded into `acts` on the gradient path; with
    GradDrop, a gate on each layer's residual contribution (torch hooks take a list of functions per site)."""
    def keep_act(site):
        def f(x):  # returned unchanged so that (for heads) the recorded view is on the gradient path
            acts[site] = x
            return x
        return f
    edits: dict = {s: keep_act(s) for s in need}  # one function per site: what every backend takes
    if drop:
        for l in range(L):
            for s in (site_name("attn_out", l), site_name("mlp_out", l)):
                edits[s] = [*([edits[s]] if s in edits else []), lambda x, l=l: _GradGate.apply(x, state, l)]
    # frozen weights would leave activations without a graph: start it at the embedding
    edits["embed"] = lambda x: x if x.requires_grad else x.detach().requires_grad_(True)
    return edits


class _Cells:
    """The corrupt run's recorded activations and metric, and the estimate of patching each cell from them."""

    def __init__(self, model, m, acts, clean, want, need, kinds, qk, heads, L, T, P):
        self.m, self.acts, self.need, self.kinds, self.qk, self.L, self.T = m, acts, need, kinds, qk, L, T
        self.att = _Attention(model, P, torch.float32) if qk else None
        # [P, d_model] / [P, n_heads, d_head]
        self.deltas = {s: (clean[s] - acts[s][0].detach()).float() for s in want}
        self.dres = {}
        if qk and heads:  # what patching head (l, h) at prompt positions adds to attn_out.l (exact)
            for l in range(L):
                self.dres[l] = _head_residual_change(model, l, acts[site_name("head", l)][0].detach(),
                                                     clean[site_name("head", l)], T)

    def estimate(self, state: dict, drop_layer: int | None) -> dict[str, np.ndarray]:
        """{kind: [n_layers, T | n_heads]} signed estimates, with layer `drop_layer`'s residual gated off."""
        acts, need, L, T = self.acts, self.need, self.L, self.T
        state["drop"] = drop_layer
        grads = dict(zip(need, torch.autograd.grad(self.m, [acts[s] for s in need], retain_graph=True,
                                                   allow_unused=True)))
        g = {s: (torch.zeros_like(acts[s]) if grads[s] is None else grads[s])[0].float() for s in need}
        layers = [_Layer(self.att, mm, acts[site_name("resid_pre", mm)][0].detach(), g[site_name("head", mm)])
                  for mm in range(L)] if self.qk else []
        out = {}
        for s in self.kinds:
            rows = []
            for l in range(L):
                site = site_name(s, l)
                d = self.deltas[site][:T]
                lin = (d * g[site][:T]).sum(-1)                                  # [T] / [T, n_heads]
                if s == "head":
                    est = lin.sum(0)                                             # [n_heads]
                    for lay in layers[l + 1:]:
                        dx = self.dres[l]                                        # [n_heads, P, d_model]
                        est = est - (dx * lay.r).sum((1, 2)) + lay.full(dx)
                else:
                    est = lin
                    for lay in layers[_first_reader(s, l):]:
                        est = est - (d * lay.r[:T]).sum(-1) + lay.positions(d)
                rows.append(est)
            out[s] = torch.stack(rows).detach().cpu().numpy().astype(np.float64)  # [n_layers, T | n_heads]
        state["drop"] = None
        return out


def _graddrop(cells: _Cells, state: dict, L: int) -> dict[str, np.ndarray]:
    """GradDrop's c*: the mean over dropped layers of each cell's absolute estimate."""
    total = None
    for l in range(L):
        est = cells.estimate(state, l)
        total = {k: np.zeros_like(v) for k, v in est.items()} if total is None else total
        for k, v in est.items():
            total[k] += np.abs(v)
    return {f"graddrop_{k}": v / (L - 1) for k, v in total.items()}


@torch.no_grad()
def _head_residual_change(model, l: int, z: torch.Tensor, z_clean: torch.Tensor, T: int) -> torch.Tensor:
    """[n_heads, pos, d_model]: attn_out.l after patching head h's clean output at prompt positions, minus before."""
    block = decoder_layers(model)[l]
    H = z.shape[1]
    zs = z[None].repeat(H, 1, 1, 1)                                            # [n_heads (patch), pos, n_heads, d_head]
    for h in range(H):
        zs[h, :T, h] = z_clean[:T, h].to(z.dtype)
    out = lambda zz: (block.post_attention_layernorm if is_post_norm(block) else (lambda y: y))(
        block.self_attn.o_proj(einops.rearrange(zz, "b p h d -> b p (h d)")))
    return (out(zs) - out(z[None])).float()


def scores(result) -> dict[str, np.ndarray]:
    """{kind: [n_layers, n_pos | n_heads]} the score cells are ranked by: GradDrop magnitude (AtP*) or |estimate|."""
    if result.config.get("rank_by") == "graddrop":
        return {k: result.extra[f"graddrop_{k}"] for k in result.effects}
    return {k: np.abs(result.effects[k] - result.corrupted) for k in result.effects}


def top_cells(values: dict[str, np.ndarray], k: int) -> list[tuple[str, int, int]]:
    """The k (kind, layer, position | head) cells with the largest values, largest first (ties: grid order)."""
    cells = [(kind, l, i) for kind, v in values.items() for l in range(v.shape[0]) for i in range(v.shape[1])]
    flat = np.concatenate([v.ravel() for v in values.values()])
    order = np.argsort(-flat, kind="stable")[:k]
    return [cells[i] for i in order]


def check_k(k, n_cells: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_cells:
        raise TraceError(f"top-k must be an integer between 1 and the {n_cells} cells of the grid, got {k!r}")
    return int(k)


def prefilter(model, tok, clean_prompt: str, corrupt_prompt: str, answer: str, *, k: int,
              wrong_answer: str | None = None, sites=("resid_pre", "attn_out", "mlp_out"), heads: bool = True,
              metric: str = "logit_diff", method: str = "atp*", batch_size: int | None = None,
              memory_budget: float | None = None):
    """Attribution ranks every cell; exact activation patching verifies the top k.

    effects[kind] = exact patched metric at the k verified cells, NaN elsewhere  # [n_layers, n_pos | n_heads]
    extra["estimate_<kind>"] = the attribution estimate (metric scale), extra["score_<kind>"] = the ranking score;
    config["verified"] = the k cells [kind, layer, position | head] in ranking order; config["wall_s"] counts both."""
    _check_method(method)
    t0 = time.perf_counter()
    state: dict = {}
    est = attribute(model, tok, clean_prompt, corrupt_prompt, answer, wrong_answer=wrong_answer, sites=sites,
                    heads=heads, metric=metric, method=method, _state=state)
    sc = scores(est)
    k = check_k(k, sum(v.size for v in sc.values()))
    cells = top_cells(sc, k)
    jobs = [[(site_name("head", l), [(t, i) for t in range(state["T"])])] if kind == "head" else [(site_name(kind, l), [i])]
            for kind, l, i in cells]
    rows = batch_size or rows_per_forward(model, state["corr_ids"].shape[1], state["keep"], memory_budget)
    with torch.no_grad():
        vals = run_jobs(state["run"], state["corr_ids"], jobs, state["clean"], state["fn"], state["keep"],
                        rows=rows)[:, 0].numpy().astype(np.float64)
    effects = {kind: np.full_like(v, np.nan) for kind, v in est.effects.items()}
    for (kind, l, i), v in zip(cells, vals):
        effects[kind][l, i] = v
    extra = {**{f"estimate_{kind}": v for kind, v in est.effects.items()},
             **{f"score_{kind}": v for kind, v in sc.items()}}
    config = {**est.config, "k": k, "verified": [[kind, l, i] for kind, l, i in cells], "rows_per_forward": rows,
              "attribution_wall_s": est.config["wall_s"], "wall_s": round(time.perf_counter() - t0, 4)}
    return dataclasses.replace(est, method="prefilter", effects=effects, config=config, extra=extra,
                               provenance=provenance(model=model, config=config))


def transformer_lens_atp(model, tok, clean_prompt: str, corrupt_prompt: str, answer: str, *,
                         wrong_answer: str | None = None, metric: str = "logit_diff"):
    """TransformerLens's attribution patching of the same pair and metric, on our grid (a TraceResult):
    mlp_out [layer, position] = its mlp_out nodes; attn_out [layer, position] = the sum over heads of its
    attn_head_out nodes (attn_out is linear in the heads' outputs, so AtP's estimate of it is that sum); head
    [layer, head] = the sum of a head's nodes over the prompt positions; resid_pre at layer 0 = its embed nodes
    (OLMo adds no position embedding), above layer 0 NaN (TransformerLens scores no resid_pre node there)."""
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    pair = _setup(model, tok, clean_prompt, corrupt_prompt, answer, wrong_answer,
                  ("resid_pre", "attn_out", "mlp_out"), metric)
    pc, fn, keep, T = pair.clean, pair.metric, pair.keep, pair.clean.n_prompt
    clean_ids, corr_ids = pc.input_ids(metric, pair.device), pair.corrupt.input_ids(metric, pair.device)
    t0 = time.perf_counter()
    bridge = get_backend(model, tok, "transformer_lens").bridge
    scores = attribution_patch(bridge, clean_ids, corr_ids, lambda logits: fn(logits[:, -keep:])[0]).node_scores
    run = get_backend(model, tok, "torch")
    with torch.no_grad():
        m_clean, m_corr = float(fn(run(clean_ids, {}, keep))[0]), float(fn(run(corr_ids, {}, keep))[0])
    L, H = n_layers(model), n_heads(model)
    est = {"resid_pre": np.full((L, T), np.nan), "attn_out": np.zeros((L, T)), "mlp_out": np.zeros((L, T)),
           "head": np.zeros((L, H))}
    est["resid_pre"][0] = 0.0
    for node, v in scores.items():
        if node.position >= T:  # answer positions: exact patching and our AtP patch the prompt only
            continue
        if node.kind == "embed":
            est["resid_pre"][0, node.position] = v
        elif node.kind == "mlp_out":
            est["mlp_out"][node.layer, node.position] = v
        elif node.kind == "attn_head_out":
            est["attn_out"][node.layer, node.position] += v
            est["head"][node.layer, node.head] += v
    config = {"sites": ["resid_pre", "attn_out", "mlp_out"], "heads": True, "metric": metric,
              "implementation": "transformer_lens.tools.analysis.attribution_patching.attribution_patch",
              "answer_ids": pc.answer_ids, "wall_s": round(time.perf_counter() - t0, 4)}
    return _result("attribution_patching", clean_prompt, corrupt_prompt, answer, wrong_answer, pc, pair.changed,
                   {k: m_corr + v for k, v in est.items()}, m_clean, m_corr, metric, config, model)


def agreement(result, other) -> dict[str, float]:
    """{kind: the largest |difference| of the two results' estimated changes over the cells both have}: how far two
    implementations of one estimate are apart (e.g. ours and `transformer_lens_atp`)."""
    out = {}
    for k in set(result.effects) & set(other.effects):
        a, b = result.effects[k] - result.corrupted, other.effects[k] - other.corrupted
        both = np.isfinite(a) & np.isfinite(b)
        out[k] = float(np.abs(a[both] - b[both]).max()) if both.any() else float("nan")
    return dict(sorted(out.items()))


def recall(result, exact, k: int | None = None) -> float:
    """Fraction of exact patching's top-k cells (by |change|, full grid) among `result`'s verified cells."""
    k = len(result.config["verified"]) if k is None else k
    true = set(top_cells({kk: np.abs(v - exact.corrupted) for kk, v in exact.effects.items()}, k))
    found = {tuple(c) for c in result.config["verified"]}
    return len(true & found) / k


def compare(result, exact, kinds=None) -> dict:
    """Correlations of an attribution result with exact patching over all cells (or those of `kinds`): signed
    (Pearson, Spearman of the estimated vs exact change) and magnitude (Spearman of the ranking score vs |exact
    change|)."""
    kinds = list(result.effects) if kinds is None else [kinds] if isinstance(kinds, str) else list(kinds)
    est = np.concatenate([(result.effects[k] - result.corrupted).ravel() for k in kinds])
    ex = np.concatenate([(exact.effects[k] - exact.corrupted).ravel() for k in kinds])
    ranked = scores(result)
    sc = np.concatenate([ranked[k].ravel() for k in kinds])
    return {"pearson": pearson(est, ex), "spearman": spearman(est, ex), "abs_spearman": spearman(sc, np.abs(ex))}


def vs_exact(result, exact) -> dict[str, dict[str, float]]:
    """{kind and "all": {"pearson", "spearman"}}: correlation of the estimated change (result) with the exact change
    (exact patching), per kind and over the cells of every kind together; NaN where a side is constant."""
    out = {}
    for k in [*result.effects, "all"]:
        c = compare(result, exact, None if k == "all" else k)
        out[k] = {"pearson": c["pearson"], "spearman": c["spearman"]}
    return out
