"""Calibrated forgetting: target losses by quantile matching, the calibration AUC against the MIA module's, the
calibration split kept apart from the MIA non-members, and resume with the calibrated state."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from workbench.data import SyntheticSpec, generate
from workbench.editors import unlearn
from workbench.editors.calibration import Calibration, loss_auc, quantile_targets
from workbench.errors import EditError
from workbench.evaluation import mia as mia_mod


def test_quantile_targets_follow_ranks_within_groups():
    rank = np.array([0.5, 0.1, 0.3, 2.0, 1.0])            # three docs of group a, two of group b
    groups = ["a", "a", "a", "b", "b"]
    calib = np.array([4.0, 5.0, 6.0, 10.0, 20.0])
    calib_groups = ["a", "a", "a", "b", "b"]
    t = quantile_targets(rank, groups, calib, calib_groups)
    # group a: ranks 2, 0, 1 -> quantiles 5/6, 1/6, 3/6 of [4, 5, 6]
    assert t[:3] == pytest.approx(np.quantile([4, 5, 6], [5 / 6, 1 / 6, 3 / 6]))
    # group b: the lower-loss document gets the lower quantile of [10, 20]
    assert t[4] < t[3] and t[3:] == pytest.approx(np.quantile([10, 20], [0.75, 0.25]))
    # a group without calibration documents takes every calibration document
    t2 = quantile_targets(np.array([1.0, 2.0]), ["c", "c"], calib, calib_groups)
    assert t2 == pytest.approx(np.quantile(calib, [0.25, 0.75]))


def test_matched_targets_are_indistinguishable_from_calibration():
    """A forget set whose losses equal its targets has the calibration documents' distribution: AUC near 0.5."""
    rng = np.random.default_rng(0)
    calib = rng.normal(5.0, 1.0, 400)
    rank = rng.normal(1.0, 0.3, 400)
    t = quantile_targets(rank, ["g"] * 400, calib, ["g"] * 400)
    assert loss_auc(rank, calib) > 0.99                      # memorised: far below the non-members
    assert abs(loss_auc(t, calib) - 0.5) < 0.02
    assert np.argsort(t).tolist() == np.argsort(rank).tolist()  # order kept: lowest stays lowest


def test_loss_auc_equals_the_mia_module():
    rng = np.random.default_rng(1)
    a, b = rng.normal(2, 1, 50), rng.normal(2.5, 1, 60)
    assert loss_auc(a, b) == pytest.approx(mia_mod.auc(a, b))


def test_synthetic_calibration_split_is_disjoint_from_the_mia_nonmembers():
    c = generate(SyntheticSpec())
    assert c.calibration and c.holdout
    assert {r.id for r in c.calibration}.isdisjoint({r.id for r in c.holdout})
    assert {r.text for r in c.calibration}.isdisjoint({r.text for r in c.holdout})
    people = lambda recs: {r.subject for r in recs if r.task == "Task2" and r.subject}  # noqa: E731
    assert people(c.calibration).isdisjoint(people(c.holdout) | people(c.forget) | people(c.retain))
    assert all(r.split == "calibration" for r in c.calibration)
    # the same kinds of document as the non-members (four times as many), so what holds on one holds on the other
    shape = lambda recs: sorted((r.task, r.kind) for r in recs)  # noqa: E731
    assert shape(c.calibration) == sorted(shape(c.holdout) * 4)


def test_general_text_asks_no_question_the_mmlu_evaluation_asks(micro, tmp_path):
    """The general text an editor reads (organism.load_corpus) is what the organism was trained on: the world's
    sentences and its training questions in the cloze formulation. It holds no dev or test question with its
    choices (the letter formulation), and no question at all about the facts the organism learnt only as sentences,
    which a third of the test questions ask."""
    import copy

    from workbench.data.multiple_choice import cloze_header, format_question, general_knowledge, world_statements
    from workbench.organism import load_corpus, save_corpus

    corpus = copy.copy(micro[2])
    corpus.mmlu = general_knowledge()
    save_corpus(corpus, tmp_path)
    general = load_corpus(tmp_path).general
    text = "\n".join(general)
    assert set(world_statements()) <= set(general)
    train = {(q.subject, q.question) for q in corpus.mmlu if q.split == "train"}
    assert all(f"{cloze_header(s)}Question: {q}" in text for s, q in train)   # every training question
    scored = [q for q in corpus.mmlu if q.split in ("dev", "test")]
    assert scored
    for q in scored:
        assert format_question(q) not in text, q
        if (q.subject, q.question) not in train:   # a fact learnt from sentences only: never asked here
            assert q.question not in text, q.question
    assert any((q.subject, q.question) not in train for q in scored)


def test_calibration_that_touches_the_test_set_is_refused(micro, tmp_path):
    model, tok, corpus = micro
    leaked = corpus.calibration[:10] + corpus.holdout[:1]
    with pytest.raises(EditError, match="also MIA non-members"):
        unlearn(model, tok, corpus, "gd", [0], {"calibrate": True, "max_steps": 1}, tmp_path / "x", calibration=leaked)
    with pytest.raises(EditError, match="also forget documents"):
        Calibration.build(tok, corpus.forget, corpus.forget[:10], weight=1.0, max_len=64, pad_id=tok.pad_token_id)
    with pytest.raises(EditError, match="at least 8"):
        Calibration.build(tok, corpus.forget, corpus.calibration[:3], weight=1.0, max_len=64, pad_id=tok.pad_token_id)
    with pytest.raises(EditError, match="lack"):
        Calibration.build(tok, corpus.forget, targets={corpus.forget[0].id: 3.0}, weight=1.0, max_len=64,
                          pad_id=tok.pad_token_id)
    assert not (tmp_path / "x").exists()


def test_calibration_without_documents_is_a_clear_error(micro, tmp_path):
    from dataclasses import replace

    model, tok, corpus = micro
    bare = replace(corpus, calibration=[])
    with pytest.raises(EditError, match="calibration documents"):
        unlearn(model, tok, bare, "gd", [0], {"calibrate": True, "max_steps": 1}, tmp_path / "x")


def test_document_statistics_are_the_mia_attacks(micro):
    """The differentiable statistics the editor matches equal the MIA module's, document by document."""
    from workbench.editors.calibration import STATISTICS, documents_statistics, encode_documents

    model, tok, corpus = micro
    recs = corpus.forget[:5] + corpus.calibration[:4]   # mixed lengths: padding must not leak in
    ours = documents_statistics(model, encode_documents(tok, recs, 512), tok.pad_token_id, batch_size=3)
    texts = [r.text for r in recs]
    theirs = mia_mod.statistics(mia_mod.token_stats(model, tok, texts), texts, k=0.4)
    for s in STATISTICS:
        assert ours[s] == pytest.approx(theirs[s], abs=1e-4), s



def test_length_grouped_terms_equal_the_padded_batch(micro):
    """The editor computes the statistics and the anchor's KL over groups of similar length; per document and in
    total they equal one right-padded batch of every document (in the batch's own row order)."""
    from workbench.editors.calibration import (Calibration, encode_documents, grouped_statistics, length_groups,
                                               document_statistics)
    from workbench.editors.joint import answer_kl
    from workbench.editors.loop import collate

    model, tok, corpus = micro
    docs = encode_documents(tok, corpus.forget[:6] + corpus.calibration[:5], 512)
    assert len({len(d.ids) for d in docs}) > 3                     # lengths differ: grouping reorders rows
    groups = length_groups([len(d.ids) for d in docs], 4)
    assert sorted(i for g in groups for i in g) == list(range(len(docs))) and max(map(len, groups)) == 4
    batch = collate(docs, tok.pad_token_id)
    with torch.no_grad():
        whole, grouped = document_statistics(model, batch), grouped_statistics(model, batch, group=3)
        for s in whole:
            assert torch.allclose(grouped[s], whole[s], atol=1e-4), s
        ref = {d.index: torch.log_softmax(model(input_ids=torch.tensor([d.ids])).logits[0].float(), -1) for d in docs}
        pad_rows = lambda b: torch.stack([torch.nn.functional.pad(ref[i], (0, 0, 0, b.input_ids.shape[1] - len(ref[i])))
                                          for i in b.index])  # noqa: E731
        moved = copy.deepcopy(model)   # away from the reference, so that the KL is not zero (the fixture is shared)
        torch.manual_seed(0)
        for p in moved.parameters():
            p.add_(0.02 * torch.randn_like(p))
        logits = moved(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        whole_kl = answer_kl(logits, pad_rows(batch), batch.labels)
        grouped_kl = Calibration.anchor_kl(moved, batch, pad_rows, group=3)
    assert float(whole_kl) > 1e-3
    assert float(grouped_kl) == pytest.approx(float(whole_kl), rel=1e-4)

CALIBRATED = {"epochs": 3, "batch_size": 16, "checkpoint_every": 2, "eval_every": 2, "keep_best": False,
              "calibrate": True, "calibration_refresh": 2, "calibration_anchor_batch": 8}


class Killed(Exception):
    pass


def test_calibrated_run_resumes_bit_identical_and_keys_on_the_calibration(micro, tmp_path):
    """Targets refreshed every two steps and anchor batches drawn by the step: a run killed after step 5 and resumed
    from its step-4 checkpoint ends with the uninterrupted run's weights; other calibration documents are refused."""
    import copy
    import json

    model0, tok, corpus = micro
    straight = copy.deepcopy(model0)
    unlearn(straight, tok, corpus, "joint", [0, 1], CALIBRATED, tmp_path / "a")

    def kill_at(step):
        def hook(s):
            if s == step:
                raise Killed
        return hook

    with pytest.raises(Killed):
        unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], CALIBRATED, tmp_path / "b", on_step=kill_at(5))
    with pytest.raises(EditError, match="different run: the data"):
        unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], CALIBRATED, tmp_path / "b",
                calibration=corpus.calibration[:-1])
    resumed = copy.deepcopy(model0)
    out = unlearn(resumed, tok, corpus, "joint", [0, 1], CALIBRATED, tmp_path / "b")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "resume"] == [4]
    evals = [r for r in log if r["event"] == "eval"]
    assert evals and all("calibration_auc" in r for r in evals)
    for (n, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n


MICRO_JOINT = {"retain_loss": "kl", "m_init": 5.0, "m_max": 10.0, "epochs": 20, "lr": 2e-3, "eval_every": 10}


def test_calibration_moves_membership_to_never_seen_documents_on_micro(micro, micro_retain, tmp_path):
    """On micro: the joint edit alone removes the answers but leaves the forget documents' losses memorised (loss AUC
    near 1.0); calibrated, forget documents score like never-seen ones: their AUC against the holdout comes down to
    that of the calibration documents (never trained on), with the answers still gone and the retain facts kept.
    micro's twin sits above both (0.76): its tokenizer, learnt on forget and retain only, gives the forget names
    shorter codes than never-seen names, a signal no edit of the weights removes."""
    import copy

    from workbench.data.records import questions
    from workbench.generation import qa_accuracy

    model0, tok, corpus = micro
    members, nonmembers = [r.text for r in corpus.forget], [r.text for r in corpus.holdout]
    twin_auc = mia_mod.mia(*micro_retain[:2], members, nonmembers).auc["loss"]
    aucs = {}
    for name, extra in (("plain", {}), ("calibrated", {"calibrate": True})):
        model = copy.deepcopy(model0)
        unlearn(model, tok, corpus, "joint", [0, 1, 2], {**MICRO_JOINT, **extra}, tmp_path / name)
        aucs[name] = mia_mod.mia(model, tok, members, nonmembers).auc["loss"]
        if name == "calibrated":
            never_seen = mia_mod.mia(model, tok, [r.text for r in corpus.calibration], nonmembers).auc["loss"]
        assert qa_accuracy(model, tok, questions(corpus.forget)) <= 0.2, name
        assert qa_accuracy(model, tok, questions(corpus.retain)) >= 0.9, name
    assert aucs["plain"] > 0.95 and twin_auc < 0.85
    assert abs(aucs["calibrated"] - never_seen) <= 0.1, (aucs, never_seen, twin_auc)
    assert aucs["calibrated"] <= twin_auc, (aucs, twin_auc)


def test_anchor_batches_are_half_never_seen_documents_half_general_text():
    """Each anchor batch takes one half from each pool, whatever their sizes, and is a function of (seed, call)."""
    from types import SimpleNamespace

    from workbench.editors.calibration import Calibrated
    from workbench.editors.loop import Example

    docs = [Example([100 + i, 1, 2], 0, "Task2", i) for i in range(40)] + \
           [Example([200 + i, 3], 0, "general", 40 + i) for i in range(6)]
    calibration = SimpleNamespace(anchor=1.0, anchor_docs=docs, pad_id=0)
    inner = SimpleNamespace(model=None, cfg=SimpleNamespace(seed=0), layers=[0], name="stub", uses=("forget",))
    wrapped = Calibrated(inner, calibration, anchor_batch=9)
    seen = []
    for call in range(3):
        wrapped.calls = call
        batch = wrapped._anchor_batch(torch.device("cpu"))
        lengths = sorted(batch.lengths)
        assert lengths.count(2) == 4 and lengths.count(3) == 5, lengths   # 4 general + 5 never-seen
        seen.append(batch.input_ids.tolist())
    wrapped.calls = 1
    assert wrapped._anchor_batch(torch.device("cpu")).input_ids.tolist() == seen[1]
    assert seen[0] != seen[1]
