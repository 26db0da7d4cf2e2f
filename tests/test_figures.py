"""Figures: the data drawn is the data given, labels mark the subject, and files get written (HTML always;
PNG/SVG/PDF when a Chrome/Chromium for kaleido exists)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

import plotly.graph_objects as go

from workbench import figures as F
from workbench.aggregate import aggregate, importance_difference, token_roles
from workbench.errors import ConfigError, TraceError
from workbench.results import TraceResult

TOKENS = ["What", " is", " the", " date", " of", " Ada", " Lov", "elace", "?"]


def make_result(scale=1.0, seed=0, n_layers=4) -> TraceResult:
    rng = np.random.default_rng(seed)
    base = np.full((n_layers, len(TOKENS)), 0.05)
    base[:2, 7] = 0.9 * scale          # last subject token, early layers
    base[2:, 8] = 0.8 * scale          # last token, late layers
    effects = {k: base + rng.uniform(0, 0.02, base.shape) for k in ("resid", "mlp", "attn")}
    return TraceResult(method="causal_trace", prompt="What is the date of Ada Lovelace?", answer="1815",
                       tokens=TOKENS, subject_range=(5, 8), effects=effects, clean=0.95 * scale, corrupted=0.05,
                       extra={"head": rng.uniform(size=(n_layers, 4))})


def test_heatmap_draws_the_effects_with_marked_subject():
    r = make_result()
    fig = F.heatmap(r, "mlp")
    hm = fig.data[0]
    np.testing.assert_array_equal(np.asarray(hm.z), r.effects["mlp"])
    ticks = list(fig.layout.xaxis.ticktext)
    assert ticks[5:8] == ["<b>Ada*</b>", "<b>Lov*</b>", "<b>elace*</b>"]
    assert ticks[0] == "What" and "*" not in "".join(ticks[:5] + ticks[8:])
    assert list(fig.layout.xaxis.tickvals) == list(range(len(TOKENS)))  # numeric x: repeated tokens stay apart
    assert "p_clean=0.950" in fig.layout.title.text and "p_corrupted=0.050" in fig.layout.title.text
    assert hm.colorbar.title.text == "p(answer)"
    assert fig.layout.width == int(3.3 * F.PX_PER_INCH)
    norm = F.heatmap(r, "mlp", normalised=True)
    np.testing.assert_allclose(np.asarray(norm.data[0].z), r.normalised("mlp"))
    heads = F.heatmap(r, "head")
    assert list(heads.layout.xaxis.ticktext) == ["H0", "H1", "H2", "H3"]
    with pytest.raises(TraceError, match="no kind 'bogus'"):
        F.heatmap(r, "bogus")


def test_heatmaps_one_panel_per_kind():
    r = make_result()
    fig = F.heatmaps(r)
    assert [a.text for a in fig.layout.annotations] == ["Residual stream", "MLP output", "Attention output"]
    for trace, kind in zip(fig.data, ("resid", "mlp", "attn")):
        np.testing.assert_array_equal(np.asarray(trace.z), r.effects[kind])
    # colour bars sit right of their own panel, not on top of the next one
    xs = [t.colorbar.x for t in fig.data]
    assert xs == sorted(xs) and xs[0] > fig.layout.xaxis.domain[1] and xs[0] < fig.layout.xaxis2.domain[0]
    # one colour range for the row, every colour bar labelled with what it measures
    lo = min(float(np.min(r.effects[k])) for k in ("resid", "mlp", "attn"))
    hi = max(float(np.max(r.effects[k])) for k in ("resid", "mlp", "attn"))
    assert {(t.zmin, t.zmax) for t in fig.data} == {(lo, hi)}
    assert [t.colorbar.title.text for t in fig.data] == ["p(answer)"] * 3


def test_patching_heatmaps_share_one_diverging_scale_centred_on_no_change():
    """An attribution estimate below the counterfactual metric is blue, one above red, a cell without effect white."""
    r = make_result()
    eff = {k: np.full((4, len(TOKENS)), 0.05) for k in ("resid_pre", "mlp_out")}
    eff["resid_pre"][0, 6] = -0.4            # AtP's sign error at the embedding: below the corrupted metric
    eff["mlp_out"][1, 7] = 0.6
    atp = TraceResult(method="attribution_patching", prompt=r.prompt, answer=r.answer, tokens=TOKENS,
                      subject_range=(5, 8), effects=eff, clean=0.95, corrupted=0.05)
    fig = F.heatmaps(atp)
    assert {t.zmid for t in fig.data} == {0.05} and {t.colorscale[0][1] for t in fig.data} == {"rgb(5,48,97)"}
    assert {(round(t.zmin, 6), round(t.zmax, 6)) for t in fig.data} == {(-0.5, 0.6)}
    assert [t.showscale for t in fig.data] == [False, True]      # one colour bar for the shared scale


def test_importance_curve_band_is_the_interval():
    imp = aggregate([make_result(seed=s) for s in range(6)], "resid", n_boot=200)
    fig = F.importance_curve(imp)
    band, line = fig.data
    np.testing.assert_allclose(line.y, imp.mean)
    np.testing.assert_allclose(band.y, np.concatenate([imp.hi, imp.lo[::-1]]))
    assert band.fill == "toself"
    multi = F.importance_curve({"a": imp, "b": imp})
    assert [d.name for d in multi.data if d.showlegend is not False] == ["a", "b"]
    with pytest.raises(ConfigError):
        F.importance_curve([])
    assert not fig.layout.annotations                                    # nothing to flag


def test_importance_curve_flags_a_mean_outside_the_sane_range_and_counts_the_left_out():
    """A fact whose answer the noise barely moves (total effect 0.01) has its effects divided by 0.01: without a
    floor its normalised effect of 12 is drawn, flagged; with the floor the fact is left out and counted."""
    weak = TraceResult(**{**make_result().__dict__, "clean": 0.06})      # total effect 0.01
    results = [make_result(seed=s) for s in range(3)] + [weak]
    raw = aggregate(results, "mlp", position="last_subject", n_boot=50)
    assert raw.out_of_range == [0, 1] and "raise min_total_effect" in raw.warning()
    assert raw.summary()["out_of_range"]["layers"] == [0, 1]
    fig = F.importance_curve(raw)
    assert "mean normalised effect outside [-0.5, 1.5]" in fig.layout.annotations[0].text
    rings = fig.data[-1]
    assert list(rings.x) == [0, 1] and rings.marker.line.color == "#cf222e"
    floored = aggregate(results, "mlp", position="last_subject", n_boot=50, min_total_effect=0.5)
    assert floored.out_of_range == [] and floored.n_facts == 3 and floored.n_facts_excluded == 1
    fig = F.importance_curve(floored)
    assert not fig.layout.annotations and "1 more left out: total effect below 0.5" in fig.layout.title.text


def test_token_role_heatmap():
    roles = token_roles([make_result(seed=s) for s in range(3)], "resid")
    fig = F.token_role_heatmap(roles)
    # the subject ends one token before the last: no fact has a "first subsequent" or "further" token
    present = [0, 1, 2, 5]
    assert roles.counts.tolist() == [3, 3, 3, 0, 0, 3]
    np.testing.assert_allclose(np.asarray(fig.data[0].z, float), roles.values.T[:, present])
    assert list(fig.layout.xaxis.ticktext) == ["first subject", "middle subject", "last subject", "last token"]
    assert "no first-subsequent column" in fig.layout.title.text and "no further-tokens column" in fig.layout.title.text
    # two-token subjects have no middle: the column is left out and the title says why
    two = TraceResult(**{**make_result().__dict__, "subject_range": (6, 8)})
    fig2 = F.token_role_heatmap(token_roles([two], "resid"))
    assert "middle subject" not in list(fig2.layout.xaxis.ticktext)
    assert "every subject has at most two tokens" in fig2.layout.title.text


def test_before_after_traces_and_importances():
    before, after = make_result(), make_result(scale=0.2, seed=1)
    fig = F.trace_before_after(before, after, "resid")
    zb, za, zd = (np.asarray(t.z) for t in fig.data)
    np.testing.assert_allclose(zd, za - zb)
    assert fig.data[2].zmid == 0 and fig.data[0].zmax == fig.data[1].zmax   # shared scale before/after
    # aggregated: paired difference of the same facts
    bs, as_ = [make_result(seed=s) for s in range(5)], [make_result(0.2, seed=s + 9) for s in range(5)]
    b, a = aggregate(bs, "mlp"), aggregate(as_, "mlp")
    fig2 = F.importance_before_after(b, a, importance_difference(b, a))
    diff_line = fig2.data[5]
    np.testing.assert_allclose(diff_line.y, aggregate(as_, "mlp").mean - aggregate(bs, "mlp").mean, atol=1e-12)
    assert fig2.layout.yaxis3.title.text == "after − before"
    with pytest.raises(TraceError, match="differ in shape"):
        F.trace_before_after(before, make_result(n_layers=3), "resid")


def test_save_html_always_and_clear_error_without_browser(tmp_path, monkeypatch):
    fig = F.heatmap(make_result(), "resid")
    out = F.save_figure(fig, tmp_path / "h.png", formats=("html",))    # suffix is dropped from the stem
    html = out["html"].read_text()
    assert out["html"] == tmp_path / "h.html" and "Residual stream" in html
    # offline-viewable: the page loads the plotly.js written beside it
    assert '<script charset="utf-8" src="plotly.min.js"></script>' in html
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    monkeypatch.setattr(F, "browser_path", lambda: None)
    with pytest.raises(F.FigureExportError, match="apt-get install -y chromium"):
        F.save_figure(fig, tmp_path / "nobrowser", formats=("html", "png"))
    assert (tmp_path / "nobrowser.html").is_file() and not (tmp_path / "nobrowser.png").exists()
    with pytest.raises(ConfigError, match="'gif'"):
        F.save_figure(fig, tmp_path / "x", formats=("gif",))
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.skipif(F.browser_path() is None,
                    reason="no Chrome/Chromium for kaleido: apt-get install -y chromium (PNG/SVG/PDF export untested)")
def test_static_export_png_svg_pdf(tmp_path):
    fig = F.heatmaps(make_result())
    with F.export_session():
        out = F.save_figure(fig, tmp_path / "trace", formats=("html", "png", "svg", "pdf"), scale=2)
    png = out["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", png[16:24])
    assert (w, h) == (2 * fig.layout.width, 2 * fig.layout.height)   # layout size honoured, not kaleido's default
    assert out["svg"].read_text().lstrip().startswith("<svg") and "elace*" in out["svg"].read_text()
    assert out["pdf"].read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plotly.min.js", "trace.html", "trace.pdf", "trace.png",
                                                          "trace.svg"]


def test_sweep_plot():
    rows = [{"start": s, "forget": 1 - 0.1 * s, "retain": 0.9} for s in range(4)]
    fig = F.sweep_plot(rows, "start", ["forget", "retain"])
    assert [d.name for d in fig.data] == ["forget", "retain"]
    np.testing.assert_allclose(fig.data[0].y, [1.0, 0.9, 0.8, 0.7])
    # the pipeline's sweep: readable names, recall on the left axis, traced importance on its own right axis
    rows = [{"window": f"{s}-{s + 1}", "forget_drop": 0.1 * s, "retain_qa_em": 0.9, "traced_importance": 0.02 * s}
            for s in range(3)]
    fig = F.sweep_plot(rows, "window", ["forget_drop", "retain_qa_em", "traced_importance"], y_title="recall",
                       right=("traced_importance",))
    assert [d.name for d in fig.data] == ["forget-recall drop", "retain QA recall",
                                          "traced importance (normalised effect)"]
    assert [d.yaxis for d in fig.data] == ["y", "y", "y2"] and fig.layout.yaxis2.side == "right"
    assert fig.layout.yaxis.title.text == "recall" and fig.layout.xaxis.title.text == "layer window"
    assert fig.layout.yaxis2.title.text == "traced importance (normalised effect)"
    with pytest.raises(ConfigError, match="right-axis keys"):
        F.sweep_plot(rows, "window", ["forget_drop"], right=("traced_importance",))
    with pytest.raises(ConfigError, match=r"rows lack keys \['mmlu'\]"):
        F.sweep_plot(rows, "window", "mmlu")


def test_figure_export_turns_a_failed_export_into_one_warning_and_publishes_atomically(tmp_path, monkeypatch):
    """Every study writes its figures through FigureExport: without a browser the first static export fails as a
    warning (logged), the rest are written as HTML only, and nothing raises; publish copies the matching PNGs."""
    monkeypatch.setattr(F, "browser_path", lambda: None)
    events = []
    export = F.FigureExport(tmp_path / "figs", formats=["html", "png"],
                            log=lambda event, **fields: events.append((event, fields)))
    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))
    written = export.write({"a": fig, "b": lambda: fig})
    assert sorted(p.name for p in written) == ["a.html", "b.html"]
    assert export.formats == ["html"] and export.failed == ["a"] and len(export.warnings) == 1
    assert events == [("figure_warning", {"figure": "a", "message": export.warnings[0]})]
    assert "FigureExportError" in export.warnings[0]
    for name in ("study_x.png", "other.png"):
        (tmp_path / "figs" / name).write_bytes(b"png")
    export.publish(tmp_path / "dest", "study_*")
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["study_x.png"]
    assert F.FigureExport(tmp_path / "g").formats == ["html"]   # no browser: HTML only, no warning
