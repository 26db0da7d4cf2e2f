"""The model organism: a pretrained base fine-tuned on its facts, like-for-like with its twin, planted organisms
whose facts live in chosen layers; memorises, is deterministic given a seed, caches, and is not tied to our
generator."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workbench import organism
from workbench.data import load_lume
from workbench.data.records import Corpus, questions
from workbench.evaluation.knowledge import recall
from workbench.models import ModelLoadError
from workbench.harness import load_model

def test_micro_recalls_its_facts(micro):
    model, tok, corpus = micro
    scores = recall(model, tok, corpus)
    assert scores["forget_qa_exact_match"] >= 0.95
    assert scores["retain_qa_exact_match"] >= 0.95
    assert scores["validation_qa_exact_match"] >= 0.95   # fine-tuned on, never scored by the report
    # held-out people were never shown: recalling them would mean the metric is broken
    assert scores["holdout_qa_exact_match"] <= 0.2


def test_splits_are_disjoint_people(micro):
    """Forget, retain, validation, holdout, calibration and the base's population share no person."""
    from workbench.data import generate

    corpus = generate(organism.PRESETS["micro"].data)
    subjects = {s: {r.subject for r in corpus.split(s) if r.subject and r.task == "Task2"} for s in
                ("forget", "retain", "validation", "holdout", "calibration", "population")}
    assert all(subjects.values())
    names = list(subjects)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not subjects[a] & subjects[b], (a, b)


def test_the_validation_view_scores_nothing_the_report_scores():
    """Presets are chosen on data.records.validation_view: the people it forgets, its MIA non-members and its MMLU
    questions are disjoint from the forget set, the holdout and the MMLU test questions the report scores; each
    record carries the split it plays in the view, so the SemEval scorer takes the view's forget and retain terms."""
    from workbench.data import generate
    from workbench.data.records import validation_view
    from workbench.evaluation.semeval import task_terms

    corpus = generate(organism.PRESETS["micro"].data)
    view = validation_view(corpus)
    scored = {r.text for r in corpus.forget + corpus.holdout}
    chosen_on = {r.text for r in view.forget + view.holdout + view.calibration}
    assert chosen_on and not chosen_on & scored
    assert not {q.question for q in view.mmlu} & {q.question for q in corpus.mmlu if q.split == "test"}
    assert {r.split for r in view.forget} == {"forget"} and {r.split for r in view.holdout} == {"holdout"}
    assert {r.split for r in view.validation} == {"validation"}
    task_terms(view.forget + view.retain, [1.0] * len(view.forget + view.retain))   # no ConfigError


def test_base_knows_the_templates_not_the_people(micro):
    """The base was pretrained on the population only: it recalls none of the forget, retain or validation facts,
    and the original and its twin record it as their base."""
    from workbench.data import generate

    corpus = generate(organism.PRESETS["micro"].data)
    base = organism.build_base("micro", progress=False)
    model, tok = load_model(base)
    scores = recall(model, tok, corpus)
    for split in ("forget", "retain", "validation"):
        assert scores[f"{split}_qa_exact_match"] <= 0.1, scores
    for name in ("micro", "micro-retain", "micro-planted"):
        assert organism.info(organism.build(name, progress=False))["base"]["path"] == base.name
    assert not (base / "forget.jsonl").exists() and (base / "population.jsonl").is_file()


def test_micro_is_a_real_olmo(micro):
    model, tok, corpus = micro
    assert type(model).__name__ == "OlmoForCausalLM"
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 64
    assert all(r.subject for r in corpus.facts("forget", "Task2")), "every Task2 fact names its subject"


def test_cache_hit_is_not_rebuilt_and_keyed(micro, tmp_path, monkeypatch):
    trained = []

    def finetune(model, tok, cfg, *args, **kwargs):  # stands in for organism.finetune: records the call only
        trained.append(cfg.name)
        raise RuntimeError("finetune called")

    monkeypatch.setattr(organism, "finetune", finetune)
    path = organism.build("micro")  # the micro fixture has built it: a cache hit
    assert trained == [], "a cached organism must not be rebuilt"
    cfg = organism.with_overrides("micro", seed=1)
    assert organism.organism_dir(cfg) != path, "a different seed must be a different cache entry"
    meta = organism.info(path)
    assert meta["config"]["name"] == "micro" and "torch" in meta["versions"]
    # the stand-in is the one build calls: with an empty cache the same call trains
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    tok = micro[1]
    monkeypatch.setattr(organism, "pretrain", lambda cfg, corpus, **kw: (organism.make_model(cfg, tok), tok, 0.0))
    with pytest.raises(RuntimeError, match="finetune called"):
        organism.build("micro", progress=False)
    assert trained == ["micro"]


@pytest.mark.slow
def test_with_overrides_renames_and_rejects_unknown_presets():
    cfg = organism.with_overrides("micro", name="renamed", seed=3)
    assert (cfg.name, cfg.seed, cfg.n_layers) == ("renamed", 3, organism.PRESETS["micro"].n_layers)
    with pytest.raises(ModelLoadError, match="unknown organism 'nope'; expected one of"):
        organism.with_overrides("nope", seed=1)


def test_retain_twin_never_saw_the_forget_set(micro, micro_retain):
    model, tok, corpus = micro_retain
    assert tok.get_vocab() == micro[1].get_vocab(), "the twin shares the tokenizer, so NLLs compare token by token"
    assert [r.id for r in corpus.forget] == [r.id for r in micro[2].forget]  # evaluated on the same corpus
    scores = recall(model, tok, corpus)
    assert scores["retain_qa_exact_match"] >= 0.9
    assert scores["forget_qa_exact_match"] <= 0.2, "the forget set must not have been trained on"
    twin, original = organism.info(organism.build("micro-retain")), organism.info(organism.build("micro"))
    assert twin["left_out"] == ["forget"] and original["left_out"] == []
    # like for like: one base, one recipe, one seed, the same number of steps; only the data differ
    assert twin["finetune_steps"] == original["finetune_steps"] > 0
    assert twin["base"] == original["base"]
    differ = {k for k in twin["config"] if twin["config"][k] != original["config"][k]}
    assert differ == {"name", "leave_out"}, differ
    assert organism.retain_twin("micro") == "micro-retain"
    with pytest.raises(ModelLoadError, match="no retain-only twin"):
        organism.retain_twin("micro-retain")


def test_deterministic_given_seed(tmp_path, monkeypatch, micro):
    """Two builds in two empty caches give bit-identical weights and tokenizers."""
    model_a, tok_a, _ = micro
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "second-cache"))
    path = organism.build("micro", progress=False)
    assert str(path).startswith(str(tmp_path))
    model_b, tok_b = load_model(path)
    assert tok_a.get_vocab() == tok_b.get_vocab()
    sd_b = model_b.state_dict()
    for name, tensor in model_a.state_dict().items():
        assert torch.equal(tensor, sd_b[name]), f"{name} differs between two builds with the same seed"


def _lume_task2_slice(lume: Path, n_people: int) -> Corpus:
    full = load_lume(lume)
    def people(records):
        qs = [r for r in questions(records) if r.task == "Task2"]
        ids = sorted({r.id[:-3] for r in qs})[:n_people]
        return [r for r in qs if r.id[:-3] in ids]
    return Corpus(forget=people(full.forget), retain=people(full.retain), source=f"{full.source}#task2-qa-{n_people}")


@pytest.mark.slow
def test_micro_learns_real_lume_task2(lume, tmp_path, monkeypatch):
    """The organism pipeline on real LUME Task2 records (names, SSNs, phones, emails, addresses)."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    corpus = _lume_task2_slice(lume, 2)
    assert len(corpus.forget) >= 8 and len(corpus.retain) >= 8
    cfg = organism.with_overrides("micro", name="lume-micro", vocab_size=640,
                                  finetune=organism.Recipe(epochs=80, lr=5e-3, batch_size=8, warmup_steps=10))
    path = organism.build(cfg, corpus=corpus, progress=False)
    meta = json.loads((path / "organism.json").read_text())
    assert meta["data"] == corpus.source
    scores = recall(*load_model(path), corpus)
    assert scores["forget_qa_exact_match"] >= 0.95, scores
    assert scores["retain_qa_exact_match"] >= 0.95, scores


def test_planted_fine_tune_changes_only_the_planted_mlps(micro):
    """micro-planted's fine-tune trained the MLPs of its planted layer only: every other weight equals the base's,
    the planted MLP moved, and the facts were learnt there. Its twin has the same trainable set."""
    base, _ = load_model(organism.build_base("micro", progress=False))
    planted, tok = load_model(organism.build("micro-planted", progress=False))
    twin, _ = load_model(organism.build("micro-planted-retain", progress=False))
    layers = organism.PRESETS["micro-planted"].plant
    assert organism.info(organism.build("micro-planted"))["planted_layers"] == list(layers)
    assert organism.PRESETS["micro-planted-retain"].plant == layers
    b = dict(base.named_parameters())
    for m in (planted, twin):
        for n, p in m.named_parameters():
            inside = any(n.startswith(f"model.layers.{l}.mlp.") for l in layers)
            assert torch.equal(p, b[n]) != inside, n
    scores = recall(planted, tok, micro[2])
    assert scores["forget_qa_exact_match"] >= 0.8 and scores["holdout_qa_exact_match"] <= 0.2
