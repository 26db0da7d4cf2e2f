"""Small HTML tables for the results' rich notebook views (`_repr_html_` of TraceResult, LayerImportance,
LayerSelection, the verdict and the report): escaped text, rounded numbers, PASS/FAIL in colour, no scripts, so they
show the same in JupyterLab, classic Notebook, VS Code and an nbconvert HTML export."""
from __future__ import annotations

import html
import math

STYLE = "border-collapse:collapse;font-size:90%;margin:4px 0"
CELL = "border:1px solid #ccc;padding:2px 8px;text-align:{align}"
COLORS = {True: "#1a7f37", False: "#cf222e", None: "#666666"}
WORDS = {True: "PASS", False: "FAIL", None: "n/a"}


def text(v, digits: int = 4) -> str:
    """One cell: floats rounded to `digits` significant digits, None as a dash, everything escaped."""
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}g}"
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(f"{x:.{digits}g}" for x in v) + "]"
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return html.escape(", ".join(v))
    return html.escape(str(v))


def verdict_word(passed: bool | None) -> str:
    """PASS / FAIL / n/a, bold and coloured."""
    return f"<b style='color:{COLORS[passed]}'>{WORDS[passed]}</b>"


def table(header: list[str], rows: list[list], caption: str | None = None, raw_columns: tuple[int, ...] = (),
          highlight: set[int] | None = None) -> str:
    """An HTML table under `caption` (HTML); cells in `raw_columns` are inserted as given (already HTML), rows in
    `highlight` are shaded."""
    def cell(v, j, tag="td"):
        align = "left" if j == 0 or isinstance(v, str) else "right"
        return f"<{tag} style='{CELL.format(align=align)}'>{v if j in raw_columns else text(v)}</{tag}>"

    head = "<tr>" + "".join(cell(h, 0 if i == 0 else -1, "th") for i, h in enumerate(header)) + "</tr>"
    body = "".join(f"<tr{' style=background:#fff3cd' if highlight and i in highlight else ''}>"
                   + "".join(cell(v, j) for j, v in enumerate(r)) + "</tr>" for i, r in enumerate(rows))
    cap = f"<p style='margin:4px 0 2px 0'>{caption}</p>" if caption else ""   # a paragraph: as wide as the text
    return f"{cap}<table style='{STYLE}'>{head}{body}</table>"


def note(message: str, warning: bool = False) -> str:
    """A line of text under a table; a warning in red."""
    color = "#cf222e" if warning else "#444"
    return f"<p style='color:{color};margin:2px 0'>{'&#9888; ' if warning else ''}{html.escape(message)}</p>"
