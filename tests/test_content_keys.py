"""Every cached or resumed stage is keyed on the content of what it read: the model's files, the records' text, its
settings and the keys of the stages it used. New weights or new text at the same paths run the stages again, and
the log says why in one line; unchanged inputs are reused; a checkpoint is hashed once, not once per run."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.pipeline import PipelineConfig, run
from workbench.provenance import file_digest, key_change, key_parts, weights_hash

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def micro_copy(root: Path) -> tuple[Path, Path]:
    """The micro organism's model files in root/m and its forget/retain records in root/data."""
    from workbench import organism

    src = organism.build("micro", progress=False)
    (root / "m").mkdir(parents=True)
    (root / "data").mkdir()
    for name in MODEL_FILES:
        shutil.copy(src / name, root / "m" / name)
    for name in ("forget.jsonl", "retain.jsonl"):
        shutil.copy(src / name, root / "data" / name)
    return root / "m", root / "data"


def perturb(model_dir: Path, scale: float = 1e-3) -> None:
    """New weights at the same path: every tensor of the checkpoint moved a little (same shapes, same keys)."""
    from safetensors.torch import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = load_file(str(path))
    g = torch.Generator().manual_seed(1)
    save_file({k: v + scale * torch.randn(v.shape, generator=g) for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})


def small_config(model: Path, data: Path, out: Path, **over) -> PipelineConfig:
    return PipelineConfig(model=str(model), data=str(data), out=str(out), figures=None, task=None, n_facts=3,
                          min_total_effect=0.0, n_samples=2, kinds=("mlp",), method="ga",
                          editor={"max_steps": 1, "eval_size": 2}, retrace_facts=1, retain_baseline=None,
                          evaluation={"attacks": "none", "limit": 2, "trace": False, "max_new_tokens": 8}, **over)


@pytest.fixture
def html_figures(monkeypatch):
    """The run's figures as HTML only: a PNG export starts Chromium, 19 of a small run's 20 s."""
    import workbench.figures

    monkeypatch.setattr(workbench.figures, "browser_path", lambda: None)


def events(run_dir: Path, since: int = 0) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "pipeline.log.jsonl").read_text().splitlines()[since:]]


# ---------------------------------------------------------------- the weights' content hash
def test_weights_hash_follows_content_and_reads_an_unchanged_file_once(micro, tmp_path, monkeypatch):
    import workbench.provenance as prov

    model, _ = micro_copy(tmp_path)
    other = tmp_path / "elsewhere"
    shutil.copytree(model, other)
    assert weights_hash(model) == weights_hash(other), "the same files hash the same wherever they are"

    reads = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: reads.append(self.name) or real_open(self, *a, **k))
    monkeypatch.setattr(prov, "_DIGESTS", {})               # a new process: only the on-disk cache is left
    before = weights_hash(model)
    assert "model.safetensors" not in reads, "an unchanged checkpoint is not read again"

    saved = (model / "model.safetensors").stat()
    perturb(model)
    os.utime(model / "model.safetensors", ns=(saved.st_atime_ns, saved.st_mtime_ns))  # as `cp -p` keeps mtimes
    assert weights_hash(model) != before, "new weights at the same path, with the old mtime, hash differently"
    assert reads.count("model.safetensors") == 1

    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "rope_theta": 1234.0}))
    assert weights_hash(model) != weights_hash(other), "the config is part of the model's content"
    assert file_digest(other / "model.safetensors") != file_digest(model / "model.safetensors")


def test_key_change_names_what_changed():
    key = key_parts(model="a", data="b", config={"n": 1})
    assert key_change(key, key) is None
    assert key_change(key_parts(model="a", data="c", config={"n": 1}), key) == "the records' text changed"
    assert "the model's files" in key_change(key_parts(model="z", data="b", config={"n": 2}), key)
    assert key_change("0123abcd", key) == "no content key was recorded for it"


# ---------------------------------------------------------------- run: D1, D2
def test_run_reruns_its_stages_when_the_weights_or_the_text_change_and_reuses_them_otherwise(micro, tmp_path,
                                                                                              html_figures):
    model, data = micro_copy(tmp_path)
    cfg = small_config(model, data, tmp_path / "run")
    lines = []
    run(cfg, progress=False, say=lines.append)
    run_dir = tmp_path / "run"
    n = len(events(run_dir))

    run(cfg, progress=False, say=lines.append)                   # nothing changed: both stages reused
    assert {e["stage"] for e in events(run_dir, n) if e["event"] == "stage_reused"} == {"trace", "unlearn"}
    n = len(events(run_dir))

    perturb(model)                                               # D1: new weights at the same path
    lines.clear()
    run(cfg, progress=False, say=lines.append)
    new = events(run_dir, n)
    assert not [e for e in new if e["event"] == "stage_reused"]
    reasons = {e["stage"]: e["reason"] for e in new if e["event"] == "stage_rerun"}
    assert set(reasons) == {"trace", "unlearn"} and all("the model's files" in r for r in reasons.values()), reasons
    assert any(l.strip().startswith("trace runs again: the model's files") for l in lines), lines
    edit = json.loads((run_dir / "edited_model" / "unlearn.json").read_text())["provenance"]
    assert edit["source_weights"] == weights_hash(model), "the edit was made from the new weights"
    n = len(events(run_dir))

    forget = data / "forget.jsonl"                               # D2: new text, the same record ids
    forget.write_text(forget.read_text().replace('"output": "', '"output": "CHANGED '))
    run(cfg, progress=False, say=lambda s: None)
    reasons = {e["stage"]: e["reason"] for e in events(run_dir, n) if e["event"] == "stage_rerun"}
    assert set(reasons) == {"trace", "unlearn"} and all("the records' text" in r for r in reasons.values()), reasons


# ---------------------------------------------------------------- sweep: D3, D4
def test_sweep_edits_again_the_windows_of_another_method_or_model(micro, tmp_path, capsys):
    out = tmp_path / "sw"
    flags = ["--window", "4", "--keep-models", "--no-mia", "--no-mmlu", "--quiet", "--out", str(out)]
    assert main(["sweep", "--method", "ga", "--steps", "1", *flags]) == 0
    (out / "sweep.json").unlink()                                # as if killed before the end
    assert main(["sweep", "--method", "rmu", "--steps", "2", *flags]) == 0
    assert json.loads((out / "sweep.json").read_text())["method"] == "rmu"
    made = [json.loads(p.read_text())["method"] for p in (out / "models").glob("*/unlearn.json")]
    assert made == ["rmu"], "the ga window was edited again with rmu, not reused"
    log = [json.loads(l) for l in (out / "sweep.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in log if e["event"] == "window_rerun"] == ["its settings changed"]

    model, data = micro_copy(tmp_path)                           # D4: another model (other weights)
    perturb(model)
    (out / "sweep.json").unlink()
    assert main(["sweep", "--method", "rmu", "--steps", "2", "--model", str(model), "--data", str(data), *flags]) == 0
    log = [json.loads(l) for l in (out / "sweep.jsonl").read_text().splitlines()]
    assert "the model's files" in [e for e in log if e["event"] == "window_rerun"][-1]["reason"]
    edit = json.loads(next((out / "models").glob("*/unlearn.json")).read_text())
    assert edit["provenance"]["source_weights"] == weights_hash(model), "the window was made from the new model"
    capsys.readouterr()

    (out / "sweep.json").unlink()                                # the same inputs again: the window is reused
    assert main(["sweep", "--method", "rmu", "--steps", "2", "--model", str(model), "--data", str(data), *flags]) == 0
    log = [json.loads(l) for l in (out / "sweep.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "window_reused"


# ---------------------------------------------------------------- localize's saved traces
def test_localize_trace_is_keyed_on_the_records_text(micro, tmp_path):
    import dataclasses

    from workbench.localize import LocalizeConfig, trace_set

    model, tok, corpus = micro
    facts = corpus.facts("forget")[:4]
    cfg = LocalizeConfig(n_samples=2, min_total_effect=0.0, n_boot=10, kinds=("mlp",), kind="mlp")
    path, log = tmp_path / "main.json", []
    record = lambda event, **f: log.append((event, f))
    trace_set(model, tok, facts, cfg, ("mlp",), path, False, record, model_key="k")
    trace_set(model, tok, facts, cfg, ("mlp",), path, False, record, model_key="k")
    assert [e for e, _ in log] == ["traced", "trace_reused"]
    changed = [dataclasses.replace(facts[0], output=facts[0].output + " x"), *facts[1:]]   # same ids, new text
    trace_set(model, tok, changed, cfg, ("mlp",), path, False, record, model_key="k")
    trace_set(model, tok, changed, cfg, ("mlp",), path, False, record, model_key="other weights")
    assert [(e, f.get("reason")) for e, f in log[2:] if e == "trace_rerun"] == [
        ("trace_rerun", "the records' text changed"), ("trace_rerun", "the model's files (weights, config or "
                                                                      "tokenizer) changed")]


# ---------------------------------------------------------------- the edited model a run reuses
def test_run_removes_only_the_edited_model_it_recorded(micro, tmp_path, capsys, html_figures):
    """An edited model the run made is replaced when its inputs change; a link, or one holding a user's file or
    changed since, is refused and left as it is (T7)."""
    from workbench.errors import ConfigError

    model, data = micro_copy(tmp_path)
    cfg = small_config(model, data, tmp_path / "run")
    run(cfg, progress=False, say=lambda s: None)
    edited = tmp_path / "run" / "edited_model"
    (edited / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files the run did not write \(notes.txt\)"):
        run(small_config(model, data, tmp_path / "run", seed=1), progress=False, say=lambda s: None)
    assert (edited / "notes.txt").read_text() == "mine"

    elsewhere = tmp_path / "elsewhere"
    (edited / "notes.txt").unlink()
    edited.rename(elsewhere)
    edited.symlink_to(elsewhere)
    assert main(["run", "--config", _yaml(tmp_path, cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "edited_model is in the way" in err and "symbolic link" in err and "Traceback" not in err
    assert edited.is_symlink() and (elsewhere / "model.safetensors").is_file()


def _yaml(tmp_path: Path, cfg: PipelineConfig) -> str:
    import dataclasses

    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v
                                    for k, v in dataclasses.asdict(cfg).items()}))
    return str(path)


def test_the_hashing_benchmark_names_the_cost():
    """benchmarks/hashing.py (quick): the hash's cost against a plain read, and the cached check, on the same bytes."""
    from benchmarks import hashing

    sec = hashing.run(quick=True, log=lambda *_: None)
    assert sec.goals[0]["equal"] and sec.data["hash_s"] > 0 and sec.data["cached_s"] < sec.data["hash_s"]
    assert "Hashing costs" in sec.markdown and f"{sec.data['ratio']:.1f}x a plain read" in sec.markdown


def test_an_edited_model_from_before_stamps_recorded_it_is_recognised(tmp_path):
    """A run directory an older workbench made: its bare-key stamp and an edited model holding only what `unlearn`
    writes are that run's (replaced when the stage runs again); a user's file in it, or a JSON stamp, is not."""
    from workbench.harness import Stage
    from workbench.pipeline import _legacy_edit

    run_dir, edited = tmp_path / "run", tmp_path / "run" / "edited_model"
    edited.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "unlearn.json", "log.jsonl"):
        (edited / name).write_text("{}")
    (run_dir / ".unlearn.stamp").write_text("a0d75af40ccfc148")
    stage = Stage(run_dir, "unlearn", lambda *a, **k: None, lambda s: None, model="m")
    assert stage.saved == {} and _legacy_edit(edited, stage)
    (edited / "notes.txt").write_text("mine")
    assert not _legacy_edit(edited, stage)
    (edited / "notes.txt").unlink()
    (run_dir / ".unlearn.stamp").write_text(json.dumps({"key": "k", "parts": {}}))
    assert not _legacy_edit(edited, Stage(run_dir, "unlearn", lambda *a, **k: None, lambda s: None, model="m"))
