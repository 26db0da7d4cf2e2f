"""The verification report: side-by-side numbers, re-tracing cross-checked against direct traces, files, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.errors import ConfigError
from workbench.evaluation.config import EvalConfig
from workbench.report import evaluate
from workbench.evaluation.retrace import TraceConfig


@pytest.mark.slow
def test_report_side_by_side_and_retrace(micro, zeroed_micro, tmp_path):
    from workbench.tracing import noise_scale, trace_facts

    model, tok, corpus = micro
    tc = TraceConfig(kinds=("resid",), n_facts=2, n_samples=3, n_boot=50)
    rep = evaluate(model, tok, corpus, edited=(zeroed_micro, tok), trace_config=tc,
                   config=EvalConfig(max_new_tokens=24, limit=3), out_dir=tmp_path)
    o, e = rep.original, rep.edited
    # before unlearning the organism knows its facts and its forget docs are exposed
    assert o["qa_recall"]["forget"] > 0.8 and o["mia"]["auc"]["loss"] > 0.85
    assert o["semeval"]["task_agg"] < 0.3
    # the zeroed_micro model forgot (and everything else): recall falls, TaskAgg's forget terms rise
    assert e["qa_recall"]["forget"] < o["qa_recall"]["forget"] - 0.5
    assert e["semeval"]["terms"]["forget/Task2/knowledge"] > o["semeval"]["terms"]["forget/Task2/knowledge"]
    # re-tracing equals tracing both models directly with the original's noise sigma
    facts = corpus.facts("forget")[:2]
    sigma = noise_scale(model, tok, [r.subject for r in facts])
    assert rep.trace["noise"] == pytest.approx(sigma)
    kw = dict(kinds=("resid",), n_samples=3, noise=sigma, seed=0, metric=tc.metric, progress=False)
    direct_b = trace_facts(model, tok, facts, **kw)
    direct_a = trace_facts(zeroed_micro, tok, facts, **kw)
    ie_b = np.mean([r.indirect_effect("resid").max(axis=1) for r in direct_b], axis=0)
    ie_a = np.mean([r.indirect_effect("resid").max(axis=1) for r in direct_a], axis=0)
    got = rep.trace["kinds"]["resid"]
    assert np.allclose(got["ie_before"], ie_b, atol=1e-5)
    assert np.allclose(got["ie_after"], ie_a, atol=1e-5)
    assert np.allclose(got["ie_drop"], ie_b - ie_a, atol=1e-5)
    # files: every number in json with provenance; html with the table and embedded plotly figures
    js = json.loads((tmp_path / "report.json").read_text())
    assert js["provenance"]["model"]["fingerprint"] != js["provenance"]["edited_model"]["fingerprint"]
    assert js["original"]["mia"]["auc"] == o["mia"]["auc"]
    assert "trace_resid" in rep.figures and js["trace"]["facts"] == [r.id for r in facts]
    page = (tmp_path / "report.html").read_text()
    assert "MIA AUC loss" in page and page.count("plotly-graph-div") >= 2
    assert (tmp_path / "evaluate.log.jsonl").is_file()


@pytest.mark.slow
def test_cli_identity_edit(micro, tmp_path, capsys):
    from workbench.cli import main

    model, tok, _ = micro
    same = tmp_path / "same"
    model.save_pretrained(same)
    tok.save_pretrained(same)
    rc = main(["evaluate", "--model", "organism:micro", "--edited", str(same), "--data", "organism",
               "--out", str(tmp_path / "run"), "--limit", "2", "--no-trace", "--max-new-tokens", "16"])
    assert rc == 0
    js = json.loads((tmp_path / "run" / "report.json").read_text())
    # an unchanged model gets exactly the original's numbers
    for metric, orig, edited, delta in js["table"]:
        assert orig == pytest.approx(edited), metric
    assert js["trace"] is None and js["config"]["eval"]["limit"] == 2
    assert any("MMLU skipped" in n for n in js["original"]["notes"])
    capsys.readouterr()
    assert main(["evaluate", "--model", "organism:micro", "--out", str(tmp_path / "x"), "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(same), "--data", "organism", "--retain-baseline", "twin",
                 "--out", str(tmp_path / "y")]) == 2
    assert "--retain-baseline twin needs --model organism" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_on_real_lume(micro, lume, tmp_path, capsys):
    """The real LUME files (conftest.lume: skipped without them, failed in CI): no holdout, so MIA is reported as
    skipped."""
    from workbench.cli import main

    rc = main(["evaluate", "--model", "organism:micro", "--data", str(lume), "--out", str(tmp_path / "lume"),
               "--limit", "1", "--no-trace", "--max-new-tokens", "8"])
    assert rc == 0
    capsys.readouterr()
    js = json.loads((tmp_path / "lume" / "report.json").read_text())
    assert js["original"]["mia"] is None and js["original"]["semeval"]["complete"]
    assert 0.0 <= js["original"]["semeval"]["task_agg"] <= 1.0


@pytest.mark.slow
def test_retain_baseline_column_privleak_and_reference(micro, micro_retain, zeroed_micro, tmp_path):
    from workbench.evaluation import mia as mia_mod
    from workbench.evaluation.semeval import select

    model, tok, corpus = micro
    base = micro_retain[:2]
    cfg = EvalConfig(max_new_tokens=24, limit=3, trace=False)
    rep = evaluate(model, tok, corpus, edited=(zeroed_micro, tok), config=cfg, retain_baseline=base, out_dir=tmp_path)
    o, b = rep.original, rep.baseline
    # the twin never saw the forget set: it cannot answer it, and its forget docs look less like members
    assert b["qa_recall"]["forget"] <= 0.2 and b["qa_recall"]["retain"] >= 0.9
    assert b["mia"]["auc"]["loss"] < o["mia"]["auc"]["loss"]
    # privleak per attack against the twin's own AUC (MUSE); the reference attack, which the twin lacks, against 0.5
    for attack, leak in o["mia"]["privleak"].items():
        ref = b["mia"]["auc"].get(attack, 0.5)
        assert leak == pytest.approx(((1 - o["mia"]["auc"][attack]) - (1 - ref)) / (1 - ref) * 100), attack
    assert "reference" not in b["mia"]["auc"]
    # with no other reference given, the twin is the reference model: same AUC as asking for it directly
    members, nonmembers = [r.text for r in select(corpus.forget, 3)], [r.text for r in select(corpus.holdout, 3)]
    direct = mia_mod.mia(model, tok, members, nonmembers, reference=base)
    assert o["mia"]["auc"]["reference"] == pytest.approx(direct.auc["reference"])
    js = json.loads((tmp_path / "report.json").read_text())
    assert len(js["baseline_column"]) == len(js["table"])
    assert js["baseline_column"][0] == b["qa_recall"]["forget"]
    assert js["provenance"]["retain_baseline"]["fingerprint"] != js["provenance"]["model"]["fingerprint"]
    assert "retain-only baseline" in (tmp_path / "report.html").read_text()
    with pytest.raises(ConfigError, match="not both"):
        evaluate(model, tok, corpus, config=cfg, retain_baseline=base, retain_auc={"loss": 0.5})


def test_bad_config_fails_before_work(micro, tmp_path):
    model, tok, corpus = micro
    with pytest.raises(ConfigError, match="mmlu_shots"):
        evaluate(model, tok, corpus, config=EvalConfig(mmlu_shots=-1))
    with pytest.raises(ConfigError, match="pair"):
        evaluate(model, tok, corpus, edited=model)
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question": "2+2?", "choices": ["1", "2", "3", "4"], "answer": 3, "subject": "math",
                             "split": "test"}) + "\n")
    with pytest.raises(ConfigError, match="single token"):  # micro's vocabulary splits ' C'
        evaluate(model, tok, corpus, config=EvalConfig(mmlu_source=str(q), mmlu_shots=0))
