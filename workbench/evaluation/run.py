"""One evaluation: every registry entry (evaluation/registry.py) on the original, the edited model and the
retain-only twin, re-tracing, and the verdict. Numbers only: workbench.report renders them.

    ev = evaluate(model, tok, corpus, edited=(edited_model, edited_tok), retain_baseline=(twin, twin_tok))
    ev.original["qa_recall"], ev.verdict["passed"]

Per model: each entry's numbers (forget/retain QA recall and regurgitation, MIA, MMLU, the SemEval-2025 Task 4
terms and score, and any registered metric). With both models, the same causal-trace config re-runs on both (one
noise sigma, measured on the original): the per-layer drop in indirect effect. Joint entries (the recovery attacks)
run on the three models together. With an edited model, the verdict: is the edit indistinguishable from the
retain-only baseline? (evaluation/verdict.py; its lines come from the entries.)

A retain-only baseline (a model trained on everything but the forget set: the target unlearning approximates, as
in TOFU/MUSE) is scored like the others, is the baseline of privleak and, unless another reference model is given,
the reference model of the reference MIA attack.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from ..provenance import model_fingerprint, model_name, provenance
from . import registry
from .config import EvalConfig
from .metric import Context
from .mmlu import FORMULATIONS
from .retrace import TraceConfig, retrace
from .verdict import Verdict, forget_quality


@dataclass
class Evaluation:
    original: dict
    edited: dict | None = None
    baseline: dict | None = None     # the retain-only model's metrics, when one was given
    trace: dict | None = None
    verdict: dict | None = None      # evaluation/verdict.py, when there is an edited model
    joint: dict = field(default_factory=dict)     # {joint entry name: its result} (the attacks: "attacks")
    edit_log: list | None = None     # the editor's evaluations (step, QA, calibration AUC), when given
    trained: list = field(default_factory=list)   # the MIA statistics the edit optimised (not deciding privacy)
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    seconds: float = 0.0
    # {kind: (per-layer importance before, after)} of the re-trace, for the figures (not in report.json)
    curves: dict = field(default_factory=dict, repr=False)

    @property
    def attacks(self) -> dict | None:
        """The recovery attacks' results (evaluation/attacks.run_attacks), when they ran."""
        return self.joint.get("attacks")


def model_metrics(model, tok, ctx: Context) -> dict:
    """Every per-model number of the evaluation: each registry entry's compute, in compute order (no tracing). An
    entry not yet prepared in `ctx` is prepared first."""
    out: dict[str, Any] = {"notes": []}
    for entry in registry.compute_order():
        if entry.name not in ctx.prepared:
            ctx.prepared[entry.name] = entry.prepare(tok, ctx)
        entry.compute(model, tok, ctx, out)
    if ctx.log:
        sem, mia, mmlu = out.get("semeval"), out.get("mia"), out.get("mmlu")
        ctx.log("model_metrics", task_agg=sem and sem["task_agg"], mia=mia and mia["auc"],
                mmlu=mmlu and mmlu["accuracy"])
    return out


def verdict(original: dict, edited: dict, baseline: dict | None, cfg: EvalConfig | None = None,
            joint: dict | None = None, trained=()) -> Verdict:
    """Every registry entry's lines for `edited` (metrics dicts as model_metrics makes them), in registry order,
    against the twin (`baseline`) or, without one, the ideal; and TOFU's forget quality when there is a twin.
    `trained`: the MIA statistics the run's editor optimised (its privacy line is decided by the others); `cfg`:
    the tolerances (default EvalConfig's); `joint`: {joint entry name: its result} (the attacks')."""
    cfg, joint = cfg or EvalConfig(), joint or {}
    v = Verdict("retain-only baseline" if baseline else "ideal (no baseline)")
    for entry in registry.METRICS.values():
        v.criteria += entry.criteria(original, edited, baseline, joint.get(entry.name), cfg, trained)
    if baseline:
        v.forget_quality = forget_quality(edited, baseline)
    return v


def _check(cfg: EvalConfig, edited, retain_baseline, reference, retain_auc) -> None:
    if cfg.shots() < 0 or cfg.max_new_tokens < 1 or (cfg.limit is not None and cfg.limit < 1):
        raise ConfigError(f"bad evaluation config {cfg}: need mmlu_shots >= 0, max_new_tokens >= 1, limit >= 1")
    if cfg.mmlu_formulation not in ("auto", *FORMULATIONS):
        raise ConfigError(f"mmlu_formulation {cfg.mmlu_formulation!r}: expected 'auto' or one of {FORMULATIONS}")
    for what, pair in (("edited", edited), ("retain_baseline", retain_baseline), ("reference", reference)):
        if pair is not None and not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ConfigError(f"{what} must be a (model, tokenizer) pair")
    if retain_baseline is not None and retain_auc is not None:
        raise ConfigError("give either retain_baseline (a model) or retain_auc (its AUCs), not both")


def evaluate(model, tok, corpus, *, edited=None, trace_config: TraceConfig | None = None,
             config: EvalConfig | None = None, reference=None, retain_auc: dict | None = None,
             retain_baseline=None, progress: bool = False, edit_log: list[dict] | None = None,
             trained: list[str] | tuple = (), layers=None, log=None) -> Evaluation:
    """Evaluate the original model and (optionally) `edited` = (model, tokenizer) side by side.

    retain_baseline: (model, tokenizer) trained without the forget set: its metrics become a third column, its
    AUCs the baseline of privleak and, when `reference` is None, it is the reference-model attack's reference.
    reference: (model, tokenizer) for the reference-model MIA attack; retain_auc: a retain-only model's AUCs
    for privleak when no retain_baseline model is given (default: the ideal 0.5).
    edit_log: the editor's evaluations (unlearn.json's summary["evals"]), kept for the report's figure.
    trained: the MIA statistics the edit optimised (unlearn.json's "optimises"): reported apart, and the privacy
    line is decided by the others. layers: the edited layers (the relearning attack's "edited" scope).
    log: a JsonlLog (provenance.JsonlLog) of the run's events, or None."""
    cfg = config or EvalConfig()
    tc = trace_config or TraceConfig()
    _check(cfg, edited, retain_baseline, reference, retain_auc)
    start = time.perf_counter()
    ctx = Context(corpus, cfg, reference=reference, retain_auc=retain_auc, layers=layers, progress=progress, log=log)
    for entry in registry.compute_order():  # every entry's fail-fast resolution before any heavy work
        ctx.prepared[entry.name] = entry.prepare(tok, ctx)
    if log:
        log("start", config=asdict(cfg), trace=asdict(tc), data=corpus.source)
    baseline = None
    if retain_baseline is not None:
        baseline = model_metrics(*retain_baseline, Context(corpus, cfg, ctx.prepared, progress=progress, log=log))
        ctx.retain_auc = baseline["mia"]["auc"] if baseline.get("mia") else None
        ctx.reference = reference = reference or retain_baseline
    original = model_metrics(model, tok, ctx)
    edited_metrics = model_metrics(edited[0], edited[1], ctx) if edited is not None else None
    ev = Evaluation(original=original, edited=edited_metrics, baseline=baseline,
                    config={"eval": asdict(cfg), "trace": asdict(tc)}, edit_log=edit_log or None)
    if edited is not None and cfg.trace:
        t0 = time.perf_counter()
        ev.trace, ev.curves = retrace((model, tok), edited, corpus, tc, progress)
        ev.trace["seconds"] = time.perf_counter() - t0
        ctx.importance = {k: v["ie_before"] for k, v in ev.trace["kinds"].items()}
    models = {"original": (model, tok), "edited": edited, "twin": retain_baseline}
    for entry in registry.compute_order():
        if entry.joint:
            ev.joint[entry.name] = entry.compute_models(models, ctx)
    if edited is not None:
        ev.verdict = verdict(original, edited_metrics, baseline, cfg, ev.joint, trained).to_json()
        ev.trained = list(trained)
    ev.seconds = time.perf_counter() - start
    questions = (ctx.prepared.get("mmlu") or (None, None))[0]
    ev.provenance = provenance(
        model=model, seed=cfg.seed, config=ev.config,
        data={"source": corpus.source, "n_forget": len(corpus.forget), "n_retain": len(corpus.retain),
              "n_holdout": len(corpus.holdout), "mmlu": cfg.mmlu_source or "corpus",
              "n_mmlu": len(questions or [])},
        edited_model=None if edited is None else {"name": model_name(edited[0]),
                                                   "fingerprint": model_fingerprint(edited[0])},
        reference_model=None if reference is None else model_fingerprint(reference[0]),
        retain_baseline=None if retain_baseline is None else {"name": model_name(retain_baseline[0]),
                                                              "fingerprint": model_fingerprint(retain_baseline[0])},
    )
    return ev
