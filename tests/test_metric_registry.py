"""The evaluation registry: a metric is one class and one registry entry, and then it is in report.json, in the
report's table (json and html) and, with a threshold, in the verdict, where it can fail."""
from __future__ import annotations

import json

import pytest

from workbench.errors import ConfigError
from workbench.evaluation import registry
from workbench.evaluation.config import EvalConfig
from workbench.evaluation.metric import Metric
from workbench.evaluation.verdict import Criterion
from workbench.report import evaluate


class ZeroWeights(Metric):
    """A toy metric: the fraction of the model's weights that are exactly zero; its verdict line passes when the
    edited model's fraction is at most `threshold`."""
    name = "toy"

    def __init__(self, threshold: float | None = None):
        self.threshold = threshold

    def compute(self, model, tok, ctx, out: dict) -> None:
        params = list(model.parameters())
        zeros = sum(int((p == 0).sum()) for p in params)
        out["toy"] = {"zero_fraction": zeros / sum(p.numel() for p in params)}

    def rows(self, metrics: dict) -> list[tuple[str, tuple]]:
        return [("toy zero-weight fraction", ("toy", "zero_fraction"))]

    def criteria(self, original, edited, twin, result, cfg, trained=()) -> list:
        if self.threshold is None:
            return []
        e = edited["toy"]["zero_fraction"]
        return [Criterion("toy", e <= self.threshold, f"zero-weight fraction {e:.3f} (<= {self.threshold})")]


CHEAP = EvalConfig(max_new_tokens=2, limit=1, trace=False, gradnorm=False)


def test_a_registered_metric_is_in_the_report_table_and_verdict(micro, zeroed_micro, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "METRICS", dict(registry.METRICS))
    toy = registry.register(ZeroWeights(threshold=0.5))
    rep = evaluate(micro[0], micro[1], micro[2], edited=(zeroed_micro, micro[1]), config=CHEAP, out_dir=tmp_path)
    js = json.loads((tmp_path / "report.json").read_text())
    original, edited = js["original"]["toy"]["zero_fraction"], js["edited"]["toy"]["zero_fraction"]
    assert original < 0.01 and 0.1 < edited < 0.5
    # its row, after every built-in row, in report.json's table and in report.html
    assert js["table"][-1] == ["toy zero-weight fraction", original, edited, pytest.approx(edited - original)]
    page = (tmp_path / "report.html").read_text()
    assert "<td>toy zero-weight fraction</td>" in page
    # its verdict line, after the built-in ones, passing
    lines = {c["name"]: c for c in js["verdict"]["criteria"]}
    assert list(lines)[:3] == ["forgetting", "privacy", "utility"] and list(lines)[-1] == "toy"
    assert lines["toy"]["passed"] is True and "(<= 0.5)" in lines["toy"]["detail"]
    assert any(line.split()[:2] == ["toy", "PASS"] for line in rep.verdict_lines())
    assert ">toy</td><td style='color:#1a7f37;font-weight:bold'>PASS" in page

    # the same metric with a threshold the zeroed_micro model does not meet: its line fails, and so does the verdict
    toy.threshold = 0.05
    rep = evaluate(micro[0], micro[1], micro[2], edited=(zeroed_micro, micro[1]), config=CHEAP, out_dir=tmp_path / "fail")
    js = json.loads((tmp_path / "fail" / "report.json").read_text())
    lines = {c["name"]: c for c in js["verdict"]["criteria"]}
    assert lines["toy"]["passed"] is False and js["verdict"]["passed"] is False
    assert any(line.split()[:2] == ["toy", "FAIL"] for line in rep.verdict_lines())
    assert ">toy</td><td style='color:#cf222e;font-weight:bold'>FAIL" in (tmp_path / "fail" / "report.html").read_text()


def test_a_metric_without_a_threshold_reports_without_judging(micro, zeroed_micro, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "METRICS", dict(registry.METRICS))
    registry.register(ZeroWeights())
    rep = evaluate(micro[0], micro[1], micro[2], edited=(zeroed_micro, micro[1]), config=CHEAP)
    assert rep.table()[-1][0] == "toy zero-weight fraction"
    assert "toy" not in {c["name"] for c in rep.verdict["criteria"]}


def test_the_registry_checks_names_needs_and_order(monkeypatch):
    monkeypatch.setattr(registry, "METRICS", dict(registry.METRICS))
    assert list(registry.METRICS) == ["recall", "mia", "mmlu", "semeval", "attacks"]
    # compute order: an entry after those it needs (the SemEval pass takes the MIA score and MMLU accuracy)
    assert [m.name for m in registry.compute_order()] == ["mia", "mmlu", "recall", "semeval", "attacks"]
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(ZeroWeights())  # named "toy": fine once
        registry.register(ZeroWeights())
    late = ZeroWeights()
    late.name, late.needs = "late", ("nowhere",)
    with pytest.raises(ConfigError, match="not registered"):
        registry.register(late)
    with pytest.raises(ConfigError, match="named"):
        registry.register(object())
