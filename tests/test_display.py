"""Notebook display: a figure carries plotly's mimetype and a representation every viewer and an offline HTML export
can show (a PNG at the figure's size, or HTML with plotly.js inlined once); the results' rich views are plain HTML."""
from __future__ import annotations

import base64
import re
import struct

import numpy as np
import plotly.io as pio
import pytest

from workbench import display
from workbench import figures as F
from workbench.results import TraceResult

PLOTLY = "application/vnd.plotly.v1+json"


@pytest.fixture
def renderer():
    """setup() changes plotly's process-wide default renderer and the progress bars: put both back afterwards."""
    from transformers.utils import logging as hf_logging

    default, bars = pio.renderers.default, hf_logging.is_progress_bar_enabled()
    yield
    pio.renderers.default = default
    if bars:
        hf_logging.enable_progress_bar()


def _result() -> TraceResult:
    eff = np.full((3, 4), 0.1)
    eff[1, 2] = 0.9
    return TraceResult(method="causal_trace", prompt="Who is Ada?", answer="a poet", tokens=["Who", " is", " Ada", "?"],
                       subject_range=(2, 3), effects={"resid": eff, "mlp": eff.copy()}, clean=1.0, corrupted=0.1)


def test_without_a_browser_the_figure_carries_html_with_plotlyjs_inlined_once(renderer):
    from transformers.utils import logging as hf_logging

    assert display.setup(static=False) == "html"
    assert pio.renderers.default == display.RENDERER and not hf_logging.is_progress_bar_enabled()
    first, second = (F.heatmaps(_result())._repr_mimebundle_() for _ in range(2))
    assert set(first) == set(second) == {PLOTLY, "text/html"}
    assert first[PLOTLY]["data"][0]["z"] is not None
    plotlyjs = "Plotly.newPlot"
    assert len(first["text/html"]) > 1_000_000 > len(second["text/html"])   # plotly.js itself, in the first only
    assert plotlyjs in second["text/html"]
    assert not re.search(r"<script[^>]*src=", first["text/html"] + second["text/html"]), "nothing loaded from a CDN"


@pytest.mark.skipif(F.browser_path() is None,
                    reason="no Chrome/Chromium for kaleido: apt-get install -y chromium (the PNG path is untested)")
def test_with_a_browser_the_figure_carries_a_png_at_its_layout_size(renderer):
    assert display.setup() == "png"
    fig = F.heatmaps(_result())
    bundle = fig._repr_mimebundle_()
    assert set(bundle) == {PLOTLY, "image/png"}
    png = base64.b64decode(bundle["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (display.PNG_SCALE * fig.layout.width,
                                                display.PNG_SCALE * fig.layout.height)


def test_rich_views_are_html_tables_of_the_numbers():
    from workbench.aggregate import aggregate
    from workbench.evaluation.verdict import Criterion, Verdict
    from workbench.selection import select_layers

    r = _result()
    view = r._repr_html_()
    assert "<table" in view and "<b><u> Ada</u></b>" in view and "<script" not in view
    assert "0.8889" in view            # (0.9 - 0.1) / (1 - 0.1) at layer 1, the last subject token
    imp = aggregate([r, r], "mlp", position="last_subject", n_boot=10)
    assert "peak layer 1" in imp._repr_html_() and "0 left out" in imp._repr_html_()
    sel = select_layers(imp, "top-k", k=1)
    assert "layers <b>[1]</b>" in sel._repr_html_() and sel._repr_html_().count("selected") == 1
    v = Verdict("retain-only baseline", [Criterion("forgetting", True, "forget recall 0.01 vs 0.02"),
                                         Criterion("privacy", False, "largest gap 0.2")], report="run/report.html")
    html = v._repr_html_()
    assert "Verdict against the retain-only baseline: FAIL" in html and ">PASS<" in html and ">FAIL<" in html
    assert "href='run/report.html'" in html
    assert "report: run/report.html" in repr(v)
