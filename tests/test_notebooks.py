"""The three notebooks run top to bottom, headless, on the micro organism (as a researcher would run them)."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_three_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_micro(path, tmp_path, monkeypatch, micro):
    monkeypatch.setenv("WORKBENCH_ORGANISM", "micro")
    monkeypatch.setenv("WORKBENCH_NOTEBOOK_OUT", str(tmp_path))
    # the kernel imports this checkout's workbench, even where another copy is pip-installed
    repo = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: outputs must be stripped in git"
    # allow_errors: a failing cell does not stop the run, so every error (and every cell left unexecuted) is reported
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [f"cell {i}: {o.ename}: {o.evalue}" for i, c in enumerate(code) for o in c.outputs
              if o.output_type == "error"]
    assert not errors, f"{path.name}: " + "; ".join(errors)
    unrun = [i for i, c in enumerate(code) if c.source.strip() and not c.get("execution_count")]
    assert not unrun, f"{path.name}: code cells {unrun} did not execute"
    assert any(tmp_path.iterdir()), "the notebook wrote nothing"
