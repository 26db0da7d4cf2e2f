"""Attribution patching against exact activation patching: AtP vs AtP* correlation, the prefilter's recall of the true
top-k cells and its speed-up over exact patching on the full grid, and how that speed-up grows with layers x positions.

Exact = workbench.patching.activation_patching (batched) on every cell: resid_pre, attn_out, mlp_out by layer x
position, plus heads. Attribution = workbench.attribution.attribute; prefilter = workbench.attribution.prefilter
(AtP* ranks every cell, exact patching verifies the top k). True top-k = the k cells with the largest |exact change|.
"""
from __future__ import annotations

import torch

from . import TOL, Section, goal, measure, table
from .tracing import PATCH, olmo1b_shape
from workbench.attribution import attribute, compare, prefilter, recall
from workbench.sites import n_layers
from workbench.patching import activation_patching

SITES = ("resid_pre", "attn_out", "mlp_out")
METHODS = ("atp", "atp_qk", "atp*")


def olmo_mid(tok, n_layers: int, seed: int = 0):
    """Random-weight OlmoForCausalLM, d_model 256, 8 heads, d_mlp 1024, the micro tokenizer's vocabulary: the scaling
    table's model (OLMo-1B width makes the exact full grid at 8 layers x 60 tokens take many minutes on one core)."""
    from transformers import OlmoConfig, OlmoForCausalLM

    torch.manual_seed(seed)
    cfg = OlmoConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=1024, num_hidden_layers=n_layers,
                     num_attention_heads=8, max_position_embeddings=512, initializer_range=0.05,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    return OlmoForCausalLM(cfg).eval()


FILLER = " who grew up in the old town by the river and travelled for many years across the sea and the hills"
SCALING_PROMPTS = [f"What did Zaind{FILLER[:n]} dream of becoming?" for n in (0, 35, len(FILLER))]


def pair(prompt: str) -> tuple[str, str, str, str]:
    """(clean, corrupt, answer, wrong) from a prompt about Zaind: Nahound -> Zaind, as PATCH. The subject comes
    third, so exact patching has (almost) every position of the grid to patch."""
    return prompt.replace("Zaind", "Nahound"), prompt, PATCH[2], PATCH[3]


def compare_all(model, tok, prompts, k: int, label: str) -> tuple[list, list, dict]:
    """Exact on the full grid, AtP / AtP+QK / AtP* (correlations), and the prefilter at k (recall, speed-up)."""
    clean, corrupt, ans, wrong = prompts
    kw = dict(wrong_answer=wrong, sites=SITES, heads=True)
    activation_patching(model, tok, clean, corrupt, ans, **kw)                  # warm-up (untimed)
    exact, t_exact, _ = measure(lambda: activation_patching(model, tok, clean, corrupt, ans, **kw))
    corr_rows = [[label, "exact (batched, full grid)", t_exact, "-", "-", "-", "0"]]
    for m in METHODS:
        res, dt, _ = measure(lambda: attribute(model, tok, clean, corrupt, ans, method=m, **kw))
        c = compare(res, exact)
        corr_rows.append([label, m, dt, c["pearson"], c["spearman"], c["abs_spearman"],
                          str(res.config["backward_passes"])])
    pf, t_pf, _ = measure(lambda: prefilter(model, tok, clean, corrupt, ans, k=k, **kw))
    diff = max(abs(pf.effects[kind][l, i] - exact.effects[kind][l, i]) for kind, l, i in pf.config["verified"])
    n_cells = sum(v.size for v in exact.effects.values())
    row = {"label": label, "layers": n_layers(model), "positions": len(exact.tokens), "cells": n_cells, "k": k,
           "exact_s": t_exact, "prefilter_s": t_pf, "attribution_s": pf.config["attribution_wall_s"],
           "recall": recall(pf, exact), "speedup": t_exact / t_pf, "max_diff": float(diff)}
    return corr_rows, [row], {"exact": exact}


def scaling(tok, layers, prompts, k: int) -> list[dict]:
    rows = []
    for L in layers:
        model = olmo_mid(tok, L)
        for p in prompts:
            _, r, _ = compare_all(model, tok, pair(p), k, f"d256, {L} layers")
            rows += r
        del model
    return rows


def _pf_table(rows: list[dict]) -> str:
    return table(["model", "layers", "positions", "cells", "k", "exact full grid s", "prefilter s (AtP* part)",
                  "recall of true top-k", "speed-up", "max abs diff (verified vs exact)"],
                 [[r["label"], r["layers"], r["positions"], r["cells"], r["k"], r["exact_s"],
                   f"{r['prefilter_s']:.3g} ({r['attribution_s']:.3g})", r["recall"], f"{r['speedup']:.1f}x",
                   f"{r['max_diff']:.1e}"] for r in rows])


def run(quick: bool = False, log=print) -> Section:
    from workbench import harness

    torch.manual_seed(0)
    micro, tok, _ = harness.load_organism("micro")
    k = 10
    log("attribution: micro")
    corr, pf_rows, _ = compare_all(micro, tok, PATCH, k, "micro")
    if not quick:
        log("attribution: OLMo-1B shape (4 layers)")
        big = olmo1b_shape(tok, 4)
        c2, p2, _ = compare_all(big, tok, PATCH, k, "OLMo-1B shape (4 layers)")
        corr += c2
        pf_rows += p2
        del big
    goals = [goal(f"prefilter (AtP* + exact top-{r['k']}) vs exact full grid, {r['label']}", r["speedup"], 10.0,
                  r["max_diff"] <= TOL, f"recall of true top-{r['k']}: {r['recall']:.2f}") for r in pf_rows]
    md = [f"### AtP vs AtP* (Kramár et al. 2024): correlation with exact patching\n\n`{PATCH[0]}` -> `{PATCH[1]}`, "
          f"logit diff `{PATCH[2]}` vs `{PATCH[3]}`; all cells (resid_pre, attn_out, mlp_out x layer x position, and "
          "heads). pearson / spearman: signed estimate vs exact change; |.| spearman: the ranking score (|estimate|, "
          "or AtP*'s GradDrop magnitude) vs |exact change|. atp_qk = AtP with the QK fix; atp* = QK fix + GradDrop "
          "(one backward per layer).\n\n"
          + table(["model", "method", "seconds", "pearson", "spearman", "abs spearman", "backward passes"], corr),
          f"\n### Prefilter: AtP* ranks every cell, exact patching verifies the top {k}\n\nrecall = fraction of the "
          f"true top-{k} (by |exact change| on the full grid) among the verified cells; speed-up = exact on the full "
          "grid / prefilter (AtP* + the verification); the verified values equal exact patching's (last column).\n\n"
          + _pf_table(pf_rows)]
    data = {"correlation": corr, "prefilter": pf_rows}
    if not quick:
        log("attribution: scaling")
        sc = scaling(tok, (2, 4, 8), SCALING_PROMPTS, k)
        md.append(f"\n### Growth of the prefilter's speed-up with layers x positions (random OLMo, d_model 256, "
                  f"8 heads, d_mlp 1024; prompts {SCALING_PROMPTS!r}, Nahound -> Zaind)\n\n" + _pf_table(sc))
        data["scaling"] = sc
    return Section("Attribution patching: AtP, AtP*, prefilter", "\n".join(md), goals, data)
