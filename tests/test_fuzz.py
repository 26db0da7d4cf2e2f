"""Fuzzing the two readers of user files, the LUME loader and the config reader: whatever the input, it either
loads or raises the project's own error type (workbench.errors.UserError), never anything else.

Inputs mix raw bytes, broken JSON, rows with every field of the wrong type, and near-valid rows, so the
examples reach past the first check."""
from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.configfile import read_mapping
from workbench.data import load_lume
from workbench.editors import EDITORS, resolve_config
from workbench.errors import UserError
from workbench.pipeline import PipelineConfig, checked

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=30))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=12)
record_id = st.one_of(st.from_regex(r"\A[a-z0-9]{1,6}(sc|qa)[0-9]{1,3}\Z"), st.text(max_size=12))
field_value = st.one_of(st.text(max_size=40), json_value)


@st.composite
def lume_row(draw) -> bytes:
    kind = draw(st.sampled_from(["valid", "fields", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80)).replace(b"\n", b" ")
    if kind == "json":
        return json.dumps(draw(json_value)).encode()
    row = {"id": draw(record_id), "input": draw(st.text(min_size=1, max_size=40)), "output": draw(st.text(max_size=20)),
           "task": draw(st.sampled_from(["Task1", "Task2", "Task3", ""]))}
    if kind == "fields":
        for key in draw(st.lists(st.sampled_from(["id", "input", "output", "task", "subject", "extra"]), max_size=3)):
            if draw(st.booleans()):
                row.pop(key, None)
            else:
                row[key] = draw(field_value)
    elif draw(st.booleans()):
        row["subject"] = draw(st.one_of(st.sampled_from([row["input"][:5], ""]), field_value))
    return json.dumps(row, ensure_ascii=draw(st.booleans())).encode()


@FUZZ
@given(forget=st.lists(lume_row(), min_size=0, max_size=6), retain=st.lists(lume_row(), min_size=1, max_size=4))
def test_lume_loader_loads_or_raises_data_error(tmp_path_factory, forget, retain):
    d = tmp_path_factory.mktemp("lume")
    (d / "forget.jsonl").write_bytes(b"\n".join(forget) + b"\n")
    (d / "retain.jsonl").write_bytes(b"\n".join(retain))
    try:
        corpus = load_lume(d)
    except UserError:
        return
    for r in corpus.forget + corpus.retain:
        assert r.id and r.input.strip() and r.output.strip() and r.kind in ("qa", "sc")
        assert r.subject is None or r.subject in r.input
    assert len({r.id for r in corpus.forget + corpus.retain}) == len(corpus.forget) + len(corpus.retain)


PIPELINE_KEYS = [f for f in PipelineConfig.__dataclass_fields__] + ["bogus"]
EDITOR_KEYS = ["lr", "epochs", "max_steps", "batch_size", "keep_best", "params", "stages", "seed", "max_len",
               "eval_size", "weight_decay", "alpha", "m_init", "m_max", "freeze_mode", "retain_loss", "hook_layer",
               "max_grad_norm", "dtype", "nope"]
config_value = st.one_of(json_value, st.sampled_from(["1e-3", "3", "no", "yes", "mlp", "resid,mlp", "organism:micro",
                                                      "joint", "window", "-1", "0", "nan"]))


@FUZZ
@given(mapping=st.dictionaries(st.sampled_from(PIPELINE_KEYS), config_value, max_size=5),
       editor=st.dictionaries(st.sampled_from(EDITOR_KEYS), config_value, max_size=3))
def test_pipeline_config_reader_accepts_or_raises_config_error(mapping, editor):
    mapping = {"model": "organism:micro", **mapping}
    if "editor" not in mapping:
        mapping["editor"] = editor
    try:
        cfg = checked(PipelineConfig.from_dict(mapping))
    except UserError:
        return
    assert cfg.n_samples >= 1 and cfg.kinds and cfg.select_kind in cfg.kinds


@FUZZ
@given(method=st.sampled_from(list(EDITORS) + ["bogus"]),
       overrides=st.dictionaries(st.sampled_from(EDITOR_KEYS), config_value, max_size=4))
def test_editor_config_accepts_or_raises_config_error(method, overrides):
    try:
        cfg = resolve_config(method, overrides=overrides)
    except UserError:
        return
    assert cfg.lr > 0 and cfg.epochs >= 1 and cfg.max_len >= 2 and isinstance(cfg.keep_best, bool)


@FUZZ
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                         json_value.map(lambda v: json.dumps(v).encode())),
       suffix=st.sampled_from([".yaml", ".json", ".yml", ".txt"]))
def test_config_file_reader_reads_a_mapping_or_raises_config_error(tmp_path_factory, content, suffix):
    f = Path(tmp_path_factory.mktemp("cfg")) / f"c{suffix}"
    f.write_bytes(content)
    try:
        data = read_mapping(f)
    except UserError:
        return
    assert isinstance(data, dict)
