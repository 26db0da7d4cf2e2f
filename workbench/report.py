"""One verification report: the rendering of an evaluation (evaluation/run.py), original and edited model side by
side.

    report = evaluate(model, tok, corpus, edited=(edited_model, edited_tok))
    report.table()              # rows of (metric, original, edited, edited - original)
    report.save("runs/eval1")   # report.json (every number + provenance) and report.html (tables + figures)

`evaluate` runs workbench.evaluation.run.evaluate and renders its numbers: the table's rows are the registry's
(evaluation/registry.py), the verdict its entries' lines, and the figures are drawn here from the numbers
(workbench.figures). A retain-only baseline's metrics are a third column.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import figures
from .aggregate import importance_difference
from .evaluation import registry
from .evaluation.attacks import recoveries
from .evaluation.mmlu import SEMEVAL_MMLU_GATE
from .evaluation.run import Evaluation
from .evaluation.run import evaluate as run_evaluation
from .provenance import JsonlLog, atomic_write_json, atomic_write_text, to_jsonable


def _get(d, path):
    for key in path:
        if not isinstance(d, dict) or key not in d or d[key] is None:
            return None
        d = d[key]
    return d


@dataclass
class Report(Evaluation):
    """An Evaluation's numbers, rendered: the table, report.json, report.html, the notebook view."""
    figures: dict = field(default_factory=dict, repr=False)   # plotly figures (html only, not in json)
    path: Path | None = field(default=None, repr=False)      # report.html, once saved

    @classmethod
    def of(cls, ev: Evaluation) -> "Report":
        """The report of `ev`, with its figures drawn from its numbers."""
        report = cls(**{f.name: getattr(ev, f.name) for f in fields(Evaluation)})
        report.figures["mia_auc"] = figures.mia_auc_bars({"original": report.original, "edited": report.edited,
                                                          "retain-only baseline": report.baseline})
        if report.edit_log and any("calibration_auc" in e for e in report.edit_log):
            report.figures["calibration"] = figures.calibration_curve(report.edit_log)
        for kind, (b, a) in report.curves.items():
            report.figures[f"trace_{kind}"] = figures.importance_before_after(
                b, a, importance_difference(b, a), labels=("original", "edited"))
        if report.attacks:
            report.figures.update(figures.attack_figures(report.attacks))
        return report

    def rows(self) -> list[tuple[str, tuple]]:
        """(label, path) of every table row: the registry entries' rows (evaluation/registry.py)."""
        return registry.rows(self.original)

    def table(self) -> list[tuple]:
        """(metric, original, edited, edited - original) rows; None where a number is not available."""
        out = []
        for label, path in self.rows():
            o = _get(self.original, path)
            e = _get(self.edited, path) if self.edited else None
            out.append((label, o, e, e - o if isinstance(o, (int, float)) and isinstance(e, (int, float)) else None))
        return out

    def baseline_column(self) -> list:
        """The retain-only baseline's value for each row of table() (None where it has none)."""
        return [_get(self.baseline, path) for _, path in self.rows()]

    def to_json(self) -> dict:
        strip = lambda m: m and {k: v for k, v in m.items() if k != "generations"}  # noqa: E731
        return to_jsonable({"verdict": self.verdict, "original": strip(self.original), "edited": strip(self.edited),
                            "baseline": strip(self.baseline), "trace": self.trace, **self.joint,
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
                 f"formulation. SemEval-2025 gate for 7B awards: MMLU accuracy &ge; {SEMEVAL_MMLU_GATE}.</p>"]
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
            parts += ["<h2>Does it come back?</h2>", attacks_table(self.attacks)]
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


def attacks_table(results: dict) -> str:
    """Each model's worst-case recovery under each attack (UDS for depth), the setting it came from and how many
    settings were admissible, as an HTML table."""
    models = results["models"]
    rec = recoveries(results)
    fmt = lambda v, a: "&ndash;" if v is None else (f"{v:.3f}" if a == "depth" else f"{v:+.3f}")  # noqa: E731
    head = ("<tr><th>attack</th>" + "".join(f"<th>{html.escape(figures.ATTACK_LABELS[m])}</th>" for m in models)
            + "<th>edited: worst admissible setting (gap over the twin)</th><th>admissible settings</th><th>s</th></tr>")
    rows = []
    for a in results["attacks"]:
        r = results[a]
        if a == "depth":
            worst = f"UDS threshold {r['config']['threshold']}; tau {r['config']['tau']}"
            adm = f"{sum(x > 0 for x in r['layers_used'])} of {len(r['layers_used'])} layers enter UDS"
        else:
            w = r.get("worst")
            worst = "&ndash;" if not w else f"{html.escape(w['setting'])} ({w['gap']:+.3f})"
            adm = f"{sum(r['admissible'])} of {len(r['admissible'])}"
        rows.append(f"<tr><td>{a}</td>" + "".join(f"<td>{fmt(rec[a][m], a)}</td>" for m in models)
                    + f"<td style='text-align:left'>{worst}</td><td>{adm}</td><td>{results['seconds'][a]:.1f}</td></tr>")
    return (f"<p>Recovery: forget recall after the attack minus before (exact match), the largest over the admissible "
            f"settings of the attack's grid: those under which the retain-only twin, which never learned the facts, "
            f"recovers at most {results['config']['admissible']} (the attack reveals, it does not teach). Depth: the "
            f"Unlearning Depth Score (1 = as deep as retraining, 0 = nothing removed inside).</p>"
            f"<table>{head}{''.join(rows)}</table>")


def evaluate(model, tok, corpus, *, out_dir: str | Path | None = None, **kw) -> Report:
    """workbench.evaluation.run.evaluate(model, tok, corpus, **kw), rendered; with `out_dir`, report.json,
    report.html and the run's log (evaluate.log.jsonl) are written there."""
    log = JsonlLog(Path(out_dir) / "evaluate.log.jsonl") if out_dir else None
    report = Report.of(run_evaluation(model, tok, corpus, log=log, **kw))
    if out_dir:
        report.save(out_dir)
        log("done", seconds=report.seconds)
    return report
