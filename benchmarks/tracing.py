"""Causal tracing and patching: workbench's batched engine vs three peers, same model, same noise, outputs compared.

Peers (all compute the full layer x position heatmap of resid / mlp / attn, as their authors' loops do):
  (a) rome    ROME's `trace_with_patch` loop, written here from the paper's description: one forward per
              (kind, layer, position), batch = 1 clean row + n_samples noised rows, the restored value taken from the
              clean row of the same forward, full logits; plain torch forward hooks on the HF modules.
  (b) tl      TransformerLens 4.3 `transformer_lens.patching.generic_activation_patch` (the function behind
              get_act_patch_resid_pre / _mlp_out / _attn_out) on a TransformerBridge over the same weights, one
              forward per (layer, position); the Gaussian embedding noise is a `hook_embed` hook around it and the
              corrupted batch is the prompt repeated n_samples times (TL's patching functions take corrupted *tokens*;
              this is how a noise corruption is expressed through them). resid = `resid_post`; mlp/attn windows of 1
              layer only (TL patches one layer per forward), which is the default window on 4-layer models.
  (c) nnsight one `nnsight.NNsight(model).trace` per restored site (workbench.backends.NNsightBackend + the
              reference loop `run_jobs_naive`).
Ours: `workbench.tracing.causal_trace`, one fact at a time: on these OLMo models the suffix engine
(`restoration.CorruptedRun`: a restoration at (layer l, position t) computes layer l at t only and layers l+1.. at
positions t.., every kind's restorations x noise draws packed into shared forwards, pre-subject cells skipped). On
fact sets also `causal_trace_batch` (k facts per right-padded batch of full forwards, facts sorted by token length).

When a peer is too slow to run every cell of the OLMo-1B-shaped model on 2 cores, it runs a stated sample of cells
(every layer, positions alternating subject-last / prompt-last) and its full-heatmap time is its measured mean time per
forward x the forwards its full loop makes; the outputs are compared on the sampled cells.
"""
from __future__ import annotations

import numpy as np
import torch

from . import TOL, Section, goal, measure, profile_top, table
from workbench.backends import get_backend
from workbench.models import decoder_layers
from workbench.prompts import metric_fn, prepare
from workbench.restoration import clean_run, run_jobs_naive
from workbench.sites import KINDS, n_layers
from workbench.sites import name as site_name
from workbench.tracing import causal_trace, causal_trace_batch, default_window, noise_scale, window_layers

FACT = ("What did Zaind dream of becoming?", "botanist", "Zaind")
PATCH = ("What did Nahound dream of becoming?", "What did Zaind dream of becoming?", "chemist", "botanist")


# --- models ------------------------------------------------------------------------------------------------
def olmo1b_shape(tok, n_layers: int = 4, init: float = 0.05, seed: int = 0):
    """Random-weight OlmoForCausalLM with OLMo-1B's width (d_model 2048, 16 heads, d_mlp 8192, vocab 50304), cut to
    `n_layers`. The micro tokenizer's ids (< 512) index into the 50304-row embedding. init 0.05 (HF default 0.02) so
    the restorations move the metric visibly and the equality checks are not vacuous."""
    from transformers import OlmoConfig, OlmoForCausalLM

    torch.manual_seed(seed)
    cfg = OlmoConfig(vocab_size=50304, hidden_size=2048, intermediate_size=8192, num_hidden_layers=n_layers,
                     num_attention_heads=16, max_position_embeddings=2048, initializer_range=init,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                     architectures=["OlmoForCausalLM"])  # TransformerBridge picks its adapter from this field
    return OlmoForCausalLM(cfg).eval()


def noise_draws(model, prep, n_samples: int, sigma: float, seed: int = 0) -> torch.Tensor:
    """The draws causal_trace makes: [n_samples, n_subject, d_model]."""
    s, e = prep.subject_range
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_samples, e - s, model.config.hidden_size, generator=g) * sigma


def peer_metric(metric: str, answer_ids: list[int], T: int):
    """The metric of a batch of noised rows' logits [rows, pos, vocab] (full logits), averaged over rows."""
    if metric == "prob":
        return lambda lg: float(lg[:, T - 1].float().softmax(-1)[:, answer_ids[0]].mean())
    n = len(answer_ids)
    tgt = torch.tensor(answer_ids)
    return lambda lg: float(lg[:, T - 1:T - 1 + n].float().log_softmax(-1).gather(
        -1, tgt[None, :, None].expand(lg.shape[0], n, 1))[..., 0].mean())


def all_cells(L: int, T: int) -> list[tuple[int, int]]:
    return [(l, t) for l in range(L) for t in range(T)]


def sample_cells(L: int, T: int, subject_range) -> list[tuple[int, int]]:
    """Every layer once, positions alternating subject-last and prompt-last (where tracing finds the signal)."""
    return [(l, (subject_range[1] - 1, T - 1)[l % 2]) for l in range(L)]


# --- peers -------------------------------------------------------------------------------------------------
@torch.no_grad()
def rome_loop(model, prep, draws, metric, kinds, window, cells) -> tuple[dict, int]:
    """(effects {kind: [L, T] NaN where not run}, forwards). Row 0 of every batch is clean, rows 1.. noised."""
    L, T, S = n_layers(model), prep.n_prompt, draws.shape[0]
    ids = prep.prompt_ids + (prep.answer_ids[:-1] if metric != "prob" else [])
    inp = torch.tensor([ids] * (S + 1))                      # [S+1, pos]
    s, e = prep.subject_range
    score = peer_metric(metric, prep.answer_ids, T)
    blocks = decoder_layers(model)
    module = {"resid": lambda l: blocks[l], "mlp": lambda l: blocks[l].mlp, "attn": lambda l: blocks[l].self_attn}

    def add_noise(mod, args, out):                           # out: [S+1, pos, d_model]
        out = out.clone()
        out[1:, s:e] += draws.to(out.dtype)
        return out

    def restore(t):
        def hook(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out    # [S+1, pos, d_model]
            h[1:, t] = h[0, t]                               # in place, as ROME's patch_rep
            return out
        return hook

    effects, forwards = {}, 0
    for kind in kinds:
        eff = np.full((L, T), np.nan)
        for l, t in cells:
            layers = [l] if kind == "resid" else window_layers(l, window, L)
            handles = [model.get_input_embeddings().register_forward_hook(add_noise)]
            handles += [module[kind](ll).register_forward_hook(restore(t)) for ll in layers]
            try:
                eff[l, t] = score(model(inp).logits[1:])
            finally:
                for h in handles:
                    h.remove()
            forwards += 1
        effects[kind] = eff
    return effects, forwards


def tl_patching(model, tok, prep, draws, metric, kinds, window, cells) -> tuple[dict, int]:
    """TransformerLens's generic_activation_patch (layer_pos_patch_setter) per kind, noise via a hook_embed hook."""
    import pandas as pd
    from transformer_lens import patching

    if window != 1 and any(k != "resid" for k in kinds):
        raise ValueError("TransformerLens patching functions patch one layer per forward; mlp/attn need window=1")
    bridge = get_backend(model, tok, "transformer_lens").bridge
    L, T, S = n_layers(model), prep.n_prompt, draws.shape[0]
    ids = torch.tensor([prep.prompt_ids + (prep.answer_ids[:-1] if metric != "prob" else [])])
    s, e = prep.subject_range
    names = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: any(n.endswith("hook_" + v) for v in names.values()))
    score = peer_metric(metric, prep.answer_ids, T)

    def add_noise(x, hook):                                   # x: [S, pos, d_model]
        x = x.clone()
        x[:, s:e] += draws.to(x.dtype)
        return x

    df = pd.DataFrame(cells, columns=["layer", "pos"])
    effects = {}
    with torch.no_grad(), bridge.hooks(fwd_hooks=[("hook_embed", add_noise)]):
        for kind in kinds:
            vals = patching.generic_activation_patch(bridge, ids.repeat(S, 1), cache, lambda lg: torch.tensor(score(lg)),
                                                     patching.layer_pos_patch_setter, names[kind], index_df=df)
            eff = np.full((L, T), np.nan)
            for (l, t), v in zip(cells, vals.tolist()):
                eff[l, t] = v
            effects[kind] = eff
    return effects, len(cells) * len(kinds)


_NNSIGHT_TWIN: dict = {}


def nnsight_twin(model):
    """nnsight.NNsight wraps every module of the model it is given for good (each call then goes through nnsight's
    Controller): the nnsight peer gets its own deep copy, so the other contestants' model stays unwrapped."""
    import copy

    if _NNSIGHT_TWIN.get("key") is not model:
        _NNSIGHT_TWIN.clear()
        _NNSIGHT_TWIN.update(key=model, twin=copy.deepcopy(model))
    return _NNSIGHT_TWIN["twin"]


def nnsight_loop(model, tok, prep, draws, metric, kinds, window, cells) -> tuple[dict, int]:
    model = nnsight_twin(model)
    run = get_backend(model, tok, "nnsight")
    L, T = n_layers(model), prep.n_prompt
    ids = prep.input_ids(metric, "cpu")
    fn, keep = metric_fn(metric, prep.answer_ids)
    sites = [site_name(k, l) for k in kinds for l in range(L)]
    _, clean = clean_run(run, ids, sites, keep)
    effects = {}
    for kind in kinds:
        layers_of = (lambda l: [l]) if kind == "resid" else (lambda l: window_layers(l, window, L))
        jobs = [[(site_name(kind, ll), [t]) for ll in layers_of(l)] for l, t in cells]
        vals = run_jobs_naive(run, ids, jobs, clean, fn, keep, noise=draws, subject_range=prep.subject_range)
        eff = np.full((L, T), np.nan)
        for (l, t), v in zip(cells, vals):
            eff[l, t] = float(v.detach().mean())
        effects[kind] = eff
    return effects, len(cells) * len(kinds)


PEERS = {"rome": rome_loop, "tl": tl_patching, "nnsight": nnsight_loop}


def max_diff(ours, theirs, kinds) -> float:
    d = [np.nanmax(np.abs(ours.effects[k] - theirs[k])) for k in kinds]
    return float(max(d))


# --- one fact / a fact set ---------------------------------------------------------------------------------
def trace_batched(model, tok, facts, k: int, **kw) -> list:
    """Ours with k facts per batch, facts sorted by prompt length (as trace_facts does); results in `facts` order."""
    order = sorted(range(len(facts)), key=lambda i: len(tok(facts[i][0])["input_ids"]))
    out = {}
    for b0 in range(0, len(order), k):
        batch = order[b0:b0 + k]
        for i, r in zip(batch, causal_trace_batch(model, tok, [facts[i] for i in batch], **kw)):
            out[i] = r
    return [out[i] for i in range(len(facts))]


def trace_compare(model, tok, facts, *, n_samples, metric, sigma, peers_full: dict[str, int], label: str,
                  facts_per_batch: int | None = None, repeats: int = 1) -> dict:
    """Ours on every fact (and, with `facts_per_batch`, also that many facts per batch); each peer on its first
    `peers_full[peer]` facts (all cells), or, when that is 0, on sampled cells of the first fact. Returns timings,
    extrapolated full-set peer times and max differences."""
    L = n_layers(model)
    window = default_window(L)
    preps = [prepare(model, tok, p, a, s) for p, a, s in facts]
    # warm-up (untimed): first calls pay for lazy init (kernels, hook plumbing, the TL bridge build)
    causal_trace(model, tok, *facts[0], n_samples=1, noise=sigma, metric=metric, kinds=("resid",))
    for name in peers_full:
        d1 = noise_draws(model, preps[0], 1, sigma)
        one = [(0, preps[0].n_prompt - 1)]
        (PEERS[name](model, preps[0], d1, metric, ("resid",), window, one) if name == "rome" else
         PEERS[name](model, tok, preps[0], d1, metric, ("resid",), window, one))
    ours, t_ours, mem_ours = measure(lambda: [causal_trace(model, tok, p, a, s, n_samples=n_samples, noise=sigma,
                                                           metric=metric) for p, a, s in facts], repeats)
    row = {"label": label, "facts": len(facts), "ours_s": t_ours, "ours_mib": mem_ours, "peers": {}}
    if facts_per_batch:
        kw = dict(n_samples=n_samples, noise=sigma, metric=metric)
        trace_batched(model, tok, facts[:2], 2, **kw)  # warm-up (untimed)
        batched, t_b, mem_b = measure(lambda: trace_batched(model, tok, facts, facts_per_batch, **kw))
        row["batched"] = {"k": facts_per_batch, "s": t_b, "mib": mem_b,
                          "max_diff": max(max_diff(a, b.effects, KINDS) for a, b in zip(ours, batched))}
    spread = max(float(np.ptp(r.effects[k])) for r in ours for k in KINDS)
    row["effect_range"] = spread
    for name, k in peers_full.items():
        fn = PEERS[name]
        diffs, t_peer, fw, mem = [], 0.0, 0, 0.0
        todo = range(max(k, 1))
        full_forwards = 0
        for i in todo:
            prep = preps[i]
            draws = noise_draws(model, prep, n_samples, sigma)
            cells = all_cells(L, prep.n_prompt) if k else sample_cells(L, prep.n_prompt, prep.subject_range)
            args = (model, prep, draws, metric, KINDS, window, cells) if name == "rome" else \
                (model, tok, prep, draws, metric, KINDS, window, cells)
            (eff, n), dt, m = measure(lambda: fn(*args), repeats)
            diffs.append(max_diff(ours[i], eff, KINDS))
            t_peer, fw, mem = t_peer + dt, fw + n, max(mem, m)
        # forwards the peer's full loop makes over the whole set: every (kind, layer, position) of every fact
        full_forwards = sum(len(KINDS) * L * p.n_prompt for p in preps)
        est = t_peer / fw * full_forwards
        row["peers"][name] = {"facts_run": len(todo), "cells": "all" if k else "sampled", "forwards": fw,
                              "seconds": t_peer, "est_full_s": est, "max_diff": max(diffs), "mib": mem,
                              "measured_all": k >= len(facts)}
    return row


def _fmt_compare(rows: list[dict]) -> tuple[str, list[dict]]:
    out, goals = [], []
    head = ["setting", "facts", "ours s", "ours peak MiB", "ours batched s (k facts/batch; max diff to ours)", "peer",
            "peer ran", "peer s (measured)", "peer s (full set)", "max abs diff", "speedup"]
    body = []
    for r in rows:
        fastest = None
        b = r.get("batched")
        ours = min(r["ours_s"], b["s"]) if b and b["max_diff"] <= TOL else r["ours_s"]
        batched = f"{b['s']:.4g} (k={b['k']}; {b['max_diff']:.2e})" if b else "-"
        for name, p in r["peers"].items():
            ratio = p["est_full_s"] / ours
            ran = f"{p['facts_run']} fact(s), {p['cells']} cells, {p['forwards']} fwd"
            body.append([r["label"], r["facts"], r["ours_s"], r["ours_mib"], batched, name, ran, p["seconds"],
                         p["est_full_s"] if not p["measured_all"] else p["seconds"], p["max_diff"], f"{ratio:.1f}x"])
            if fastest is None or p["est_full_s"] < fastest[1]["est_full_s"]:
                fastest = (name, p)
        name, p = fastest
        goals.append(goal(f"tracing {r['label']}: vs fastest peer ({name})", p["est_full_s"] / ours, 10.0,
                          all(q["max_diff"] <= TOL for q in r["peers"].values()),
                          f"effect range {r['effect_range']:.3g}"))
    out.append(table(head, body))
    return "".join(out), goals


# --- patching: exact (ours, TL) and attribution ------------------------------------------------------------
def patching_compare(model, tok, label: str, naive: bool, tl: bool = True, repeats: int = 1) -> tuple[list, list[dict]]:
    from transformer_lens import patching as tlp

    from workbench.attribution import attribute
    from workbench.correlation import pearson, spearman
    from workbench.patching import activation_patching

    clean_p, corr_p, ans, wrong = PATCH
    sites = ("resid_pre", "attn_out", "mlp_out")
    exact, t_exact, m_exact = measure(lambda: activation_patching(model, tok, clean_p, corr_p, ans, wrong_answer=wrong,
                                                                 sites=sites, heads=True), repeats)
    attr, t_attr, m_attr = measure(lambda: attribute(model, tok, clean_p, corr_p, ans, wrong_answer=wrong, sites=sites,
                                                     heads=True, method="atp"), repeats)
    est = np.concatenate([(attr.effects[k] - attr.corrupted).ravel() for k in (*sites, "head")])
    ex = np.concatenate([(exact.effects[k] - exact.corrupted).ravel() for k in (*sites, "head")])
    rho, r = spearman(est, ex), pearson(est, ex)
    # TransformerLens's own patching functions (resid_pre / attn_out / mlp_out by layer x position; heads all pos)
    bridge = get_backend(model, tok, "transformer_lens").bridge
    pc, px = prepare(model, tok, clean_p, ans), prepare(model, tok, corr_p, ans)
    wid = prepare(model, tok, corr_p, wrong).answer_ids[0]
    cid, xid = torch.tensor([pc.prompt_ids]), torch.tensor([px.prompt_ids])
    ld = lambda lg: lg[0, -1, pc.answer_ids[0]] - lg[0, -1, wid]

    def tl_run():
        with torch.no_grad():
            _, cache = bridge.run_with_cache(cid)
            return {"resid_pre": tlp.get_act_patch_resid_pre(bridge, xid, cache, ld),
                    "attn_out": tlp.get_act_patch_attn_out(bridge, xid, cache, ld),
                    "mlp_out": tlp.get_act_patch_mlp_out(bridge, xid, cache, ld),
                    "head": tlp.get_act_patch_attn_head_out_all_pos(bridge, xid, cache, ld)}
    rows = [[label, "ours exact (batched)", t_exact, m_exact, "-", "-"],
            [label, "ours attribution", t_attr, m_attr, f"spearman {rho:.3f}, pearson {r:.3f}",
             f"{t_exact / t_attr:.1f}x faster than exact"]]
    goals = [goal(f"attribution vs exact (batched) {label}", t_exact / t_attr, 50.0, True,
                  f"spearman {rho:.3f} (not an equality check: attribution is an estimate)")]
    if tl:
        res, t_tl, m_tl = measure(tl_run, repeats)
        tl_diff = max(float(np.abs(exact.effects[k] - res[k].numpy()).max()) for k in res)
        rows.insert(1, [label, "TL patching fns (exact)", t_tl, m_tl, f"{tl_diff:.2e}", f"{t_tl / t_exact:.1f}x slower"])
        goals.insert(0, goal(f"exact patching {label}: vs TransformerLens patching functions", t_tl / t_exact, 10.0,
                             tl_diff <= TOL, f"logit-diff range {float(np.ptp(ex)):.3g}"))
    if naive:
        nv, t_nv, m_nv = measure(lambda: activation_patching(model, tok, clean_p, corr_p, ans, wrong_answer=wrong,
                                                            sites=sites, heads=True, naive=True), repeats)
        nd = max(float(np.abs(exact.effects[k] - nv.effects[k]).max()) for k in nv.effects)
        rows.insert(1, [label, "exact one forward per site (naive)", t_nv, m_nv, f"{nd:.2e}", f"{t_nv / t_exact:.1f}x slower"])
        goals.append(goal(f"attribution vs exact one-forward-per-site {label}", t_nv / t_attr, 50.0, True,
                          f"spearman {rho:.3f}"))
    return rows, goals


# --- scaling ------------------------------------------------------------------------------------------------
PROMPTS = ["Zaind dreamt of becoming?",
           "What did Zaind dream of becoming?",
           "In the long story told in the old town by the river, what did Zaind dream of becoming?",
           "In the long story told in the old town by the river, after many years of travel across the sea and the "
           "hills, with friends and family at the harbour, what did Zaind dream of becoming?"]


def scaling(tok, layers, prompts, n_samples) -> list[list]:
    """Our trace time on a grid of depth x prompt length (OLMo-1B width, random weights, resid kind)."""
    out = []
    for L in layers:
        model = olmo1b_shape(tok, L)
        for p in prompts:
            n = len(prepare(model, tok, p, "botanist", "Zaind").prompt_ids)
            r, dt, mem = measure(lambda: causal_trace(model, tok, p, "botanist", "Zaind", n_samples=n_samples,
                                                      metric="logprob_mean", kinds=("resid",)))
            out.append([L, n, "suffix" if r.config["suffix"] else "full", dt, mem])
    return out


# --- section ------------------------------------------------------------------------------------------------
def run(quick: bool = False, log=print) -> Section:
    from workbench import harness

    torch.manual_seed(0)
    micro, tok, corpus = harness.load_organism("micro")
    facts = [(r.input, r.output, r.subject) for r in corpus.facts("forget") + corpus.facts("retain")]
    n_set = 3 if quick else 50
    facts = facts[:n_set]
    sigma = noise_scale(micro, tok, [f[2] for f in facts])
    S = 2 if quick else 10
    rows, md, goals = [], [], []
    log(f"tracing: micro one fact (n_samples={S})")
    rows.append(trace_compare(micro, tok, [FACT], n_samples=S, metric="prob", sigma=sigma,
                              peers_full={"rome": 1, "tl": 1, "nnsight": 1}, label="micro, 1 fact", repeats=5))
    log(f"tracing: micro {len(facts)} facts")
    k = 2 if quick else 3
    rows.append(trace_compare(micro, tok, facts, n_samples=S, metric="prob", sigma=sigma,
                              peers_full={"rome": k, "tl": k, "nnsight": k},
                              label=f"micro, {len(facts)} facts", facts_per_batch=2 if quick else 10))
    S_big = 2 if quick else 3
    big = None
    if not quick:
        log("tracing: OLMo-1B-shaped, 4 layers")
        big = olmo1b_shape(tok, 4)
        sig_big = noise_scale(big, tok, [FACT[2]])
        rows.append(trace_compare(big, tok, [FACT], n_samples=S_big, metric="logprob_mean", sigma=sig_big,
                                  peers_full={"rome": 0, "tl": 0, "nnsight": 0},
                                  label="OLMo-1B shape (4 layers), 1 fact"))
        log("tracing: OLMo-1B-shaped, 16 layers (full depth)")
        _NNSIGHT_TWIN.clear()
        deep = olmo1b_shape(tok, 16)
        # 4.7 GB of weights: nnsight (the last contestant here) wraps this model itself instead of a deep copy
        _NNSIGHT_TWIN.update(key=deep, twin=deep)
        rows.append(trace_compare(deep, tok, [FACT], n_samples=S_big, metric="logprob_mean",
                                  sigma=noise_scale(deep, tok, [FACT[2]]), peers_full={"rome": 0, "nnsight": 0},
                                  label="OLMo-1B shape (16 layers), 1 fact"))  # TL's patching functions restore
        # one layer per forward: they cannot express the 3-layer mlp/attn window of a 16-layer model
        del deep
        _NNSIGHT_TWIN.clear()
    text, g = _fmt_compare(rows)
    goals += g
    md.append(f"### Causal tracing, full heatmaps (resid, mlp, attn)\n\nmicro: n_samples={S}, metric prob; "
              f"OLMo-1B shape: n_samples={S_big}, metric logprob_mean (teacher-forced answer), random weights, "
              f"micro tokenizer ids. Fact set = the micro organism's traceable forget + retain facts "
              f"({len(facts)}). Speedup = peer full-set seconds / ours. 'peer s (full set)' is measured when the "
              f"peer ran every fact and cell, otherwise its measured seconds per forward x the forwards of its full "
              f"loop (3 kinds x layers x positions per fact). 'micro, 1 fact' times the fastest of 5 calls on each side (one "
              f"call takes milliseconds).\n\n" + text)

    log("patching: micro")
    prow, pg = patching_compare(micro, tok, "micro", naive=True, repeats=5)
    if big is not None:
        log("patching: OLMo-1B shape")
        r2, g2 = patching_compare(big, tok, "OLMo-1B shape", naive=False, tl=False)
        prow += r2
        pg += g2
    goals += pg
    md.append("\n### Activation patching (clean -> counterfactual) and attribution patching\n\n"
              f"`{PATCH[0]}` -> `{PATCH[1]}`, logit diff `{PATCH[2]}` vs `{PATCH[3]}`; sites resid_pre, attn_out, "
              "mlp_out by layer x position + heads (all positions). TL = transformer_lens.patching "
              "get_act_patch_resid_pre / _attn_out / _mlp_out / _attn_head_out_all_pos on a TransformerBridge. The micro "
              "rows time the fastest of 5 calls of each method.\n\n"
              + table(["model", "method", "seconds", "peak MiB", "max abs diff / correlation", "ratio"], prow))
    data = {"tracing": rows}
    if big is not None:
        del big
        _NNSIGHT_TWIN.clear()
        log("profile: ours on the OLMo-1B shape")
        big = olmo1b_shape(tok, 4)
        prof = profile_top(lambda: causal_trace(big, tok, *FACT, n_samples=S_big, metric="logprob_mean",
                                                kinds=("resid",)), 10)
        md.append("\n### Where our tracing time goes (OLMo-1B shape, 4 layers, resid kind, torch.profiler, self CPU time)\n\n" + prof)
        del big
    if not quick:
        log("scaling")
        grid = scaling(tok, (1, 4, 16), PROMPTS[1:], S_big)
        md.append(f"\n### Growth of our trace time in layers x prompt length (OLMo-1B width, random weights, "
                  f"n_samples={S_big}, resid kind only)\n\n"
                  + table(["layers", "prompt tokens", "engine", "seconds", "peak MiB"], grid))
        data["scaling"] = grid
    return Section("Tracing and patching", "\n".join(md), goals, data)
