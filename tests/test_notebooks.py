"""The three notebooks run top to bottom, headless, on the micro organism, as a researcher would run them, and their
offline HTML export shows every figure. Notebook 01 opens the model from a plain directory (as a user's checkpoint
would be), notebook 03 selects the layers `workbench run` selects and ends with the verdict."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
BY_NAME = {p.stem[:2]: p for p in NOTEBOOKS}
PLOTLY = "application/vnd.plotly.v1+json"
# figures each notebook draws: a test that counts fewer in its export has lost one
FIGURES = {"01": 3, "02": 3, "03": 2}


def test_three_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs_and_first_code_cell_names_model_and_data(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{path.name}: outputs must be stripped in git"
    assigned = {t.id for node in ast.parse(code[0].source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert {"MODEL", "DATA"} <= assigned, f"{path.name}: the first code cell names {sorted(assigned)}"


def _execute(path: Path, out: Path, monkeypatch, **env) -> tuple:
    """Run the notebook in a fresh kernel (this checkout's workbench on its path), then export it to HTML as
    `jupyter nbconvert --to html` does. Returns (notebook, html); both are also written under `out`."""
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    monkeypatch.setenv("WORKBENCH_NOTEBOOK_OUT", str(out))
    # the kernel imports this checkout's workbench, even where another copy is pip-installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    # allow_errors: a failing cell does not stop the run, so every error (and every cell left unexecuted) is reported
    NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    page, _ = HTMLExporter().from_notebook_node(nb)
    nbformat.write(nb, out / path.name)
    (out / f"{path.stem}.html").write_text(page)
    return nb, page


def _check_run(path: Path, nb, page: str) -> None:
    """No cell failed or was skipped, no progress-bar leftovers, and the HTML export shows every figure."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [f"cell {i}: {o.ename}: {o.evalue}" for i, c in enumerate(code) for o in c.outputs
              if o.output_type == "error"]
    assert not errors, f"{path.name}: " + "; ".join(errors)
    unrun = [i for i, c in enumerate(code) if c.source.strip() and not c.get("execution_count")]
    assert not unrun, f"{path.name}: code cells {unrun} did not execute"
    streams = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert not re.search(r"\d+%\|", streams), f"{path.name}: a progress bar was saved: {streams[:300]}"
    widgets = [o for c in code for o in c.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not widgets, f"{path.name}: progress widgets leave placeholders in a saved notebook"
    figures = [o for c in code for o in c.outputs if PLOTLY in o.get("data", {})]
    assert len(figures) == FIGURES[path.stem[:2]], f"{path.name}: {len(figures)} figures"
    # each figure carries a representation an HTML export can show, and the export shows each one
    assert all("image/png" in o.data or "text/html" in o.data for o in figures)
    shown = len(re.findall(r'<img [^>]*src="data:image/png', page)) + page.count('class="plotly-graph-div"')
    assert shown >= len(figures), f"{path.name}: {shown} of {len(figures)} figures in the HTML export"
    assert not re.search(r"<script[^>]*src=\"https?://[^\"]*plot", page), "the export must not load plotly.js online"


def _output_html(cell) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.outputs)


@pytest.mark.slow
def test_notebook_01_on_a_model_saved_to_a_plain_directory(micro, tmp_path, monkeypatch):
    """The micro organism saved as a user's checkpoint (weights + tokenizer) and its data as a LUME directory."""
    from workbench import organism

    model, tok, _ = micro
    ckpt, lume = tmp_path / "checkpoint", tmp_path / "lume"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    lume.mkdir()
    for split in ("forget", "retain", "holdout", "calibration"):
        shutil.copy(organism.build("micro", progress=False) / f"{split}.jsonl", lume)
    assert not (ckpt / "organism.json").exists() and not (ckpt / "forget.jsonl").exists()
    nb, page = _execute(BY_NAME["01"], tmp_path / "out", monkeypatch, WORKBENCH_MODEL=str(ckpt),
                        WORKBENCH_DATA=str(lume))
    _check_run(BY_NAME["01"], nb, page)
    code = [c for c in nb.cells if c.cell_type == "code"]
    loaded = "".join(o.get("text", "") for o in code[1].outputs if o.output_type == "stream")
    assert f"from {ckpt}" in loaded, loaded
    # the rich TraceResult view, and our AtP within float rounding of TransformerLens's on the notebook's own pair
    assert "normalised effect at token" in _output_html(code[2])
    agreement = ast.literal_eval(code[6].outputs[0]["data"]["text/plain"])
    assert set(agreement) == {"attn_out", "head", "mlp_out", "resid_pre"} and max(agreement.values()) < 1e-4
    assert (tmp_path / "out" / "01_explore_tracing" / "trace_fact0.json").is_file()


@pytest.mark.slow
def test_notebook_02_on_micro(micro, tmp_path, monkeypatch):
    nb, page = _execute(BY_NAME["02"], tmp_path, monkeypatch, WORKBENCH_ORGANISM="micro")
    _check_run(BY_NAME["02"], nb, page)
    out = tmp_path / "02_paper_figures"
    assert {p.name for p in out.iterdir()} >= {"edited_model", "layer_importance.html", "token_roles_mlp.html",
                                               "before_after_mlp.html"}
    code = [c for c in nb.cells if c.cell_type == "code"]
    recall = ast.literal_eval(code[5].outputs[0]["data"]["text/plain"])
    assert recall["edited"] < recall["forget QA recall, original"], "the figure's edit must forget something"
    # run again: the edit replaces its own directory instead of leaving another beside it
    _execute(BY_NAME["02"], tmp_path, monkeypatch, WORKBENCH_ORGANISM="micro")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["edited_model"]


@pytest.mark.slow
def test_notebook_03_is_the_pipeline_step_by_step(micro, micro_retain, tmp_path, monkeypatch, capsys):
    """Its selection is `workbench run`'s on the same model, and its last output is the verdict with report.html's
    link."""
    from workbench.cli import main

    nb, page = _execute(BY_NAME["03"], tmp_path / "nb", monkeypatch, WORKBENCH_ORGANISM="micro")
    _check_run(BY_NAME["03"], nb, page)
    run_dir = tmp_path / "nb" / "03_select_and_unlearn" / "run"
    ours = json.loads((run_dir / "selection.json").read_text())

    config = tmp_path / "run.yaml"
    config.write_text(f"model: organism:micro\nout: {tmp_path / 'cli'}\nfigures: null\n")
    assert main(["run", "--config", str(config), "--quiet"]) == 0
    capsys.readouterr()
    theirs = json.loads((tmp_path / "cli" / "selection.json").read_text())
    assert ours["layers"] == theirs["layers"]
    assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-6)

    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    verdict = _output_html(last)
    assert "Verdict against the retain-only baseline" in verdict and "forgetting" in verdict
    link = re.search(r"href='([^']+)'", verdict).group(1)
    assert link.endswith("report.html") and (BY_NAME["03"].parent / link).resolve() == (run_dir / "report.html")
    passed = json.loads((run_dir / "report.json").read_text())["verdict"]["passed"]
    word = {True: "PASS", False: "FAIL", None: "n/a"}[passed]
    assert f"Verdict against the retain-only baseline: {word}" in verdict
