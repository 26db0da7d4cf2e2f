"""The README's screenshots of the three uses, rendered from the executed notebooks' HTML exports.

    python scripts/notebook_screenshots.py                          # the notebooks on the default organism
    WORKBENCH_ORGANISM=micro python scripts/notebook_screenshots.py # the seconds-fast micro organism
    python scripts/notebook_screenshots.py --reuse                  # screenshots of the notebooks executed last time

1. Executes notebooks/01-03 top to bottom in fresh kernels (WORKBENCH_ORGANISM / WORKBENCH_MODEL / WORKBENCH_DATA
   pass through to their first cell) into --work (default runs/notebook-screenshots).
2. Exports each one to HTML with nbconvert's exporter (what `jupyter nbconvert --to html` writes), beside it.
3. Opens each export in headless Chromium (the one kaleido uses), hides every cell not tagged "readme" in the
   notebook, and saves the page as --out/notebook_<use>.png (default figures/).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USES = {"01_explore_tracing": "explore", "02_paper_figures": "paper", "03_select_and_unlearn": "pipeline"}
# nbconvert's lab template gives every cell the class celltag_<tag>: show only the tagged ones, without prompts
ONLY_TAGGED = ("<style>.jp-Cell:not(.celltag_readme){display:none!important}"
               ".jp-InputPrompt,.jp-OutputPrompt{display:none!important}"
               "body{padding:8px 16px!important}</style>")


def execute(path: Path, work: Path) -> Path:
    """Run one notebook in a fresh kernel, this checkout's workbench on its path; returns the executed copy."""
    import nbformat
    from nbclient import NotebookClient

    os.environ["WORKBENCH_NOTEBOOK_OUT"] = str(work / "runs")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=3600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    out = work / path.name
    nbformat.write(nb, out)
    return out


def export_html(executed: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    out = executed.with_suffix(".html")
    out.write_text(page)
    return out


async def screenshot(html: Path, png: Path, width: int) -> tuple[int, int]:
    """The tagged cells of an HTML export as a PNG, `width` CSS px wide and as tall as they are."""
    from choreographer import Browser

    page = html.read_text().replace("</head>", ONLY_TAGGED + "</head>", 1)
    shown = html.with_name(f".{html.stem}.readme.html")
    shown.write_text(page)
    async with Browser(headless=True) as browser:
        tab = await browser.create_tab("about:blank")
        await tab.send_command("Page.enable")
        metrics = {"width": width, "height": 100, "deviceScaleFactor": 1, "mobile": False}  # grown to the page below
        await tab.send_command("Emulation.setDeviceMetricsOverride", params=metrics)
        loaded = tab.subscribe_once("Page.loadEventFired")
        await tab.send_command("Page.navigate", params={"url": shown.resolve().as_uri()})
        await loaded
        size = (await tab.send_command("Page.getLayoutMetrics"))["result"]["cssContentSize"]
        height = int(size["height"]) + 1
        await tab.send_command("Emulation.setDeviceMetricsOverride", params={**metrics, "height": height})
        shot = await tab.send_command("Page.captureScreenshot", params={"format": "png"})
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(base64.b64decode(shot["result"]["data"]))
    shown.unlink()
    return width, height


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(REPO / "runs" / "notebook-screenshots"),
                   help="where the executed notebooks, their HTML exports and their outputs go")
    p.add_argument("--out", default=str(REPO / "figures"), help="where the PNGs go")
    p.add_argument("--width", type=int, default=1000, help="page width in CSS px")
    p.add_argument("--reuse", action="store_true", help="screenshot the notebooks executed in --work last time")
    args = p.parse_args(argv)
    work, out = Path(args.work).resolve(), Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for name, use in USES.items():
        t0 = time.perf_counter()
        executed = work / f"{name}.ipynb"
        if not args.reuse:
            executed = execute(REPO / "notebooks" / f"{name}.ipynb", work)
        elif not executed.is_file():
            sys.exit(f"--reuse: no executed notebook at {executed}; run once without --reuse")
        html = export_html(executed)
        w, h = asyncio.run(screenshot(html, out / f"notebook_{use}.png", args.width))
        print(f"{name}: {html} -> {out / f'notebook_{use}.png'} ({w}x{h} px, {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
