"""Notebook display: figures that render in JupyterLab, classic Notebook, VS Code and an offline nbconvert export.

`setup()`, in each notebook's first cell, makes the renderer below plotly's default, so a figure at the end of a
cell (or `fig.show()`) is one output carrying two representations:

    application/vnd.plotly.v1+json   the interactive figure, where a plotly renderer exists (JupyterLab, VS Code)
    image/png                        the same figure drawn by kaleido at its layout size (x2 for sharpness): what
                                     nbconvert's HTML export, GitHub's viewer and classic Notebook without plotly's
                                     extension show, none of which can draw the plotly mimetype

Without a Chrome/Chromium for kaleido the second one is text/html instead: the figure as a plotly.js div, with
plotly.js itself inlined (no CDN) into the first figure of the kernel session.

`setup()` also turns off transformers' and huggingface_hub's progress bars: a notebook saved with them keeps a
"0%" placeholder where the bar was. The workbench's own bars are off when a call gets progress=False.
"""
from __future__ import annotations

import atexit
import base64
import warnings

import plotly.io as pio
from plotly.io.base_renderers import PlotlyRenderer

from .figures import browser_path

RENDERER = "workbench"
DEFAULT_SIZE = (700, 500)   # px, plotly's size for a figure whose layout gives none
PNG_SCALE = 2


class FigureRenderer(PlotlyRenderer):
    """plotly's own mimetype plus a static PNG (or, without a browser, HTML with plotly.js inlined once)."""

    def __init__(self, static: bool):
        super().__init__()
        self.static = static
        # plotly renders each figure with a shallow copy of the registered renderer: shared state lives in a dict
        self.sent = {"plotlyjs": False}

    def to_mimebundle(self, fig_dict):
        figure = {k: v for k, v in fig_dict.items() if k != "config"}
        bundle = super().to_mimebundle(fig_dict)
        if self.static:
            layout = figure.get("layout", {})
            size = layout.get("width") or DEFAULT_SIZE[0], layout.get("height") or DEFAULT_SIZE[1]
            with warnings.catch_warnings():   # "kopts ignored if using a server": the session's browser is reused
                warnings.simplefilter("ignore", UserWarning)
                png = pio.to_image(figure, format="png", width=size[0], height=size[1], scale=PNG_SCALE,
                                   validate=False)
            bundle["image/png"] = base64.b64encode(png).decode("ascii")
        else:
            bundle["text/html"] = pio.to_html(figure, include_plotlyjs=not self.sent["plotlyjs"], full_html=False,
                                              validate=False)
            self.sent["plotlyjs"] = True
        return bundle


def setup(static: bool | None = None) -> str:
    """Make every plotly figure of this kernel render through `FigureRenderer`; static=None: PNG where a browser for
    kaleido exists, inlined HTML otherwise. Returns which ("png" or "html")."""
    static = browser_path() is not None if static is None else static
    if static:
        import kaleido

        kaleido.start_sync_server(silence_warnings=True)   # one browser for every figure of the session
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
    pio.renderers[RENDERER] = FigureRenderer(static)
    pio.renderers.default = RENDERER
    _quiet_progress_bars()
    return "png" if static else "html"


def _quiet_progress_bars() -> None:
    # tqdm.auto (imported by transformers) warns once where ipywidgets is missing; with the bars off it does not matter
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.auto  # noqa: F401
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # an older huggingface_hub: it has no bars of its own to turn off
        return
    disable_progress_bars()
