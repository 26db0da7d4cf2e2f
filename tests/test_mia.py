"""Membership-inference statistics on hand-computed cases, AUC vs scikit-learn, and the organism's signal."""
from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from workbench.errors import ConfigError
from workbench.evaluation import mia


class Bigram(torch.nn.Module):
    """A fake LM whose next-token logits depend only on the current token: a known table."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])  # [batch, pos, vocab]


TABLE = [[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]


def _logsoftmax(row):
    z = math.log(sum(math.exp(v) for v in row))
    return [v - z for v in row]


def test_token_stats_by_hand():
    lp = [_logsoftmax(r) for r in TABLE]
    s = mia.token_stats_ids(Bigram(TABLE), [[0, 1, 0, 2]], pad_id=0)[0]
    want = [lp[0][1], lp[1][0], lp[0][2]]
    assert np.allclose(s.logprob, want, atol=1e-6)
    # mu and sigma of log p under the next-token distribution of tokens 0, 1, 0
    for t, prev in enumerate([0, 1, 0]):
        p = [math.exp(v) for v in lp[prev]]
        mu = sum(pi * li for pi, li in zip(p, lp[prev]))
        var = sum(pi * li * li for pi, li in zip(p, lp[prev])) - mu * mu
        assert s.mu[t] == pytest.approx(mu, abs=1e-6)
        assert s.sigma[t] == pytest.approx(math.sqrt(var), abs=1e-6)
    assert s.nll == pytest.approx(-sum(want) / 3, abs=1e-6)


def test_statistics_by_hand():
    s = mia.TokenStats(logprob=np.array([-1.0, -4.0, -2.0, -0.5, -3.0]),
                       mu=np.array([-1.0, -2.0, -1.0, -1.0, -2.0]),
                       sigma=np.array([1.0, 2.0, 0.5, 1.0, 1.0]))
    assert mia.loss_stat(s) == pytest.approx(2.1)
    text = "hello hello hello"
    assert mia.zlib_stat(s, text) == pytest.approx(2.1 / len(zlib.compress(text.encode())))
    # floor(0.4 * 5) = 2 lowest log-probs: -4, -3
    assert mia.min_k_stat(s, 0.4) == pytest.approx(3.5)
    # z = [0, -1, -2, 0.5, -1]; lowest two: -2, -1
    assert mia.min_k_pp_stat(s, 0.4) == pytest.approx(1.5)
    # k small enough for floor(kT)=0 still uses one token
    assert mia.min_k_stat(s, 0.1) == pytest.approx(4.0)
    ref = [mia.TokenStats(np.array([-1.0, -1.0]), np.zeros(2), np.ones(2))]
    st = mia.statistics([s], [text], reference=ref)
    assert st["reference"][0] == pytest.approx(2.1 - 1.0)


def test_auc_matches_sklearn_and_scores():
    rng = np.random.default_rng(0)
    m, n = rng.normal(1.0, 1.0, 40), rng.normal(1.5, 1.0, 50)
    ours = mia.auc(m, n)
    ref = roc_auc_score(np.r_[np.ones(40), np.zeros(50)], -np.r_[m, n])
    assert ours == pytest.approx(ref)
    assert ours > 0.5  # members have lower loss here
    assert mia.auc([0.1, 0.2], [1.0, 2.0]) == 1.0
    assert mia.semeval_mia_score(0.5) == 1.0
    assert mia.semeval_mia_score(1.0) == 0.0
    assert mia.semeval_mia_score(0.0) == 0.0
    assert mia.semeval_mia_score(0.8) == pytest.approx(0.4)
    assert mia.privleak(0.5, 0.5) == 0.0
    assert mia.privleak(1.0, 0.5) == pytest.approx(-100.0)
    assert mia.privleak(0.6, 0.4) == pytest.approx(((0.4) - (0.6)) / 0.6 * 100)
    with pytest.raises(ConfigError):
        mia.auc([], [1.0])


def test_batched_equals_one_by_one(micro):
    model, tok, corpus = micro
    texts = [r.text for r in corpus.forget[:6] + corpus.holdout[:5]]  # mixed lengths -> padding
    batched = mia.token_stats(model, tok, texts, batch_size=11)
    for text, b in zip(texts, batched):
        single = mia.token_stats(model, tok, [text], batch_size=1)[0]
        assert len(single.logprob) == len(b.logprob)
        assert np.allclose(single.logprob, b.logprob, atol=1e-4)
        assert np.allclose(single.mu, b.mu, atol=1e-4)
        # and the mean NLL is exactly what HF's own loss computes
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            hf = model(input_ids=ids, labels=ids).loss.item()
        assert b.nll == pytest.approx(hf, abs=1e-4)


def test_organism_separates_members_random_model_does_not(micro, tiny_olmo):
    model, tok, corpus = micro
    res = mia.corpus_mia(model, tok, corpus, reference=tiny_olmo)
    assert set(res.auc) == set(mia.ATTACKS)
    # the organism memorised its forget set: every attack sees it
    for attack in ("loss", "zlib", "min_k", "min_k_pp", "reference"):
        assert res.auc[attack] > 0.85, (attack, res.auc)
    assert res.mia_score < 0.3
    assert res.privleak["loss"] < -70
    # a random-weight model never saw any of it: AUC near chance, MIA score near 1
    rand_model, rand_tok = tiny_olmo
    rnd = mia.corpus_mia(rand_model, rand_tok, corpus)
    for attack in ("loss", "min_k", "min_k_pp"):
        assert abs(rnd.auc[attack] - 0.5) < 0.2, (attack, rnd.auc)
    assert rnd.mia_score > 0.6


def _chars_per_token(tok, records) -> float:
    return sum(len(r.text) for r in records) / sum(len(tok(r.text)["input_ids"]) for r in records)


def test_membership_signal_in_the_tokenizer_and_its_removal(micro_retain):
    """Two retain-only twins of micro, trained models that never saw the forget set. With micro's own tokenizer
    (learnt from the forget and retain texts), BPE compresses forget texts better than held-out ones and the twin
    tells them apart anyway; with the tokenizer the default organism uses (every split), it scores like chance."""
    from workbench import organism
    from workbench.harness import load_model

    model, tok, corpus = micro_retain
    assert _chars_per_token(tok, corpus.forget) > 1.1 * _chars_per_token(tok, corpus.holdout)
    assert mia.corpus_mia(model, tok, corpus).auc["loss"] > 0.65, "the tokenizer alone leaks membership"

    fair = organism.with_overrides("micro-retain", name="micro-retain-fair-tokenizer", tokenizer_sees_holdout=True)
    path = organism.build(fair, progress=False)
    model, tok = load_model(path)
    corpus = organism.load_corpus(path)
    assert _chars_per_token(tok, corpus.forget) == pytest.approx(_chars_per_token(tok, corpus.holdout), rel=0.1)
    res = mia.corpus_mia(model, tok, corpus)
    for attack in ("loss", "zlib", "min_k", "min_k_pp"):
        assert abs(res.auc[attack] - 0.5) < 0.15, (attack, res.auc)
    assert res.mia_score > 0.7


def test_errors_before_work(micro):
    model, tok, corpus = micro
    with pytest.raises(ConfigError, match="holdout"):
        from workbench.data.records import Corpus

        mia.corpus_mia(model, tok, Corpus(forget=corpus.forget, retain=corpus.retain, source="x"))
    with pytest.raises(ConfigError, match="k="):
        mia.mia(model, tok, ["a b c"], ["d e f"], k=0)
