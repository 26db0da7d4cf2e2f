"""Aggregation over facts: bootstrap intervals and ROME token roles, on hand-built TraceResults with known values."""
from __future__ import annotations

import numpy as np
import pytest

from workbench.aggregate import ROLES, LayerImportance, aggregate, role_positions, token_roles
from workbench.errors import ConfigError, TraceError
from workbench.results import TraceResult


def make_result(effects: dict, subject_range=(1, 3), clean=1.0, corrupted=0.0, prompt="p") -> TraceResult:
    n_pos = next(iter(effects.values())).shape[1]
    return TraceResult(method="causal_trace", prompt=prompt, answer="a", tokens=[f"t{i}" for i in range(n_pos)],
                       subject_range=subject_range, effects={k: np.asarray(v, float) for k, v in effects.items()},
                       clean=clean, corrupted=corrupted)


def test_aggregate_mean_is_mean_of_normalised_scores():
    # Two facts, 3 layers x 4 positions; fact 2 has clean 0.5, corrupted 0.1 so normalisation matters.
    e1 = np.array([[0.1, 0.9, 0.2, 0.0], [0.5, 0.3, 0.1, 0.0], [0.0, 0.0, 0.0, 0.4]])
    e2 = np.array([[0.1, 0.5, 0.1, 0.1], [0.1, 0.3, 0.1, 0.1], [0.1, 0.1, 0.1, 0.2]])
    rs = [make_result({"mlp": e1}), make_result({"mlp": e2}, clean=0.5, corrupted=0.1)]
    imp = aggregate(rs, "mlp", position="max", n_boot=200)
    # max over positions: fact1 [0.9, 0.5, 0.4]; fact2 normalised (x-0.1)/0.4 -> [1.0, 0.5, 0.25]
    np.testing.assert_allclose(imp.per_fact, [[0.9, 0.5, 0.4], [1.0, 0.5, 0.25]])
    np.testing.assert_allclose(imp.mean, [0.95, 0.5, 0.325])
    assert imp.n_facts == 2 and imp.peak["layer"] == 0
    last_subj = aggregate(rs, "mlp", position="last_subject", n_boot=10)  # position 2
    np.testing.assert_allclose(last_subj.mean, [(0.2 + 0.0) / 2, (0.1 + 0.0) / 2, 0.0])
    last = aggregate(rs, "mlp", position="last", n_boot=10)
    np.testing.assert_allclose(last.mean, [0.0, 0.0, (0.4 + 0.25) / 2])


def _random_facts(n, seed, n_layers=5, n_pos=6):
    rng = np.random.default_rng(seed)
    true = np.linspace(0.2, 0.8, n_layers)[:, None]
    return [make_result({"resid": np.clip(true + rng.normal(0, 0.2, (n_layers, n_pos)), 0, None)}, prompt=str(i))
            for i in range(n)]


def test_bootstrap_interval_contains_mean_and_narrows_with_more_facts():
    small = aggregate(_random_facts(16, 1), "resid", position="mean", n_boot=2000, seed=0)
    large = aggregate(_random_facts(256, 2), "resid", position="mean", n_boot=2000, seed=0)
    for imp in (small, large):
        assert np.all(imp.lo <= imp.mean) and np.all(imp.mean <= imp.hi)
        assert np.all(imp.hi - imp.lo > 0)
    # Standard error shrinks like 1/sqrt(n): 16x the facts -> about 4x narrower (averaged over layers).
    ratio = (small.hi - small.lo).mean() / (large.hi - large.lo).mean()
    assert 3.0 < ratio < 5.5, ratio
    # Interval width roughly matches the normal-theory 95% interval 2*1.96*sd/sqrt(n) of the per-fact scores.
    se = large.per_fact.std(axis=0, ddof=1) / np.sqrt(large.n_facts)
    np.testing.assert_allclose(large.hi - large.lo, 2 * 1.96 * se, rtol=0.2)


def test_bootstrap_is_seeded_and_single_fact_collapses():
    facts = _random_facts(10, 3)
    a, b = aggregate(facts, "resid", seed=5), aggregate(facts, "resid", seed=5)
    np.testing.assert_array_equal(a.lo, b.lo)
    one = aggregate(facts[:1], "resid")
    np.testing.assert_array_equal(one.lo, one.mean)
    np.testing.assert_array_equal(one.hi, one.mean)


def test_layer_importance_save_load_roundtrip(tmp_path):
    imp = aggregate(_random_facts(6, 4), "resid", n_boot=50)
    path = imp.save(tmp_path / "imp.json")
    back = LayerImportance.load(path)
    for k in ("mean", "lo", "hi", "per_fact"):
        np.testing.assert_allclose(getattr(back, k), getattr(imp, k))
    assert back.kind == "resid" and back.n_facts == 6 and back.position == "max"
    assert "versions" in back.provenance and back.provenance["data"]["n_facts"] == 6
    assert back.provenance["config"]["n_boot"] == 50


def test_aggregate_bad_input():
    rs = _random_facts(2, 0)
    with pytest.raises(TraceError, match="no kind 'mlp'"):
        aggregate(rs, "mlp")
    with pytest.raises(ConfigError, match="position 'first'"):
        aggregate(rs, "resid", position="first")
    with pytest.raises(TraceError, match="no trace results"):
        aggregate([], "resid")
    with pytest.raises(TraceError, match="different depth"):
        aggregate(rs + _random_facts(1, 0, n_layers=3), "resid")


def test_role_positions():
    # prompt of 8 tokens, subject at [2, 5): first 2, middle [3], last 4, first subsequent 5, further [6], last 7
    assert role_positions((2, 5), 8) == [[2], [3], [4], [5], [6], [7]]
    # one-token subject: first = last, no middle
    assert role_positions((1, 2), 5) == [[1], [], [1], [2], [3], [4]]
    # subject right before the last token: no subsequent / further tokens
    assert role_positions((0, 3), 4) == [[0], [1], [2], [], [], [3]]
    with pytest.raises(TraceError):
        role_positions((3, 9), 8)


def test_token_roles_hand_checked():
    # Layer l, position t has effect 10*l + t (clean 100, corrupted 0 -> normalised = value / 100).
    def grid(n_layers, n_pos):
        return np.add.outer(10 * np.arange(n_layers), np.arange(n_pos)).astype(float)

    f1 = make_result({"mlp": grid(2, 8)}, subject_range=(2, 5), clean=100.0)   # roles at 2, 3, 4, 5, 6, 7
    f2 = make_result({"mlp": grid(2, 5)}, subject_range=(1, 2), clean=100.0)   # roles at 1, -, 1, 2, 3, 4
    roles = token_roles([f1, f2], "mlp", normalised=False)
    assert roles.values.shape == (len(ROLES), 2)
    np.testing.assert_array_equal(roles.counts, [2, 1, 2, 2, 2, 2])
    layer0 = np.array([(2 + 1) / 2, 3, (4 + 1) / 2, (5 + 2) / 2, (6 + 3) / 2, (7 + 4) / 2])
    np.testing.assert_allclose(roles.values[:, 0], layer0)
    np.testing.assert_allclose(roles.values[:, 1], layer0 + 10)
    norm = token_roles([f1, f2], "mlp")
    np.testing.assert_allclose(norm.values, roles.values / 100)
    # Only one-token subjects: the middle row has no data -> NaN, others finite; JSON writes null.
    only = token_roles([f2], "mlp")
    assert np.isnan(only.values[1]).all() and np.isfinite(np.delete(only.values, 1, axis=0)).all()
    assert only.to_json()["values"][1] == [None, None]


def test_min_total_effect_leaves_out_facts_the_noise_barely_hurts():
    e = np.array([[0.1, 0.9, 0.2, 0.0], [0.5, 0.3, 0.1, 0.0]])
    strong = make_result({"mlp": e})                                            # total effect 1.0
    weak = make_result({"mlp": e * 0.01 + 0.49}, clean=0.5, corrupted=0.49)    # total effect 0.01
    # kept, the weak fact's normalised scores are its (tiny) effects divided by 0.01
    both = aggregate([strong, weak], "mlp", position="max", n_boot=10)
    assert both.n_facts == 2 and both.config["n_facts_excluded"] == 0
    only = aggregate([strong, weak], "mlp", position="max", n_boot=10, min_total_effect=0.05)
    np.testing.assert_allclose(only.per_fact, [[0.9, 0.5]])
    assert only.n_facts == 1 and only.config["n_facts_excluded"] == 1
    with pytest.raises(TraceError, match="no fact of 2 has a total effect"):
        aggregate([strong, weak], "mlp", min_total_effect=2.0)


def test_raw_indirect_effect_is_not_normalised():
    e = np.array([[0.1, 0.5, 0.2, 0.1], [0.3, 0.3, 0.1, 0.1]])
    r = make_result({"mlp": e}, clean=0.5, corrupted=0.1)
    raw = aggregate([r], "mlp", position="max", n_boot=10, normalise=False)
    np.testing.assert_allclose(raw.mean, [0.4, 0.2])          # max over positions of e - 0.1
    norm = aggregate([r], "mlp", position="max", n_boot=10)
    np.testing.assert_allclose(norm.mean, [1.0, 0.5])         # ... divided by clean - corrupted = 0.4
    assert raw.config["normalise"] is False and norm.config["normalise"] is True
