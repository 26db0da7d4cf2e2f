"""The model organism: memorises its facts, is deterministic given a seed, caches, and is not tied to our generator."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workbench import organism
from workbench.data import load_lume
from workbench.data.records import Corpus, questions
from workbench.models import ModelLoadError
from workbench.organism import load_model

def test_micro_recalls_its_facts(micro):
    model, tok, corpus = micro
    scores = organism.recall(model, tok, corpus)
    assert scores["forget_qa_exact_match"] >= 0.95
    assert scores["retain_qa_exact_match"] >= 0.95
    # held-out people were never shown: recalling them would mean the metric is broken
    assert scores["holdout_qa_exact_match"] <= 0.2


def test_micro_is_a_real_olmo(micro):
    model, tok, corpus = micro
    assert type(model).__name__ == "OlmoForCausalLM"
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 64
    assert all(r.subject for r in corpus.facts("forget", "Task2")), "every Task2 fact names its subject"


def test_cache_hit_is_not_rebuilt_and_keyed(micro, tmp_path, monkeypatch):
    trained = []

    def train(cfg, *args, **kwargs):  # stands in for organism.train: records the call, trains nothing
        trained.append(cfg.name)
        raise RuntimeError("train called")

    monkeypatch.setattr(organism, "train", train)
    path = organism.build("micro")  # the micro fixture has built it: a cache hit
    assert trained == [], "a cached organism must not be rebuilt"
    cfg = organism.with_overrides("micro", seed=1)
    assert organism.organism_dir(cfg) != path, "a different seed must be a different cache entry"
    meta = organism.info(path)
    assert meta["config"]["name"] == "micro" and "torch" in meta["versions"]
    # the stand-in is the one build calls: with an empty cache the same call trains
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="train called"):
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
    scores = organism.recall(model, tok, corpus)
    assert scores["retain_qa_exact_match"] >= 0.9
    assert scores["forget_qa_exact_match"] <= 0.2, "the forget set must not have been trained on"
    assert organism.info(organism.build("micro-retain"))["config"]["train_on_forget"] is False
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
    cfg = organism.with_overrides("micro", name="lume-micro", epochs=80, vocab_size=640)
    path = organism.build(cfg, corpus=corpus, progress=False)
    meta = json.loads((path / "organism.json").read_text())
    assert meta["data"] == corpus.source
    assert meta["recall"]["forget_qa_exact_match"] >= 0.95, meta["recall"]
    assert meta["recall"]["retain_qa_exact_match"] >= 0.95, meta["recall"]
