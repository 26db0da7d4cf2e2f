"""Causal tracing: batched == ROME's naive loop, planted exactness checks, three backends agree, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.backends import get_backend
from workbench.errors import TraceError
from workbench.prompts import metric_fn, prepare
from workbench.restoration import clean_run, run_jobs, run_jobs_naive
from workbench.tracing import causal_trace, causal_trace_naive, default_window, noise_scale, trace_facts, window_layers

FACT = ("What did Zaind dream of becoming?", "botanist", "Zaind")
DATE = ("What is the birth date of Jous Doukoul?", "1988-09-19", "Jous Doukoul")
FAST = dict(n_samples=2, seed=0)


@pytest.fixture(scope="module")
def fact_trace(micro):
    model, tok, _ = micro
    return causal_trace(model, tok, *FACT, **FAST)


def test_window_scales_with_depth():
    assert [default_window(L) for L in (4, 16, 32, 48)] == [1, 3, 7, 10]
    assert window_layers(0, 10, 48) == list(range(0, 5))      # ROME: clipped at the bottom
    assert window_layers(20, 10, 48) == list(range(15, 25))   # 10 layers centred on 20
    assert window_layers(15, 3, 16) == [14, 15]


def test_noise_scale_is_three_embedding_stds(micro):
    model, tok, _ = micro
    ids = tok("Nahound")["input_ids"] + tok(" Zaind")["input_ids"]
    want = 3 * model.get_input_embeddings().weight[ids].std().item()
    assert noise_scale(model, tok, ["Nahound", " Zaind"]) == pytest.approx(want, rel=1e-6)
    with pytest.raises(TraceError):
        noise_scale(model, tok, [])


@pytest.mark.parametrize("fact,metric,kinds,window", [(FACT, "prob", ("resid", "mlp"), 3),
                                                      (DATE, "logprob_mean", ("attn",), 2)])
@pytest.mark.parametrize("suffix", [False, True], ids=["full-forwards", "suffix"])
def test_batched_equals_naive_loop(micro, fact, metric, kinds, window, suffix):
    """The batched engine (masks, big batches, skipped pre-subject cells; with `suffix` only the layers and positions
    downstream of each restoration recomputed) reproduces one-forward-per-site."""
    model, tok, _ = micro
    kw = dict(FAST, metric=metric, kinds=kinds, window=window)
    # odd row count: chunks split across jobs' samples, and (suffix) span two layers / several positions
    fast = causal_trace(model, tok, *fact, batch_size=7, suffix=suffix, **kw)
    assert fast.config["suffix"] is suffix
    slow = causal_trace_naive(model, tok, *fact, **kw)
    assert fast.clean == pytest.approx(slow.clean, abs=2.5e-7)  # two float32 ulps at 1.0 and fast.corrupted == pytest.approx(slow.corrupted, abs=1e-6)
    for kind in kinds:
        assert fast.effects[kind].shape == (4, len(fast.tokens))
        np.testing.assert_allclose(fast.effects[kind], slow.effects[kind], atol=1e-6, rtol=0)
    # the clean metric was hurt by the noise and restoring does something: not a vacuous comparison
    assert fast.clean - fast.corrupted > 0.05
    assert np.ptp(fast.effects[kinds[0]]) > 0.05


@torch.no_grad()
def test_planted_exact_recoveries(micro, fact_trace):
    """Facts that follow from the definition, exactly:
    - the last block's output at the last position fully determines next-token probs -> restoring it gives p_clean;
    - positions before the subject never see noise -> restoring them gives p_corrupted (checked with the naive loop,
      which computes those cells; the batched engine skips them);
    - restoring the embeddings of every subject token removes the noise -> p_clean;
    - restoring the last block's output everywhere -> clean, also for the whole teacher-forced answer."""
    model, tok, _ = micro
    r = fact_trace
    s, e = r.subject_range
    assert r.tokens[s:e] == [" Zaind"]
    assert r.effects["resid"][-1, -1] == pytest.approx(r.clean, abs=1e-6)

    run = get_backend(model, tok, "torch")
    L = model.config.num_hidden_layers
    for (prompt, answer, subject), metric in ((FACT, "prob"), (FACT, "logprob_mean"), (DATE, "logprob_mean")):
        prep = prepare(model, tok, prompt, answer, subject)
        ids = prep.input_ids(metric, model.device)
        fn, keep = metric_fn(metric, prep.answer_ids)
        T = ids.shape[1]
        sites = ["embed"] + [f"resid_post.{l}" for l in range(L)]
        clean_logits, clean = clean_run(run, ids, sites, keep)
        s, e = prep.subject_range
        noise = torch.randn(3, e - s, model.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.3
        before = [[(f"resid_post.{l}", [t])] for l in range(L) for t in range(s)]
        jobs = [[], [("embed", list(range(s, e)))], [(f"resid_post.{L - 1}", list(range(T)))]]
        vals = run_jobs(run, ids, jobs, clean, fn, keep, noise=noise, subject_range=(s, e)).mean(1)
        m_clean = float(fn(clean_logits)[0])
        assert abs(float(vals[0]) - m_clean) > 1e-2, "noise must change the metric for this check to mean anything"
        assert float(vals[1]) == pytest.approx(m_clean, abs=1e-6)
        assert float(vals[2]) == pytest.approx(m_clean, abs=1e-6)
        pre = run_jobs_naive(run, ids, before, clean, fn, keep, noise=noise, subject_range=(s, e)).mean(1)
        np.testing.assert_allclose(pre.numpy(), float(vals[0]), atol=1e-6, rtol=0)


def test_same_seed_same_noise_other_seed_differs(micro, fact_trace):
    model, tok, _ = micro
    again = causal_trace(model, tok, *FACT, kinds="resid", **FAST)
    np.testing.assert_array_equal(again.effects["resid"], fact_trace.effects["resid"])
    other = causal_trace(model, tok, *FACT, kinds="resid", n_samples=3, seed=1)
    assert other.corrupted != fact_trace.corrupted


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_backends_agree(micro, fact_trace, backend):
    """Causal trace through TransformerLens's TransformerBridge / nnsight == our torch hooks (same seeded noise)."""
    model, tok, _ = micro
    other = causal_trace(model, tok, *FACT, backend=backend, **FAST)
    assert other.clean == pytest.approx(fact_trace.clean, abs=1e-4)
    assert other.corrupted == pytest.approx(fact_trace.corrupted, abs=1e-4)
    for kind in fact_trace.kinds:
        np.testing.assert_allclose(other.effects[kind], fact_trace.effects[kind], atol=1e-4, rtol=0)


def test_backends_see_the_same_sites(micro):
    """Each backend's activation at every site equals ours (checks the TL hook-name and nnsight module mapping)."""
    from workbench.sites import valid_sites

    model, tok, _ = micro
    ids = torch.tensor([tok(FACT[0])["input_ids"]])
    sites = valid_sites(model)
    got = {}
    for name in ("torch", "transformer_lens", "nnsight"):
        with torch.no_grad():
            _, got[name] = clean_run(get_backend(model, tok, name), ids, sites, 1)
    for name in ("transformer_lens", "nnsight"):
        for site in sites:
            torch.testing.assert_close(got[name][site], got["torch"][site], atol=1e-4, rtol=0, msg=f"{name} {site}")


def test_trace_result_roundtrip(tmp_path, fact_trace):
    from workbench.results import TraceResult

    back = TraceResult.load(fact_trace.save(tmp_path / "t"))
    np.testing.assert_array_equal(back.effects["mlp"], fact_trace.effects["mlp"])
    assert back.config["noise_sigma"] == fact_trace.config["noise_sigma"]
    assert back.provenance["seed"] == 0 and back.subject_range == fact_trace.subject_range


def test_trace_facts(micro):
    model, tok, corpus = micro
    recs = corpus.facts("forget")[:2]
    res = trace_facts(model, tok, recs, kinds=("resid",), n_samples=2, progress=False)
    assert [r.config["record_id"] for r in res] == [r.id for r in recs]
    sigma = noise_scale(model, tok, [r.subject for r in recs])
    assert all(r.config["noise_sigma"] == pytest.approx(sigma) for r in res)  # one sigma for the whole set


# --- errors, raised before any forward pass ----------------------------------------------------------------
def test_errors(micro):
    model, tok, _ = micro
    with pytest.raises(TraceError, match="subject 'Nahound' not found in prompt 'What did Zaind"):
        causal_trace(model, tok, FACT[0], FACT[1], "Nahound")
    with pytest.raises(TraceError, match="tokenises differently in context"):
        causal_trace(model, tok, "What is the birth date of ", "Vioth Graicom", "birth")
    with pytest.raises(TraceError, match="longer than the model's context of 512"):
        causal_trace(model, tok, "Nahound " * 600 + "?", "chemist", "Nahound")
    with pytest.raises(TraceError, match="unknown trace kind"):
        causal_trace(model, tok, *FACT, kinds=("resid", "heads"))
    with pytest.raises(TraceError, match="unknown metric"):
        causal_trace(model, tok, *FACT, metric="logit_diff")
    with pytest.raises(TraceError, match="unknown backend"):
        causal_trace(model, tok, *FACT, backend="jax")
    with pytest.raises(TraceError, match="suffix=True needs backend='torch'"):
        causal_trace(model, tok, *FACT, backend="nnsight", suffix=True)


def test_trace_facts_rejects_bad_record_up_front(micro):
    from types import SimpleNamespace

    model, tok, corpus = micro
    good = corpus.facts("forget")[0]
    bad = SimpleNamespace(id="bad_qa1", input=good.input, output=good.output, subject="Nobody")
    with pytest.raises(TraceError, match="'Nobody' not found"):
        trace_facts(model, tok, [good, bad], progress=False)


@torch.no_grad()
def test_transformer_lens_backend_shares_weights(micro):
    """The bridge wraps a parameter-sharing copy: in-place weight edits (as unlearning makes) are seen, the wrapped
    model itself keeps its modules and sdpa attention."""
    import copy

    model, tok, _ = micro
    model = copy.deepcopy(model)
    ids = torch.tensor([tok(FACT[0])["input_ids"]])
    tl = get_backend(model, tok, "transformer_lens")
    before = tl(ids)
    model.model.layers[0].mlp.down_proj.weight.mul_(0.5)
    after, want = tl(ids), model(ids).logits
    assert get_backend(model, tok, "transformer_lens") is tl  # cached
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, want, atol=1e-4, rtol=0)
    assert type(model.model.layers[0].mlp).__name__ == "OlmoMLP"


@torch.no_grad()
def test_suffix_packing_agrees_with_full_forwards(micro):
    """The packed suffix engine gives run_jobs' numbers for the same jobs, whether jobs of different starts share a
    forward (large chunks) or not (one job per chunk), with multi-site jobs and several noise draws."""
    from workbench.restoration import CorruptedRun, run_jobs_suffix

    model, tok, _ = micro
    prep = prepare(model, tok, *FACT)
    ids = prep.input_ids("prob", model.device)
    fn, keep = metric_fn("prob", prep.answer_ids)
    s, e = prep.subject_range
    L, T = model.config.num_hidden_layers, ids.shape[1]
    noise = torch.randn(2, e - s, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    run = get_backend(model, tok, "torch")
    sites = [f"mlp_out.{l}" for l in range(L)] + [f"resid_post.{l}" for l in range(L)] + [f"attn_out.{l}" for l in range(L)]
    _, clean = clean_run(run, ids, sites, keep)
    jobs = [[(f"resid_post.{l}", [t])] for l in range(L) for t in range(s, T)]
    jobs += [[(f"mlp_out.{l}", [t]), (f"mlp_out.{l + 1}", [t])] for l in range(L - 1) for t in range(s, T)]
    jobs += [[(f"attn_out.{L - 1}", [T - 1]), ("resid_post.1", [s, s + 1])], []]
    want = run_jobs(run, ids, jobs, clean, fn, keep, noise=noise, subject_range=(s, e), rows=8)
    corrupted = CorruptedRun(model, ids, noise, (s, e), keep)
    assert fn(corrupted.logits).numpy() == pytest.approx(want[-1].numpy(), abs=1e-6)  # the empty job: corrupted
    for rows in (1, 8, 10_000):
        got = run_jobs_suffix(corrupted, jobs, clean, fn, keep, rows=rows)
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6, rtol=0)
    assert float(want.max() - want.min()) > 0.05  # restorations matter: not a vacuous comparison


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_suffix_engine_on_olmo2_equals_naive_loop(micro, kv_heads):
    """OLMo-2 blocks (post-norm, q/k norms), with and without grouped-query attention: the packed suffix engine's
    trace equals ROME's one-forward-per-job loop."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    _, tok, _ = micro
    torch.manual_seed(2)
    cfg = Olmo2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128,
                      initializer_range=0.2, pad_token_id=tok.pad_token_id)
    model = Olmo2ForCausalLM(cfg).eval()
    kw = dict(FAST, metric="logprob_mean", window=2)
    fast = causal_trace(model, tok, *FACT, batch_size=5, **kw)
    assert fast.config["suffix"] is True
    slow = causal_trace_naive(model, tok, *FACT, **kw)
    for kind in fast.effects:
        np.testing.assert_allclose(fast.effects[kind], slow.effects[kind], atol=1e-5, rtol=0)
    assert np.ptp(fast.effects["resid"]) > 0.05  # restorations move the metric: not a vacuous comparison


def test_suffix_engine_on_olmo3_sliding_layers_equals_naive_loop(micro):
    """OLMo-3: rotary embeddings per layer type and sliding-window layers, with a window shorter than the prompt so
    the window matters; the packed suffix engine's trace equals ROME's loop."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Olmo3ForCausalLM"):
        pytest.skip("this transformers has no OLMo-3")
    _, tok, _ = micro
    torch.manual_seed(3)
    cfg = transformers.Olmo3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                   num_attention_heads=4, max_position_embeddings=128, initializer_range=0.2,
                                   sliding_window=3, pad_token_id=tok.pad_token_id,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    model = transformers.Olmo3ForCausalLM(cfg).eval()
    kw = dict(FAST, metric="logprob_mean", window=2)
    fast = causal_trace(model, tok, *FACT, **kw)
    assert fast.config["suffix"] is True and len(fast.tokens) > cfg.sliding_window
    slow = causal_trace_naive(model, tok, *FACT, **kw)
    for kind in fast.effects:
        np.testing.assert_allclose(fast.effects[kind], slow.effects[kind], atol=1e-5, rtol=0)
    assert np.ptp(fast.effects["resid"]) > 0.05


def test_facts_per_batch_equals_one_at_a_time(micro):
    """Facts of different token lengths traced together (right-padded forwards, each fact its own noise draws and
    clean values) give each fact's one-at-a-time trace, for both metrics; bad batch sizes are named errors."""
    model, tok, corpus = micro
    facts = corpus.facts()[:6]
    assert len({len(tok(r.input)["input_ids"]) for r in facts}) > 1  # the padding is exercised
    for metric in ("prob", "logprob_mean"):
        kw = dict(n_samples=3, metric=metric, window=2, progress=False)
        one = trace_facts(model, tok, facts, suffix=False, **kw)
        many = trace_facts(model, tok, facts, facts_per_batch=4, batch_size=37, **kw)
        for a, b in zip(one, many):
            assert (a.tokens, a.subject_range, a.config["record_id"]) == (b.tokens, b.subject_range, b.config["record_id"])
            assert b.config["facts_per_batch"] in (2, 4)
            assert b.clean == pytest.approx(a.clean, abs=1e-6) and b.corrupted == pytest.approx(a.corrupted, abs=1e-6)
            for kind in a.effects:
                np.testing.assert_allclose(b.effects[kind], a.effects[kind], atol=2e-6, rtol=0)
                np.testing.assert_allclose(b.extra[f"{kind}_std"], a.extra[f"{kind}_std"], atol=2e-6, rtol=0)
        assert max(np.ptp(r.effects["resid"]) for r in one) > 0.05  # restorations move the metric
    for bad in (0, -1, 2.5):
        with pytest.raises(TraceError, match="facts_per_batch"):
            trace_facts(model, tok, facts, facts_per_batch=bad, progress=False)
    with pytest.raises(TraceError, match="naive"):
        trace_facts(model, tok, facts, facts_per_batch=2, naive=True, progress=False)
