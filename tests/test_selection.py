"""Layer selection strategies and layer specs, on hand-made importance vectors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.aggregate import aggregate
from workbench.errors import ConfigError
from workbench.results import TraceResult
from workbench.selection import LayerSelection, parse_layers, select_layers

SCORES = [0.1, 0.9, 0.2, 0.6, 0.7, 0.65, 0.05, 0.8]


def test_top_k():
    sel = select_layers(SCORES, "top-k", k=3)
    assert sel.layers == [1, 4, 7]          # 0.9, 0.8, 0.7, returned ascending
    assert sel.selected_scores == [0.9, 0.7, 0.8]
    assert select_layers([0.5, 0.5, 0.1], "top-k", k=1).layers == [0]   # tie -> lower layer


def test_window_picks_best_consecutive_run():
    # 3-windows sums: [1.2, 1.7, 1.5, 1.95, 1.4, 1.5] -> start 3
    sel = select_layers(SCORES, "window", window=3)
    assert sel.layers == [3, 4, 5]
    np.testing.assert_allclose(sel.params["window_sums"], [1.2, 1.7, 1.5, 1.95, 1.4, 1.5])
    # a window of 2: sums [1.0, 1.1, 0.8, 1.3, 1.35, 0.7, 0.85] -> [4, 5]
    assert select_layers(SCORES, "window", window=2).layers == [4, 5]
    assert select_layers(SCORES, "window", window=len(SCORES)).layers == list(range(8))


def test_threshold():
    assert select_layers(SCORES, "threshold", threshold=0.65).layers == [1, 4, 5, 7]
    with pytest.raises(ConfigError, match=r"no layer scores >= 0.95 \(max score 0.9 at layer 1\)"):
        select_layers(SCORES, "threshold", threshold=0.95)


def test_bad_selection_parameters():
    with pytest.raises(ConfigError, match="k=9"):
        select_layers(SCORES, "top-k", k=9)
    with pytest.raises(ConfigError, match="window=0"):
        select_layers(SCORES, "window", window=0)
    with pytest.raises(ConfigError, match="unknown selection strategy 'best'"):
        select_layers(SCORES, "best")
    with pytest.raises(ConfigError, match="1-D"):
        select_layers([[0.1, 0.2]], "top-k")
    with pytest.raises(ConfigError, match="non-finite"):
        select_layers([0.1, float("nan")], "top-k", k=1)


def test_selection_from_layer_importance_save_load(tmp_path):
    n_layers = 4
    effects = np.zeros((n_layers, 3))
    effects[2] = [0.1, 0.9, 0.2]          # layer 2 carries the effect
    effects[1] = [0.0, 0.5, 0.0]
    results = [TraceResult(method="causal_trace", prompt=f"p{i}", answer="a", tokens=["a", "b", "c"],
                           subject_range=(0, 2), effects={"mlp": effects + 0.01 * i}, clean=1.0, corrupted=0.0)
               for i in range(3)]
    imp = aggregate(results, "mlp", n_boot=20)
    sel = select_layers(imp, "window", window=2)
    assert sel.layers == [1, 2] and sel.kind == "mlp"
    assert sel.provenance["n_facts"] == 3 and sel.provenance["config"]["window"] == 2
    path = sel.save(tmp_path / "sel.json")
    back = LayerSelection.load(path)
    assert back.layers == [1, 2] and back.strategy == "window" and back.n_layers == n_layers
    np.testing.assert_allclose(back.scores, imp.mean)
    assert parse_layers(str(path)) == [1, 2] and parse_layers(path, n_layers=4) == [1, 2]
    with pytest.raises(ConfigError, match=r"out of range.*0\.\.1"):
        parse_layers(path, n_layers=2)


def test_parse_layers_strings_and_lists():
    assert parse_layers("12,13,14") == [12, 13, 14]
    assert parse_layers("12-14") == [12, 13, 14]
    assert parse_layers(" 3, 7-9 ,3") == [3, 7, 8, 9]
    assert parse_layers([14, 12, 13], n_layers=16) == [12, 13, 14]
    assert parse_layers(5) == [5]
    assert parse_layers(np.array([1, 2])) == [1, 2]


@pytest.mark.parametrize("spec, msg", [
    ("", "selects no layers"),
    ([], "selects no layers"),
    ("12-x", r"cannot read '12-x'"),
    ("a,b", r"cannot read 'a'"),
    ("14-12", "runs backwards"),
    ("-1", r"cannot read '-1'"),
    ([1.5], "not a layer index"),
    ("missing_selection.json", "no such selection file"),
])
def test_parse_layers_errors(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_layers(spec, n_layers=16)


def test_parse_layers_range_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match=r"layers \[16, 17\] out of range; the model has layers 0\.\.15"):
        parse_layers("14-17", n_layers=16)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"type": "LayerImportance"}))
    with pytest.raises(ConfigError, match="not a LayerSelection JSON"):
        parse_layers(str(other))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_layers(broken)
