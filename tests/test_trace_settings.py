"""One set of tracing defaults: every entry point traces the same way unless told otherwise.

`workbench trace` + `workbench select` give the pipeline's trace-stage importance (to 1e-6) and layers on the same
model. The issue asks for it on the default organism; WORKBENCH_TEST_ORGANISM=default runs it there (minutes), the
suite runs it on micro."""
from __future__ import annotations

import json
import os
from dataclasses import fields

import numpy as np
import pytest

from workbench.errors import ConfigError
from workbench.trace_settings import TraceSettings

ORGANISM = os.environ.get("WORKBENCH_TEST_ORGANISM", "micro")


def test_every_entry_point_defaults_to_the_shared_settings():
    from workbench.cli import build_parser
    from workbench.evaluation.retrace import TraceConfig
    from workbench.localize import LocalizeConfig
    from workbench.pipeline import PipelineConfig, retrace_config, trace_settings

    d = TraceSettings()
    assert (d.metric, d.position, d.min_total_effect, d.n_samples, d.kinds) == (
        "logprob_mean", "last_subject", 0.5, 10, ("resid", "mlp", "attn"))
    assert trace_settings(PipelineConfig()) == d
    assert LocalizeConfig().trace_settings() == d
    retrace = retrace_config(PipelineConfig())
    assert TraceSettings(**{f.name: getattr(retrace, f.name) for f in fields(TraceSettings)}) == d
    assert TraceConfig().metric == d.metric and TraceConfig().position == d.position
    args = build_parser().parse_args(["trace", "--facts", "forget", "--out", "x"])
    assert (args.metric, args.position, args.min_total_effect, args.samples, args.kinds, args.n_boot) == (
        d.metric, d.position, d.min_total_effect, d.n_samples, ",".join(d.kinds), d.n_boot)
    args = build_parser().parse_args(["evaluate", "--model", "organism", "--out", "x"])
    assert args.n_samples == d.n_samples


@pytest.mark.parametrize("values, msg", [
    ({"metric": "logit"}, "metric 'logit' unknown"),
    ({"position": "first"}, "position 'first' unknown"),
    ({"n_samples": 0}, "n_samples must be >= 1"),
    ({"min_total_effect": -1.0}, "min_total_effect must be a number >= 0"),
    ({"min_total_effect": float("nan")}, "min_total_effect must be a number >= 0"),
    ({"window": 0}, "window must be >= 1"),
    ({"noise": 0.0}, "noise must be a finite number > 0"),
    ({"kinds": "mlp,mpl"}, r"kinds \['mlp', 'mpl'\]: expected some of"),
    ({"n_boot": 0}, "n_boot must be >= 1"),
])
def test_one_validation_names_the_setting_as_each_entry_point_calls_it(values, msg):
    from workbench.commands.trace import FLAGS

    with pytest.raises(ConfigError, match=msg):
        TraceSettings(**values).check()
    with pytest.raises(ConfigError, match=f"^pipeline config: {msg}"):
        TraceSettings(**values).check(lambda key: f"pipeline config: {key}")
    field = next(iter(values))
    with pytest.raises(ConfigError, match=f"^{FLAGS[field]} "):
        TraceSettings(**values).check(FLAGS.get)


def test_a_bad_setting_is_refused_by_every_entry_point(tmp_path, capsys):
    from workbench.cli import main
    from workbench.evaluation.retrace import TraceConfig
    from workbench.localize import LocalizeConfig
    from workbench.pipeline import PipelineConfig, checked

    with pytest.raises(ConfigError, match="pipeline config: min_total_effect"):
        checked(PipelineConfig(min_total_effect=-1.0))
    with pytest.raises(ConfigError, match="localize config: position 'first'"):
        LocalizeConfig.from_dict({"position": "first"})
    with pytest.raises(ConfigError, match="re-trace metric 'logit'"):
        TraceConfig(metric="logit")
    assert main(["trace", "--facts", "forget", "--min-total-effect", "-1", "--out", str(tmp_path / "t")]) == 2
    assert "--min-total-effect must be a number >= 0" in capsys.readouterr().err
    assert main(["select", str(tmp_path), "--position", "first"]) == 2
    assert "--position 'first' unknown" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("organism", [ORGANISM])
def test_trace_and_select_give_the_pipelines_importance_and_layers(organism, tmp_path, capsys):
    """`workbench trace` + `workbench select` on the pipeline's facts = the pipeline's trace and select stages, the
    importance to 1e-6; the CLI's former defaults (prob, position max, no floor) give other numbers on the same run,
    so the comparison can fail."""
    from workbench import pipeline
    from workbench.aggregate import LayerImportance
    from workbench.cli import main
    from workbench.harness import load_corpus, load_model
    from workbench.selection import LayerSelection

    cfg = pipeline.checked(pipeline.PipelineConfig(model=f"organism:{organism}", out=str(tmp_path / "run")))
    model, tok = load_model(cfg.model)
    facts = pipeline.forget_facts(cfg, load_corpus(cfg.data, cfg.model))
    _, importances = pipeline.trace(cfg, model, tok, facts, progress=False)
    selection = pipeline.select(cfg, importances)

    out = tmp_path / "trace"
    assert main(["trace", "--model", cfg.model, "--facts", "forget", "--task", cfg.task, "--limit", str(cfg.n_facts),
                 "--formats", "none", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert main(["select", str(out), "--kind", cfg.select_kind, "--strategy", cfg.strategy,
                 "--window", str(cfg.window), "--out", str(tmp_path / "selection.json")]) == 0
    capsys.readouterr()
    assert summary["n_facts"] == len(facts) and summary["n_facts_excluded"] == importances["mlp"].n_facts_excluded
    assert importances["mlp"].n_facts >= 3, "too few facts above the floor for the comparison to mean anything"
    for kind, imp in importances.items():
        cli = LayerImportance.load(out / f"importance_{kind}.json")
        for a in ("mean", "lo", "hi", "per_fact"):
            np.testing.assert_allclose(getattr(cli, a), getattr(imp, a), rtol=0, atol=1e-6, err_msg=f"{kind} {a}")
    cli_sel = LayerSelection.load(tmp_path / "selection.json")
    assert cli_sel.layers == selection.layers
    np.testing.assert_allclose(cli_sel.scores, selection.scores, rtol=0, atol=1e-6)

    old = tmp_path / "old-defaults"
    assert main(["trace", "--model", cfg.model, "--facts", "forget", "--task", cfg.task, "--limit", str(cfg.n_facts),
                 "--metric", "prob", "--position", "max", "--min-total-effect", "0", "--formats", "none",
                 "--out", str(old)]) == 0
    capsys.readouterr()
    before = LayerImportance.load(old / "importance_mlp.json")
    assert np.abs(before.mean - importances["mlp"].mean).max() > 1e-3
