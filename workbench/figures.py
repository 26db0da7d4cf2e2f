"""Plotly figures for traces, layer importance, token roles and before/after comparisons, in a paper style.

Every builder returns a `plotly.graph_objects.Figure`; `save_figure` writes it as
HTML (always) and PNG/SVG/PDF through kaleido, which drives a headless
Chrome/Chromium (`apt-get install -y chromium`, or `kaleido.get_chrome_sync()`).
"""
from __future__ import annotations

import contextlib
import html
import os
import warnings
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, qualitative
from plotly.subplots import make_subplots

from .errors import ConfigError, FigureExportError, TraceError
from .provenance import atomic_write_text
from .results import TraceResult

PX_PER_INCH = 100                       # layout px; export at scale 3 -> 300 dpi
WIDTHS = {"column": 3.3, "page": 7.0}   # inches: one column / full width of a two-column paper
FONT = "Arial, Helvetica, sans-serif"

KIND_TITLES = {"resid": "Residual stream", "mlp": "MLP output", "attn": "Attention output",
               "resid_pre": "Residual stream (pre)", "resid_post": "Residual stream (post)",
               "attn_out": "Attention output", "mlp_out": "MLP output", "head": "Attention heads"}
KIND_COLORS = {"resid": "Purples", "mlp": "Greens", "attn": "Reds",   # ROME's colours per kind
               "resid_pre": "Purples", "resid_post": "Purples", "mlp_out": "Greens", "attn_out": "Reds",
               "head": "Blues"}
METRIC_LABELS = {"prob": "p(answer)", "logprob_mean": "mean log p(answer)", "logprob": "mean log p(answer)",
                 "logit_diff": "logit difference"}
STATIC_FORMATS = ("png", "svg", "pdf", "jpeg", "webp")


# --- labels and style ------------------------------------------------------------------------------
def kind_title(kind: str) -> str:
    return KIND_TITLES.get(kind, kind)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def token_labels(result: TraceResult) -> list[str]:
    """Readable tick labels: whitespace made visible, subject tokens bold with a '*'."""
    s, e = result.subject_range
    out = []
    for i, t in enumerate(result.tokens):
        t = t.replace("Ġ", " ").replace("▁", " ").replace("\n", "\\n")
        t = html.escape(t.strip() or "␣")
        out.append(f"<b>{t}*</b>" if s <= i < e else t)
    return out


def _width_px(width) -> int:
    if isinstance(width, str):
        if width not in WIDTHS:
            raise ConfigError(f"figure width {width!r}: expected one of {sorted(WIDTHS)} or a number of px")
        return int(WIDTHS[width] * PX_PER_INCH)
    return int(width)


def paper_layout(fig: go.Figure, width="column", height: int | None = None, font_size: int = 10) -> go.Figure:
    """White background, readable fonts sized for a paper column ("column" 3.3 in, "page" 7 in, or px)."""
    w = _width_px(width)
    fig.update_layout(template="simple_white", width=w, height=height or int(w * 0.8),
                      font=dict(family=FONT, size=font_size, color="black"),
                      title=dict(font=dict(size=font_size + 1), x=0.5, xanchor="center"),
                      margin=dict(l=50, r=20, t=55, b=50),
                      legend=dict(font=dict(size=font_size - 1)))
    fig.update_annotations(font_size=font_size)  # subplot titles
    return fig


def _trace_title(result: TraceResult, heading: str | None = None, max_chars: int = 60) -> str:
    ml = metric_label(result.metric)
    if result.metric == "prob":
        nums = f"p_clean={result.clean:.3f}, p_corrupted={result.corrupted:.3f}"
    else:
        nums = f"clean {ml}={result.clean:.3g}, corrupted={result.corrupted:.3g}"
    prompt = result.prompt if len(result.prompt) <= max_chars else result.prompt[:max_chars - 3] + "..."
    fact = f"{html.escape(prompt)} → {html.escape(result.answer)}"
    if heading:  # narrow figure: heading on top, the fact and numbers small below it
        return f"{heading}<br><sup>{fact}<br>{nums}</sup>"
    return f"{fact}<br><sup>{nums}</sup>"


def _grid(result: TraceResult, kind: str, normalised: bool) -> tuple[np.ndarray, list[str], str]:
    """z [n_layers, n_cols], x labels, x-axis title for a kind of effects (or a per-head map in `extra`)."""
    if kind in result.effects:
        z = np.asarray(result.normalised(kind) if normalised else result.effects[kind], float)
        if kind != "head" and z.shape[1] == len(result.tokens):
            marked = "subject" if result.method == "causal_trace" else "changed"
            return z, token_labels(result), f"token (* = {marked})"
    elif kind in result.extra and np.ndim(result.extra[kind]) == 2:
        z = np.asarray(result.extra[kind], float)
    else:
        z = None
    if z is not None:  # per-head effects of activation patching  # [n_layers, n_heads]
        return z, [f"H{h}" for h in range(z.shape[1])], "head"
    raise TraceError(f"result for {result.prompt!r} has no kind {kind!r}; it has {result.kinds}"
                     + (f" and extra {sorted(result.extra)}" if result.extra else ""))


def _colorbar_title(result: TraceResult, normalised: bool) -> str:
    return "normalised<br>effect" if normalised else metric_label(result.metric).replace(" (", "<br>(")


def _diverging(result: TraceResult) -> bool:
    """Patching and attribution estimates can move the metric either way from the counterfactual run: they are drawn
    on a diverging scale centred on "no change", so cells without effect are white whatever the sign elsewhere.
    Causal traces keep ROME's one-hue scales (restoring a clean activation moves the metric towards clean)."""
    return result.method != "causal_trace"


def _shared_scale(result: TraceResult, zs: list[np.ndarray], normalised: bool) -> dict:
    """zmin/zmax (and zmid) that every panel of one figure shares, so equal colours mean equal values."""
    finite = np.concatenate([z[np.isfinite(z)].ravel() for z in zs] + [np.zeros(0)])
    if _diverging(result):
        mid = 0.0 if normalised else float(result.corrupted)
        lim = float(np.abs(finite - mid).max()) if finite.size else 1.0
        return {"zmin": mid - (lim or 1.0), "zmax": mid + (lim or 1.0), "zmid": mid, "colorscale": "RdBu_r"}
    if not finite.size:
        return {}
    return {"zmin": float(finite.min()), "zmax": float(finite.max())}


def _heatmap_trace(z, labels, kind, cbar_title, colorscale=None, colorbar=None, **kw) -> go.Heatmap:
    n_layers, n_cols = z.shape
    return go.Heatmap(z=z, x=list(range(n_cols)), y=list(range(n_layers)),
                      colorscale=colorscale or KIND_COLORS.get(kind, "Viridis"),
                      colorbar=dict(title=dict(text=cbar_title, side="right"), thickness=10, nticks=6,
                                    **(colorbar or {})),
                      customdata=np.array([labels] * n_layers),
                      hovertemplate="layer %{y}<br>%{customdata}<br>%{z:.4f}<extra></extra>", **kw)


def _axes(fig, labels, x_title, n_layers, row=None, col=None, y_title=True):
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(labels))), ticktext=labels, tickangle=-60,
                     title_text=x_title, row=row, col=col)
    fig.update_yaxes(title_text="layer" if y_title else None, dtick=1 if n_layers <= 16 else None,
                     row=row, col=col)


# --- figures ---------------------------------------------------------------------------------------
def heatmap(result: TraceResult, kind: str = "resid", normalised: bool = False, width="column") -> go.Figure:
    """Layer x token heatmap of one kind: effect on the metric after restoring each (layer, token)."""
    z, labels, x_title = _grid(result, kind, normalised)
    fig = go.Figure(_heatmap_trace(z, labels, kind, _colorbar_title(result, normalised),
                                   **(_shared_scale(result, [z], normalised) if _diverging(result) else {})))
    _axes(fig, labels, x_title, z.shape[0])
    fig.update_layout(title_text=_trace_title(result, heading=kind_title(kind), max_chars=45))
    paper_layout(fig, width=width, height=int(_width_px(width) * 0.9))
    return fig.update_layout(margin=dict(t=80))


def heatmaps(result: TraceResult, kinds=None, normalised: bool = False, width="page") -> go.Figure:
    """The kinds of one result side by side (ROME's three-panel figure) on one colour range, so equal colours mean
    equal values across panels. Causal traces keep one hue per kind, each panel with its own labelled colour bar over
    the shared range; patching and attribution results share one diverging scale and one colour bar."""
    kinds = list(kinds or result.kinds)
    grids = [_grid(result, kind, normalised) for kind in kinds]
    scale = _shared_scale(result, [z for z, _, _ in grids], normalised)
    one_bar = _diverging(result)
    # room between panels for a colour bar with its ticks and title (one-hue scales: one bar per panel)
    fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=True, horizontal_spacing=0.13 if one_bar else 0.17,
                        subplot_titles=[kind_title(k) for k in kinds])
    for i, (kind, (z, labels, x_title)) in enumerate(zip(kinds, grids), start=1):
        dom = fig.layout[f"xaxis{'' if i == 1 else i}"].domain
        fig.add_trace(_heatmap_trace(z, labels, kind, _colorbar_title(result, normalised),
                                     colorbar=dict(x=dom[1] + 0.005, len=1.0),
                                     showscale=not one_bar or i == len(kinds), **scale), row=1, col=i)
        _axes(fig, labels, x_title, z.shape[0], row=1, col=i, y_title=i == 1)
    fig.update_layout(title_text=_trace_title(result))
    return paper_layout(fig, width=width, height=int(_width_px(width) * 0.45))


def method_heatmaps(results: dict, kind: str = "resid_pre", width="page") -> go.Figure:
    """One kind's map from several estimates of the same patching (e.g. exact, AtP, AtP*, the prefilter's verified
    cells), side by side: each panel the change of the metric over the counterfactual run, on one diverging scale
    centred on no change, one colour bar. Cells a result does not estimate (NaN) are left blank."""
    if not results:
        raise ConfigError("method_heatmaps: no results to draw")
    labels, rs = list(results), list(results.values())
    grids = [_grid(r, kind, False) for r in rs]
    zs = [z - r.corrupted for (z, _, _), r in zip(grids, rs)]
    shapes = {z.shape for z in zs}
    if len(shapes) != 1:
        raise TraceError(f"method_heatmaps: the {kind} maps differ in shape {sorted(shapes)}; draw results of one pair")
    finite = np.concatenate([z[np.isfinite(z)] for z in zs] + [np.zeros(1)])
    lim = float(np.abs(finite).max()) or 1.0
    fig = make_subplots(rows=1, cols=len(rs), shared_yaxes=True, horizontal_spacing=0.04, subplot_titles=labels)
    cbar = f"change in<br>{metric_label(rs[0].metric)}"
    for i, (z, (_, xl, x_title)) in enumerate(zip(zs, grids), start=1):
        fig.add_trace(_heatmap_trace(z, xl, kind, cbar, colorscale="RdBu_r", zmid=0.0, zmin=-lim, zmax=lim,
                                     showscale=i == len(rs)), row=1, col=i)
        _axes(fig, xl, x_title, z.shape[0], row=1, col=i, y_title=i == 1)
    fig.update_layout(title_text=f"{kind_title(kind)}: {html.escape(rs[0].prompt)} → {html.escape(rs[0].answer)}"
                                 f"<br><sup>change of the metric over the counterfactual run; blank: not estimated"
                                 f"</sup>")
    return paper_layout(fig, width=width, height=int(_width_px(width) * 0.45))


def _rgba(color: str, alpha: float) -> str:
    r, g, b = hex_to_rgb(color) if color.startswith("#") else (0, 0, 0)
    return f"rgba({r},{g},{b},{alpha})"


def _band(fig, x, mean, lo, hi, color, name, row=None, col=None, showlegend=True):
    x = list(x)
    fig.add_trace(go.Scatter(x=x + x[::-1], y=list(hi) + list(lo)[::-1], fill="toself", fillcolor=_rgba(color, 0.2),
                             mode="lines", line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=name),
                  row=row, col=col)
    fig.add_trace(go.Scatter(x=x, y=list(mean), mode="lines+markers", line=dict(color=color, width=2),
                             marker=dict(size=5), name=name, legendgroup=name, showlegend=showlegend),
                  row=row, col=col)


def _as_importances(imps, labels):
    from .aggregate import LayerImportance

    if isinstance(imps, LayerImportance):
        imps = [imps]
    if isinstance(imps, dict):
        labels, imps = list(imps), list(imps.values())
    imps = list(imps)
    if not imps or not all(isinstance(i, LayerImportance) for i in imps):
        raise ConfigError("importance_curve: expected a LayerImportance, a list of them or a {label: LayerImportance}")
    labels = list(labels) if labels is not None else [kind_title(i.kind) for i in imps]
    return imps, labels


def importance_curve(imps, labels=None, title: str | None = None, width="column") -> go.Figure:
    """Mean normalised effect per layer with its shaded 95% bootstrap interval; several curves overlay."""
    imps, labels = _as_importances(imps, labels)
    fig = go.Figure()
    for i, (imp, label) in enumerate(zip(imps, labels)):
        _band(fig, range(imp.n_layers), imp.mean, imp.lo, imp.hi, qualitative.Plotly[i % 10], label)
    n = imps[0].n_facts
    left_out = imps[0].n_facts_excluded
    fig.update_xaxes(title_text="layer", dtick=1 if imps[0].n_layers <= 16 else None)
    fig.update_yaxes(title_text="normalised effect<br>(mean, 95% CI)")
    fig.update_layout(title_text=title or f"Layer importance over {n} fact{'s' * (n != 1)} "
                                          f"(position: {imps[0].position})"
                                          + (f"<br><sup>{left_out} more left out: total effect below "
                                             f"{imps[0].config.get('min_total_effect')}</sup>" if left_out else ""),
                      # inside the axes: a horizontal legend below wraps unevenly at column width
                      legend=dict(orientation="v", x=0.98, xanchor="right", y=0.98, yanchor="top",
                                  bgcolor="rgba(255,255,255,0.75)"))
    paper_layout(fig, width=width, height=int(_width_px(width) * 0.8))
    _flag_out_of_range(fig, imps, labels)
    return fig


def _flag_out_of_range(fig: go.Figure, imps, labels) -> None:
    """Mark every mean normalised effect outside aggregate.SANE_RANGE: a red warning under the title and red rings
    on the points, so an amplified near-zero total effect is not read as a finding."""
    from .aggregate import SANE_RANGE

    flagged = [(imp, label) for imp, label in zip(imps, labels) if imp.out_of_range]
    if not flagged:
        return
    for imp, _ in flagged:
        fig.add_trace(go.Scatter(x=imp.out_of_range, y=[float(imp.mean[l]) for l in imp.out_of_range], mode="markers",
                                 marker=dict(size=12, color="rgba(0,0,0,0)", line=dict(color="#cf222e", width=2)),
                                 hoverinfo="skip", showlegend=False))
    lines = ([f"&#9888; mean normalised effect outside [{SANE_RANGE[0]}, {SANE_RANGE[1]}]:"]
             + [f"{html.escape(label)}: layer{'s' * (len(imp.out_of_range) > 1)} {imp.out_of_range}"
                for imp, label in flagged]
             + ["some facts' total effect is near 0: raise min_total_effect"])
    fig.add_annotation(text="<br>".join(lines), xref="paper", yref="paper", x=0, y=1.0, xanchor="left",
                       yanchor="bottom", align="left", showarrow=False, font=dict(color="#cf222e", size=8))
    fig.update_layout(margin=dict(t=75 + 11 * len(lines)))


def token_role_heatmap(roles, width="column") -> go.Figure:
    """ROME's averaged figure: layers x token roles (first/middle/last subject, subsequent, further, last). A role no
    fact has (a "middle subject" needs a subject of three tokens or more) is left out and named under the title."""
    keep = [i for i, c in enumerate(roles.counts) if c > 0]
    z = np.asarray(roles.values, float).T[:, keep]  # [n_layers, roles present]
    labels = [roles.labels[i] for i in keep]
    cbar = "normalised<br>effect" if roles.normalised else "indirect<br>effect"
    fig = go.Figure(_heatmap_trace(z, labels, roles.kind, cbar))
    _axes(fig, labels, "token role", z.shape[0])
    notes = [_MISSING_ROLE.get(roles.labels[i], f"no fact has a {roles.labels[i]} token")
             for i in range(len(roles.labels)) if i not in keep]
    if roles.n_facts_excluded:
        notes.append(f"{roles.n_facts_excluded} facts left out: total effect below the floor")
    fig.update_layout(title_text=f"{kind_title(roles.kind)}, mean over {int(roles.counts.max())} facts"
                                 + "".join(f"<br><sup>{html.escape(n)}</sup>" for n in notes))
    paper_layout(fig, width=width, height=int(_width_px(width) * 0.9))
    return fig.update_layout(margin=dict(t=55 + 14 * len(notes)))


# why a role column can be empty: ROLES' positions per aggregate.role_positions
_MISSING_ROLE = {"middle subject": "no middle subject column: every subject has at most two tokens",
                 "first subsequent": "no first-subsequent column: every subject ends one token before the prompt",
                 "further tokens": "no further-tokens column: at most one token between subject and last token"}


def trace_before_after(before: TraceResult, after: TraceResult, kind: str = "resid", normalised: bool = False,
                       width="page", labels=("before", "after")) -> go.Figure:
    """Three heatmaps of one prompt traced on two models: before, after, after - before (one colour scale for the
    first two, a diverging one centred on 0 for the difference)."""
    titles = [labels[0], labels[1], f"{labels[1]} − {labels[0]}"]
    norm = bool(normalised)
    zb, xl, x_title = _grid(before, kind, norm)
    za, _, _ = _grid(after, kind, norm)
    if zb.shape != za.shape:
        raise TraceError(f"before/after: {kind} maps differ in shape {zb.shape} vs {za.shape}; "
                         "compare traces of the same prompt on models of the same depth")
    fig = make_subplots(rows=1, cols=3, shared_yaxes=True, horizontal_spacing=0.16, subplot_titles=titles)
    lo, hi = float(min(zb.min(), za.min())), float(max(zb.max(), za.max()))
    diff = za - zb
    lim = float(np.abs(diff).max()) or 1.0
    cb = _colorbar_title(before, norm)
    doms = [fig.layout[f"xaxis{'' if i == 1 else i}"].domain for i in (1, 2, 3)]
    fig.add_trace(_heatmap_trace(zb, xl, kind, cb, zmin=lo, zmax=hi, showscale=False), row=1, col=1)
    fig.add_trace(_heatmap_trace(za, xl, kind, cb, zmin=lo, zmax=hi, colorbar=dict(x=doms[1][1] + 0.005)),
                  row=1, col=2)
    fig.add_trace(_heatmap_trace(diff, xl, kind, "difference", colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim,
                                 colorbar=dict(x=doms[2][1] + 0.005)), row=1, col=3)
    for c in (1, 2, 3):
        _axes(fig, xl, x_title, zb.shape[0], row=1, col=c, y_title=c == 1)
    sub = f"{labels[0]}: p_clean={before.clean:.3f}; {labels[1]}: p_clean={after.clean:.3f}" \
        if before.metric == "prob" else f"metric: {metric_label(before.metric)}"
    fig.update_layout(title_text=f"{kind_title(kind)}: {html.escape(before.prompt)}<br><sup>{sub}</sup>")
    return paper_layout(fig, width=width, height=int(_width_px(width) * 0.45))


def importance_before_after(before, after, difference, width="page", labels=("before", "after")) -> go.Figure:
    """Three per-layer curves of one kind: before, after (on one scale, so heights compare) and after - before.

    before, after: LayerImportance of the same kind; difference: (mean, lo, hi) per layer of after - before, as
    `aggregate.importance_difference` computes it."""
    from .aggregate import LayerImportance

    if not (isinstance(before, LayerImportance) and isinstance(after, LayerImportance)):
        raise ConfigError("importance_before_after: expected two LayerImportance (aggregate the traces first)")
    b, a = before, after
    if b.n_layers != a.n_layers:
        raise TraceError(f"before/after: {b.n_layers} vs {a.n_layers} layers; compare models of the same depth")
    d_mean, d_lo, d_hi = difference
    titles = [labels[0], labels[1], f"{labels[1]} − {labels[0]}"]
    fig = make_subplots(rows=1, cols=3, shared_yaxes=False, horizontal_spacing=0.1, subplot_titles=titles)
    layers = range(b.n_layers)
    _band(fig, layers, b.mean, b.lo, b.hi, qualitative.Plotly[0], labels[0], row=1, col=1)
    _band(fig, layers, a.mean, a.lo, a.hi, qualitative.Plotly[1], labels[1], row=1, col=2)
    _band(fig, layers, d_mean, d_lo, d_hi, qualitative.Plotly[2], titles[2], row=1, col=3)
    fig.add_hline(y=0, line=dict(color="grey", width=1, dash="dot"), row=1, col=3)
    lo = min(b.lo.min(), a.lo.min(), 0.0)
    hi = max(b.hi.max(), a.hi.max())
    pad = 0.05 * (hi - lo or 1.0)
    for c in (1, 2):   # before and after on one scale, so heights compare
        fig.update_yaxes(range=[lo - pad, hi + pad], row=1, col=c)
    fig.update_xaxes(title_text="layer", dtick=1 if b.n_layers <= 16 else None)
    raw = not b.config.get("normalise", True)
    unit = f"indirect effect<br>({metric_label(b.metric)})" if raw else "normalised effect"
    fig.update_yaxes(title_text=unit, row=1, col=1)
    fig.update_yaxes(title_text=f"{labels[1]} − {labels[0]}", row=1, col=3)   # in the first panel's units
    fig.update_layout(title_text=f"{kind_title(b.kind)}: layer importance, {b.n_facts} vs {a.n_facts} facts",
                      showlegend=False)
    return paper_layout(fig, width=width, height=int(_width_px(width) * 0.4))


def mia_auc_bars(models: dict) -> go.Figure:
    """Grouped bars of every MIA attack's AUC, one group per model: {label: that model's report metrics}; models
    without MIA numbers (None, or no holdout split) are left out."""
    fig = go.Figure()
    for label, m in models.items():
        if m and m.get("mia"):
            fig.add_bar(name=label, x=list(m["mia"]["auc"]), y=list(m["mia"]["auc"].values()))
    fig.add_hline(y=0.5, line=dict(dash="dot", color="grey"))
    fig.update_layout(title="MIA AUC per attack (0.5 = members look like non-members)", yaxis_range=[0, 1],
                      barmode="group", yaxis_title="AUC", width=700, height=380)
    return fig


def calibration_curve(edit_log: list[dict]) -> go.Figure:
    """An unlearning run's evaluations against the optimizer step: calibration AUC and the QA slices it logged."""
    fig = go.Figure()
    steps = [e["step"] for e in edit_log]
    for key, name in (("calibration_auc", "calibration AUC (forget vs calibration docs)"),
                      ("forget_qa_em", "forget QA (eval slice)"), ("retain_qa_em", "retain QA (eval slice)")):
        if any(key in e for e in edit_log):
            fig.add_scatter(x=steps, y=[e.get(key) for e in edit_log], mode="lines+markers", name=name)
    fig.add_hline(y=0.5, line=dict(dash="dot", color="grey"))
    fig.update_layout(title="Unlearning run: calibration AUC per evaluation (0.5 = forget docs look never-seen)",
                      xaxis_title="optimizer step", yaxis_range=[0, 1.02], width=700, height=380)
    return fig


# readable names of the columns the pipeline's and localize's sweeps plot
SWEEP_LABELS = {"window": "layer window", "forget_drop": "forget-recall drop", "retain_qa_em": "retain QA recall",
                "forget_qa_em": "forget QA recall", "traced_importance": "traced importance (normalised effect)",
                "n_facts": "traced facts", "same_window": "two disjoint sets pick the same window",
                "jaccard": "overlap of their windows (Jaccard)", "same_as_all": "same window as all facts"}


def sweep_plot(rows: list[dict], x: str, ys, title: str | None = None, width="column", labels: dict | None = None,
               y_title: str | None = None, right: tuple = (), right_title: str | None = None) -> go.Figure:
    """Metric(s) against a swept setting (e.g. layer window vs forget/retain recall): one line per y key.

    labels: readable name per key (default SWEEP_LABELS, else the key); y_title: the left axis' title (default the
    one y's name, or "fraction" for several); right: y keys of other units (e.g. traced importance beside recall),
    drawn dashed on a right-hand axis titled right_title (default their name)."""
    if not rows:
        raise ConfigError("sweep_plot: no rows to plot")
    ys = [ys] if isinstance(ys, str) else list(ys)
    missing = [k for k in [x, *ys] if any(k not in r for r in rows)]
    if missing:
        raise ConfigError(f"sweep_plot: rows lack keys {sorted(set(missing))}; they have {sorted(rows[0])}")
    if set(right) - set(ys):
        raise ConfigError(f"sweep_plot: right-axis keys {sorted(set(right) - set(ys))} are not among ys {ys}")
    name = lambda k: (labels or {}).get(k) or SWEEP_LABELS.get(k, k)  # noqa: E731
    fig = go.Figure()
    for i, y in enumerate(ys):
        fig.add_trace(go.Scatter(x=[r[x] for r in rows], y=[r[y] for r in rows], mode="lines+markers", name=name(y),
                                 yaxis="y2" if y in right else "y",
                                 line=dict(color=qualitative.Plotly[i % 10], dash="dash" if y in right else None)))
    left = [y for y in ys if y not in right]
    fig.update_xaxes(title_text=name(x))
    fig.update_yaxes(title_text=y_title or (name(left[0]) if len(left) == 1 else "fraction"))
    if right:
        fig.update_layout(yaxis2=dict(title=dict(text=right_title or " / ".join(name(y) for y in right)),
                                      overlaying="y", side="right", showgrid=False))
    fig.update_layout(title_text=title or f"Sweep over {name(x)}",
                      legend=dict(orientation="h", x=0.5, xanchor="center", y=-0.3, yanchor="top"))
    paper_layout(fig, width=width, height=int(_width_px(width) * 0.9))
    return fig.update_layout(margin=dict(b=110, r=70 if right else 20))


def _centre(layers) -> float:
    return (layers[0] + layers[-1]) / 2


def _caption(fig: go.Figure, text: str, lines: int) -> None:
    """`text` (lines joined by <br>) under the plot, left-aligned, as a paper caption."""
    fig.add_annotation(text=text, xref="paper", yref="paper", x=0, y=0, yshift=-45, xanchor="left", yanchor="top",
                       align="left", showarrow=False, font=dict(size=8))
    fig.update_layout(margin=dict(b=60 + 13 * lines))


def localization_figure(windows, importance, stats: dict, caption: str, efficacy: str = "budget",
                        width="column") -> go.Figure:
    """Traced importance (top) and unlearning efficacy (bottom) on one layer axis, 95% intervals as bands.

    windows: the layer windows edited; importance: the per-layer LayerImportance of the traced kind; stats:
    {editor: workbench.correlation.Correlation JSON} (each window's importance and efficacy with intervals), drawn
    at the window's centre layer; caption: the correlation, printed under the figure."""
    if not stats:
        raise ConfigError("localization_figure: no editor statistics to draw")
    x = [_centre(w) for w in windows]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    _band(fig, range(importance.n_layers), importance.mean, importance.lo, importance.hi, "#999999",
          f"{kind_title(importance.kind)} per layer", row=1, col=1)
    first = next(iter(stats.values()))
    lo, hi = np.asarray(first["importance_ci"], float).T
    _band(fig, x, first["importance"], lo, hi, qualitative.Plotly[2], f"window mean ({len(windows[0])} layers)",
          row=1, col=1)
    for i, (label, s) in enumerate(stats.items()):
        lo, hi = np.asarray(s["efficacy_ci"], float).T
        _band(fig, x, s["efficacy"], lo, hi, qualitative.Plotly[(i + 3) % 10], label, row=2, col=1)
    n_layers = importance.n_layers
    fig.update_xaxes(title_text="layer (edited window: its centre)", dtick=1 if n_layers <= 16 else None, row=2, col=1)
    fig.update_yaxes(title_text="traced importance<br>(normalised effect)", row=1, col=1)
    fig.update_yaxes(title_text=f"efficacy ({efficacy})<br>forget-recall drop", row=2, col=1)
    fig.update_layout(title_text="Does tracing predict where unlearning works?",
                      # inside the axes, top right: traced importance is concentrated in few layers
                      legend=dict(orientation="v", x=0.98, xanchor="right", y=1.0, yanchor="top", tracegroupgap=0,
                                  bgcolor="rgba(255,255,255,0.75)"))
    paper_layout(fig, width=width, height=int(_width_px(width) * 1.3))
    _caption(fig, caption, caption.count("<br>") + 1)
    return fig


def importance_efficacy_scatter(windows, stats: dict, caption: str, kind: str = "mlp", efficacy: str = "budget",
                                width="column") -> go.Figure:
    """One point per window and editor: traced importance against efficacy, 95% intervals as error bars, the window
    in the point's hover text; stats as for `localization_figure`."""
    if not stats:
        raise ConfigError("importance_efficacy_scatter: no editor statistics to draw")
    fig = go.Figure()
    labels = [f"{w[0]}-{w[-1]}" for w in windows]
    for i, (label, s) in enumerate(stats.items()):
        x, y = np.asarray(s["importance"], float), np.asarray(s["efficacy"], float)
        xlo, xhi = np.asarray(s["importance_ci"], float).T
        ylo, yhi = np.asarray(s["efficacy_ci"], float).T
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="markers", name=label, text=labels, hovertemplate="layers %{text}<br>importance %{x:.4f}"
            "<br>efficacy %{y:.3f}", marker=dict(size=6, color=qualitative.Plotly[(i + 3) % 10]),
            error_x=dict(type="data", symmetric=False, array=xhi - x, arrayminus=x - xlo, thickness=0.8, width=0),
            error_y=dict(type="data", symmetric=False, array=yhi - y, arrayminus=y - ylo, thickness=0.8, width=0)))
    fig.update_xaxes(title_text=f"traced {kind_title(kind)} importance of the window")
    fig.update_yaxes(title_text=f"efficacy ({efficacy}): forget-recall drop")
    fig.update_layout(title_text="Traced importance vs unlearning efficacy, per window",
                      legend=dict(orientation="v", x=0.98, xanchor="right", y=0.02, yanchor="bottom",
                                  bgcolor="rgba(255,255,255,0.75)"))
    paper_layout(fig, width=width, height=int(_width_px(width) * 0.95))
    _caption(fig, caption, caption.count("<br>") + 1)
    return fig


def _planted_bands(fig, planted, rows: int) -> None:
    """Shade each planted layer (x = layer +- 0.5) in every row of a layer-axis figure."""
    for l in planted or ():
        for r in range(1, rows + 1):
            fig.add_vrect(x0=l - 0.5, x1=l + 0.5, fillcolor="rgba(255,170,0,0.3)", line_width=0, layer="below",
                          row=r, col=1)


def depth_figure(windows, importance, output: dict, uds: dict, relearn: dict, planted, caption: str,
                 efficacy: str = "budget", width="column") -> go.Figure:
    """Planted layers, traced importance, output efficacy and depth efficacy on one layer axis.

    Rows: the traced importance per layer (band: 95% interval over facts); each editor's output efficacy per window
    (`output`: {editor: Correlation JSON}, drawn at the window's centre); each editor's depth per window: UDS
    (`uds`: {editor: Correlation JSON}, solid, with its interval) and the forgetting that survives relearning
    (`relearn`: {editor: [n_windows] values or None}, dotted). Planted layers are shaded in every row."""
    if not output:
        raise ConfigError("depth_figure: no editor statistics to draw")
    x = [_centre(w) for w in windows]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    _band(fig, range(importance.n_layers), importance.mean, importance.lo, importance.hi, "#999999",
          f"{kind_title(importance.kind)} per layer", row=1, col=1)
    for i, (label, st) in enumerate(output.items()):
        color = qualitative.Plotly[(i + 3) % 10]
        lo, hi = np.asarray(st["efficacy_ci"], float).T
        _band(fig, x, st["efficacy"], lo, hi, color, f"{label}: output", row=2, col=1)
        if label in uds:
            lo, hi = np.asarray(uds[label]["efficacy_ci"], float).T
            _band(fig, x, uds[label]["efficacy"], lo, hi, color, f"{label}: UDS", row=3, col=1)
        if relearn.get(label):
            y = [np.nan if v is None else v for v in relearn[label]]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", line=dict(color=color, dash="dot"),
                                     marker=dict(symbol="square", size=5), name=f"{label}: survives relearning"),
                          row=3, col=1)
    _planted_bands(fig, planted, 3)
    n_layers = importance.n_layers
    fig.update_xaxes(title_text="layer (edited window: its centre; shaded: planted)",
                     dtick=1 if n_layers <= 16 else None, row=3, col=1)
    fig.update_yaxes(title_text="traced importance", row=1, col=1)
    fig.update_yaxes(title_text=f"output ({efficacy})", row=2, col=1)
    fig.update_yaxes(title_text="depth", range=[-0.05, 1.05], row=3, col=1)
    fig.update_layout(title=dict(text="Where the facts were planted, traced, and forgotten", y=0.99, yanchor="top"),
                      legend=dict(orientation="h", x=0, xanchor="left", y=1.01, yanchor="bottom", font=dict(size=8)))
    paper_layout(fig, width=width, height=int(_width_px(width) * 1.7))
    fig.update_layout(margin=dict(t=60 + 12 * (1 + len(output))))
    _caption(fig, caption, caption.count("<br>") + 1)
    return fig


def localisation_heatmap(scores: dict, planted, title: str, width="column") -> go.Figure:
    """One row per localisation method, one column per layer: the method's fact-mean score divided by its largest
    absolute value (so methods of different units share a colour scale); planted layers boxed.

    scores: {method: [n_layers] fact-mean scores}."""
    if not scores:
        raise ConfigError("localisation_heatmap: no method scores to draw")
    names = list(scores)
    z = np.array([np.asarray(scores[m], float) / max(np.abs(scores[m]).max(), 1e-12) for m in names])
    L = z.shape[1]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(L)), y=names, zmid=0, zmin=-1, zmax=1, colorscale="RdBu_r",
                               colorbar=dict(title="score / max |score|", thickness=10),
                               hovertemplate="%{y}<br>layer %{x}: %{z:.2f}<extra></extra>"))
    for l in planted or ():
        fig.add_shape(type="rect", x0=l - 0.5, x1=l + 0.5, y0=-0.5, y1=len(names) - 0.5,
                      line=dict(color="black", width=2))
    fig.update_xaxes(title_text="layer (boxed: planted)", dtick=1 if L <= 16 else None)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title_text=title)
    return paper_layout(fig, width=width, height=int(_width_px(width) * (0.35 + 0.07 * len(names))))


# --- export ----------------------------------------------------------------------------------------
def browser_path() -> str | None:
    """The Chrome/Chromium kaleido would use (BROWSER_PATH, PATH, or kaleido's own download), or None."""
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except Exception:  # choreographer's API moves between versions: fall back to the usual names
        import shutil

        return os.environ.get("BROWSER_PATH") or next(
            (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)


@contextlib.contextmanager
def export_session():
    """Keep one headless browser open across several `save_figure` calls (each otherwise starts its own)."""
    if browser_path() is None:  # save_figure will raise its clear error; nothing to start
        yield
        return
    import kaleido

    kaleido.start_sync_server(silence_warnings=True)
    try:
        yield
    finally:
        kaleido.stop_sync_server(silence_warnings=True)


NO_BROWSER = ("static figure export (PNG/SVG/PDF) needs Chrome or Chromium for kaleido, and none was found; "
              "install one with `apt-get install -y chromium` (Debian/Ubuntu), or `python -c 'import kaleido; "
              "kaleido.get_chrome_sync()'` (downloads Chrome for kaleido), or point BROWSER_PATH at a Chrome binary")


def save_figure(fig: go.Figure, path, formats=("html", "png"), scale: float = 3,
                include_plotlyjs="directory") -> dict[str, Path]:
    """Write `fig` as `<path>.<fmt>` for each format, atomically. HTML is written first, so a missing
    browser (raised as FigureExportError after the HTML exists) never loses the figure.

    include_plotlyjs: "directory" (default: one shared plotly.min.js beside the HTML files; small and works
    offline), True (self-contained, ~4 MB each) or "cdn" (small, needs internet to view).
    """
    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lstrip(".") in ("html", *STATIC_FORMATS) else path
    formats = [f.lower().lstrip(".") for f in ([formats] if isinstance(formats, str) else formats)]
    bad = [f for f in formats if f not in ("html", *STATIC_FORMATS)]
    if bad:
        raise ConfigError(f"figure formats {bad} unknown; expected some of {('html', *STATIC_FORMATS)}")
    out: dict[str, Path] = {}
    if "html" in formats:
        js = stem.parent / "plotly.min.js"
        if include_plotlyjs == "directory" and not js.is_file():
            from plotly.offline import get_plotlyjs

            atomic_write_text(js, get_plotlyjs())
        out["html"] = atomic_write_text(stem.with_name(stem.name + ".html"),
                                        fig.to_html(include_plotlyjs=include_plotlyjs, full_html=True))
    static = [f for f in formats if f != "html"]
    if not static:
        return out
    if browser_path() is None:
        raise FigureExportError(f"{NO_BROWSER} (HTML written to {out.get('html', 'nowhere')})")
    import plotly.io as pio

    targets = [stem.with_name(f"{stem.name}.{f}") for f in static]
    tmps = [t.with_name(f".{t.stem}.tmp.{t.suffix.lstrip('.')}") for t in targets]
    stem.parent.mkdir(parents=True, exist_ok=True)
    # kaleido ignores layout.width/height unless passed (it would use its 700x500 default)
    w, h = fig.layout.width, fig.layout.height
    todo = list(range(len(static)))
    for attempt in range(2):  # kaleido has returned without writing a file under load: its export is tried twice
        try:  # one browser session for all formats
            with warnings.catch_warnings():   # "kopts ignored if using a server" inside export_session
                warnings.simplefilter("ignore", UserWarning)
                pio.write_images([fig] * len(todo), [tmps[i] for i in todo], format=[static[i] for i in todo],
                                 scale=scale, width=w, height=h)
        except Exception as e:
            for t in tmps:
                t.unlink(missing_ok=True)
            raise FigureExportError(f"kaleido could not export {stem.name} as {static}: {type(e).__name__}: {e}. "
                                    f"If the browser is missing or broken: {NO_BROWSER}") from e
        todo = [i for i in todo if not (tmps[i].is_file() and tmps[i].stat().st_size > 0)]
        if not todo:
            break
    if todo:
        for t in tmps:
            t.unlink(missing_ok=True)
        raise FigureExportError(f"kaleido (Chromium at {browser_path()}) returned without writing {stem.name} as "
                                f"{[static[i] for i in todo]}, twice; the HTML is written. A browser starved of "
                                "memory or time does this: rerun when the machine is less busy")
    for tmp, target, f in zip(tmps, targets, static):
        os.replace(tmp, target)
        out[f] = target
    return out


# --- the recovery attacks (evaluation/attacks), one figure each from its results --------------------------------
ATTACK_LABELS = {"original": "original", "edited": "edited", "twin": "retain-only twin"}
ATTACK_COLORS = {"original": "#1f77b4", "edited": "#d62728", "twin": "#2ca02c"}


def attack_figures(results: dict) -> dict:
    """One plotly figure per attack of evaluation/attacks.run_attacks' results, keyed 'attack_<name>'."""
    makers = {"relearn": attack_relearn_figure, "quantize": attack_quantize_figure, "lens": attack_lens_figure,
              "depth": attack_depth_figure}
    return {f"attack_{a}": makers[a](results[a], results.get("importance")) for a in results["attacks"]}


def attack_relearn_figure(result: dict, importance=None):
    """Recall of the held-out forget half along fine-tuning, per model and grid run; admissible runs solid."""
    fig = go.Figure()
    for n, r in result["per_model"].items():
        for i, (label, curve) in enumerate(r["curves"].items()):
            fig.add_scatter(x=result["steps"], y=curve, mode="lines+markers", legendgroup=n, showlegend=i == 0,
                            name=ATTACK_LABELS[n],
                            line=dict(color=ATTACK_COLORS[n], dash="solid" if "all" in label else "dot"),
                            hovertemplate=f"{ATTACK_LABELS[n]}, {label}<br>step %{{x}}: recall %{{y:.2f}}"
                                          "<extra></extra>")
    worst = result.get("worst")
    title = "Relearning on half the forget facts: recall of the other half (solid: every parameter, dotted: edited " \
            "layers)"
    if worst:
        title += f"<br>worst admissible setting: {worst['setting']} (edited {worst['edited']:+.2f}, twin " \
                 f"{worst['reference']:+.2f})"
    fig.update_layout(title=title, xaxis_title="fine-tuning steps", yaxis_title="exact-match recall",
                      yaxis_range=[-0.02, 1.02], width=800, height=440)
    return fig


def attack_quantize_figure(result: dict, importance=None):
    """Forget and retain recall at full precision and at each setting of the grid, per model."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("forget recall", "retain recall"))
    for n, r in result["per_model"].items():
        x = ["full"] + list(r["after"])
        for col, split in ((1, "forget"), (2, "retain")):
            fig.add_trace(go.Bar(x=x, y=[r["before"][split]] + [a[split] for a in r["after"].values()],
                                 name=ATTACK_LABELS[n], legendgroup=n, showlegend=col == 1,
                                 marker_color=ATTACK_COLORS[n]),
                          row=1, col=col)
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(title="Quantisation (round-to-nearest, group-wise): does rounding undo the edit?",
                      barmode="group", width=1000, height=420)
    return fig


def attack_lens_figure(result: dict, importance=None):
    """Layer x readout-metric heatmap per model: how decodable the forget answers are in each layer."""
    per = result["per_model"]
    fig = make_subplots(rows=1, cols=len(per), subplot_titles=[ATTACK_LABELS[n] for n in per], shared_yaxes=True)
    for i, (n, r) in enumerate(per.items()):
        names = list(r["metrics"])
        fig.add_trace(go.Heatmap(z=[r["metrics"][m] for m in names], x=list(range(r["layers"])),
                                 y=[m.replace("_", " ") for m in names], zmin=0, zmax=1, colorscale="Viridis",
                                 showscale=i == 0, hovertemplate="layer %{x}<br>%{y}: %{z:.2f}<extra></extra>"),
                      row=1, col=i + 1)
        fig.update_xaxes(title_text="layer (resid_post)", row=1, col=i + 1)
    fig.update_layout(title="Readouts of the forget answers per layer: own and original decoder, retain-trained probe "
                            "and tuned lens (recall, token accuracy)",
                      width=320 * len(per) + 160, height=420)
    return fig


def attack_depth_figure(result: dict, importance: dict | None = None):
    """Per layer, stage 1's drop (twin -> original) and each model's stage-2 drop, answer positions (solid) and every
    position (dotted); the original's traced MLP importance (scaled to the peak of stage 1) beside them."""
    L = len(result["stage1"]["answer"])
    fig = go.Figure()
    for scope, dash in (("answer", "solid"), ("all", "dot")):
        for n, r in result["per_model"].items():
            fig.add_scatter(x=list(range(L)), y=r[f"stage2_{scope}"], mode="lines+markers", legendgroup=n,
                            name=f"{ATTACK_LABELS[n]} -> original ({scope} positions); UDS "
                                 f"{r['uds' if scope == 'answer' else 'uds_all_positions'] or float('nan'):.2f}",
                            line=dict(color=ATTACK_COLORS[n], dash=dash))
    imp = (importance or {}).get("mlp")
    if imp:
        peak = max(max(imp), 1e-12)
        top = max(result["stage1"]["answer"])
        fig.add_bar(x=list(range(len(imp))), y=[v / peak * top for v in imp], name="traced MLP importance (original)",
                    marker_color="rgba(120,120,120,0.3)")
    fig.add_hline(y=result["config"]["tau"], line_dash="dash", line_color="grey",
                  annotation_text=f"tau = {result['config']['tau']}")
    fig.update_layout(title="Unlearning Depth Score: drop of the answer's log-prob when a model's hidden states at "
                            "layer l are patched into the original", xaxis_title="layer (resid_post)",
                      yaxis_title="drop in mean answer log-prob (nats)", width=900, height=430)
    return fig


class FigureExport:
    """A study's figures, written into one directory the same way by every study and command: HTML always, PNG
    beside it when a browser for kaleido exists (or the `formats` asked for); a figure that cannot be written (no
    browser, an export that fails, a full disk) becomes a warning, logged as "figure_warning", instead of ending a
    run whose results are computed, and after a failed static export the rest are written as HTML only.
    `publish(dest)` copies the PNGs and SVGs elsewhere (the README's figures/), each atomically."""

    def __init__(self, fig_dir, formats=None, log=None):
        self.dir = Path(fig_dir)
        self.formats = list(formats) if formats is not None else (["html", "png"] if browser_path() else ["html"])
        self.log = log or (lambda event, **fields: None)
        self.written: list[Path] = []
        self.failed: list[str] = []
        self.warnings: list[str] = []

    def _fail(self, name: str, e: BaseException) -> None:
        from .errors import clip

        self.failed.append(name)
        self.warnings.append(f"figure {name} was not written ({type(e).__name__}: {clip(e)})")
        self.log("figure_warning", figure=name, message=self.warnings[-1])

    def __call__(self, name: str, fig) -> list[Path]:
        """Write one figure (or a function that draws it) as `name`."""
        return self.write({name: fig})

    def write(self, figs: dict) -> list[Path]:
        """Write each {name: figure, or a function that draws it}; returns the files written."""
        from .errors import OutputError

        before = len(self.written)
        if not self.formats:
            return []
        with export_session():
            for name, fig in figs.items():
                try:
                    self.written += save_figure(fig() if callable(fig) else fig, self.dir / name,
                                                formats=self.formats).values()
                except FigureExportError as e:
                    if "html" in self.formats:
                        self.written.append(self.dir / f"{name}.html")
                    self.formats = [f for f in self.formats if f == "html"]   # no static retry for every figure
                    self._fail(name, e)
                except (OutputError, OSError) as e:
                    self._fail(name, e)
        return self.written[before:]

    def publish(self, dest, pattern: str = "*") -> None:
        """Copy this directory's PNGs and SVGs whose stem matches `pattern` into `dest`, each atomically."""
        import shutil

        from .errors import OutputError

        dest = Path(dest)
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return self._fail(f"{dest} (published copies)", e)
        for f in sorted(self.dir.glob(f"{pattern}.png")) + sorted(self.dir.glob(f"{pattern}.svg")):
            tmp = dest / f".{f.name}.tmp"
            try:
                shutil.copyfile(f, tmp)
                tmp.replace(dest / f.name)
            except (OutputError, OSError) as e:
                tmp.unlink(missing_ok=True)
                self._fail(f"{dest / f.name}", e)
