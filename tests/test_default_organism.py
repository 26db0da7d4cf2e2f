"""The README's claims about the default organism, checked on the real thing (slow: builds it and its twin).

- the like-for-like pair: the original recalls >= 0.95 of its forget and retain facts and <= 0.05 of held-out
  people, cloze MMLU >= 0.6; its twin (same base, recipe, seed and steps, no forget set) recalls <= 0.05 of the
  forget facts and >= 0.95 of the retain ones;
- tracing its Task2 forget facts finds a clear peak: the MLP layer-importance interval of the peak layer lies above
  every other layer's interval;
- the pipeline's default edit (its method and "organism" preset, chosen on the validation people, at the selected
  layers) against the twin, every attack at its worst-case grid: every line of the verdict passes, as the README
  states; SemEval final at least the twin's - 0.03; retain regurgitation per task within 0.05 of the twin's; the
  Unlearning Depth Score at least its threshold. UDS is not asked to reach 0.9, nor every held-out AUC to sit within
  0.05 of the twin's: the README reports the measured values (0.84; largest gap 0.052) beside those of twins of other
  fine-tune seeds, which are retraining by construction (UDS 0.83 and 0.87; largest gap 0.047 and 0.051).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench import harness, organism
from workbench.harness import load_model
from workbench.pipeline import PipelineConfig, _preset, trace, select
from workbench.evaluation.config import EvalConfig
from workbench.report import evaluate

pytestmark = pytest.mark.slow


def _beside(code: str, *args: str) -> subprocess.Popen:
    """`python -c code args` on one thread, with this checkout importable; output kept for the failure message."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _join(proc: subprocess.Popen) -> None:
    log, _ = proc.communicate()
    assert proc.returncode == 0, log[-3000:]


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def default():
    """The default organism and its retain-only twin: the base first (every thread), then the two fine-tunes side by
    side, one thread each, as the pipeline builds them."""
    organism.build_base("default", progress=False)
    twin = _beside("import sys; from workbench import organism; organism.build(sys.argv[1], progress=False)",
                   organism.retain_twin("default"))
    try:
        with _one_thread():
            path = organism.build("default", progress=False)
    finally:
        _join(twin)
    model, tok, corpus = harness.load_organism("default")
    return path, model, tok, corpus


def test_default_organism_and_twin_are_like_for_like(default):
    from workbench.evaluation.knowledge import recall

    path, model, tok, corpus = default
    twin_path = organism.build(organism.retain_twin("default"))
    original, twin = organism.info(path), organism.info(twin_path)
    with _one_thread():  # as the builds ran
        o, t = recall(model, tok, corpus), recall(*load_model(twin_path), corpus)
    assert o["forget_qa_exact_match"] >= 0.95 and o["retain_qa_exact_match"] >= 0.95, o
    assert o["holdout_qa_exact_match"] <= 0.05, "held-out people must be unknown, or recall means nothing"
    assert o["mmlu_cloze_accuracy"] >= 0.6, o
    assert t["forget_qa_exact_match"] <= 0.05 and t["retain_qa_exact_match"] >= 0.95, t
    assert original["base"] == twin["base"] and original["finetune_steps"] == twin["finetune_steps"]


@pytest.fixture(scope="module")
def traced(default):
    _, model, tok, corpus = default
    cfg = PipelineConfig()
    facts = corpus.facts("forget", cfg.task)[: cfg.n_facts]
    return trace(cfg, model, tok, facts, progress=False)[1]


def test_tracing_finds_a_clear_peak(traced):
    imp = traced["mlp"]
    peak = int(np.argmax(imp.mean))
    others = [l for l in range(imp.n_layers) if l != peak]
    assert imp.n_facts >= 16
    assert imp.lo[peak] > max(imp.hi[l] for l in others), (imp.mean, imp.lo, imp.hi)


def test_the_default_edit_passes_every_line(default, traced, tmp_path):
    """The pipeline's method and preset at its selection, judged as `workbench run` judges it."""
    from workbench.editors import unlearn

    path, model, tok, corpus = default
    cfg = PipelineConfig()
    selection = select(cfg, traced)
    out = unlearn(model, tok, corpus, cfg.method, selection, config={"seed": cfg.seed}, out_dir=tmp_path / "edit",
                  preset=_preset(cfg), source=path)
    import json

    info = json.loads((out / "unlearn.json").read_text())
    original, _ = load_model(path)
    edited, _ = load_model(out)
    twin = load_model(f"organism:{organism.retain_twin('default')}")
    report = evaluate(original, tok, corpus, edited=(edited, tok), retain_baseline=twin,
                      config=EvalConfig(attacks="all", trace=False), trained=info["optimises"],
                      layers=info["edited_layers"])
    lines = {c["name"]: c for c in report.verdict["criteria"]}
    shown = "\n".join(f"{n}: {c['passed']} {c['detail']}" for n, c in lines.items())
    assert set(lines) == {"forgetting", "privacy", "utility", "relearn", "quantize", "lens", "depth"}
    assert all(c["passed"] for c in lines.values()), shown
    assert report.verdict["passed"], shown
    assert report.edited["semeval"]["final"] >= report.baseline["semeval"]["final"] - 0.03
    for task in ("Task1", "Task2", "Task3"):
        term = f"retain/{task}/regurgitation"
        edited, twin_value = report.edited["semeval"]["terms"][term], report.baseline["semeval"]["terms"][term]
        assert edited >= twin_value - 0.05, (term, edited, twin_value)
    assert report.attacks["depth"]["per_model"]["edited"]["uds"] >= report.attacks["depth"]["config"]["threshold"]
