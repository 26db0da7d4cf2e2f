"""AtP, AtP* (QK fix, GradDrop) and the prefilter (workbench.attribution) against exact activation patching on the
micro organism."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from workbench.attribution import _Attention, _Layer, attribute, compare, prefilter, recall, vs_exact
from workbench.errors import TraceError
from workbench.hooks import capture
from workbench.patching import activation_patching

CLEAN, CORRUPT, ANSWER, WRONG = "What did Nahound dream of becoming?", "What did Zaind dream of becoming?", "chemist", "botanist"
PAIR2 = ("What is the profession of Zeam Hiorain?", "What is the profession of Gobun Graifaix?", "journalist", "lawyer")
PAIRS = [(CLEAN, CORRUPT, ANSWER, WRONG), PAIR2,
         ("What is the profession of Hind Siosta?", "What is the profession of Gouwer Beazeath?", "pilot", "surgeon"),
         ("What did Bel dream of becoming?", "What did Hel dream of becoming?", "farmer", "botanist")]


@pytest.fixture(scope="module")
def exact(micro):
    model, tok, _ = micro
    return activation_patching(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG)


def test_atp_backends_agree(micro):
    """AtP through the torch hooks and through TransformerLens's TransformerBridge: the same estimate."""
    model, tok, _ = micro
    a = attribute(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, method="atp")
    b = attribute(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, method="atp", backend="transformer_lens")
    assert set(a.effects) == set(b.effects) and b.config["backend"] == "transformer_lens"
    for kind in a.effects:
        np.testing.assert_allclose(b.effects[kind], a.effects[kind], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_atp_correlates_with_exact(micro):
    """Every pair of micro's same-template people, both metrics: AtP tracks exact patching. Measured: Pearson
    0.88-0.96 over all sites; at the attention and MLP outputs, the sites layer selection reads, 0.83-1.00; per head
    0.56-1.00, lowest on the pilot pair, where a head's linear approximation is poorest (the failure AtP* addresses,
    Kramar et al. 2024)."""
    model, tok, _ = micro
    overall = []
    for clean, corrupt, answer, wrong in PAIRS:
        for metric in ("logit_diff", "logprob"):
            res = attribute(model, tok, clean, corrupt, answer, wrong_answer=wrong, metric=metric, method="atp")
            exact = activation_patching(model, tok, clean, corrupt, answer, wrong_answer=wrong, metric=metric)
            vs = vs_exact(res, exact)
            assert set(vs) == {"resid_pre", "attn_out", "mlp_out", "head", "all"}
            assert res.effects["head"].shape == (4, 4) and exact.effects["head"].shape == (4, 4)
            overall.append((answer, metric, vs["all"]["pearson"], min(vs[k]["pearson"] for k in ("attn_out", "mlp_out")),
                            vs["head"]["pearson"]))
    assert all(row[2] > 0.85 and row[3] > 0.8 for row in overall), overall
    assert float(np.median([row[2] for row in overall])) > 0.88, overall
    assert sum(row[4] < 0.8 for row in overall) <= 4, overall                 # heads: the poor fit stays the exception


@pytest.fixture(scope="module")
def linear_toy(tiny_olmo):
    """A random OLMo whose final norm is removed: logits = lm_head(resid_post of the last block), so the logit
    difference is linear in the last block's output and in its MLP output."""
    model, tok = tiny_olmo
    toy = copy.deepcopy(model)
    toy.model.norm = torch.nn.Identity()
    # a random init gives logit differences ~1e-3; scale the (untied) unembedding so effects are well above float noise
    toy.lm_head.weight = torch.nn.Parameter(toy.lm_head.weight.detach() * 1000)
    return toy, tok


def test_atp_is_exact_when_the_metric_is_linear(linear_toy):
    model, tok = linear_toy
    L = model.config.num_hidden_layers
    kw = dict(wrong_answer=WRONG, sites=("resid_post", "mlp_out", "attn_out"), heads=False)
    res = attribute(model, tok, CLEAN, CORRUPT, ANSWER, method="atp", **kw)
    exact = activation_patching(model, tok, CLEAN, CORRUPT, ANSWER, **kw)
    for kind in ("resid_post", "mlp_out"):
        est, ex = res.effects[kind][L - 1], exact.effects[kind][L - 1]
        assert np.ptp(ex) > 1e-3, "the planted case must have non-zero effects"
        np.testing.assert_allclose(est, ex, atol=1e-4, rtol=1e-4)
    # upstream of a nonlinearity the first-order estimate is only approximate (so the check above is not vacuous)
    assert np.abs(res.effects["attn_out"][0] - exact.effects["attn_out"][0]).max() > 1e-3


@torch.no_grad()
def test_attention_recomputation_matches_the_model(micro):
    """The QK fix's attention (from resid_pre) reproduces the model's per-head outputs; its one-position fast path
    equals a full recomputation of the pattern."""
    model, tok, _ = micro
    ids = tok(CORRUPT, return_tensors="pt")["input_ids"]
    with capture(model, ["resid_pre.2", "head.2"]) as acts:
        model(ids)
    att = _Attention(model, ids.shape[1], torch.float32)
    q, k, v = att.qkv(2, acts["resid_pre.2"])
    z = torch.einsum("bhqk,bhkd->bqhd", att.pattern(q, k), v)                  # [1, pos, n_heads, d_head]
    torch.testing.assert_close(z, acts["head.2"], atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(0)
    lay = _Layer(att, 2, acts["resid_pre.2"][0], torch.randn(acts["head.2"][0].shape, generator=g))
    dx = torch.randn(5, model.config.hidden_size, generator=g) * 3
    onehot = torch.zeros(5, ids.shape[1], model.config.hidden_size)
    for t in range(5):
        onehot[t, t] = dx[t]
    fast, full = lay.positions(dx), lay.full(onehot)
    assert full.abs().min() > 1e-3
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-4)


def test_qk_fix_tracks_exact_better_than_atp(micro):
    """Every micro pair, both metrics: the QK fix never lowers the Pearson correlation with exact patching and raises
    it most on PAIR2, whose residual stream plain AtP fits worst (measured 0.93 -> 0.97 logit diff, 0.89 -> 0.94
    logprob; elsewhere +0.005 to +0.025); AtP*'s GradDrop ranking tracks |exact| at least as well as |AtP|."""
    model, tok, _ = micro
    rows = []
    for clean, corrupt, answer, wrong in PAIRS:
        for metric in ("logit_diff", "logprob"):
            ex = activation_patching(model, tok, clean, corrupt, answer, wrong_answer=wrong, metric=metric)
            c = {m: compare(attribute(model, tok, clean, corrupt, answer, wrong_answer=wrong, metric=metric,
                                      method=m), ex) for m in ("atp", "atp_qk", "atp*")}
            rows.append((answer, metric, c))
            assert c["atp_qk"]["pearson"] >= c["atp"]["pearson"], rows
            assert c["atp*"]["abs_spearman"] >= c["atp"]["abs_spearman"] - 1e-3, rows
            assert c["atp*"]["pearson"] == pytest.approx(c["atp_qk"]["pearson"])  # same signed estimate
    journalist = [c for a, _, c in rows if a == "journalist"]
    others = [c for a, _, c in rows if a != "journalist"]
    gain = lambda c: c["atp_qk"]["pearson"] - c["atp"]["pearson"]          # noqa: E731
    assert min(map(gain, journalist)) > 0.03 and min(map(gain, journalist)) > max(map(gain, others)), rows


def test_graddrop_formula_on_the_last_layer(micro):
    """For a site in the last layer, dropping any earlier layer leaves its gradient as is and dropping its own layer
    zeroes it: 1/(L-1) * sum_l |c^(l)| = |c| exactly. Earlier sites differ (the dropped paths are real)."""
    model, tok, _ = micro
    r = attribute(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, method="atp*")
    for kind in ("mlp_out", "attn_out", "head"):
        np.testing.assert_allclose(r.extra[f"graddrop_{kind}"][-1], np.abs(r.effects[kind][-1] - r.corrupted),
                                   rtol=1e-5, atol=1e-6)
    gd, est = r.extra["graddrop_resid_pre"][0], np.abs(r.effects["resid_pre"][0] - r.corrupted)
    assert np.abs(gd - est).max() > 1e-2
    assert r.config["backward_passes"] == 5 and r.config["rank_by"] == "graddrop"


def test_prefilter_verifies_with_exact_values(micro, exact):
    model, tok, _ = micro
    pf = prefilter(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, k=12)
    cells = pf.config["verified"]
    assert len(cells) == 12 and len({tuple(c) for c in cells}) == 12
    for kind, l, i in cells:
        assert pf.effects[kind][l, i] == pytest.approx(exact.effects[kind][l, i], abs=1e-4)
    assert sum(int(np.isfinite(v).sum()) for v in pf.effects.values()) == 12
    # the top cell by |exact change| is among the verified ones on this fact
    assert recall(pf, exact, 1) == 1.0 and 0.5 <= recall(pf, exact) <= 1.0


def test_errors(micro):
    model, tok, _ = micro
    n = 3 * 4 * 7 + 16  # resid_pre, attn_out, mlp_out x 4 layers x 7 positions + 4 x 4 heads
    for k in (0, n + 1, 2.5, True, None):
        with pytest.raises(TraceError, match="top-k must be an integer"):
            prefilter(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, k=k, method="atp")
    with pytest.raises(TraceError, match="unknown attribution method"):
        attribute(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, method="atp+")
    with pytest.raises(TraceError, match="backend 'torch' or 'transformer_lens'"):
        attribute(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, method="atp", backend="nnsight")
    with pytest.raises(TraceError, match="backend 'torch'"):
        attribute(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, method="atp*", backend="transformer_lens")


def test_cli_prefilter(micro, exact, tmp_path, capsys):
    import json

    from workbench.cli import main

    out = tmp_path / "pf"
    assert main(["patch", "--model", "organism:micro", "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", ANSWER,
                 "--wrong", WRONG, "--method", "prefilter", "--top-k", "4", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rank_by"] == "atp*" and len(summary["verified"]) == 4
    for cell in summary["verified"]:
        where = cell.get("position", cell.get("head"))
        assert cell["metric"] == pytest.approx(exact.effects[cell["kind"]][cell["layer"], where], abs=1e-4)
    assert main(["patch", "--model", "organism:micro", "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", ANSWER,
                 "--wrong", WRONG, "--method", "prefilter", "--out", str(tmp_path / "x")]) != 0
    assert "needs --top-k" in capsys.readouterr().err


@pytest.mark.parametrize("metric", ["logprob_mean", "logit_diff"])
def test_atp_equals_transformer_lens_attribution_patching(micro, metric):
    """Ours and TransformerLens's own attribution patching (transformer_lens.tools.analysis.attribution_patching,
    an independent implementation on its TransformerBridge) give the same estimate in every cell both score."""
    from workbench.attribution import agreement, transformer_lens_atp

    model, tok, _ = micro
    for clean, corrupt, answer, wrong in PAIRS[:2]:
        ours = attribute(model, tok, clean, corrupt, answer, wrong_answer=wrong, metric=metric, method="atp")
        tl = transformer_lens_atp(model, tok, clean, corrupt, answer, wrong_answer=wrong, metric=metric)
        assert tl.corrupted == pytest.approx(ours.corrupted, abs=1e-5)
        scale = max(np.nanmax(np.abs(v - ours.corrupted)) for v in ours.effects.values())
        assert scale > 1e-2, "the pair must move the metric for the comparison to mean anything"
        gaps = agreement(ours, tl)
        assert set(gaps) == {"resid_pre", "attn_out", "mlp_out", "head"}
        assert max(gaps.values()) < 1e-5 * max(1.0, scale), gaps
        assert np.isnan(tl.effects["resid_pre"][1:]).all()   # TransformerLens has no resid_pre node above layer 0


@pytest.mark.parametrize("method", ["atp", "atp_qk"])
@pytest.mark.parametrize("metric, wrong", [("logprob_mean", None), ("logit_diff", WRONG)])
def test_atp_agrees_in_sign_with_exact_patching_on_a_planted_small_swap(tiny_olmo, method, metric, wrong):
    """Planted: the counterfactual subject's embedding is moved to 5% of the way from the clean subject's, so every
    activation difference is small and the metric is linear in each patch to first order. There AtP is a first-order
    estimate with an error of second order, and every cell with a clear exact effect (> 5% of the largest) must get
    the exact effect's sign."""
    import copy

    model, tok = tiny_olmo
    model = copy.deepcopy(model)
    ids_c, ids_x = tok(CLEAN)["input_ids"], tok(CORRUPT)["input_ids"]
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for a, b in zip(ids_c, ids_x):
            if a != b:
                emb[b] = emb[a] + 0.05 * (emb[b] - emb[a])
    ex = activation_patching(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=wrong, metric=metric)
    est = attribute(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=wrong, metric=metric, method=method)
    checked = disagree = 0
    for kind in ex.effects:
        e, a = ex.effects[kind] - ex.corrupted, est.effects[kind] - est.corrupted
        clear = np.abs(e) > 0.05 * np.abs(e).max()
        checked += int(clear.sum())
        disagree += int((np.sign(a[clear]) != np.sign(e[clear])).sum())
    assert checked >= 20, f"only {checked} cells with a clear effect"
    assert disagree == 0, f"{disagree} of {checked} cells with a clear exact effect got the other sign"
