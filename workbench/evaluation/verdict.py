"""The verdict: is the edited model indistinguishable from a model that never learned the forget set?

Every line compares the edit with the retain-only twin (fine-tuned from the original's base without the forget set:
the "retrained" target of unlearning, as in TOFU and MUSE) when one was evaluated, else with the ideal a twin would
show (no recall, AUC 0.5, no recovery):

    forgetting  forget QA recall and forget regurgitation (ROUGE-L recall) at most the twin's + recall_tol
    privacy     decided by the held-out membership attacks alone: those no editor of the run trained on (an editor
                declares the statistics it optimises; Editor.optimises). Each held-out attack's AUC within auc_tol
                of the twin's (0.5 without one). The trained attacks are reported beside it, and decide nothing:
                an edit that matched a statistic passes that statistic by construction.
    utility     the whole utility: retain QA recall, every SemEval retain term per task (regurgitation R and
                knowledge K of Task1-3) and the MMLU accuracy that enters the final score, each at most utility_tol
                below the lower of the twin's and the original's. A second fine-tune moves a twin's cloze MMLU by
                up to 0.08 against its original's (benchmarks/twin_spread.py): the twin alone would fail an edit
                that kept every bit of its original's general knowledge whenever the seed favoured the twin, and
                the original alone would pass an edit below what retraining gives (without a twin: the original)

and, when the recovery attacks ran (evaluation/attacks), one line per attack: relearn, quantize and lens pass when
the edited model's largest recovery over the twin's at one admissible setting of the attack's grid is at most
recovery_tol; depth passes when the Unlearning Depth Score is at least its threshold (DepthConfig.threshold).

Each line is a registry entry's (evaluation/registry.py): forgetting from `recall`, privacy from `mia`, utility from
`mmlu`, one per attack from `attacks`, and a registered metric's own; evaluation/run.verdict gathers them in registry
order.

Beside them, TOFU's forget quality (Maini et al. 2024): the p-value of a two-sample Kolmogorov-Smirnov test
between the edited model's and the twin's per-document LOSS statistic on the forget documents; p >= 0.05
reads as "cannot be told apart". TOFU computes it on the truth ratio; here the statistic is the one the LOSS
attack uses, so the number speaks to membership.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Tolerances:
    recall_tol: float = 0.1       # forgetting: forget recall and regurgitation at most the twin's + this
    # privacy: every held-out attack's AUC within this of the twin's. Twins of two fine-tune seeds differ by up to
    # 0.05 on an attack (benchmarks/twin_spread.py; the standard error of an AUC on 110 + 110 documents is ~0.04)
    auc_tol: float = 0.1
    utility_tol: float = 0.05     # utility: every retain term and MMLU at most this below the twin's (see above)
    recovery_tol: float = 0.05    # relearn, quantize, lens: worst admissible gap over the twin at most this


@dataclass
class Criterion:
    name: str
    passed: bool | None        # None: the numbers it needs are missing
    detail: str


@dataclass
class Verdict:
    against: str               # "retain-only baseline" | "ideal (no baseline)"
    criteria: list[Criterion] = field(default_factory=list)
    forget_quality: float | None = None   # KS p-value (needs a baseline)
    report: str | None = None             # report.html holding every number, linked from the notebook view

    @property
    def passed(self) -> bool | None:
        states = [c.passed for c in self.criteria]
        return None if None in states else all(states)

    def lines(self) -> list[str]:
        word = {True: "PASS", False: "FAIL", None: "n/a"}
        out = [f"verdict against the {self.against}: {word[self.passed]}"]
        out += [f"  {c.name:<11} {word[c.passed]:<4}  {c.detail}" for c in self.criteria]
        if self.forget_quality is not None:
            out.append(f"  forget quality (KS p-value of per-document loss vs the baseline, TOFU): "
                       f"{self.forget_quality:.3g}")
        return out

    def to_json(self) -> dict:
        return {"against": self.against, "passed": self.passed, "forget_quality": self.forget_quality,
                "criteria": [c.__dict__ for c in self.criteria]}

    @classmethod
    def from_json(cls, d: dict, report: str | None = None) -> "Verdict":
        return cls(d["against"], [Criterion(**c) for c in d["criteria"]], d.get("forget_quality"), report)

    def __repr__(self) -> str:
        return "\n".join(self.lines() + ([f"report: {self.report}"] if self.report else []))

    def _repr_html_(self) -> str:
        """PASS/FAIL per criterion with the edited model's number beside the baseline's, and the report's link."""
        import html

        from ..htmlview import COLORS, WORDS, table, verdict_word

        rows = [[c.name, verdict_word(c.passed), c.detail] for c in self.criteria]
        head = (f"<h3 style='color:{COLORS[self.passed]};margin:4px 0'>Verdict against the "
                f"{html.escape(self.against)}: {WORDS[self.passed]}</h3>")
        out = head + table(["criterion", "result", "edited vs the baseline (tolerance)"], rows, raw_columns=(1,))
        if self.forget_quality is not None:
            out += (f"<p style='margin:2px 0'>forget quality (KS p-value of per-document loss vs the baseline, "
                    f"TOFU; &ge; 0.05 reads as indistinguishable): {self.forget_quality:.3g}</p>")
        if self.report:
            out += (f"<p style='margin:2px 0'>every number and figure: <a href='{html.escape(self.report)}' "
                    f"target='_blank'>{html.escape(self.report)}</a></p>")
        return out


def _get(d, *path):
    for key in path:
        if not isinstance(d, dict) or d.get(key) is None:
            return None
        d = d[key]
    return d


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def forget_quality(edited: dict, baseline: dict) -> float | None:
    from scipy.stats import ks_2samp

    a = _get(edited, "mia", "statistics", "members", "loss")
    b = _get(baseline, "mia", "statistics", "members", "loss")
    return float(ks_2samp(a, b).pvalue) if a and b else None


def forgetting(edited: dict, baseline: dict | None, tol: Tolerances) -> Criterion:
    checks, parts = [], []
    for label, path in (("forget recall", ("qa_recall", "forget")), ("forget regurgitation", ("regurgitation", "forget"))):
        e = _get(edited, *path)
        ref = _get(baseline, *path) if baseline else 0.0
        if e is None or ref is None:
            continue
        checks.append(e <= ref + tol.recall_tol)
        parts.append(f"{label} {_fmt(e)} vs {_fmt(ref)} (+{tol.recall_tol})")
    return Criterion("forgetting", all(checks) if checks else None, "; ".join(parts) or "no QA/completions")


def split_attacks(aucs: dict, trained) -> tuple[list[str], list[str]]:
    """(held-out, trained) attack names among `aucs`: trained are those an editor of the run optimised."""
    trained = set(trained or ())
    return [a for a in aucs if a not in trained], [a for a in aucs if a in trained]


def privacy(edited: dict, baseline: dict | None, tol: Tolerances, trained=()) -> Criterion:
    aucs = _get(edited, "mia", "auc")
    if not aucs:
        return Criterion("privacy", None, "no MIA (the data has no holdout split)")
    ref_aucs = (_get(baseline, "mia", "auc") or {}) if baseline else {}
    held_out, trained_here = split_attacks(aucs, trained)
    if not held_out:
        return Criterion("privacy", None, f"every attack was trained on ({', '.join(trained_here)}): no held-out "
                                          "attack to decide privacy")
    gaps = {a: abs(aucs[a] - ref_aucs.get(a, 0.5)) for a in held_out}
    worst = max(gaps, key=gaps.get)
    note = f"; trained, not deciding: {', '.join(trained_here)}" if trained_here else ""
    return Criterion("privacy", all(g <= tol.auc_tol for g in gaps.values()),
                     f"held-out MIA AUC within {tol.auc_tol} of the {'twin' if baseline else 'ideal 0.5'} for "
                     f"{', '.join(held_out)}; largest gap {gaps[worst]:.3f} ({worst}: {aucs[worst]:.3f} vs "
                     f"{ref_aucs.get(worst, 0.5):.3f}){note}")


def utility(original: dict, edited: dict, baseline: dict | None, tol: Tolerances) -> Criterion:
    """Retain QA recall, every retain SemEval term and the final score's MMLU, each against the lower of the twin's
    and the original's (the original's alone without a twin)."""
    def ref(*path):
        values = [v for v in (_get(original, *path), _get(baseline, *path) if baseline else None) if v is not None]
        return min(values) if values else None

    items = [("retain recall", _get(edited, "qa_recall", "retain"), ref("qa_recall", "retain"))]
    terms = _get(edited, "semeval", "terms") or {}
    items += [(name.removeprefix("retain/"), terms[name], ref("semeval", "terms", name))
              for name in sorted(terms) if name.startswith("retain/")]
    items.append((f"MMLU ({_get(edited, 'mmlu', 'formulation')})", _get(edited, "mmlu", "accuracy"),
                  ref("mmlu", "accuracy")))
    items = [(label, e, r) for label, e, r in items if e is not None and r is not None]
    if not items:
        return Criterion("utility", None, "no retain QA, retain terms or MMLU")
    failed = [(label, e, r) for label, e, r in items if e < r - tol.utility_tol]
    worst = min(items, key=lambda x: x[1] - x[2])
    shown = failed or [worst]
    who = "the lower of the twin and the original" if baseline else "the original"
    return Criterion("utility", not failed,
                     f"{len(items) - len(failed)} of {len(items)} retain terms and MMLU within {tol.utility_tol} of "
                     f"{who}; " + "; ".join(f"{label} {e:.3f} vs {r:.3f}" for label, e, r in shown)
                     + ("" if failed else " (the largest drop)"))


def attack_criteria(attacks: dict, tol: float) -> list[Criterion]:
    """One criterion per attack of evaluation/attacks.run_attacks' results."""
    out = []
    for name in attacks["attacks"]:
        r = attacks[name]
        if name == "depth":
            out.append(_depth_criterion(r))
            continue
        w = r.get("worst")
        if w is None:
            out.append(Criterion(name, None, "no recovery number (needs the edited model and an admissible setting)"))
            continue
        out.append(Criterion(name, w["gap"] <= tol,
                             f"worst admissible setting {w['setting']}: recovered {w['edited']:+.3f} vs "
                             f"{'the twin' if w['against'] == 'twin' else 'ideal'} {w['reference']:+.3f} "
                             f"(gap <= {tol}; {sum(r['admissible'])} of {len(r['admissible'])} settings admissible)"))
    return out


def _depth_criterion(r: dict) -> Criterion:
    per = r["per_model"]
    e = (per.get("edited") or {}).get("uds")
    if e is None:
        return Criterion("depth", None, "no UDS (needs the edited model and a stage-1 drop above tau)")
    threshold = r["config"]["threshold"]
    checks = ", ".join(f"{n} {per[n]['uds']:.3f}" for n in ("twin", "original") if per.get(n, {}).get("uds") is not None)
    return Criterion("depth", e >= threshold,
                     f"UDS {e:.3f} (>= {threshold}; whole-sequence patches {per['edited']['uds_all_positions']:.3f}); "
                     f"as checks: {checks}; tau {r['config']['tau']}")
