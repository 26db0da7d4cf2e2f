"""Smoke test of the benchmark harness: a tiny tracing comparison runs, peers agree with our engine, tables render.
No timing is asserted (timings belong in benchmarks/RESULTS.md, never in tests)."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import TOL, Section, goal, machine_info, table
from benchmarks import tracing as bt
from benchmarks.__main__ import render


def test_tracing_peers_agree_with_engine(micro):
    """ROME-style loop and TL patching functions (noise via hook_embed) reproduce causal_trace on the micro fact."""
    model, tok, _ = micro
    from workbench.tracing import noise_scale

    sigma = noise_scale(model, tok, [bt.FACT[2]])
    row = bt.trace_compare(model, tok, [bt.FACT], n_samples=2, metric="prob", sigma=sigma,
                           peers_full={"rome": 1, "tl": 0}, label="smoke")
    assert row["effect_range"] > 0.05  # restorations move the metric: the equality below is not vacuous
    assert row["peers"]["rome"]["cells"] == "all" and row["peers"]["tl"]["cells"] == "sampled"
    for p in row["peers"].values():
        assert p["max_diff"] <= TOL and p["forwards"] > 0 and np.isfinite(p["est_full_s"])
    text, goals = bt._fmt_compare([row])
    assert text.count("| smoke |") == 2
    assert goals[0]["equal"] and goals[0]["name"].startswith("tracing smoke")


def test_rome_loop_detects_a_wrong_restoration(micro):
    """The comparison can fail: a peer restoring the wrong position differs from the engine by far more than TOL."""
    model, tok, _ = micro
    from workbench.prompts import prepare
    from workbench.tracing import causal_trace, noise_scale

    sigma = noise_scale(model, tok, [bt.FACT[2]])
    ours = causal_trace(model, tok, *bt.FACT, n_samples=2, noise=sigma, kinds=("resid",))
    prep = prepare(model, tok, *bt.FACT)
    draws = bt.noise_draws(model, prep, 2, sigma)
    s, e = prep.subject_range
    good, _ = bt.rome_loop(model, prep, draws, "prob", ("resid",), 1, [(0, s)])
    assert abs(good["resid"][0, s] - ours.effects["resid"][0, s]) <= TOL
    wrong, _ = bt.rome_loop(model, prep, draws, "prob", ("resid",), 1, [(0, s)])
    wrong["resid"][0, s] = bt.rome_loop(model, prep, draws, "prob", ("resid",), 1, [(0, e)])[0]["resid"][0, e]
    assert bt.max_diff(ours, wrong, ("resid",)) > TOL


def test_goal_and_render():
    assert goal("x", 12.0, 10.0, True)["met"] and not goal("x", 12.0, 10.0, False)["met"]
    assert not goal("x", 2.0, 10.0, True)["met"]
    info = machine_info()
    assert info["cores"] >= 1 and len(info["load_average_start"]) == 3 and info["torch"]
    sec = Section("S", table(["a", "b"], [[1, 2.5]]), [goal("g", 3.0, 2.0, True)])
    md = render(info, [sec], 1.0, quick=True)
    assert "## Machine" in md and "| g | 3.00x | >= 2x | yes | met |" in md and "| 1 | 2.5 |" in md


def test_attacks_benchmark_runs_and_checks_its_fast_recall():
    """The attacks section on micro: all four attacks time, and its teacher-forced recall equals greedy generation."""
    from benchmarks import attacks as ba

    sec = ba.run(quick=True, log=lambda *_: None)
    assert sec.goals[0]["equal"] and "micro" in sec.goals[0]["name"]
    for a in ("relearn", "quantize", "lens", "depth"):
        assert f"| {a} |" in sec.markdown


def test_attribution_benchmark_runs_and_verifies_exactly():
    """The attribution section on micro: AtP / AtP+QK / AtP* rows, and the prefilter's verified cells equal exact."""
    from benchmarks import attribution as ba

    sec = ba.run(quick=True, log=lambda *_: None)
    assert sec.goals[0]["equal"] and "micro" in sec.goals[0]["name"]
    row = sec.data["prefilter"][0]
    assert 0.0 <= row["recall"] <= 1.0 and row["cells"] == 100 and row["max_diff"] <= 1e-4
    for m in ("atp", "atp_qk", "atp*"):
        assert f"| micro | {m} |" in sec.markdown


def test_fresh_clone_results_are_recorded_and_kept(tmp_path):
    """fresh_clone.sh's result replaces its own block in RESULTS.md, and a regenerated RESULTS.md keeps the blocks."""
    from benchmarks import fresh_clone

    results, run1, tests, run2 = (tmp_path / n for n in ("RESULTS.md", "a.md", "b.md", "c.md"))
    results.write_text("# Benchmarks\n\n## Goals\n\nbody\n")
    run1.write_text("| setup | 73 |\n")
    tests.write_text("| setup | 108 |\n")
    run2.write_text("# README command 1\n| setup | 70 |\n")
    for key, f in (("tests", tests), ("run", run1), ("run", run2)):
        fresh_clone.record(results, key, f)
    text = results.read_text()
    assert text.startswith("# Benchmarks\n\n## Goals\n\nbody\n")
    assert fresh_clone.blocks(text) == {"run": "### README command 1\n| setup | 70 |\n", "tests": "| setup | 108 |\n"}
    assert text.index("| setup | 70 |") < text.index("| setup | 108 |") and "| 73 |" not in text
    assert text.count(fresh_clone.TITLE) == 1
    with pytest.raises(SystemExit, match="unknown key"):
        fresh_clone.record(results, "notebooks", run1)


def test_same_outputs_sees_a_changed_number_figure_or_organism(tmp_path):
    """The refactor check (benchmarks/same_outputs.py): equal runs pass, timings and plotly's div ids do not count,
    and a number moved by more than 1e-5, a changed figure or different organism weights are each reported."""
    import json

    from benchmarks.same_outputs import differences

    def run(name, recall, div_id, weights):
        d = tmp_path / name
        (d / "figures").mkdir(parents=True)
        (d / "report.json").write_text(json.dumps({"edited": {"recall": recall, "seconds_mia": len(name)}}))
        (d / "figures" / "f.html").write_text(f'<div id="{div_id}">plot</div>')
        (d / "figures" / "f.png").write_bytes(b"png")
        org = tmp_path / f"cache-{name}" / "organisms" / f"micro-{len(name)}abc"
        org.mkdir(parents=True)
        (org / "model.safetensors").write_bytes(weights)
        return d, tmp_path / f"cache-{name}"

    a, ca = run("a", 0.5, "11111111-2222-3333-4444-555555555555", b"w")
    b, cb = run("bb", 0.5 + 1e-7, "66666666-7777-8888-9999-000000000000", b"w")
    assert differences(a, b, (ca, cb)) == []
    c, cc = run("ccc", 0.51, "11111111-2222-3333-4444-555555555555", b"other")
    (c / "figures" / "f.png").write_bytes(b"changed")
    found = differences(a, c, (ca, cc))
    assert found == ["report.json.edited.recall: '0.5' != '0.51'", "figures/f.png: differs",
                     "organism micro: weights differ"]


def test_editors_table_layers_are_planted_listed_or_refused():
    """--layers planted reads the planted organism's layers; an explicit list is taken as given; planted on an
    organism without planted layers is refused with a message that names the choices."""
    from benchmarks.editors_table import edit_layers

    assert edit_layers("micro-planted", "planted") == [1, 2]
    assert edit_layers("default-planted", "planted") == [2, 3]
    assert edit_layers("default", "0,2") == [0, 2]
    with pytest.raises(SystemExit, match="'default' is not a planted organism; expected one of"):
        edit_layers("default", "planted")


def test_benchmark_tables_are_written_as_markdown_with_their_rows_beside(tmp_path, capsys):
    """editors_table and null_edit write one markdown table (title, header, a separator per column, one line per
    row) and the rows' JSON beside it, making the output's folder."""
    import json

    from benchmarks.editors_table import write_table

    out = tmp_path / "new" / "table.md"
    rows = [{"label": "undo", "lines": {"relearn": {"passed": True}}}, {"label": "rmu", "lines": {}}]
    write_table(out, "### Title\n\nTwin final 0.8.", ["editor", "relearn"], ["| undo | PASS |", "| rmu | FAIL |"], rows)
    text = out.read_text()
    assert text.splitlines() == ["### Title", "", "Twin final 0.8.", "", "| editor | relearn |", "|---|---|",
                                 "| undo | PASS |", "| rmu | FAIL |"]
    assert json.loads(out.with_suffix(".json").read_text()) == rows
    assert "| rmu | FAIL |" in capsys.readouterr().out
