"""The verdict's lines: privacy decided by held-out membership attacks, the whole utility against the twin, and the
planted weaknesses each line must expose."""
from __future__ import annotations

import copy

import torch

from workbench.editors import EDITORS, editor_class, resolve_config
from workbench.editors.registry import optimised_statistics
from workbench.evaluation import mia
from workbench.evaluation.run import verdict
from workbench.evaluation.verdict import Tolerances, privacy, split_attacks, utility


def _metrics(aucs=None, retain=1.0, terms=None, mmlu=0.8, forget=0.0):
    return {"qa_recall": {"forget": forget, "retain": retain}, "regurgitation": {"forget": 0.3, "retain": 0.9},
            "mia": {"auc": aucs or {}}, "mmlu": {"accuracy": mmlu, "formulation": "cloze"},
            "semeval": {"terms": terms or {}}}


# --- privacy: held-out attacks decide ----------------------------------------------------------------------------
def test_privacy_is_decided_by_held_out_attacks_only():
    twin = _metrics({"loss": 0.5, "min_k": 0.5, "gradnorm": 0.52, "zlib": 0.5})
    matched = _metrics({"loss": 0.51, "min_k": 0.5, "gradnorm": 0.93, "zlib": 0.55})
    line = privacy(matched, twin, Tolerances(), trained=["loss", "min_k"])
    assert line.passed is False and "gradnorm" in line.detail and "trained, not deciding: loss, min_k" in line.detail
    # an edit far off on a trained statistic only is not failed for it (it optimised that statistic)
    off_trained = _metrics({"loss": 0.9, "min_k": 0.5, "gradnorm": 0.52, "zlib": 0.51})
    assert privacy(off_trained, twin, Tolerances(), trained=["loss"]).passed is True
    assert privacy(off_trained, twin, Tolerances(), trained=[]).passed is False
    assert split_attacks({"loss": 1, "zlib": 1}, ["loss"]) == (["zlib"], ["loss"])
    assert privacy(_metrics({"loss": 0.5}), twin, Tolerances(), trained=["loss"]).passed is None


def test_every_editor_declares_the_statistics_it_trains_on():
    """For every registered editor and each of its presets (calibrated or not): the statistics its calibration
    matches are declared, so the verdict never treats them as held-out. An editor that trains on a statistic
    without declaring it is caught by the same check."""
    def trained_on(cfg):
        return set(cfg.calibration_statistics) if cfg.calibrate else set()

    checked = 0
    for method, cls in EDITORS.items():
        for preset in [None, *cls.presets]:
            for calibrate in (False, True):
                cfg = resolve_config(method, preset=preset, overrides={"calibrate": calibrate})
                declared = set(optimised_statistics(method, cfg))
                held_out, _ = split_attacks(dict.fromkeys(mia.ATTACKS), declared)
                assert not trained_on(cfg) & set(held_out), (method, preset, calibrate)
                checked += 1
    assert checked >= 2 * len(EDITORS)

    class Undeclared(editor_class("joint")):   # trains on calibration statistics, declares nothing
        @classmethod
        def optimises(cls, cfg):
            return set()

    cfg = resolve_config("joint", preset="organism")
    assert trained_on(cfg) - Undeclared.optimises(cfg), "the check must see an undeclared statistic"


# --- utility: the whole utility against the twin ----------------------------------------------------------------
def test_utility_compares_every_retain_term_and_mmlu_with_the_twin():
    terms = {"retain/Task1/regurgitation": 0.97, "retain/Task1/knowledge": 1.0, "forget/Task1/knowledge": 1.0}
    twin = _metrics(terms=terms, mmlu=0.80)
    ok = _metrics(terms={**terms, "retain/Task1/regurgitation": 0.93}, mmlu=0.79)
    assert utility(twin, ok, twin, Tolerances()).passed is True
    regurgitation_halved = _metrics(terms={**terms, "retain/Task1/regurgitation": 0.46})
    line = utility(twin, regurgitation_halved, twin, Tolerances())
    assert line.passed is False and "Task1/regurgitation 0.460 vs 0.970" in line.detail
    assert utility(twin, _metrics(terms=terms, mmlu=0.70), twin, Tolerances()).passed is False
    assert utility(twin, _metrics(terms=terms, retain=0.9), twin, Tolerances()).passed is False


def test_a_retain_regurgitation_drop_is_caught_by_the_utility_line(micro, micro_retain):
    """Planted: gradient ascent on the retain documents' completions (not their questions) halves retain
    regurgitation while retain QA recall stays; the utility line fails and names a regurgitation term."""
    from workbench.data.records import Corpus
    from workbench.editors.gradient import answer_nll, mean_ce
    from workbench.editors.loop import collate, encode
    from workbench.evaluation.config import EvalConfig
    from workbench.evaluation.metric import Context
    from workbench.evaluation.run import model_metrics

    model, tok, corpus = micro
    damaged = copy.deepcopy(model)
    docs = collate(encode(tok, [r for r in corpus.retain if r.kind == "sc"], 256), tok.pad_token_id)
    opt = torch.optim.SGD(damaged.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        (-mean_ce(*answer_nll(damaged, docs))).backward()
        torch.nn.utils.clip_grad_norm_(damaged.parameters(), 1.0)
        opt.step()
    damaged.eval()
    small = Corpus(forget=corpus.forget, retain=corpus.retain, source=corpus.source)
    cfg = EvalConfig(max_new_tokens=48)
    twin = model_metrics(micro_retain[0], tok, Context(small, cfg))
    edited = model_metrics(damaged, tok, Context(small, cfg))
    assert edited["regurgitation"]["retain"] <= 0.6 * twin["regurgitation"]["retain"]
    assert edited["qa_recall"]["retain"] >= twin["qa_recall"]["retain"] - 0.05, "only regurgitation should drop"
    line = utility(twin, edited, twin, Tolerances())
    assert line.passed is False and "regurgitation" in line.detail


# --- privacy: a loss-matched edit still seen by a held-out attack ----------------------------------------------
def test_an_edit_matching_the_loss_statistic_is_still_seen_by_a_held_out_attack(micro, micro_retain, tmp_path):
    """Planted: calibrated forgetting on the LOSS statistic alone brings the loss attack from the original's AUC
    (near 1) to within 0.2 of the twin's (micro's twin keeps a tokenizer signal the edit cannot match), but a
    held-out attack stays farther from the twin than the trained statistic does (measured: min-k++ 0.11 against
    the twin's 0.69). The verdict, told the edit trained on loss, fails privacy on the held-out attack."""
    from workbench.editors import unlearn
    from workbench.harness import load_model

    model, tok, corpus = micro
    edited = copy.deepcopy(model)
    out = unlearn(edited, tok, corpus, "joint", [1, 2, 3], config={
        "calibrate": True, "calibration_statistics": ["loss"], "retain_loss": "kl", "epochs": 40, "lr": 2e-3,
        "eval_every": 20, "m_init": 5.0, "m_max": 10.0}, out_dir=tmp_path / "edited", progress=False)
    edited, _ = load_model(out)
    members = [r.text for r in corpus.forget]
    nonmembers = [r.text for r in corpus.holdout]
    twin = mia.mia(micro_retain[0], tok, members, nonmembers)
    res = mia.mia(edited, tok, members, nonmembers)
    original = mia.mia(model, tok, members, nonmembers)
    loss_gap = abs(res.auc["loss"] - twin.auc["loss"])
    assert original.auc["loss"] > 0.95 and loss_gap <= 0.2, (original.auc, res.auc, twin.auc)
    held_out = {a: abs(res.auc[a] - twin.auc[a]) for a in res.auc if a not in ("loss", "reference")}
    assert max(held_out.values()) > loss_gap + 0.2, (held_out, loss_gap)
    line = privacy({"mia": {"auc": res.auc}}, {"mia": {"auc": twin.auc}}, Tolerances(), trained=["loss"])
    assert line.passed is False


def test_verdict_lines_in_order(micro):
    twin = _metrics({"loss": 0.5, "gradnorm": 0.5})
    v = verdict(twin, _metrics({"loss": 0.5, "gradnorm": 0.5}), twin, trained=["loss"])
    assert [c.name for c in v.criteria] == ["forgetting", "privacy", "utility"] and v.passed is True
