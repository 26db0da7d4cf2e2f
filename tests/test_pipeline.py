"""The main job end to end on the micro organism: artifacts, provenance, resume, clear config errors."""
from __future__ import annotations

import json

import pytest

from workbench.errors import ConfigError
from workbench.pipeline import PipelineConfig, run


def _micro_cfg(out) -> PipelineConfig:
    return PipelineConfig(model="organism:micro", out=str(out), n_facts=3, n_samples=3, window=2,
                          retrace_facts=3, evaluation={"limit": 3, "max_new_tokens": 24},
                          figures=str(out) + "-figures")  # never the repo's figures/


@pytest.mark.slow
def test_pipeline_on_micro_and_resume(tmp_path):
    cfg = _micro_cfg(tmp_path / "run")
    lines = []
    report = run(cfg, progress=False, say=lines.append)
    run_dir = report.parent
    assert report.is_file() and (run_dir / "report.json").is_file()
    sel = json.loads((run_dir / "selection.json").read_text())
    assert sel["type"] == "LayerSelection" and len(sel["layers"]) == 2
    assert (run_dir / "edited_model" / "model.safetensors").is_file()
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["edited"]["qa_recall"]["forget"] < rep["original"]["qa_recall"]["forget"], "the edit must forget something"
    assert rep["provenance"]["versions"]["torch"]
    # the organism's retain-only twin is the baseline by default: a third column, and the reference attack runs
    assert rep["baseline"]["qa_recall"]["forget"] < rep["original"]["qa_recall"]["forget"]
    assert "reference" in rep["original"]["mia"]["auc"] and "micro-retain" in rep["provenance"]["retain_baseline"]["name"]
    # ... built (or found cached) by a second process started with the run, which ended cleanly
    events = [json.loads(l) for l in (run_dir / "pipeline.log.jsonl").read_text().splitlines()]
    assert [e["returncode"] for e in events if e["event"] == "twin_build"] == [0]
    assert (run_dir / "figures" / "layer_importance.html").is_file()
    assert any("selected layers" in l for l in lines)
    # the recovery attacks run by default: their section, figures and verdict lines
    assert rep["attacks"]["attacks"] == ["relearn", "quantize", "lens", "depth"]
    assert {"relearn", "quantize", "lens", "depth"} <= {c["name"] for c in rep["verdict"]["criteria"]}
    assert "Does it come back?" in report.read_text() and (run_dir / "figures" / "attack_depth.html").is_file()

    # a second run with the same config reuses the trace and the edited model instead of redoing them
    run(cfg, progress=False, say=lambda s: None)
    events = [json.loads(l) for l in (run_dir / "pipeline.log.jsonl").read_text().splitlines()]
    reused = {e["stage"] for e in events if e["event"] == "stage_reused"}
    assert reused == {"trace", "unlearn"}


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown pipeline config key"):
        PipelineConfig.from_dict({"modle": "organism"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        PipelineConfig.from_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        PipelineConfig.from_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["organism.yaml", "olmo-1b-lume.yaml", "sweep.yaml"])
def test_example_configs_parse(name):
    from pathlib import Path

    from workbench.pipeline import checked

    cfg = PipelineConfig.from_file(Path(__file__).resolve().parents[1] / "configs" / name)
    if cfg.model.startswith("organism"):   # validated whole, editor overrides included (the 1B config needs a GPU)
        cfg = checked(cfg)
    assert cfg.method and cfg.strategy in ("window", "top-k", "threshold")


def test_the_spelled_out_default_config_is_the_default():
    """configs/organism.yaml is what `workbench run` does with no --config: every field but its out."""
    from dataclasses import fields
    from pathlib import Path

    spelled = PipelineConfig.from_file(Path(__file__).resolve().parents[1] / "configs" / "organism.yaml")
    default = PipelineConfig()
    differ = {f.name: (getattr(spelled, f.name), getattr(default, f.name)) for f in fields(PipelineConfig)
              if f.name != "out" and getattr(spelled, f.name) != getattr(default, f.name)}
    assert not differ


def test_run_refuses_out_that_holds_its_source_model(micro, tmp_path, capsys):
    """A previous run's edited_model as `model` and that run's directory as `out`: the source is never touched."""
    import shutil

    from workbench import organism
    from workbench.cli import main

    run_dir = tmp_path / "run"
    source = run_dir / "edited_model"
    shutil.copytree(organism.build("micro", progress=False), source)
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    cfg = PipelineConfig(model=str(source), data=str(source), out=str(run_dir), n_facts=2, n_samples=2,
                         kinds=("mlp",), window=2, retrace_facts=2, retain_baseline=None, figures=None,
                         evaluation={"limit": 2, "max_new_tokens": 8}, editor={"max_steps": 1})
    with pytest.raises(ConfigError, match="overlaps the source model directory") as e:
        run(cfg, progress=False, say=lambda s: None)
    assert str(run_dir.resolve()) in str(e.value) and str(source.resolve()) in str(e.value)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["edited_model"], "refused before any stage wrote"

    (tmp_path / "run.yaml").write_text(f"model: {source}\ndata: {source}\nout: {source}/inner\n")
    assert main(["run", "--config", str(tmp_path / "run.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "overlaps the source" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
