"""Activation patching: batched == naive, planted exact cases, three backends. Attribution patching and its
cross-checks against exact patching: tests/test_attribution.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.backends import get_backend
from workbench.errors import TraceError
from workbench.patching import activation_patching
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
