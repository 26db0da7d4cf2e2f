"""Bad input a careless or hostile user gives: every case is the project's own error, named, before any model work.

Config values are coerced by the dataclass field types (YAML reads `lr: 1e-3` as a string), ranges are checked,
a pipeline config is validated whole before its first stage, LUME files with bad bytes, types, empty fields or
duplicate ids are DataErrors naming file and line, over-long records are refused or cut before any model work,
and values that used to give silent wrong results with exit 0 are refused."""
from __future__ import annotations

import copy
import json
import warnings

import pytest
import yaml

from workbench.cli import main
from workbench.data import DataError, load_lume
from workbench.editors import resolve_config, unlearn
from workbench.errors import ConfigError, EditError, UserError
from workbench.pipeline import PipelineConfig, checked, run


# ---------------------------------------------------------------- config values
def test_yaml_learning_rate_is_a_number(tmp_path):
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"   # PyYAML's YAML 1.1 reads it as a string
    f = tmp_path / "rmu.yaml"
    f.write_text("lr: 1e-3\nepochs: '3'\nkeep_best: no\nparams: model.layers.{layer}.mlp.up_proj.weight\n")
    cfg = resolve_config("rmu", file=f)
    assert cfg.lr == 0.001 and cfg.epochs == 3 and cfg.keep_best is False
    assert cfg.params == ("model.layers.{layer}.mlp.up_proj.weight",)
    assert resolve_config("joint", overrides={"keep_best": "no"}).keep_best is False


@pytest.mark.parametrize("field, value, msg", [
    ("epochs", "three", "field 'epochs': expected int"),
    ("params", 5, "field 'params': expected a list of str"),
    ("lr", [1, 2], "field 'lr': expected float"),
    ("lr", "nan", "expected a finite number"),
    ("seed", 1.5, "field 'seed': expected int"),
    ("max_len", 0, "max_len must be >= 2"),
    ("eval_size", 0, "eval_size must be >= 1"),
    ("weight_decay", -5, "weight_decay must be >= 0"),
    ("keep_best", "maybe", "field 'keep_best': expected bool"),
    ("stages", [["ga", "x", 1e-3]], "field 'epochs': expected int"),
])
def test_wrong_types_and_ranges_are_config_errors(field, value, msg, tmp_path, capsys):
    method = "sequential" if field == "stages" else "rmu"
    with pytest.raises(ConfigError, match=msg):
        resolve_config(method, overrides={field: value})
    rc = main(["unlearn", "--method", method, "--layers", "0", "--out", str(tmp_path / "o"), "--quiet",
               "--set", f"{field}={json.dumps(value)}"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_set_with_a_quoted_number(tmp_path):
    assert resolve_config("rmu", overrides={"epochs": json.loads('"3"')}).epochs == 3


@pytest.mark.parametrize("mapping, msg", [
    ({"n_facts": "ten"}, "field 'n_facts': expected int or null"),
    ({"editor": {"lr": "fast"}}, "undo config field 'lr': expected float"),
    ({"editor": "lr"}, "field 'editor': expected dict"),
    ({"evaluation": {"bogus": 1}}, r"unknown evaluation field\(s\) \['bogus'\]"),
    ({"evaluation": {"max_new_tokens": 0}}, "max_new_tokens must be >= 1"),
    ({"method": "bogus"}, "method 'bogus'"),
    ({"n_samples": 0}, "n_samples must be >= 1"),
    ({"retrace_facts": 0}, "retrace_facts must be >= 1"),
    ({"kinds": "mlp", "select_kind": "attn"}, r"select_kind 'attn' is not traced; kinds are \['mlp'\]"),
    ({"kinds": ["mlp", "mpl"]}, r"kinds \['mlp', 'mpl'\]"),
    ({"preset": "nope"}, "unknown preset 'nope'"),
    ({"model": "organism:nope"}, "unknown organism"),
    ({"data": "no/such/dir"}, "data 'no/such/dir' does not exist"),
    ({"device": "gpu0"}, "not a torch device"),
    ({"long_records": "cut"}, "long records"),
])
def test_pipeline_config_is_validated_before_the_first_stage(mapping, msg, tmp_path, capsys):
    out = tmp_path / "run"
    f = tmp_path / "run.yaml"
    f.write_text(yaml.safe_dump({"model": "organism:micro", "out": str(out), **mapping}))
    with pytest.raises(UserError, match=msg):
        run(PipelineConfig.from_file(f), progress=False, say=lambda s: None)
    assert main(["run", "--config", str(f), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not out.exists(), "nothing ran"


def test_kinds_as_a_string_is_a_list():
    assert PipelineConfig.from_dict({"kinds": "mlp"}).kinds == ("mlp",)
    assert PipelineConfig.from_dict({"kinds": "resid, mlp"}).kinds == ("resid", "mlp")
    assert checked(PipelineConfig(kinds="mlp")).kinds == ("mlp",)


# ---------------------------------------------------------------- LUME files
def _lume_dir(tmp_path, forget_lines, retain_lines=None):
    d = tmp_path / "lume"
    d.mkdir(exist_ok=True)
    ok = {"id": "r1qa0", "input": "Who is Ann Lee?", "output": "A baker", "task": "Task2"}
    (d / "forget.jsonl").write_bytes(b"\n".join(forget_lines) + b"\n")
    (d / "retain.jsonl").write_bytes(b"\n".join(retain_lines or [json.dumps(ok).encode()]) + b"\n")
    return d


def _row(**kw):
    row = {"id": "f1qa0", "input": "Who is Tiffi Magenta?", "output": "A poet", "task": "Task2", **kw}
    return json.dumps(row).encode()


@pytest.mark.parametrize("lines, msg", [
    ([_row(), b'{"id": "f2qa0", "input": "Caf\xe9?", "output": "x", "task": "Task2"}'],
     r"forget.jsonl:2: not UTF-8 text \(byte 0xe9"),
    ([_row(subject=123)], "forget.jsonl:1: subject must be a non-empty string"),
    ([_row(subject="")], "subject must be a non-empty string"),
    ([_row(output="")], r"forget.jsonl:1: field\(s\) \['output'\] are empty"),
    ([_row(input="  ")], r"field\(s\) \['input'\] are empty"),
    ([_row(), _row(output="B")], r"forget.jsonl:2: duplicate record id 'f1qa0' \(first on line 1\)"),
    ([_row(input="Who is \ud800?")], "unpaired UTF-16 surrogate"),
    ([b"[" * 100000], "forget.jsonl:1: "),
])
def test_bad_lume_rows_are_data_errors(lines, msg, tmp_path, capsys):
    d = _lume_dir(tmp_path, lines)
    with pytest.raises(DataError, match=msg):
        load_lume(d)
    rc = main(["trace", "--model", "organism:micro", "--facts", "forget", "--data", str(d), "--out",
               str(tmp_path / "t"), "--formats", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "Traceback" not in err


def test_same_id_in_two_splits(tmp_path):
    d = _lume_dir(tmp_path, [_row()], [_row(input="Who is Bo Lin?")])
    with pytest.raises(DataError, match="record id 'f1qa0' is in both forget and retain"):
        load_lume(d)


# ---------------------------------------------------------------- record length bound
def test_long_record_refused_or_cut_before_model_work(micro, tmp_path, capsys):
    from workbench.data.limits import LongRecordWarning, bound_records

    _, tok, _ = micro
    long_q = "Who is Ann Lee? " + "very " * 5000 + "long question?"
    d = _lume_dir(tmp_path, [_row(), _row(id="f2qa0", input=long_q, subject="Ann Lee")])
    corpus = load_lume(d)
    with pytest.raises(DataError, match=r"record 'f2qa0' \(forget of .*\) is over the bound of 512 tokens"):
        bound_records(corpus, tok, 512)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cut = bound_records(corpus, tok, 512, on_long="truncate")
    assert [str(w.message) for w in caught if issubclass(w.category, LongRecordWarning)][0].startswith("record 'f2qa0'")
    r = cut.forget[1]
    assert len(tok(f"{r.input} {r.output}")["input_ids"]) <= 512 + 2 and r.input.endswith("long question?")
    assert r.subject is None and cut.forget[0] == corpus.forget[0]
    rc = main(["unlearn", "--method", "joint", "--layers", "0", "--model", "organism:micro", "--data", str(d),
               "--out", str(tmp_path / "u"), "--max-record-tokens", "512", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "f2qa0" in err and "over the bound" in err and not (tmp_path / ".u.work").exists()


def test_ten_megabyte_line_is_refused_quickly(micro, tmp_path):
    """A 10 MB record: only a prefix is tokenised to see that it is over the bound."""
    from workbench.data.limits import bound_records

    _, tok, _ = micro
    d = _lume_dir(tmp_path, [_row(input="Who is Ann Lee? " + "x" * 10_000_000)])
    with pytest.raises(DataError, match="over the bound of 2048 tokens"):
        bound_records(load_lume(d), tok)


# ---------------------------------------------------------------- silent wrong results, now refused
@pytest.mark.parametrize("argv, msg", [
    (["--n-facts", "0"], "re-trace n_facts must be >= 1"),
    (["--n-samples", "0"], "re-trace n_samples must be >= 1"),
    (["--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
    (["--mmlu-shots", "-1"], "mmlu_shots must be >= 0"),
])
def test_evaluate_flags_refused_before_loading(argv, msg, tmp_path, capsys, monkeypatch):
    import workbench.harness
    import workbench.models
    import workbench.organism

    monkeypatch.setattr(workbench.models, "load_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(workbench.harness, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(workbench.organism, "build", lambda *a, **k: pytest.fail("built a model"))
    assert main(["evaluate", "--model", "organism:micro", "--out", str(tmp_path / "e"), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_selection_of_another_model_is_refused(micro, tmp_path):
    from workbench.selection import LayerSelection

    model0, tok, corpus = micro
    other_depth = LayerSelection(layers=[0, 1], scores=[0.5, 0.4, 0.1, 0.0, 0.0, 0.0], strategy="window")
    with pytest.raises(EditError, match="scores 6 layers, but this model has 4"):
        unlearn(copy.deepcopy(model0), tok, corpus, "joint", other_depth.save(tmp_path / "s6.json"), None, tmp_path / "a")
    other_model = LayerSelection(layers=[0, 1], scores=[0.5, 0.4, 0.1, 0.0], strategy="window", provenance={
        "source_provenance": {"source_model": {"name": "organism:default", "fingerprint": "0123456789abcdef"}}})
    with pytest.raises(EditError, match=r"made on model organism:default \(fingerprint 0123456789abcdef\)"):
        unlearn(copy.deepcopy(model0), tok, corpus, "joint", other_model, None, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_json_outputs_hold_no_bare_nan(tmp_path):
    from workbench.provenance import atomic_write_json

    path = atomic_write_json(tmp_path / "s.json", {"peak": float("nan"), "scores": [1.0, float("inf")]})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "peak": None, "scores": [1.0, None]}


def test_sweep_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["sweep", "--method", "rmu", "--out", str(tmp_path / "f"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a directory" in err and "Traceback" not in err


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    import workbench.commands.select as select_cmd

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(select_cmd, "run", interrupted)
    assert main(["select", "whatever.json"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "workbench select: interrupted; resume with the same command"
