"""Does tracing find where a fact is stored? Rank, precision and recall exact on hand-made scores, the layer-label
shuffle that destroys the agreement, the weight-difference baseline on micro-planted, every method's scores on the
same facts, and the reduced study (configs/groundtruth-ci.yaml) end to end."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from workbench import organism
from workbench.errors import ConfigError
from workbench.groundtruth import (GroundTruthConfig, accuracy, method_scores, organism_accuracy, parse_method,
                                   precision_recall, ranks, shuffled_labels, top_k, weight_difference)
from workbench.harness import load_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def planted():
    """(model, tok, corpus, base) of micro-planted: micro's base fine-tuned with only the MLPs of layers 1 and 2 trainable."""
    path = organism.build("micro-planted", progress=False)
    model, tok = load_model(path)
    base, _ = load_model(organism.build_base("micro-planted", progress=False))
    return model, tok, organism.load_corpus(path), base


def test_rank_precision_and_recall_are_exact_on_hand_made_scores():
    s = np.array([0.1, 0.9, 0.5, 0.3])             # layers ordered by score: 1, 2, 3, 0
    np.testing.assert_array_equal(top_k(s, 3), [1, 2, 3])
    np.testing.assert_array_equal(ranks(s, [1, 3]), [1, 3])
    assert precision_recall(s, [1, 3], 1) == (1.0, 0.5)           # top 1 = {1}: 1 of 1 planted, 1 of 2 found
    assert precision_recall(s, [1, 3], 2) == (0.5, 0.5)           # top 2 = {1, 2}
    assert precision_recall(s, [3, 1], 3) == (2 / 3, 1.0)         # top 3 = {1, 2, 3}; the order of P is irrelevant
    assert precision_recall(s, [0], 3) == (0.0, 0.0)
    tied = np.array([0.5, 0.5, 0.2, 0.1])
    np.testing.assert_array_equal(ranks(tied, [0, 1]), [1.5, 1.5])  # ties share their mean rank
    assert precision_recall(tied, [1], 1) == (0.0, 0.0)           # and top-k takes the lower layer
    rows = np.array([[0.9, 0.1, 0.0, 0.0],                        # fact a: top 1 = layer 0
                     [0.0, 0.2, 0.8, 0.0],                        # fact b: top 1 = layer 2
                     [0.0, 0.0, 0.7, 0.6]])                       # fact c: top 1 = layer 2, top 2 = {2, 3}
    p, r = precision_recall(rows, [2, 3], 2)
    np.testing.assert_allclose(p, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(r, [0.0, 0.5, 1.0])


def test_accuracy_per_fact_and_of_the_fact_mean():
    rows = np.array([[0.9, 0.1, 0.0, 0.0],
                     [0.0, 0.2, 0.8, 0.0],
                     [0.0, 0.0, 0.7, 0.6]])                       # fact-mean: 0.3, 0.1, 0.5, 0.2 -> order 2, 0, 3, 1
    a = accuracy(rows, [2], ks=(2, 9), n_boot=200, n_perm=100)
    assert a["peak_layer"] == 2 and a["ranks"] == [1.0] and a["rank_chance"] == 2.5
    assert a["rank_per_fact"] == pytest.approx((3.5 + 1 + 1) / 3)  # fact a: layers 2 and 3 tie for ranks 3 and 4
    assert sorted(a["top_k"]) == ["1", "2"]                       # |P| = 1 and k = 2 (9 > 4 layers is dropped)
    one, two = a["top_k"]["1"], a["top_k"]["2"]
    assert one["precision"] == 1.0 and one["recall"] == 1.0       # the fact-mean's top layer is planted
    assert one["precision_per_fact"] == pytest.approx(2 / 3)      # facts b and c
    assert two["precision"] == 0.5 and two["recall_per_fact"] == pytest.approx(2 / 3)  # fact a: top 2 = {0, 1}
    assert one["precision_chance"] == 0.25 and two["recall_chance"] == 0.5
    lo, hi = one["precision_per_fact_ci"]
    assert 0 <= lo <= 2 / 3 <= hi <= 1
    with pytest.raises(ConfigError, match="planted layers"):
        accuracy(rows, [4])
    with pytest.raises(ConfigError, match="finite"):
        accuracy(np.full((3, 4), np.nan), [1])


def test_shuffling_the_layer_labels_destroys_the_agreement():
    rng = np.random.default_rng(0)
    planted = [5, 6, 7]
    scores = rng.normal(0, 0.05, (20, 12))
    scores[:, planted] += 1.0                                     # every fact puts its top 3 on the planted layers
    a = accuracy(scores, planted, n_boot=200, n_perm=2000)["top_k"]["3"]
    assert a["precision_per_fact"] == 1.0 and a["precision"] == 1.0
    shuffled = a["shuffled"]
    assert shuffled["observed"] == 1.0 and not shuffled["exact"]                       # 12! orders: drawn
    assert shuffled["null_mean"] == pytest.approx(3 / 12, abs=0.02)                    # chance: |P| / n_layers
    assert shuffled["p"] < 0.01
    relabelled = scores[:, rng.permutation(12)]                   # the same scores under other layer labels
    assert accuracy(relabelled, planted, n_boot=50, n_perm=50)["top_k"]["3"]["precision_per_fact"] < 0.5
    # 4 layers: every relabelling is enumerated; one planted layer is on top in 6 of the 24
    exact = shuffled_labels(np.array([[0.0, 0.1, 1.0, 0.2]]), [2], 1)
    assert exact["exact"] and exact["p"] == 0.25 and exact["null_mean"] == 0.25


def test_weight_difference_ranks_the_planted_layer_first_on_micro_planted(planted, micro):
    model, tok, corpus, base = planted
    layers = organism.info(organism.build("micro-planted", progress=False))["planted_layers"]
    diff = weight_difference(model, base)
    assert diff.shape == (4,) and list(np.flatnonzero(diff)) == layers       # only the planted MLP moved
    k = len(layers)
    assert sorted(ranks(diff, layers).tolist()) == [float(r) for r in range(1, k + 1)]   # the planted layers on top
    assert precision_recall(diff, layers, k) == (1.0, 1.0)
    assert not weight_difference(base, base).any()
    # micro fine-tunes every parameter: every layer moves, so the baseline is no free answer there
    assert (weight_difference(micro[0], base) > 0).all()
    # with the layer labels shuffled, top-k precision averages to chance over every relabelling: k / n_layers
    hits = [precision_recall(diff[list(p)], layers, k)[0] for p in itertools.permutations(range(4))]
    assert np.mean(hits) == pytest.approx(k / 4)


def test_methods_parse_and_bad_configs_are_named_errors():
    assert parse_method("trace:mlp") == ("trace", "mlp") and parse_method("atp*:mlp_out") == ("atp*", "mlp_out")
    assert parse_method("weights") == ("weights", None)
    for bad in ("trace:mlp_out", "patch:mlp", "rome", "weights:mlp"):
        with pytest.raises(ConfigError, match="localisation method"):
            parse_method(bad)
    with pytest.raises(ConfigError, match="no planted layers"):
        GroundTruthConfig.from_dict({"organisms": ["micro"]})
    with pytest.raises(ConfigError, match="not an organism"):
        GroundTruthConfig.from_dict({"organisms": [], "localize": [{"model": "some/dir"}]})
    with pytest.raises(ConfigError, match="unknown groundtruth config"):
        GroundTruthConfig.from_dict({"organism": ["micro-planted"]})
    with pytest.raises(ConfigError, match="each method once"):
        GroundTruthConfig.from_dict({"methods": ["weights", "weights"]})


def test_the_study_configs_name_planted_organisms_and_depth():
    from workbench.localize import LocalizeConfig

    full = GroundTruthConfig.from_file(CONFIGS / "groundtruth.yaml")
    assert set(full.organisms) == {"deep-early", "deep-middle", "deep-late", "default-planted"}
    runs = full.localize_configs()
    assert [c.model for c in runs] == ["organism:deep-early", "organism:deep-late"]
    assert [c.out for c in runs] == ["runs/groundtruth/localize-deep-early", "runs/groundtruth/localize-deep-late"]
    for side, layers in (("early", (1, 2, 3)), ("late", (8, 9, 10))):
        alone = LocalizeConfig.from_file(CONFIGS / f"localize-planted-{side}.yaml")
        assert organism.PRESETS[f"deep-{side}"].plant == layers and alone.depth == ("uds", "relearn")
        assert alone.window == len(layers)                       # one window is exactly the planted layers
    ci = GroundTruthConfig.from_file(CONFIGS / "groundtruth-ci.yaml")
    assert ci.organisms == ("micro-planted",) and ci.localize_configs()[0].depth == ("uds", "relearn")


def test_every_method_scores_the_same_facts_on_micro_planted(planted, tmp_path):
    model, tok, corpus, base = planted
    cfg = GroundTruthConfig.from_dict({"organisms": ["micro-planted"], "n_facts": 8, "n_samples": 3, "n_boot": 50,
                                       "n_perm": 50})
    got = method_scores(model, tok, corpus, base, cfg, tmp_path / "trace.json")
    facts = got["facts"]
    assert len(facts) >= 3 and set(facts).isdisjoint(got["excluded"])
    assert set(got["scores"]) == set(cfg.methods)
    assert all(s.shape == (len(facts), 4) and np.isfinite(s).all() for s in got["scores"].values())
    np.testing.assert_array_equal(got["scores"]["weights"], np.tile(weight_difference(model, base), (len(facts), 1)))
    saved = json.loads((tmp_path / "trace.json").read_text())   # the trace is localize's, saved with its key
    assert saved["facts"] == facts
    np.testing.assert_allclose(got["scores"]["trace:mlp"], saved["importance"]["mlp"]["per_fact"])
    # the MLP of the last layer writes after every read of the subject position: patching it there changes nothing
    # (zero up to float32 round-off of the batched forward: |effect| well below one ten-thousandth of the clean prob)
    assert np.abs(got["scores"]["patch:mlp_out"][:, 3]).max() < 1e-5
    assert all(cf in {r.id for r in corpus.retain + corpus.validation + corpus.forget + corpus.holdout
                      + corpus.calibration} and cf != f for f, cf in got["counterfactuals"].items())


def test_organism_accuracy_is_saved_and_reused(planted, tmp_path):
    cfg = GroundTruthConfig.from_dict({"organisms": ["micro-planted"], "methods": ["trace:mlp", "weights"],
                                       "n_samples": 3, "n_boot": 50, "n_perm": 50})
    events = []
    first = organism_accuracy("micro-planted", cfg, tmp_path, log=lambda e, **kw: events.append(e))
    assert sorted(first["accuracy"]["weights"]["ranks"]) == [1.0, 2.0] and first["planted_layers"] == [1, 2]
    again = organism_accuracy("micro-planted", cfg, tmp_path, log=lambda e, **kw: events.append(e))
    assert again == json.loads(json.dumps(first)) and events.count("accuracy_reused") == 1
    other = GroundTruthConfig.from_dict({**{k: getattr(cfg, k) for k in ("organisms", "methods", "n_samples",
                                                                        "n_boot", "n_perm")}, "n_facts": 5})
    organism_accuracy("micro-planted", other, tmp_path, log=lambda e, **kw: events.append(e))
    assert events.count("accuracy_rerun") == 1                    # another fact set: measured again


def test_the_reduced_study_writes_table_figure_and_json(planted, tmp_path, capsys):
    """configs/groundtruth-ci.yaml through the command: accuracy on micro-planted and a localize run with depth."""
    from workbench.cli import main

    out = tmp_path / "gt"
    assert main(["groundtruth", "--config", str(CONFIGS / "groundtruth-ci.yaml"), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "workbench groundtruth: " in printed and printed.rstrip().endswith(" s")
    res = json.loads((out / "groundtruth.json").read_text())
    acc = res["organisms"]["micro-planted"]
    assert acc["accuracy"]["weights"]["top_k"]["1"]["precision_per_fact"] == 1.0
    run = res["localize"]["micro-planted"]
    assert run["planted_layers"] == [1, 2] and run["windows"] == [[0, 1], [1, 2], [2, 3]]
    d = run["depth"]["joint"]
    assert d["windows"]["planted"]["windows"] == [[1, 2]]                 # the one window that is the planted set
    assert d["windows"]["traced"]["windows"] == [run["headline"]["joint"]["traced_window"]]
    assert 0 <= d["windows"]["deepest"]["uds"] <= 1 and d["n_facts_uds"] >= 1
    uds = run["statistics"]["joint"]["mlp"]["uds"]["efficacy"]
    assert d["windows"]["deepest"]["uds"] == pytest.approx(max(uds))
    assert all(v is None or 0 <= v <= 1 for v in d["relearn_surviving"])
    table = (out / "table.md").read_text()
    assert "### micro-planted: planted layers 1, 2 of 4" in table and "Where is forgetting deepest?" in table
    for fig in ("groundtruth_micro-planted.html", "groundtruth_depth_micro-planted.html"):
        assert (out / "figures" / fig).is_file()
    assert set(res["seconds"]) == {"accuracy micro-planted", "localize micro-planted", "total"}


def test_a_relative_config_path_resolves_its_localize_files_once(monkeypatch):
    """`workbench groundtruth --config configs/groundtruth.yaml` from the repository root: the localize files named
    relative to the config resolve to configs/..., whether read once or read and re-based as the command does."""
    from dataclasses import asdict

    monkeypatch.chdir(CONFIGS.parent)
    cfg = GroundTruthConfig.from_file("configs/groundtruth.yaml")
    again = GroundTruthConfig.from_dict(asdict(cfg), base=Path("configs"))
    for c in (cfg, again):
        assert [Path(p).resolve() for p in c.localize] == [CONFIGS / "localize-planted-early.yaml",
                                                           CONFIGS / "localize-planted-late.yaml"]
        assert all(Path(p).is_file() for p in c.localize)
