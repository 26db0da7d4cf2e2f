"""`workbench trace / patch / select`: flags -> files + JSON summary; bad input -> one line, before any model loads.

The first tests swap the model loader and tracer for fakes with known effects (fast, checks the CLI's own logic);
the last ones run the real engine end to end on the micro organism."""
from __future__ import annotations

import json

import numpy as np
import pytest

from workbench import figures as F
from workbench.aggregate import LayerImportance, aggregate
from workbench.cli import main
from workbench.results import TraceResult
from workbench.selection import LayerSelection, select_layers
from workbench.trace_settings import TraceSettings

PNG = ("html", "png") if F.browser_path() is not None else ("html",)


def fake_result(prompt, peak_layer, n_layers=4, tokens=("What", " is", " Ada", " Roe", "?")):
    eff = np.full((n_layers, len(tokens)), 0.1)
    eff[peak_layer, 3] = 0.9                     # last subject token at the planted layer
    return TraceResult(method="causal_trace", prompt=prompt, answer="1987", tokens=list(tokens), subject_range=(2, 4),
                       effects={k: eff.copy() for k in ("resid", "mlp", "attn")}, clean=1.0, corrupted=0.1,
                       config={"noise_sigma": 0.3, "window": 1, "wall_s": 0.0})


@pytest.fixture
def fakes(monkeypatch):
    """Fake model loader and tracer: record the calls, return planted results (peak at layer 2). The fake tokenizer
    cannot count tokens, so the record length bound passes records through."""
    import workbench.data.limits
    import workbench.harness
    import workbench.tracing

    monkeypatch.setattr(workbench.data.limits, "bound_records", lambda corpus, tok, *a, **kw: corpus)

    calls = {}
    monkeypatch.setattr(workbench.harness, "load_model", lambda spec, **kw: calls.setdefault("model", (spec, kw)) and
                        ("MODEL", "TOK"))

    def trace_facts(model, tok, records, **kw):
        calls["trace_facts"] = (records, kw)
        return [fake_result(r.input, 2) for r in records]

    def causal_trace(model, tok, prompt, answer, subject, **kw):
        calls["causal_trace"] = (prompt, answer, subject, kw)
        return fake_result(prompt, 2)

    monkeypatch.setattr(workbench.tracing, "trace_facts", trace_facts)
    monkeypatch.setattr(workbench.tracing, "causal_trace", causal_trace)
    return calls


def test_trace_facts_writes_results_importance_figures_and_summary(fakes, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["trace", "--model", "organism:micro", "--facts", "forget", "--task", "Task2", "--limit", "3",
               "--samples", "4", "--kinds", "resid,mlp", "--n-boot", "50", "--formats", "html", "--out", str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    records, kw = fakes["trace_facts"]
    assert len(records) == 3 and all(r.task == "Task2" and r.subject for r in records)
    assert kw["kinds"] == ("resid", "mlp") and kw["n_samples"] == 4 and kw["backend"] == "torch"
    assert kw["facts_per_batch"] == 1                                       # one fact at a time unless asked
    assert summary["n_facts"] == 3 and summary["peaks"]["mlp"]["layer"] == 2
    assert summary["peaks"]["mlp"]["lo"] <= summary["peaks"]["mlp"]["mean"] <= summary["peaks"]["mlp"]["hi"]
    assert set(summary["peaks"]) == {"resid", "mlp"}
    assert len(list((out / "results").glob("*.npz"))) == 3
    imp = LayerImportance.load(out / "importance_mlp.json")
    np.testing.assert_allclose(imp.mean, [0.0, 0.0, 8 / 9, 0.0])      # (0.9 - 0.1) / (1 - 0.1) at the peak
    assert imp.provenance["data"]["source"].endswith(":forget")
    figs = sorted(p.name for p in (out / "figures").iterdir())
    assert figs == ["importance.html", "plotly.min.js", "token_roles_mlp.html", "token_roles_resid.html", "trace_0000.html",
                    "trace_0001.html", "trace_0002.html"]
    events = [json.loads(l)["event"] for l in (out / "trace.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "done" and events.count("traced") == 3
    assert json.loads((out / "summary.json").read_text())["layers"]["mlp"]["mean"] == [0.0, 0.0, 0.8889, 0.0]


def test_trace_one_prompt(fakes, tmp_path, capsys):
    rc = main(["trace", "--prompt", "What is Ada Roe?", "--subject", "Ada Roe", "--answer", "1987", "--noise", "0.5",
               "--formats", "none", "--out", str(tmp_path)])
    assert rc == 0
    assert fakes["model"][0] == "organism"                                  # the default model
    prompt, answer, subject, kw = fakes["causal_trace"]
    assert (prompt, answer, subject, kw["noise"]) == ("What is Ada Roe?", "1987", "Ada Roe", 0.5)
    assert json.loads(capsys.readouterr().out)["n_facts"] == 1
    assert not (tmp_path / "figures").exists()


def test_trace_counts_the_facts_below_the_floor_and_keeps_their_results(fakes, tmp_path, capsys):
    """The planted facts' total effect is 0.9: a floor of 1.0 leaves every one out of the importance, which the
    summary says, while the per-fact results and heatmaps are still written."""
    out = tmp_path / "run"
    assert main(["trace", "--prompt", "What is Ada Roe?", "--subject", "Ada Roe", "--answer", "1987",
                 "--min-total-effect", "1.0", "--formats", "html", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_facts_excluded"] == 1 and summary["peaks"] == {}
    assert summary["warnings"] == ["no importance: no fact of 1 has a total effect (clean - corrupted) >= 1.0; "
                                   "lower min_total_effect or use a stronger noise"]
    assert not list(out.glob("importance_*.json")) and len(list((out / "results").glob("*.npz"))) == 1
    assert sorted(p.name for p in (out / "figures").glob("*.html")) == ["trace_0000.html"]
    # the default floor (0.5) keeps them, and a flagged range would be listed
    assert main(["trace", "--prompt", "What is Ada Roe?", "--subject", "Ada Roe", "--answer", "1987",
                 "--formats", "none", "--out", str(tmp_path / "kept")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_facts_excluded"] == 0 and summary["warnings"] == [] and summary["min_total_effect"] == 0.5


@pytest.mark.parametrize("argv, msg", [
    (["--prompt", "What is Ada Roe?", "--answer", "1987"], "missing --subject"),
    (["--prompt", "What is Ada Roe?", "--subject", "Bo Lin", "--answer", "1987"], "'Bo Lin' is not in prompt"),
    (["--facts", "forget", "--prompt", "x"], "not both"),
    (["--facts", "forget", "--kinds", "resid,mlps"], r"--kinds \['mlps'\] unknown"),
    (["--facts", "forget", "--limit", "0"], "--limit must be >= 1"),
    (["--facts", "forget", "--position", "first"], "--position 'first' unknown"),
    (["--facts", "forget", "--formats", "html,gif"], r"--formats \['gif'\] unknown"),
    (["--facts", "everything"], "expected 'forget', 'retain' or a LUME-format .jsonl"),
    (["--facts", "forget", "--task", "Task9"], "--task 'Task9': no traceable facts"),
    (["--facts", "nothere.jsonl"], "nothere.jsonl does not exist"),
    (["--facts", "forget", "--noise", "nan"], "--noise must be a finite number > 0"),
    (["--facts", "forget", "--noise", "-1"], "--noise must be a finite number > 0"),
    (["--facts", "forget", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--facts", "forget", "--facts-per-batch", "0"], "--facts-per-batch must be >= 1"),
    (["--facts", "forget", "--window", "0"], "--window must be >= 1"),
    (["--facts", "forget", "--metric", "logit"], "--metric 'logit' unknown"),
    (["--facts", "forget", "--max-record-tokens", "0"], "record length bound must be an integer >= 2"),
])
def test_trace_bad_input_one_line_before_loading(argv, msg, fakes, tmp_path, capsys):
    assert main(["trace", "--model", "organism:micro", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench trace: error:") and "\n" not in err
    assert __import__("re").search(msg, err), err
    assert "model" not in fakes                                             # failed before loading a model


def test_select_command(tmp_path, capsys):
    results = [fake_result(f"p{i}", 1 + (i % 2)) for i in range(4)]     # peaks at layers 1 and 2
    imp = aggregate(results, "mlp", n_boot=50)
    imp.save(tmp_path / "importance_mlp.json")
    for i, r in enumerate(results):
        r.save(tmp_path / "results" / f"{i:04d}")
    sel_path = tmp_path / "sel.json"
    assert main(["select", str(tmp_path / "importance_mlp.json"), "--strategy", "window", "--window", "2",
                 "--out", str(sel_path)]) == 0
    line = json.loads(capsys.readouterr().out)
    sel = LayerSelection.load(sel_path)
    assert sel.layers == line["layers"] == select_layers(imp, "window", window=2).layers == [1, 2]
    assert sel.provenance["source_file"].endswith("importance_mlp.json")
    # a trace directory (importance file present) and a bare TraceResult both work; stdout JSON without --out
    assert main(["select", str(tmp_path), "--kind", "mlp", "--strategy", "top-k", "--k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == [1]
    assert main(["select", str(tmp_path / "results" / "0000.json"), "--kind", "resid", "--strategy", "threshold",
                 "--threshold", "0.8"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == [1]
    # a directory without importance file re-aggregates its results
    (tmp_path / "importance_mlp.json").unlink()
    assert main(["select", str(tmp_path), "--strategy", "top-k", "--k", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == [1, 2]


@pytest.mark.parametrize("argv, msg", [
    (["--strategy", "best"], "--strategy 'best' unknown"),
    (["--kind", "attn"], "holds the importance of kind 'mlp'"),
    (["--strategy", "window", "--window", "9"], "window=9 must be between 1 and the number of layers"),
    (["--strategy", "threshold", "--threshold", "2"], r"no layer scores >= 2.0"),
])
def test_select_bad_input(argv, msg, tmp_path, capsys):
    aggregate([fake_result("p", 1)], "mlp").save(tmp_path / "imp.json")
    assert main(["select", str(tmp_path / "imp.json"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench select: error:") and msg.split("'")[0] in err and "\n" not in err
    assert main(["select", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_select_out_is_a_directory(tmp_path, capsys):
    aggregate([fake_result("p", 1)], "mlp").save(tmp_path / "imp.json")
    (tmp_path / "dir").mkdir()
    assert main(["select", str(tmp_path / "imp.json"), "--out", str(tmp_path / "dir")]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and "Traceback" not in err


def test_trace_window_wider_than_the_model_is_refused(micro, tmp_path, capsys):
    """--window 100 on a 4-layer model restored every layer at once: the same importance everywhere, exit 0."""
    assert main(["trace", "--model", "organism:micro", "--facts", "forget", "--limit", "1", "--samples", "2",
                 "--window", "100", "--formats", "none", "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "window must be between 1 and the model's 4 layers, got 100" in err and "Traceback" not in err


def test_patch_bad_input_before_loading(fakes, tmp_path, capsys):
    base = ["patch", "--clean", "What is Ada?", "--answer", "x", "--out", str(tmp_path)]
    assert main([*base, "--corrupt", "What is Ada?"]) == 2
    assert "same prompt" in capsys.readouterr().err
    assert main([*base, "--corrupt", "What is Bo?", "--metric", "logit_diff"]) == 2
    assert "needs --wrong" in capsys.readouterr().err
    assert main([*base, "--corrupt", "What is Bo?", "--sites", "mlp"]) == 2
    assert "--sites ['mlp'] unknown" in capsys.readouterr().err
    assert main([*base, "--corrupt", "What is Bo?", "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert "model" not in fakes


# --- end to end on the micro organism (real engine) ---------------------------------------------------------
def test_trace_and_select_end_to_end_on_micro(micro, tmp_path, capsys):
    out = tmp_path / "trace"
    rc = main(["trace", "--model", "organism:micro", "--facts", "forget", "--task", "Task2", "--limit", "2",
               "--samples", "3", "--metric", "logprob_mean", "--n-boot", "200", "--formats", ",".join(PNG),
               "--min-total-effect", "0.2", "--out", str(out)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    # micro's first two facts lose 0.37 nats under subject noise: below the default floor of 0.5, above 0.2
    assert summary["n_facts"] == 2 and summary["n_facts_excluded"] == 0
    assert set(summary["peaks"]) == {"resid", "mlp", "attn"}
    assert summary["clean_mean"] > summary["corrupted_mean"]               # noise on the subject hurts recall
    results = [TraceResult.load(p) for p in sorted((out / "results").glob("*.json"))]
    assert [r.prompt for r in results] == [r.input for r in micro[2].facts("forget", "Task2")[:2]]
    for kind in ("resid", "mlp", "attn"):
        imp = LayerImportance.load(out / f"importance_{kind}.json")
        again = TraceSettings(n_boot=200, min_total_effect=0.2).importance(results, kind)  # same settings, seed
        np.testing.assert_allclose(imp.mean, again.mean)
        np.testing.assert_allclose(imp.lo, again.lo)
        assert summary["peaks"][kind]["layer"] == int(np.argmax(again.mean))
    for fmt in PNG:
        assert (out / "figures" / f"importance.{fmt}").is_file() and (out / "figures" / f"trace_0000.{fmt}").is_file()
    assert main(["select", str(out), "--kind", "mlp", "--strategy", "window", "--window", "2",
                 "--out", str(tmp_path / "sel.json")]) == 0
    capsys.readouterr()
    sel = LayerSelection.load(tmp_path / "sel.json")
    assert len(sel.layers) == 2 and sel.layers[1] == sel.layers[0] + 1 and sel.n_layers == 4


def test_patch_end_to_end_on_micro(micro, tmp_path, capsys):
    """Two prompts differing in one token: patching resid_pre of layer 0 there turns the corrupt run into the clean
    run, so its normalised effect is exactly 1; attribution is reported against it."""
    model, tok, _ = micro
    clean, corrupt = "What did Nahound dream of becoming?", "What did Zaind dream of becoming?"
    ids_c, ids_x = tok(clean)["input_ids"], tok(corrupt)["input_ids"]
    diff = [i for i, (a, b) in enumerate(zip(ids_c, ids_x)) if a != b]
    assert len(ids_c) == len(ids_x) and len(diff) == 1, "test prompts must differ in exactly one token"
    out = tmp_path / "patch"
    assert main(["patch", "--model", "organism:micro", "--clean", clean, "--corrupt", corrupt, "--answer", "chemist",
                 "--metric", "logprob_mean", "--attribution", "--formats", "html", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clean"] > summary["corrupted"]
    exact = TraceResult.load(out / "activation.json")
    assert exact.subject_range == (diff[0], diff[0] + 1)
    assert exact.normalised("resid_pre")[0, diff[0]] == pytest.approx(1.0, abs=1e-4)
    assert set(exact.effects) == {"resid_pre", "attn_out", "mlp_out", "head"}
    attr = TraceResult.load(out / "attribution.json")
    assert attr.effects["resid_pre"].shape == exact.effects["resid_pre"].shape
    vs = summary["attribution"]["vs_exact"]
    assert set(vs) == {"resid_pre", "attn_out", "mlp_out", "head", "all"}
    # the reported correlations are those of the two saved maps' changes over the corrupt run, recomputed here
    est = {k: (attr.effects[k] - attr.corrupted).ravel() for k in exact.effects}
    ref = {k: (exact.effects[k] - exact.corrupted).ravel() for k in exact.effects}
    for k in exact.effects:
        assert vs[k]["pearson"] == pytest.approx(np.corrcoef(est[k], ref[k])[0, 1]), k
    both = np.concatenate(list(est.values())), np.concatenate([ref[k] for k in est])
    assert vs["all"]["pearson"] == pytest.approx(np.corrcoef(*both)[0, 1])
    # a one-token swap in a small model: the first-order estimate follows exact patching closely
    assert vs["all"]["pearson"] > 0.5
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["activation.html", "attribution.html",
                                                                   "plotly.min.js"]
