"""Activation patching (batched == naive, planted exact cases, three backends) and attribution patching
(exact on a linear toy, correlated with exact patching on the micro organism)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from workbench.backends import get_backend
from workbench.errors import TraceError
from workbench.patching import activation_patching, attribution_patching
from workbench.prompts import metric_fn, prepare
from workbench.restoration import clean_run, run_jobs

CLEAN, CORRUPT = "What did Nahound dream of becoming?", "What did Zaind dream of becoming?"
ANSWER, WRONG = "chemist", "botanist"
PAIR2 = ("What is the profession of Zeam Hiorain?", "What is the profession of Gobun Graifaix?", "journalist", "lawyer")


@pytest.fixture(scope="module")
def exact(micro):
    model, tok, _ = micro
    return activation_patching(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG,
                               sites=("resid_pre", "resid_post", "attn_out", "mlp_out"))


def test_batched_equals_naive(micro, exact):
    model, tok, _ = micro
    naive = activation_patching(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, sites=("attn_out",),
                                naive=True)  # one forward per site (44 here); per-site code paths differ only by name
    L, H, T = 4, 4, len(exact.tokens)
    assert exact.effects["head"].shape == (L, H) and exact.effects["mlp_out"].shape == (L, T)
    for kind in ("attn_out", "head"):
        np.testing.assert_allclose(exact.effects[kind], naive.effects[kind], atol=2e-5, rtol=0)  # logits, |metric| ~ 8
    assert np.ptp(exact.effects["head"]) > 1.0
    # positions before the first differing token are identical in both runs: patching them changes nothing
    first = exact.subject_range[0]
    assert exact.tokens[first] == " Nahound" and first > 0
    np.testing.assert_allclose(naive.effects["attn_out"][:, :first], exact.corrupted, atol=2e-5, rtol=0)


def test_planted_exact_cases(micro, exact):
    model, tok, _ = micro
    L = 4
    assert exact.clean > 5 and exact.corrupted < -5  # the two facts are recalled, oppositely
    # the last block's output at the last position decides the next-token logits
    assert exact.effects["resid_post"][L - 1, -1] == pytest.approx(exact.clean, abs=1e-4)
    # resid_pre.0 is the embedding: patching the differing token's embedding turns the corrupt prompt into the clean one
    s, e = exact.subject_range
    assert exact.effects["resid_pre"][0, s] == pytest.approx(exact.clean, abs=1e-4)
    norm = exact.normalised("resid_pre")
    assert norm[0, s] == pytest.approx(1.0, abs=1e-5) and abs(norm[0, -1]) < 0.2


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_backends_agree(micro, exact, backend):
    model, tok, _ = micro
    other = activation_patching(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG,
                                sites=("resid_pre", "resid_post", "attn_out", "mlp_out"), backend=backend)
    assert other.clean == pytest.approx(exact.clean, abs=1e-4)
    for kind, eff in exact.effects.items():
        np.testing.assert_allclose(other.effects[kind], eff, atol=1e-4, rtol=0)


def test_attribution_backends_agree(micro):
    model, tok, _ = micro
    a = attribution_patching(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, compare_exact=False)
    b = attribution_patching(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, compare_exact=False,
                             backend="transformer_lens")
    for kind in a.effects:
        np.testing.assert_allclose(b.effects[kind], a.effects[kind], atol=1e-4, rtol=0)


PAIRS = [(CLEAN, CORRUPT, ANSWER, WRONG), PAIR2,
         ("What is the profession of Hind Siosta?", "What is the profession of Gouwer Beazeath?", "pilot", "surgeon"),
         ("What did Bel dream of becoming?", "What did Hel dream of becoming?", "farmer", "botanist")]


@pytest.mark.slow
def test_attribution_correlates_with_exact(micro):
    """Every pair of micro's same-template people, both metrics: attribution tracks exact patching. Measured: Pearson
    0.88-0.96 over all sites; at the attention and MLP outputs, the sites layer selection reads, 0.83-1.00; per head
    0.56-1.00, lowest on the pilot pair, where a head's linear approximation is poorest (the failure AtP* addresses,
    Kramar et al. 2024)."""
    model, tok, _ = micro
    overall = []
    for clean, corrupt, answer, wrong in PAIRS:
        for metric in ("logit_diff", "logprob"):
            res = attribution_patching(model, tok, clean, corrupt, answer, wrong_answer=wrong, metric=metric)
            vs = res.config["vs_exact"]
            assert set(vs) == {"resid_pre", "attn_out", "mlp_out", "head", "all"}
            assert res.effects["head"].shape == (4, 4) and res.extra["exact_head"].shape == (4, 4)
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


def test_attribution_is_exact_when_the_metric_is_linear(linear_toy):
    model, tok = linear_toy
    L = model.config.num_hidden_layers
    res = attribution_patching(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG,
                               sites=("resid_post", "mlp_out", "attn_out"), heads=False)
    for kind in ("resid_post", "mlp_out"):
        est, ex = res.effects[kind][L - 1], res.extra[f"exact_{kind}"][L - 1]
        assert np.ptp(ex) > 1e-3, "the planted case must have non-zero effects"
        np.testing.assert_allclose(est, ex, atol=1e-4, rtol=1e-4)
    # upstream of a nonlinearity the first-order estimate is only approximate (so the check above is not vacuous)
    assert np.abs(res.effects["attn_out"][0] - res.extra["exact_attn_out"][0]).max() > 1e-3


@torch.no_grad()
def test_embedding_patch_recovers_clean_on_all_backends(micro):
    """Patching resid_pre.0 at every differing position == the clean run, for each backend (same-length prompts)."""
    model, tok, _ = micro
    pc, px = prepare(model, tok, PAIR2[0], PAIR2[2]), prepare(model, tok, PAIR2[1], PAIR2[2])
    diff = [i for i, (a, b) in enumerate(zip(pc.prompt_ids, px.prompt_ids)) if a != b]
    fn, keep = metric_fn("logprob", pc.answer_ids)
    for name in ("torch", "transformer_lens", "nnsight"):
        run = get_backend(model, tok, name)
        ids_c, ids_x = pc.input_ids("logprob", model.device), px.input_ids("logprob", model.device)
        clean_logits, clean = clean_run(run, ids_c, ["resid_pre.0"], keep)
        vals = run_jobs(run, ids_x, [[], [("resid_pre.0", diff)]], clean, fn, keep)[:, 0]
        assert float(vals[0]) < float(fn(clean_logits)[0]) - 0.5
        assert float(vals[1]) == pytest.approx(float(fn(clean_logits)[0]), abs=1e-4)


def test_errors(micro):
    model, tok, _ = micro
    with pytest.raises(TraceError, match="same length"):
        activation_patching(model, tok, CLEAN, "What did Nahound and Sis dream of becoming?", ANSWER, wrong_answer=WRONG)
    with pytest.raises(TraceError, match="needs wrong_answer"):
        activation_patching(model, tok, CLEAN, CORRUPT, ANSWER)
    with pytest.raises(TraceError, match="share their first token"):
        activation_patching(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer="chef")
    with pytest.raises(TraceError, match="unknown patching site"):
        activation_patching(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, sites=("resid_mid",))
    with pytest.raises(TraceError, match="same tokens"):
        activation_patching(model, tok, CLEAN, CLEAN, ANSWER, wrong_answer=WRONG)
    with pytest.raises(TraceError, match="backend 'torch' or 'transformer_lens'"):
        attribution_patching(model, tok, CLEAN, CORRUPT, ANSWER, wrong_answer=WRONG, backend="nnsight")
