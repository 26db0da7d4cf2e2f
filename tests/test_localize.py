"""Does tracing predict where unlearning works? The statistics on planted data (aligned -> 1, unrelated -> 0 with a
high p-value, a calibrated permutation test, a fact's own trace vs the others'), the efficacy of a planted trajectory,
selection agreement, the figures, bad configs, and per-window efficacy on the micro organism."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from workbench import figures as F
from workbench.correlation import correlate, pearson_rows, spearman_rows
from workbench.errors import ConfigError
from workbench.localize import LocalizeConfig, efficacy_of, localize
from workbench.selection import best_window, select_layers, selection_agreement

# ranks 0..7 against this order: Spearman and Pearson exactly 0
UNRELATED = np.array([0, 3, 5, 6, 7, 4, 2, 1], float)


def planted(pattern, n_facts=12, n_seeds=3, noise=0.02, seed=0):
    """Importance rising over 8 windows; efficacy following `pattern` (per window) plus small noise."""
    rng = np.random.default_rng(seed)
    imp = np.linspace(0.05, 0.6, 8)[None] + rng.normal(0, noise, (n_facts, 8))
    eff = np.asarray(pattern, float)[None, None] / 7 + rng.normal(0, noise, (n_seeds, n_facts, 8))
    return imp, eff


def test_spearman_and_pearson_rows():
    a = np.array([[1.0, 2, 3, 4], [1, 2, 3, 4]])
    b = np.array([[1.0, 4, 9, 16], [4, 3, 2, 1]])
    np.testing.assert_allclose(spearman_rows(a, b), [1, -1])
    assert pearson_rows(a[0], b[0]) == pytest.approx(np.corrcoef(a[0], b[0])[0, 1])
    assert np.isnan(spearman_rows(a[0], np.ones(4)))                 # a constant side has no correlation
    assert spearman_rows(np.array([1.0, 2, 2, 3]), np.array([1.0, 2, 2, 3])) == pytest.approx(1)  # ties


def test_aligned_efficacy_correlates_perfectly():
    imp = np.linspace(0.05, 0.6, 8)[None] * np.linspace(0.5, 1.5, 10)[:, None]   # [10 facts, 8 windows]
    eff = np.broadcast_to(imp, (3, 10, 8)) * 1.5                                 # efficacy = a multiple of it
    c = correlate(imp, eff, n_boot=200, seed=1)
    assert c.spearman.r == pytest.approx(1) and c.pearson.r == pytest.approx(1)
    assert c.spearman.ci == pytest.approx([1, 1]) and c.pearson.ci[0] > 0.999
    assert c.exact_permutations and c.n_perm == 40320                            # 8 windows: every order
    assert c.spearman.p == pytest.approx(2 / 40320)      # two-sided: only the order itself and its reverse are as extreme
    assert c.per_fact.spearman_mean == pytest.approx(1) and c.per_fact.peak_hit == 1.0
    np.testing.assert_allclose(c.efficacy, 1.5 * np.asarray(c.importance))


def test_unrelated_efficacy_is_near_zero_with_a_high_p_value():
    imp, eff = planted(UNRELATED, noise=0.06)
    c = correlate(imp, eff, n_boot=300, n_perm=2000, seed=2)
    assert abs(c.spearman.r) < 0.2 and abs(c.pearson.r) < 0.2
    assert c.spearman.p > 0.5 and c.pearson.p > 0.5
    assert -0.25 < c.spearman.ci[0] <= c.spearman.ci[1] < 0.25 and -0.25 < c.pearson.ci[0] <= c.pearson.ci[1] < 0.25
    assert abs(c.per_fact.spearman_mean) < 0.2 and c.per_fact.p_windows > 0.05
    aligned = correlate(*planted(np.arange(8), noise=0.06), n_boot=300, seed=2)  # the same noise, aligned
    assert aligned.spearman.r > 0.95 and aligned.spearman.p < 0.001 and aligned.spearman.ci[0] > 0.8


def test_permutation_p_is_calibrated_under_the_null():
    """Independent importance and efficacy: an exact permutation test rejects at 0.05 about 5% of the time."""
    rng = np.random.default_rng(3)
    ps = [correlate(rng.random((5, 6)), rng.random((2, 5, 6)), n_boot=20, n_perm=50, seed=i).spearman.p
          for i in range(60)]
    assert sum(p <= 0.05 for p in ps) <= 8 and np.mean(ps) > 0.35


def test_a_facts_own_trace_is_tested_against_other_facts_traces():
    rng = np.random.default_rng(4)
    own = np.zeros((16, 8))
    own[np.arange(16), np.arange(16) % 8] = 1.0                     # each fact peaks at a window of its own
    own += rng.normal(0, 0.01, own.shape)
    follows_own = correlate(own, np.broadcast_to(own, (2, 16, 8)), n_boot=100, n_perm=500, seed=0).per_fact
    assert follows_own.peak_hit == 1.0 and follows_own.peak_hit_shuffled < 0.3
    assert follows_own.peak_p_own < 0.01 and follows_own.p_own < 0.01
    assert follows_own.peak_hit_chance == pytest.approx(1 / 8)
    # every fact's efficacy follows the population's shape, not its own trace: the own trace adds nothing
    population = np.broadcast_to(np.linspace(0, 1, 8), (2, 16, 8)) + rng.normal(0, 0.01, (2, 16, 8))
    follows_pop = correlate(own, population, n_boot=100, n_perm=500, seed=0).per_fact
    assert follows_pop.p_own > 0.2 and follows_pop.peak_p_own > 0.2


def test_correlate_refuses_bad_shapes():
    with pytest.raises(ConfigError, match="same facts and windows"):
        correlate(np.ones((4, 5)), np.ones((2, 4, 6)))
    with pytest.raises(ConfigError, match="at least 3"):
        correlate(np.ones((4, 2)), np.ones((2, 4, 2)))
    with pytest.raises(ConfigError, match="finite"):
        correlate(np.full((4, 5), np.nan), np.ones((1, 4, 5)))


def test_efficacy_of_a_planted_trajectory():
    #                  fact:  a  b  c          retain
    forget = np.array([[1, 1, 1],           # 1.00  the original
                       [0, 1, 1],           # 0.95
                       [0, 0, 0],           # 0.70  over the 0.1 budget: everything forgotten, at a price
                       [0, 0, 1],           # 0.92  a retain term won some of it back
                       [1, 1, 1]])          # 1.00
    retain = np.array([1.0, 0.95, 0.70, 0.92, 1.0])
    e = efficacy_of(forget, retain, retain_budget=0.1, area_damage=0.5)
    assert e["operating_point"] == 3                         # the best point within budget, not the first dip
    np.testing.assert_array_equal(e["budget"], [1, 1, 0])
    # area: envelope over damage x in [0, 0.5]: a forgotten from x = 0.05, b from 0.08, c from 0.30
    np.testing.assert_allclose(e["area"], [(0.5 - 0.05) / 0.5, (0.5 - 0.08) / 0.5, (0.5 - 0.30) / 0.5])
    nothing = efficacy_of(np.ones((3, 2)), np.array([1.0, 0.5, 0.4]), 0.1, 0.5)
    assert nothing["operating_point"] == 0 and not nothing["budget"].any() and not nothing["area"].any()
    with pytest.raises(ConfigError, match="n_points"):
        efficacy_of(np.ones((3, 2)), np.ones(4), 0.1, 0.5)


def test_best_window_matches_select_layers_and_agreement():
    scores = np.array([0.1, 0.5, 0.5, 0.2, 0.9, 0.05])
    assert best_window(scores, 2) == 3 == select_layers(scores, "window", window=2).layers[0]
    assert best_window(np.zeros(5), 3) == 0                  # ties: the earliest window
    same = np.tile([0.0, 0.1, 0.9, 0.8, 0.1, 0.0], (20, 1))
    rows = selection_agreement(same, [1, 5, 10, 20], window=2, reps=30)
    assert [r["same_window"] for r in rows] == [1.0, 1.0, 1.0, None] and rows[-1]["same_as_all"] == 1.0
    rng = np.random.default_rng(0)
    noisy = rng.random((40, 8)) + np.where(np.arange(8) == 5, 0.3, 0.0)
    rows = selection_agreement(noisy, [1, 4, 16], window=2, reps=200)
    assert rows[0]["same_window"] < rows[1]["same_window"] < rows[2]["same_window"]   # more facts, more agreement
    assert all(0 <= r["jaccard"] <= 1 and r["same_window"] <= r["jaccard"] for r in rows)
    with pytest.raises(ConfigError, match="sizes"):
        selection_agreement(noisy, [41])


def _stats(n_windows=4):
    c = correlate(np.linspace(0, 1, n_windows)[None] + np.zeros((3, 1)),
                  np.linspace(1, 0, n_windows)[None, None] + np.zeros((2, 3, 1)) + 0.01 * np.arange(3)[None, :, None],
                  n_boot=50, n_perm=50)
    return {"joint": c.to_json()}


def test_localization_figures_draw_the_statistics():
    from workbench.aggregate import LayerImportance

    wins = [[0, 1], [1, 2], [2, 3], [3, 4]]
    imp = LayerImportance(kind="mlp", position="last_subject", mean=np.linspace(0, 1, 5), lo=np.zeros(5),
                          hi=np.ones(5), per_fact=np.zeros((3, 5)))
    stats = _stats()
    fig = F.localization_figure(wins, imp, stats, "joint: Spearman -1.00")
    xs = {t.name: list(t.x) for t in fig.data if t.name}
    assert xs["joint"] == [0.5, 1.5, 2.5, 3.5]                      # efficacy at each window's centre layer
    eff = next(t for t in fig.data if t.name == "joint")
    np.testing.assert_allclose(eff.y, stats["joint"]["efficacy"])
    assert fig.layout.annotations[-1].text == "joint: Spearman -1.00"
    sc = F.importance_efficacy_scatter(wins, stats, "caption")
    np.testing.assert_allclose(sc.data[0].x, stats["joint"]["importance"])
    assert list(sc.data[0].text) == ["0-1", "1-2", "2-3", "3-4"]
    with pytest.raises(ConfigError, match="no editor"):
        F.localization_figure(wins, imp, {}, "")


def test_bad_localize_configs_are_named_errors():
    with pytest.raises(ConfigError, match="kind 'attn' is not traced"):
        LocalizeConfig.from_dict({"kinds": "mlp", "kind": "attn"})
    with pytest.raises(ConfigError, match="efficacy 'best'"):
        LocalizeConfig.from_dict({"efficacy": "best"})
    with pytest.raises(ConfigError, match="editor 'x': method 'rome'"):
        LocalizeConfig.from_dict({"editors": {"x": {"method": "rome"}}})
    with pytest.raises(ConfigError, match="unknown preset"):
        LocalizeConfig.from_dict({"editors": {"x": {"method": "joint", "preset": "nope"}}})
    with pytest.raises(ConfigError, match="retain_budget"):
        LocalizeConfig.from_dict({"retain_budget": 0})
    with pytest.raises(ConfigError, match="unknown localize config"):
        LocalizeConfig.from_dict({"windows": 3})


def test_cli_refuses_bad_input_before_any_work(tmp_path, capsys):
    from workbench.cli import main

    assert main(["localize", "--editors", "rome", "--out", str(tmp_path / "o")]) == 2
    assert "--editors ['rome'] not in the config's editors ['joint', 'rmu']" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("kinds: [mlp]\nkind: attn\n")
    assert main(["localize", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "kind 'attn' is not traced" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_per_window_efficacy_on_micro(micro, tmp_path):
    """Every window of the micro organism is edited from the same weights; each window's efficacy is the one its
    saved trajectory gives, the statistics and figures are written, and a second call reuses every finished edit."""
    model, tok, corpus = micro
    before = {n: p.clone() for n, p in model.named_parameters()}
    cfg = LocalizeConfig(model="organism:micro", n_facts=6, n_samples=2, kinds=("mlp",), window=2, seeds=2,
                         editors={"joint": {"method": "joint", "config": {"epochs": 4}, "eval_every": 1}},
                         n_boot=50, n_perm=100, agreement_sizes=(1, 2), agreement_reps=20)
    res = localize(model, tok, corpus, cfg, tmp_path / "loc", progress=False)
    assert all((p == before[n]).all() for n, p in model.named_parameters())      # the caller's model is untouched
    assert res["windows"] == [[0, 1], [1, 2], [2, 3]] and res["baseline"]["forget_recall"] == 1.0
    n_facts = len(res["facts"]["kept"])
    rows = res["editors"]["joint"]["windows"]
    assert [[r["layers"] for r in w] for w in rows] == [[[0, 1]] * 2, [[1, 2]] * 2, [[2, 3]] * 2]
    for w in rows:
        for r in w:
            path = tmp_path / "loc" / "runs" / "joint" / f"layers-{r['layers'][0]}-{r['layers'][-1]}" / f"seed-{r['seed']}.json"
            traj = json.loads(path.read_text())
            steps = [p["step"] for p in traj["points"]]
            assert steps == list(range(len(steps))) and steps[-1] == 4   # every step measured, point 0 the original
            e = efficacy_of(np.array([p["forget"] for p in traj["points"]]),
                            np.array([p["retain"] for p in traj["points"]]), cfg.retain_budget, cfg.area_damage)
            assert r["budget"] == e["budget"].tolist() and len(r["budget"]) == n_facts
            assert res["baseline"]["retain_recall"] - r["operating_retain"] <= cfg.retain_budget + 1e-9
    stat = res["statistics"]["joint"]["mlp"]["budget"]
    window_means = [np.mean([r["budget"] for r in w]) for w in rows]
    np.testing.assert_allclose(stat["efficacy"], window_means)
    assert max(window_means) > 0.3                                  # the edits forget something
    assert res["headline"]["joint"]["spearman"] == stat["spearman"]["r"]
    assert [r["n_facts"] for r in res["agreement"]] == [1, 2]
    saved = json.loads((tmp_path / "loc" / "localize.json").read_text())
    assert saved["statistics"] == res["statistics"] and saved["provenance"]["model"]["fingerprint"]
    assert "| 0-1 |" in (tmp_path / "loc" / "table.md").read_text()
    assert (tmp_path / "loc" / "figures" / "localize.html").is_file()
    # a second call: the trace and every edit are reused, the statistics are the same
    again = localize(model, tok, corpus, cfg, tmp_path / "loc", progress=False)
    events = [json.loads(l) for l in (tmp_path / "loc" / "localize.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("traced") == 1 and [e["event"] for e in events].count("trace_reused") == 1
    edits = [e["reused"] for e in events if e["event"] == "edit"]
    assert edits == [False] * 6 + [True] * 6
    assert again["statistics"] == res["statistics"]


def test_window_contrast_is_paired_over_facts_and_seeds():
    from workbench.correlation import window_contrast

    eff = np.zeros((2, 4, 3))
    eff[..., 0], eff[..., 1], eff[..., 2] = 0.2, 0.9, 0.5       # every fact and seed alike: no spread
    c = window_contrast(eff, [1], [0], n_boot=100)
    assert c["a"] == pytest.approx(0.9) and c["b"] == pytest.approx(0.2)
    assert c["difference"] == pytest.approx(0.7) and c["ci"] == pytest.approx([0.7, 0.7])
    assert window_contrast(eff, [1, 2], None)["difference"] == pytest.approx(0.7)     # a's mean alone
    rng = np.random.default_rng(0)
    fact = rng.normal(0, 1, (1, 30, 1))                          # large fact effects shared by both windows
    paired = window_contrast(fact + np.array([0.0, 0.3]), [1], [0], n_boot=300)
    assert paired["ci"] == pytest.approx([0.3, 0.3])             # they cancel in a paired difference
    with pytest.raises(ConfigError, match="window indices"):
        window_contrast(eff, [3], [0])


def _row(layers, relearn=None, retain=1.0):
    return {"layers": layers, "operating_retain": retain,
            "relearn": None if relearn is None else {"surviving": relearn}}


def test_depth_summary_names_the_planted_traced_sweep_and_deepest_windows():
    from workbench.localize import depth_summary

    wins = [[0, 1], [1, 2], [2, 3]]
    out = np.zeros((2, 5, 3))
    out[..., 2] = 1.0                                            # the sweep picks 2-3
    uds = np.zeros((2, 5, 3))
    uds[..., 1] = 0.8                                            # the deepest is 1-2
    rows = [[_row(w, 0.1), _row(w, 0.3)] for w in wins]
    rows[1] = [_row(wins[1], 0.9), _row(wins[1], 0.7)]
    cfg = LocalizeConfig(n_boot=50)
    d = depth_summary({"budget": out, "uds": uds}, rows, np.array([0.9, 0.1, 0.0]), wins, [1], cfg)
    w = d["windows"]
    assert w["traced"]["windows"] == [[0, 1]] and w["sweep"]["windows"] == [[2, 3]]
    assert w["deepest"]["windows"] == [[1, 2]] and w["deepest_relearn"]["windows"] == [[1, 2]]
    assert w["planted"]["windows"] == [[0, 1], [1, 2]]           # both share layer 1
    assert w["planted"]["uds"] == pytest.approx(0.4) and w["traced"]["uds"] == 0.0
    assert d["contrasts"]["traced - sweep"]["output"] == pytest.approx(-1.0)
    assert d["contrasts"]["planted - traced"]["uds"] == pytest.approx(0.4)
    assert d["deepest_is"] == ["planted"] and d["relearn_surviving"] == pytest.approx([0.2, 0.8, 0.2])
    nowhere = depth_summary({"budget": out, "uds": uds}, rows, np.array([0.9, 0.1, 0.0]), wins, [3], cfg)
    assert nowhere["deepest_is"] == []                           # deepest 1-2: neither planted, traced nor swept


def test_depth_is_measured_on_the_weights_of_the_operating_point(micro, tmp_path):
    """edit_trajectory keeps the weights of the budget's best point: a depth probe that reads back the forget recall
    of the weights it is given finds that point's recall, not the last step's."""
    from workbench.data.records import questions
    from workbench.evaluation.attacks.recall import encode_qa, score
    from workbench.localize import EditorSpec, edit_trajectory

    model, tok, corpus = micro
    facts = corpus.facts("forget", "Task2")[:6]
    forget_ex, retain_ex = encode_qa(tok, facts), encode_qa(tok, questions(corpus.retain))
    baseline = {"step": 0, "forget": score(model, tok, forget_ex).exact.int().tolist(),
                "retain": score(model, tok, retain_ex).recall}
    spec = EditorSpec(method="ga", config={"epochs": 6, "lr": 5e-3}, eval_every=1)
    seen = []
    traj = edit_trajectory(model, tok, dataclasses.replace(corpus, forget=facts), spec, [1, 2], 0, forget_ex,
                           retain_ex, baseline, tmp_path / "m",
                           depth_of=lambda m, layers: seen.append(layers) or
                           {"forget": score(m, tok, forget_ex).exact.int().tolist()}, retain_budget=0.1)
    e = efficacy_of(np.array([p["forget"] for p in traj["points"]]), np.array([p["retain"] for p in traj["points"]]),
                    0.1, 0.5)
    assert traj["depth"]["point"] == e["operating_point"] and seen == [[1, 2]]
    assert traj["depth"]["forget"] == traj["points"][e["operating_point"]]["forget"]
    # gradient ascent at this rate ends far over the retain budget: the point measured is not the last one
    assert 0 < e["operating_point"] < len(traj["points"]) - 1
    assert baseline["retain"] - traj["points"][-1]["retain"] > 0.1


def test_bad_depth_settings_are_named_errors(micro):
    model, tok, corpus = micro
    with pytest.raises(ConfigError, match="depth \\['uds2'\\]"):
        LocalizeConfig.from_dict({"depth": "uds2"})
    with pytest.raises(ConfigError, match="relearn lrs"):
        LocalizeConfig.from_dict({"depth": "relearn", "relearn": {"lrs": [-1]}})
    with pytest.raises(ConfigError, match="efficacy 'uds'"):
        LocalizeConfig.from_dict({"depth": "uds", "efficacy": "uds"})
    with pytest.raises(ConfigError, match="retain-only twin"):
        localize(model, tok, corpus, LocalizeConfig(depth=("uds",)), "/nonexistent/never-written")
