"""MMLU-format scoring: prompt shape, loaders, batching, and agreement with lm-evaluation-harness."""
from __future__ import annotations

import csv

import pytest
import torch

from workbench.data.multiple_choice import MCQuestion, general_knowledge
from workbench.data.records import DataError
from workbench.errors import ConfigError
from workbench.evaluation import mmlu


@pytest.fixture(scope="module")
def gk():
    return general_knowledge()


@pytest.fixture(scope="module")
def mc_model():
    """A small random-weight OLMo whose tokenizer (trained on MMLU-format prompts) has ' A'..' D' as single
    tokens; the micro organism's 512-token vocabulary splits ' C'. Large init so letter logits differ by prompt.
    The benchmark scores the same model against lm-eval, so both build it with one function."""
    from benchmarks.evaluation import mc_model as build

    model, tok, _ = build()
    return model, tok


def test_prompt_is_open_instruct_format():
    shot = MCQuestion("high_school_geography", "Capital of Peru?", ("Lima", "Oslo", "Rome", "Cairo"), 0, "dev")
    q = MCQuestion("high_school_geography", "Capital of Chile?", ("Oslo", "Santiago", "Rome", "Cairo"), 1)
    assert mmlu.build_prompt(q, [shot]) == (
        "The following are multiple choice questions (with answers) about high school geography.\n\n"
        "Capital of Peru?\nA. Lima\nB. Oslo\nC. Rome\nD. Cairo\nAnswer: A\n\n"
        "Capital of Chile?\nA. Oslo\nB. Santiago\nC. Rome\nD. Cairo\nAnswer:")


def test_letter_tokens(mc_model, micro):
    _, tok = mc_model
    ids = mmlu.letter_token_ids(tok)
    assert len(set(ids)) == 4
    assert [tok.decode([i]) for i in ids] == [" A", " B", " C", " D"]

    class Splitter:  # a tokenizer that splits " A" into two tokens
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

    with pytest.raises(ConfigError, match="single token"):
        mmlu.letter_token_ids(Splitter())
    # the micro organism's small vocabulary splits ' C': a clear error, raised before any forward pass
    model, micro_tok, _ = micro
    with pytest.raises(ConfigError, match="' C' as 2 tokens"):
        mmlu.evaluate_mmlu(model, micro_tok, general_knowledge(), shots=0)


def test_predictions_match_one_by_one_argmax(mc_model, gk):
    model, tok = mc_model
    res = mmlu.evaluate_mmlu(model, tok, gk, shots=2, batch_size=7)
    test = [q for q in gk if q.split == "test"]
    pool = mmlu.few_shot_pool(gk)
    letters = mmlu.letter_token_ids(tok)
    for q, pred in zip(test[::9], res.predictions[::9]):
        enc = tok(mmlu.build_prompt(q, pool[q.subject][:2]), return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0, -1, letters]
        assert int(logits.argmax()) == pred
    assert res.n == len(test)
    assert res.accuracy == pytest.approx(sum(p == q.answer for p, q in zip(res.predictions, test)) / len(test))
    assert set(res.per_subject) == {q.subject for q in test}
    assert res.shots_used == {s: 2 for s in res.per_subject}


def test_loaders_roundtrip(tmp_path, gk):
    qs = [q for q in gk if q.subject == "chemistry" and q.split in ("dev", "test")]
    for split in ("dev", "test"):
        (tmp_path / split).mkdir()
        with (tmp_path / split / f"chemistry_{split}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            for q in qs:
                if q.split == split:
                    w.writerow([q.question, *q.choices, q.answer_letter])
    assert mmlu.load_hendrycks(tmp_path) == qs
    assert mmlu.load_mmlu(tmp_path) == qs
    jl = tmp_path / "q.jsonl"
    jl.write_text("".join(__import__("json").dumps(q.to_json()) + "\n" for q in qs))
    assert mmlu.load_file(jl) == qs
    import pandas as pd

    pq = tmp_path / "q.parquet"
    pd.DataFrame([q.to_json() for q in qs]).to_parquet(pq)
    assert mmlu.load_file(pq) == qs
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x", "choices": ["a","b","c","d"], "answer": "E"}\n')
    with pytest.raises(DataError, match="answer 'E'"):
        mmlu.load_file(bad)
    with pytest.raises(DataError, match="no test/ folder"):
        mmlu.load_hendrycks(tmp_path / "dev")


def test_hub_offline_is_a_clear_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # both libraries read the variables at import, and an earlier test may have imported them: set their flags too
    for module in (datasets.config, huggingface_hub.constants):
        for flag in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            if hasattr(module, flag):
                monkeypatch.setattr(module, flag, True)
    with pytest.raises(DataError, match="could not load 'cais/mmlu'"):
        mmlu.load_mmlu("hub:cais/mmlu:abstract_algebra")


def test_errors(micro, mc_model, gk):
    corpus = micro[2]
    model, tok = mc_model
    with pytest.raises(DataError, match="micro organism has no MMLU"):
        mmlu.load_mmlu("organism", corpus)
    with pytest.raises(DataError, match="dev"):
        mmlu.evaluate_mmlu(model, tok, [q for q in gk if q.split == "test"], shots=5)


def _lm_eval_samples(model, tok, gk, tmp_path, shots, formulation):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = mmlu.export_lm_eval_tasks(gk, tmp_path, formulation=formulation)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=16)
    res = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=shots, log_samples=True,
                                  task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    return names, res


@pytest.mark.parametrize("shots", [0, 5])
def test_agrees_with_lm_eval_harness(mc_model, gk, tmp_path, monkeypatch, shots):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = mc_model
    ours = mmlu.evaluate_mmlu(model, tok, gk, shots=shots)
    assert len(set(ours.predictions)) >= 3  # the letters vary by prompt, so agreement means something
    names, res = _lm_eval_samples(model, tok, gk, tmp_path, shots, "letter")
    test = [q for q in gk if q.split == "test"]
    theirs = {}
    for name in names:
        subject = name[len("wb_mmlu_"):]
        subject_qs = [i for i, q in enumerate(test) if q.subject == subject]
        for sample in res["samples"][name]:
            loglik = [r[0] for r in sample["filtered_resps"]]
            theirs[subject_qs[sample["doc_id"]]] = max(range(4), key=loglik.__getitem__)
            if sample["doc_id"] == 0:  # the very prompt lm-eval scored is ours
                q = test[subject_qs[0]]
                assert sample["arguments"][0][0] == mmlu.build_prompt(q, mmlu.few_shot_pool(gk)[subject][:shots])
    assert len(theirs) == len(test)
    assert [theirs[i] for i in range(len(test))] == ours.predictions


@pytest.mark.parametrize("shots", [0, 5])
def test_cloze_agrees_with_lm_eval_continuation(mc_model, gk, tmp_path, monkeypatch, shots):
    """Our cloze predictions (acc and acc_norm) equal lm-eval's mmlu_continuation template's on the same questions,
    and the prompt and continuations lm-eval scored are ours."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = mc_model
    ours = mmlu.evaluate_mmlu(model, tok, gk, shots=shots, formulation="cloze", batch_size=7)
    assert ours.formulation == "cloze" and ours.accuracy_norm is not None
    assert len(set(ours.predictions)) >= 3
    names, res = _lm_eval_samples(model, tok, gk, tmp_path, shots, "cloze")
    test = [q for q in gk if q.split == "test"]
    acc, acc_norm, n = 0.0, 0.0, 0
    preds = {}
    for name in names:
        subject = name[len("wb_mmlu_"):]
        subject_qs = [i for i, q in enumerate(test) if q.subject == subject]
        for sample in res["samples"][name]:
            i = subject_qs[sample["doc_id"]]
            loglik = [r[0] for r in sample["filtered_resps"]]
            preds[i] = max(range(4), key=loglik.__getitem__)
            q = test[i]
            ours_ll = mmlu.continuation_logliks(model, tok, [(mmlu.build_cloze_prompt(
                q, mmlu.few_shot_pool(gk)[subject][:shots]), f" {c}") for c in q.choices])
            assert ours_ll == pytest.approx(loglik, abs=1e-3)
            if sample["doc_id"] == 0:
                assert [a[0] for a in sample["arguments"]] == [mmlu.build_cloze_prompt(
                    q, mmlu.few_shot_pool(gk)[subject][:shots])] * 4
                assert [a[1] for a in sample["arguments"]] == [f" {c}" for c in q.choices]
            acc += sample["acc"]
            acc_norm += sample["acc_norm"]
            n += 1
    assert n == len(test)
    assert [preds[i] for i in range(len(test))] == ours.predictions
    assert ours.accuracy == pytest.approx(acc / n)
    assert ours.accuracy_norm == pytest.approx(acc_norm / n)


def test_cloze_prompt_is_lm_eval_continuation_format():
    shot = MCQuestion("high_school_geography", "Capital of Peru? ", ("Lima", "Oslo", "Rome", "Cairo"), 0, "dev")
    q = MCQuestion("high_school_geography", "Capital of Chile?", ("Oslo", "Santiago", "Rome", "Cairo"), 1)
    assert mmlu.build_cloze_prompt(q, [shot]) == (
        "The following are questions (with answers) about high school geography.\n\n"
        "Question: Capital of Peru?\nAnswer: Lima\n\nQuestion: Capital of Chile?\nAnswer:")


def test_gate_is_inclusive():
    """The official scoring script ranks a 7B model at MMLU accuracy >= 0.371."""
    assert mmlu.passes_gate(0.371) and not mmlu.passes_gate(0.3709)
    assert mmlu.MMLUResult(0.371, {}, 1, 0).to_json()["passes_gate"] is True
