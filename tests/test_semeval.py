"""SemEval-2025 Task 4 scoring: ROUGE vs rouge-score, harmonic mean / final by hand, organism and real LUME."""
from __future__ import annotations

import pytest
from rouge_score import rouge_scorer

from workbench.data.records import Corpus, Record
from workbench.errors import ConfigError
from workbench.evaluation import semeval


def test_rouge_l_recall_by_hand_and_vs_library():
    # LCS of "the cat on mat" in "the cat sat on the mat" has 4 tokens; the reference has 6
    assert semeval.rouge_l_recall("the cat on mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    # stemming: "running dogs" and "run dog" stem alike
    assert semeval.rouge_l_recall("run dog", "running dogs") == 1.0
    assert semeval.rouge_l_recall("", "anything") == 0.0
    direct = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = [("Years later they met in Ashford.", "Years later Nahound and Sis still met every spring in Ashford."),
             ("a b c d", "d c b a"), ("Completely unrelated words", "The answer is 42")]
    for pred, ref in pairs:
        assert semeval.rouge_l_recall(pred, ref) == direct.score(ref, pred)["rougeL"].recall


def test_harmonic_mean_and_final_worked_examples():
    # six terms at 0.5 and six at 1.0: 12 / (6*2 + 6*1) = 2/3
    assert semeval.harmonic_mean([0.5] * 6 + [1.0] * 6) == pytest.approx(2 / 3)
    assert semeval.harmonic_mean([0.9] * 11 + [0.0]) == 0.0
    with pytest.raises(ConfigError):
        semeval.harmonic_mean([])
    # AILS-NTUA, OLMo-1B on the leaderboard: TaskAgg .964, MIA .857, MMLU .242 -> final .688
    assert semeval.final_score(0.964, 0.857, 0.242) == pytest.approx(0.688, abs=5e-4)
    # SHA256 7B: .964/.894/.275 -> .711
    assert semeval.final_score(0.964, 0.894, 0.275) == pytest.approx(0.711, abs=5e-4)


def _rec(i, split, task, kind):
    return Record(id=f"x{i}{kind}{i}", input="q", output="a", task=task, split=split)


def test_terms_invert_forget():
    recs, scores = [], []
    for split in ("forget", "retain"):
        for t, task in enumerate(semeval.TASKS):
            for kind in ("sc", "qa"):
                for j, s in enumerate((0.2, 0.6)):
                    recs.append(_rec(len(recs), split, task, kind))
                    scores.append(s + (0.1 if split == "retain" else 0.0))
    terms = semeval.task_terms(recs, scores)
    assert len(terms) == 12
    assert terms["forget/Task2/knowledge"] == pytest.approx(1 - 0.4)
    assert terms["retain/Task3/regurgitation"] == pytest.approx(0.5)
    want = semeval.harmonic_mean([0.6] * 6 + [0.5] * 6)
    assert semeval.harmonic_mean(terms.values()) == pytest.approx(want)


def test_organism_before_unlearning(micro):
    """The micro organism still knows its forget set: forget knowledge term near 0, TaskAgg collapses."""
    model, tok, corpus = micro
    res = semeval.semeval_score(model, tok, corpus, max_new_tokens=semeval.ORGANISM_MAX_NEW_TOKENS,
                                mia_score=0.0, mmlu=0.25)
    assert res.complete and res.n_records == len(corpus.forget) + len(corpus.retain)
    assert all(0.0 <= v <= 1.0 for v in res.terms.values())
    assert res.raw["forget/Task2/knowledge"] > 0.8 and res.raw["retain/Task2/knowledge"] > 0.8
    assert res.task_agg < 0.3
    assert res.final == pytest.approx((res.task_agg + 0.0 + 0.25) / 3)
    assert res.passes_mmlu_gate is False
    # the per-record scores are the library's on the stored generations
    g = next(x for x in res.generations if x["kind"] == "sc")
    rec = next(r for r in corpus.forget + corpus.retain if r.id == g["id"])
    assert g["score"] == semeval.rouge_l_recall(g["generation"], rec.output)


def test_runs_on_real_lume_slice(micro, lume):
    from workbench.data.lume import load_lume

    model, tok, _ = micro
    corpus = load_lume(lume)
    res = semeval.semeval_score(model, tok, corpus, max_new_tokens=8, limit=2)
    assert res.n_records == 2 * 12 and res.complete
    assert all(0.0 <= v <= 1.0 for v in res.terms.values())
    assert 0.0 <= res.task_agg <= 1.0
    assert res.final is None  # no MIA / MMLU given
    with pytest.raises(ConfigError, match="max_new_tokens"):
        semeval.semeval_score(model, tok, corpus, max_new_tokens=0)
    with pytest.raises(ConfigError, match="no forget/retain"):
        semeval.semeval_score(model, tok, Corpus([], [], source="empty"))
