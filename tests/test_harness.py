"""The run harness: model specs, the one loader, the twin, and a study's output directory (checks before any work,
lock, claim, log, content-keyed stages). A toy study written against it alone runs, resumes, and re-runs the stage
whose input changed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench import harness
from workbench.errors import ConfigError, OutputError
from workbench.harness import ModelSpec, Study, load_corpus, load_model, load_twin, source_dirs
from workbench.organism import cache_root


def test_model_specs_are_parsed_once_into_what_they_name(tmp_path):
    assert ModelSpec.parse("organism").organism == "default"
    assert ModelSpec.parse("organism:micro").organism == "micro"
    assert ModelSpec.parse("allenai/OLMo-1B-0724-hf").organism is None
    assert ModelSpec.parse("allenai/OLMo-1B-0724-hf").local_dir is None
    assert ModelSpec.parse(str(tmp_path)).local_dir == tmp_path.resolve()
    assert ModelSpec.parse("organism:micro").twin() == ModelSpec.parse("organism:micro-retain")
    assert ModelSpec.parse("organism:micro-retain").twin() is None   # a twin has no twin
    with pytest.raises(ConfigError, match="empty"):
        ModelSpec.parse(" ")


def test_source_dirs_name_the_organism_cache_and_local_models(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    assert source_dirs("organism:micro", "twin", None) == [cache_root()]
    assert source_dirs(str(model_dir), str(tmp_path / "missing"), "allenai/OLMo-1B-0724-hf") == [model_dir.resolve()]


def test_one_loader_for_organisms_and_directories(micro, tmp_path):
    model, tok, _ = micro
    by_name, _ = load_model("organism:micro")
    path = ModelSpec.parse("organism:micro").path()
    by_dir, _ = load_model(path)
    for a, b, c in zip(model.parameters(), by_name.parameters(), by_dir.parameters()):
        assert a.equal(b) and a.equal(c)
    corpus = load_corpus("organism", "organism:micro", tok)
    assert corpus.forget and corpus.retain
    with pytest.raises(ConfigError, match="data 'organism'"):
        load_corpus("organism", str(path))    # a directory names no organism, so it has no corpus of its own


def test_the_twin_is_found_where_there_is_one(micro_retain):
    twin = load_twin("auto", "organism:micro")
    assert twin is not None and twin[2] == ModelSpec.parse("organism:micro-retain")
    for a, b in zip(twin[0].parameters(), micro_retain[0].parameters()):
        assert a.equal(b)
    assert load_twin("auto", "organism:micro-retain") is None      # a twin has none
    assert load_twin("auto", "organism:micro", data="/some/lume") is None   # not the organism's corpus
    assert load_twin(None, "organism:micro") is None


def test_a_study_refuses_bad_outputs_before_any_work(tmp_path):
    source = tmp_path / "model"
    source.mkdir()
    with pytest.raises(ConfigError, match="overlaps the source model directory"):
        Study(source / "out", "out", sources=source_dirs(str(source)))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        Study(tmp_path / "file", "out")
    with pytest.raises(ConfigError, match="figures directory .* is not a directory"):
        Study(tmp_path / "ok", "out", figures=tmp_path / "file")
    other = tmp_path / "other"
    with Study(other, "out", claim="sweep"):
        pass
    with pytest.raises(OutputError, match="output of `workbench sweep`"):
        Study(other, "out", claim="toy")


def test_a_study_holds_its_directory_while_it_runs(tmp_path):
    with Study(tmp_path / "s", "toy output"):
        with pytest.raises(OutputError, match="toy output .* is in use by PID"):
            with Study(tmp_path / "s", "toy output"):
                pass
    with Study(tmp_path / "s", "toy output"):   # released
        pass


def toy_study(out: Path, model_spec: str, n_facts: int, say=lambda line: None) -> dict:
    """A study written against the harness alone: the first n_facts forget questions' lengths in tokens, one stage."""
    from workbench.provenance import records_hash

    study = Study(out, "toy output", sources=source_dirs(model_spec), claim="toy", log="toy.jsonl")
    with study:
        model, tok = load_model(model_spec)
        facts = load_corpus("organism", model_spec, tok).forget[:n_facts]
        stage = study.stage("lengths", say, data=records_hash(facts), config={"n": n_facts})
        result = study.dir / "lengths.json"
        if not stage.done(result):
            result.write_text(json.dumps([len(tok(r.input)["input_ids"]) for r in facts]))
            stage.finish()
        return {"lengths": json.loads(result.read_text()), "log": (study.dir / "toy.jsonl").read_text()}


def test_a_toy_study_resumes_by_content(micro, tmp_path):
    said = []
    first = toy_study(tmp_path / "toy", "organism:micro", 3)
    assert len(first["lengths"]) == 3 and '"stage_done"' in first["log"]
    again = toy_study(tmp_path / "toy", "organism:micro", 3)
    assert again["lengths"] == first["lengths"] and '"stage_reused"' in again["log"]
    changed = toy_study(tmp_path / "toy", "organism:micro", 2, say=said.append)
    assert len(changed["lengths"]) == 2
    assert said == ["      lengths runs again: the records' text, its settings changed"], said
    assert json.loads((tmp_path / "toy" / ".workbench-output.json").read_text())["command"] == "toy"
    with pytest.raises(ConfigError, match="overlaps the source model directory"):
        toy_study(cache_root() / "toy", "organism:micro", 1)


def test_load_organism_is_the_loader_and_the_corpus(micro):
    model, tok, corpus = harness.load_organism("micro")
    assert [r.text for r in corpus.forget] == [r.text for r in micro[2].forget]
    for a, b in zip(model.parameters(), micro[0].parameters()):
        assert a.equal(b)
