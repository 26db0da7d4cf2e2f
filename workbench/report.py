"""One verification report: original and edited model side by side.

    report = evaluate(model, tok, corpus, edited=(edited_model, edited_tok))
    report.table()              # rows of (metric, original, edited, edited - original)
    report.save("runs/eval1")   # report.json (every number + provenance) and report.html (tables + figures)

Per model: forget/retain QA recall and regurgitation, MIA (every attack's AUC, the members' and
non-members' mean loss, the SemEval MIA score, privleak), MMLU accuracy in the letter and cloze
formulations, the SemEval-2025 Task 4 terms, TaskAgg and final score. With both models, the
same causal-trace config re-runs on both (one noise sigma, measured on the original) and the
report shows the per-layer drop in indirect effect. The report opens with a verdict
(evaluation/verdict.py): is the edit indistinguishable from the retain-only baseline?

A retain-only baseline (a model trained on everything but the forget set: the target unlearning
approximates, as in TOFU/MUSE) adds a third column, is the baseline of privleak, and, unless another
reference model is given, the reference model of the reference MIA attack.
"""
from __future__ import annotations

import html
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from . import figures
from .aggregate import importance_difference
from .errors import ConfigError, DataError
from .provenance import (JsonlLog, atomic_write_json, atomic_write_text, model_fingerprint, model_name, provenance,
                          to_jsonable)
from .evaluation import mia as mia_mod
from .evaluation import mmlu as mmlu_mod
from .evaluation import semeval as semeval_mod
from .evaluation.retrace import TraceConfig, retrace


def _need(ok, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


@dataclass
class EvalConfig:
    mmlu_source: str | None = None   # None: the corpus's own MMLU-format set
    # which MMLU formulation enters the final score; both are reported. "auto": cloze on the corpus's own set (the
    # organism, too small to answer by letter), letter (as SemEval-2025 Task 4 scores OLMo) for a given source
    mmlu_formulation: str = "auto"
    # None: 0 on the corpus's own set (the organism learnt its questions 0- and 3-shot and loses accuracy at 5),
    # 5 for a given source (SemEval-2025 Task 4 scores MMLU 5-shot)
    mmlu_shots: int | None = None
    max_new_tokens: int = semeval_mod.MAX_NEW_TOKENS
    limit: int | None = None         # at most this many items per group (split/task/kind, MMLU subject)
    k: float = 0.4                   # Min-K% fraction
    batch_size: int = 16
    trace: bool = True
    seed: int = 0
    # recovery attacks on the original, edited and retain-only models (evaluation/attacks: relearn, quantize, lens,
    # depth); attack_settings: {attack: {field: value}} overrides of each attack's settings
    attacks: tuple[str, ...] = ()
    attack_settings: dict = field(default_factory=dict)
    gradnorm: bool = True            # the gradient-norm MIA attack (one backward pass per document)
    # the verdict's tolerances (evaluation/verdict.py)
    recall_tol: float = 0.1          # forget recall and regurgitation at most the twin's + this
    auc_tol: float = 0.1             # every held-out MIA attack's AUC within this of the twin's
    utility_tol: float = 0.05        # every retain term and MMLU at most this below the lower of twin and original
    recovery_tol: float = 0.05       # an attack's worst admissible recovery on the edited model at most the twin's + this

    def formulation(self) -> str:
        if self.mmlu_formulation != "auto":
            return self.mmlu_formulation
        return "cloze" if self.mmlu_source in (None, "organism") else "letter"

    def shots(self) -> int:
        if self.mmlu_shots is not None:
            return self.mmlu_shots
        return 0 if self.mmlu_source in (None, "organism") else 5

    def __post_init__(self):
        _need(self.mmlu_shots is None or self.mmlu_shots >= 0,
              f"evaluation mmlu_shots must be >= 0, got {self.mmlu_shots}")
        _need(self.max_new_tokens >= 1, f"evaluation max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _need(self.limit is None or self.limit >= 1, f"evaluation limit must be >= 1 or None, got {self.limit}")
        _need(0 < self.k <= 1, f"evaluation k (the Min-K% fraction) must be in (0, 1], got {self.k}")
        _need(self.batch_size >= 1, f"evaluation batch_size must be >= 1, got {self.batch_size}")
        for name in ("recall_tol", "auc_tol", "utility_tol", "recovery_tol"):
            _need(getattr(self, name) >= 0, f"evaluation {name} must be >= 0, got {getattr(self, name)}")
        from .evaluation.attacks import AttackConfig, parse_attacks

        self.attacks = parse_attacks(self.attacks)
        AttackConfig.from_dict(self.attack_settings)


def _limit_questions(questions, limit):
    if not limit:
        return list(questions)
    seen: dict[tuple, int] = {}
    out = []
    for q in questions:
        key = (q.subject, q.split)
        if q.split == "dev" or seen.get(key, 0) < limit:  # keep the whole few-shot pool
            seen[key] = seen.get(key, 0) + 1
            out.append(q)
    return out


def model_metrics(model, tok, corpus, cfg: EvalConfig, questions=None, mmlu_note: str | None = None,
                  reference=None, retain_auc=None, progress: bool = False, log=None) -> dict:
    """Every per-model number of the report (no tracing)."""
    out: dict[str, Any] = {"notes": []}
    t0 = time.perf_counter()
    # MIA: forget documents vs held-out documents
    if corpus.holdout:
        forget = semeval_mod.select(corpus.forget, cfg.limit)
        holdout = semeval_mod.select(corpus.holdout, cfg.limit)
        res = mia_mod.mia(model, tok, [r.text for r in forget], [r.text for r in holdout], k=cfg.k,
                          reference=reference, retain_auc=retain_auc, batch_size=cfg.batch_size,
                          gradnorm=cfg.gradnorm, progress=progress)
        out["mia"] = res.to_json()
    else:
        out["mia"] = None
        out["notes"].append("MIA skipped: the data has no holdout (non-member) split")
    out["seconds_mia"] = time.perf_counter() - t0
    # MMLU utility in both formulations; `mmlu` is the one that enters the final score
    t0 = time.perf_counter()
    out["mmlu"], out["mmlu_formulations"] = None, {}
    if questions:
        for formulation in mmlu_mod.FORMULATIONS:
            try:
                out["mmlu_formulations"][formulation] = mmlu_mod.evaluate_mmlu(
                    model, tok, questions, shots=cfg.shots(), batch_size=cfg.batch_size, formulation=formulation,
                    progress=progress).to_json()
            except ConfigError as e:
                if cfg.mmlu_source is not None and formulation == cfg.formulation():  # asked for: a real error
                    raise
                out["notes"].append(f"MMLU ({formulation}) skipped: {e}")
        out["mmlu"] = out["mmlu_formulations"].get(cfg.formulation())
    elif mmlu_note:
        out["notes"].append(f"MMLU skipped: {mmlu_note}")
    out["seconds_mmlu"] = time.perf_counter() - t0
    # SemEval generation scores (also gives QA recall per split)
    t0 = time.perf_counter()
    sem = semeval_mod.semeval_score(
        model, tok, corpus, mia_score=out["mia"]["mia_score"] if out["mia"] else None,
        mmlu=out["mmlu"]["accuracy"] if out["mmlu"] else None, max_new_tokens=cfg.max_new_tokens,
        batch_size=max(cfg.batch_size, 32), limit=cfg.limit, progress=progress)
    out["semeval"] = sem.to_json()
    out["qa_recall"], out["regurgitation"] = {}, {}
    for split in ("forget", "retain"):
        for key, kind in (("qa_recall", "qa"), ("regurgitation", "sc")):
            hits = [g["score"] for g in sem.generations if g["split"] == split and g["kind"] == kind]
            out[key][split] = sum(hits) / len(hits) if hits else None
    out["generations"] = sem.generations
    out["seconds_semeval"] = time.perf_counter() - t0
    if log:
        log("model_metrics", task_agg=sem.task_agg, mia=out["mia"] and out["mia"]["auc"],
            mmlu=out["mmlu"] and out["mmlu"]["accuracy"])
    return out


# --- the report ------------------------------------------------------------------------------------

ROWS = [  # (label, path into a model's metrics)
    ("forget QA recall", ("qa_recall", "forget")),
    ("retain QA recall", ("qa_recall", "retain")),
    ("forget regurgitation (ROUGE-L recall)", ("regurgitation", "forget")),
    ("retain regurgitation (ROUGE-L recall)", ("regurgitation", "retain")),
    *[(f"MIA AUC {a}", ("mia", "auc", a)) for a in mia_mod.ATTACKS],
    ("forget docs mean NLL (members)", ("mia", "mean_nll", "members")),
    ("holdout docs mean NLL (non-members)", ("mia", "mean_nll", "nonmembers")),
    ("SemEval MIA score", ("mia", "mia_score")),
    ("privleak (loss, %)", ("mia", "privleak", "loss")),
    ("MMLU letter accuracy", ("mmlu_formulations", "letter", "accuracy")),
    ("MMLU cloze accuracy", ("mmlu_formulations", "cloze", "accuracy")),
    ("MMLU cloze acc_norm", ("mmlu_formulations", "cloze", "accuracy_norm")),
    ("MMLU in the final score", ("mmlu", "accuracy")),
    ("SemEval TaskAgg", ("semeval", "task_agg")),
    ("SemEval final", ("semeval", "final")),
]


def _get(d, path):
    for key in path:
        if not isinstance(d, dict) or key not in d or d[key] is None:
            return None
        d = d[key]
    return d


@dataclass
class Report:
    original: dict
    edited: dict | None = None
    baseline: dict | None = None     # the retain-only model's metrics, when one was given
    trace: dict | None = None
    verdict: dict | None = None      # evaluation/verdict.py, when there is an edited model
    attacks: dict | None = None      # evaluation/attacks: recovery of each model under each attack, when run
    edit_log: list | None = None     # the editor's evaluations (step, QA, calibration AUC), when given
    trained: list = field(default_factory=list)   # the MIA statistics the edit optimised (not deciding privacy)
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    seconds: float = 0.0
    figures: dict = field(default_factory=dict, repr=False)   # plotly figures (html only, not in json)
    path: Path | None = field(default=None, repr=False)      # report.html, once saved

    def table(self) -> list[tuple]:
        """(metric, original, edited, edited - original) rows; None where a number is not available."""
        rows = []
        for label, path in ROWS:
            o = _get(self.original, path)
            e = _get(self.edited, path) if self.edited else None
            rows.append((label, o, e, e - o if isinstance(o, (int, float)) and isinstance(e, (int, float)) else None))
        for name in sorted((self.original.get("semeval") or {}).get("terms", {})):
            o = self.original["semeval"]["terms"][name]
            e = _get(self.edited, ("semeval", "terms", name)) if self.edited else None
            rows.append((f"term {name}", o, e, None if e is None else e - o))
        return rows

    def baseline_column(self) -> list:
        """The retain-only baseline's value for each row of table() (None where it has none)."""
        return [_get(self.baseline, path) for _, path in ROWS] + [
            _get(self.baseline, ("semeval", "terms", r[0][len("term "):])) for r in self.table()[len(ROWS):]]

    def to_json(self) -> dict:
        strip = lambda m: m and {k: v for k, v in m.items() if k != "generations"}  # noqa: E731
        return to_jsonable({"verdict": self.verdict, "original": strip(self.original), "edited": strip(self.edited),
                            "baseline": strip(self.baseline), "trace": self.trace, "attacks": self.attacks,
                            "table": self.table(), "mia_tables": self.mia_tables(),
                            "edit_log": self.edit_log,
                            "baseline_column": self.baseline_column() if self.baseline else None,
                            "config": self.config, "seconds": self.seconds, "provenance": self.provenance})

    def mia_tables(self) -> dict[str, list[tuple]]:
        """{"held_out": rows, "trained": rows} of (attack, original, edited, twin) AUCs: the attacks that decide the
        privacy line, and those the edit optimised (reported apart: an edit matches them by construction)."""
        from .evaluation.verdict import split_attacks

        aucs = lambda m: _get(m, ("mia", "auc")) or {}  # noqa: E731
        names = list(aucs(self.edited or self.original))
        held_out, trained = split_attacks(dict.fromkeys(names), self.trained)
        row = lambda a: (a, aucs(self.original).get(a), aucs(self.edited).get(a) if self.edited else None,  # noqa: E731
                         aucs(self.baseline).get(a) if self.baseline else None)
        return {"held_out": [row(a) for a in held_out], "trained": [row(a) for a in trained]}

    def to_html(self) -> str:
        def fmt(v):
            return "&ndash;" if v is None else (f"{v:+.4f}" if isinstance(v, float) and v < 0 else
                                                f"{v:.4f}" if isinstance(v, float) else html.escape(str(v)))

        rows = self.table()
        extra = self.baseline_column() if self.baseline else None
        head = ("<tr><th>metric</th><th>original</th><th>edited</th><th>edited &minus; original</th>"
                + ("<th>retain-only baseline</th>" if extra else "") + "</tr>")
        body = "".join(f"<tr><td>{html.escape(r[0])}</td><td>{fmt(r[1])}</td><td>{fmt(r[2])}</td>"
                       f"<td>{fmt(r[3])}</td>" + (f"<td>{fmt(extra[i])}</td>" if extra else "") + "</tr>"
                       for i, r in enumerate(rows))
        notes = [f"{who}: {n}" for who, m in (("original", self.original), ("edited", self.edited),
                                                ("retain-only baseline", self.baseline)) for n in (m or {}).get("notes", [])]
        parts = ["<!doctype html><html><head><meta charset='utf-8'><title>workbench evaluation</title>",
                 "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
                 "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
                 "td:first-child{text-align:left}</style></head><body>",
                 "<h1>Unlearning verification report</h1>",
                 f"<p>model: {html.escape(str(_get(self.provenance, ('model', 'name'))))}; data: "
                 f"{html.escape(str(_get(self.provenance, ('data', 'source'))))}; "
                 f"wall time {self.seconds:.1f} s</p>",
                 *self._verdict_html(),
                 "<h2>All numbers</h2>",
                 f"<table>{head}{body}</table>",
                 f"<p>MMLU in the final score: {html.escape(str(_get(self.original, ('mmlu', 'formulation'))))} "
                 f"formulation. SemEval-2025 gate for 7B awards: MMLU accuracy &ge; {mmlu_mod.SEMEVAL_MMLU_GATE}.</p>"]
        if notes:
            parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
        mia_tables = self.mia_tables()
        if mia_tables["held_out"] or mia_tables["trained"]:
            parts.append("<h2>Membership inference: held-out and trained attacks</h2><p>AUC of each attack, forget "
                         "documents (members) against held-out documents. The privacy line is decided by the "
                         "held-out attacks alone; the edit optimised the trained ones, which it matches by "
                         "construction.</p>")
            for key, title in (("held_out", "held-out (decide privacy)"), ("trained", "trained by the edit")):
                if mia_tables[key]:
                    parts.append(f"<h3>{title}</h3><table><tr><th>attack</th><th>original</th><th>edited</th>"
                                 f"<th>retain-only baseline</th></tr>" + "".join(
                                     f"<tr><td>{html.escape(a)}</td><td>{fmt(o)}</td><td>{fmt(e)}</td><td>{fmt(b)}</td>"
                                     "</tr>" for a, o, e, b in mia_tables[key]) + "</table>")
        first = True
        if self.attacks:
            from .evaluation.attacks import html_table

            parts += ["<h2>Does it come back?</h2>", html_table(self.attacks)]
        for name, fig in self.figures.items():
            parts.append(f"<h2>{html.escape(name)}</h2>")
            # plotly.js inlined once, so the file works offline
            parts.append(fig.to_html(full_html=False, include_plotlyjs=True if first else False))
            first = False
        parts.append("</body></html>")
        return "\n".join(parts)

    def verdict_lines(self) -> list[str]:
        from .evaluation.verdict import Criterion, Verdict

        if not self.verdict:
            return []
        v = Verdict(self.verdict["against"], [Criterion(**c) for c in self.verdict["criteria"]],
                    self.verdict["forget_quality"])
        return v.lines()

    def _verdict_html(self) -> list[str]:
        if not self.verdict:
            return []
        color = {True: "#1a7f37", False: "#cf222e", None: "#666"}
        word = {True: "PASS", False: "FAIL", None: "n/a"}
        v = self.verdict
        rows = "".join(f"<tr><td>{html.escape(c['name'])}</td><td style='color:{color[c['passed']]};font-weight:bold'>"
                       f"{word[c['passed']]}</td><td style='text-align:left'>{html.escape(c['detail'])}</td></tr>"
                       for c in v["criteria"])
        fq = v.get("forget_quality")
        return [f"<h2 style='color:{color[v['passed']]}'>Verdict against the {html.escape(v['against'])}: "
                f"{word[v['passed']]}</h2>", f"<table>{rows}</table>",
                "" if fq is None else f"<p>Forget quality (TOFU-style: KS-test p-value of the per-document loss on "
                                      f"the forget set, edited vs baseline; &ge; 0.05 reads as indistinguishable): "
                                      f"{fq:.3g}</p>"]

    def save(self, run_dir: str | Path) -> Path:
        run_dir = Path(run_dir)
        atomic_write_json(run_dir / "report.json", self.to_json())
        self.path = atomic_write_text(run_dir / "report.html", self.to_html())
        return run_dir

    def verdict_view(self, link: str | Path | None = None):
        """The verdict (evaluation/verdict.Verdict) with a link to report.html (`link`, e.g. relative to a notebook;
        default: where it was saved), or None when there is no edited model."""
        from .evaluation.verdict import Verdict

        if not self.verdict:
            return None
        where = link if link is not None else self.path
        return Verdict.from_json(self.verdict, report=None if where is None else str(where))

    def _repr_html_(self) -> str:
        """The table of numbers (original, edited, the retain-only baseline) and the verdict's one line; the verdict
        itself is `verdict_view()`."""
        import html as html_mod

        from .htmlview import WORDS, table

        extra = self.baseline_column() if self.baseline else None
        rows = [[r[0], r[1], r[2], r[3]] + ([extra[i]] if extra else []) for i, r in enumerate(self.table())]
        header = ["metric", "original", "edited", "edited - original"] + (["retain-only baseline"] if extra else [])
        verdict = (f"; verdict against the {self.verdict['against']}: {WORDS[self.verdict['passed']]}"
                   if self.verdict else "")
        where = f" ({html_mod.escape(str(self.path))})" if self.path else ""
        return table(header, rows, caption=f"Evaluation report{where}{html_mod.escape(verdict)}")


def evaluate(model, tok, corpus, *, edited=None, trace_config: TraceConfig | None = None,
             config: EvalConfig | None = None, reference=None, retain_auc: dict | None = None,
             retain_baseline=None, out_dir: str | Path | None = None, progress: bool = False,
             edit_log: list[dict] | None = None, trained: list[str] | tuple = (), layers=None) -> Report:
    """Evaluate the original model and (optionally) `edited` = (model, tokenizer) side by side.

    retain_baseline: (model, tokenizer) trained without the forget set: its metrics become a third column, its
    AUCs the baseline of privleak and, when `reference` is None, it is the reference-model attack's reference.
    reference: (model, tokenizer) for the reference-model MIA attack; retain_auc: a retain-only model's AUCs
    for privleak when no retain_baseline model is given (default: the ideal 0.5).
    out_dir: write report.json/report.html and a jsonl log there.
    edit_log: the editor's evaluations (unlearn.json's summary["evals"]); plotted when they hold a calibration AUC.
    trained: the MIA statistics the edit optimised (unlearn.json's "optimises"): reported apart, and the privacy
    line is decided by the others. layers: the edited layers (the relearning attack's "edited" scope)."""
    cfg = config or EvalConfig()
    tc = trace_config or TraceConfig()
    if cfg.shots() < 0 or cfg.max_new_tokens < 1 or (cfg.limit is not None and cfg.limit < 1):
        raise ConfigError(f"bad evaluation config {cfg}: need mmlu_shots >= 0, max_new_tokens >= 1, limit >= 1")
    if cfg.mmlu_formulation not in ("auto", *mmlu_mod.FORMULATIONS):
        raise ConfigError(f"mmlu_formulation {cfg.mmlu_formulation!r}: expected 'auto' or one of {mmlu_mod.FORMULATIONS}")
    for what, pair in (("edited", edited), ("retain_baseline", retain_baseline), ("reference", reference)):
        if pair is not None and not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ConfigError(f"{what} must be a (model, tokenizer) pair")
    if retain_baseline is not None and retain_auc is not None:
        raise ConfigError("give either retain_baseline (a model) or retain_auc (its AUCs), not both")
    log = JsonlLog(Path(out_dir) / "evaluate.log.jsonl") if out_dir else None
    start = time.perf_counter()
    # MMLU questions resolved once, before any heavy work, so a bad source fails fast
    questions, mmlu_note = None, None
    try:
        questions = _limit_questions(mmlu_mod.load_mmlu(cfg.mmlu_source, corpus), cfg.limit)
    except DataError as e:
        if cfg.mmlu_source is not None:
            raise
        mmlu_note = str(e)
    if questions and cfg.mmlu_source is not None and cfg.formulation() == "letter":
        mmlu_mod.letter_token_ids(tok)  # an explicit MMLU source the tokenizer cannot score: fail now
    if log:
        log("start", config=asdict(cfg), trace=asdict(tc), data=corpus.source)
    baseline = None
    if retain_baseline is not None:
        baseline = model_metrics(*retain_baseline, corpus, cfg, questions, mmlu_note, None, None, progress, log)
        retain_auc = baseline["mia"]["auc"] if baseline["mia"] else None
        reference = reference or retain_baseline
    original = model_metrics(model, tok, corpus, cfg, questions, mmlu_note, reference, retain_auc, progress, log)
    edited_metrics = None
    if edited is not None:
        edited_metrics = model_metrics(edited[0], edited[1], corpus, cfg, questions, mmlu_note, reference,
                                       retain_auc, progress, log)
    report = Report(original=original, edited=edited_metrics, baseline=baseline,
                    config={"eval": asdict(cfg), "trace": asdict(tc)})
    report.figures["mia_auc"] = figures.mia_auc_bars({"original": report.original, "edited": report.edited,
                                                      "retain-only baseline": report.baseline})
    if edit_log:
        report.edit_log = edit_log
        if any("calibration_auc" in e for e in edit_log):
            report.figures["calibration"] = figures.calibration_curve(edit_log)
    if edited is not None and cfg.trace:
        t0 = time.perf_counter()
        report.trace, curves = retrace((model, tok), edited, corpus, tc, progress)
        report.trace["seconds"] = time.perf_counter() - t0
        for kind, (b, a) in curves.items():
            report.figures[f"trace_{kind}"] = figures.importance_before_after(
                b, a, importance_difference(b, a), labels=("original", "edited"))
    if cfg.attacks:
        from .evaluation import attacks

        importance = {k: v["ie_before"] for k, v in report.trace["kinds"].items()} if report.trace else None
        models = {"original": (model, tok), "edited": edited, "twin": retain_baseline}
        report.attacks = attacks.run_attacks(cfg.attacks, models, corpus, attacks.AttackConfig.from_dict(
            cfg.attack_settings), importance=importance, layers=layers, progress=progress)
        report.figures.update(attacks.figures(report.attacks))
        if log:
            log("attacks", recovery=attacks.recoveries(report.attacks), seconds=report.attacks["seconds"])
    if edited is not None:
        from .evaluation.verdict import Tolerances, verdict

        report.verdict = verdict(original, edited_metrics, baseline,
                                 Tolerances(cfg.recall_tol, cfg.auc_tol, cfg.utility_tol, cfg.recovery_tol),
                                 attacks=report.attacks, trained=trained).to_json()
        report.trained = list(trained)
    report.seconds = time.perf_counter() - start
    report.provenance = provenance(
        model=model, seed=cfg.seed, config=report.config,
        data={"source": corpus.source, "n_forget": len(corpus.forget), "n_retain": len(corpus.retain),
              "n_holdout": len(corpus.holdout), "mmlu": cfg.mmlu_source or "corpus",
              "n_mmlu": len(questions or [])},
        edited_model=None if edited is None else {"name": model_name(edited[0]),
                                                   "fingerprint": model_fingerprint(edited[0])},
        reference_model=None if reference is None else model_fingerprint(reference[0]),
        retain_baseline=None if retain_baseline is None else {"name": model_name(retain_baseline[0]),
                                                              "fingerprint": model_fingerprint(retain_baseline[0])},
    )
    if out_dir:
        report.save(out_dir)
        log("done", seconds=report.seconds)
    return report
