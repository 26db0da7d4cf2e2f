"""Nothing written where it must not be, nothing left running, nothing lost to a figure: `run` writes only into a
directory it made and removes only what it made; `sweep` and `evaluate` check every output before any work and never
write into a source model or the organism cache; SIGTERM (or SIGKILL) during the twin build ends every child; a
figure that cannot be written leaves the results, a warning and exit code 3."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from workbench.cli import main

from test_content_keys import micro_copy, small_config

REPO = Path(__file__).resolve().parents[1]


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else b"" for p in sorted(d.rglob("*"))}


def _yaml(path: Path, cfg) -> Path:
    import dataclasses

    import yaml

    path.write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v
                                    for k, v in dataclasses.asdict(cfg).items()}))
    return path


# ---------------------------------------------------------------- run: D10, T7, D12c
def test_run_refuses_an_out_holding_what_it_did_not_make(micro, tmp_path, capsys):
    """D10: another command's edited model, with the user's notes in it, is neither replaced nor removed."""
    model, data = micro_copy(tmp_path)
    out = tmp_path / "d10"
    assert main(["unlearn", "--model", "organism:micro", "--method", "ga", "--layers", "0", "--steps", "1", "--quiet",
                 "--out", str(out / "edited_model")]) == 0
    (out / "edited_model" / "notes.txt").write_text("mine")
    before = _files(out)
    capsys.readouterr()
    assert main(["run", "--config", str(_yaml(tmp_path / "c.yaml", small_config(model, data, out))), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"output {out} already holds" in err and "edited_model" in err and "did not write" in err, err
    assert _files(out) == before


def test_run_refuses_a_linked_edited_model_in_a_new_out(micro, tmp_path, capsys):
    """T7: an edited_model that is a symbolic link: refused before any stage, the link and its target untouched."""
    model, data = micro_copy(tmp_path)
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    out = tmp_path / "t7"
    out.mkdir()
    (out / "edited_model").symlink_to(target)
    assert main(["run", "--config", str(_yaml(tmp_path / "c.yaml", small_config(model, data, out))), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds edited_model" in err and "Traceback" not in err
    assert (out / "edited_model").is_symlink() and (target / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in out.iterdir()) == ["edited_model"]


@pytest.mark.parametrize("figures, msg", [
    ("file", "exists and is not a directory"),          # T7: --figures at an existing regular file
    ("/proc/figs", "cannot write the figures directory /proc/figs"),   # D12c: a directory that cannot be made
])
def test_run_checks_figures_before_any_work(figures, msg, micro, tmp_path, capsys, monkeypatch):
    import workbench.pipeline

    model, data = micro_copy(tmp_path)
    if figures == "file":
        figures = str(tmp_path / "ff")
        Path(figures).write_text("not a directory")
    monkeypatch.setattr(workbench.pipeline, "_run", lambda *a, **k: pytest.fail("a stage ran"))
    out = tmp_path / "run"
    assert main(["run", "--config", str(_yaml(tmp_path / "c.yaml", small_config(model, data, out))),
                 "--figures", figures, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err, err
    assert not out.exists()


# ---------------------------------------------------------------- sweep and evaluate: D12a, D12b
def test_sweep_inside_its_source_model_writes_nothing_there(micro, tmp_path, capsys):
    model, data = micro_copy(tmp_path)
    before = _files(model)
    assert main(["sweep", "--method", "ga", "--window", "3", "--steps", "1", "--no-mia", "--no-mmlu", "--quiet",
                 "--model", str(model), "--data", str(data), "--out", str(model / "sweep")]) == 2
    err = capsys.readouterr().err
    assert "overlaps the source model directory" in err and "Traceback" not in err
    assert _files(model) == before, "no lock, log or window was written into the model"


def test_evaluate_inside_an_organism_cache_entry_is_refused(micro, capsys):
    from workbench import organism

    entry = organism.build("micro", progress=False)
    out = entry / f"eval-{os.getpid()}"
    before = _files(entry)
    try:
        assert main(["evaluate", "--model", "organism:micro", "--limit", "1", "--no-trace", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "overlaps the model directory" in err and str(organism.cache_root()) in err
        assert _files(entry) == before, "nothing was written into the cache entry"
    finally:  # a failing run must not leave its output in the shared cache entry
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        (entry / f".{out.name}.lock").unlink(missing_ok=True)


# ---------------------------------------------------------------- clean shutdown: D11
def _tagged(tag: str) -> list[int]:
    """PIDs of the processes whose environment carries `tag` (the run and every process it started)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if tag.encode() in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _twin_building(tag: str) -> bool:
    for pid in _tagged(tag):
        try:
            if b"micro-retain" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts processes through /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_signal_during_the_twin_build_leaves_no_process(sig, micro, tmp_path):
    """The run starts the retain-only twin's build in a second process; SIGTERM ends both (exit 143, one line),
    so does Ctrl-C sent to the run alone (exit 130), and SIGKILL, which the run cannot see, still ends the child
    (it dies with its parent)."""
    from workbench import organism

    cache = tmp_path / "cache"
    (cache / "organisms").mkdir(parents=True)
    entry = organism.build("micro", progress=False)
    os.symlink(entry, cache / "organisms" / entry.name)          # micro is built; its twin is not
    tag = f"WB_TEST_TAG=shutdown-{uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKBENCH_CACHE": str(cache), tag.split("=")[0]: tag.split("=")[1],
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "run", "--model", "organism:micro", "--quiet",
                             "--out", str(tmp_path / "run"), "--figures", str(tmp_path / "figures")], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not _twin_building(tag) and proc.poll() is None:
            time.sleep(0.1)
        assert _twin_building(tag), "the twin build never started"
        assert len(_tagged(tag)) >= 2
        proc.send_signal(sig)
        err = proc.communicate(timeout=60)[1]
        # the child's own exit takes a moment; an orphan would run on for the rest of the twin's training (10 s
        # and more), and then leave its cache entry, so a few seconds tell one from the other
        deadline = time.time() + 3
        while time.time() < deadline and _tagged(tag):
            time.sleep(0.1)
        assert _tagged(tag) == [], "a process the run started is still running"
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
        else:
            code, word = (143, "terminated") if sig == signal.SIGTERM else (130, "interrupted")
            assert proc.returncode == code and err.strip().splitlines()[-1] == (
                f"workbench run: {word}; resume with the same command"), err[-1000:]
    finally:
        for pid in _tagged(tag):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- figures: D13
def test_a_png_the_exporter_did_not_write_is_retried_then_named(tmp_path, monkeypatch):
    import plotly.graph_objects as go
    import plotly.io as pio

    import workbench.figures as figures
    from workbench.errors import FigureExportError

    monkeypatch.setattr(figures, "browser_path", lambda: "/usr/bin/chromium")
    calls = []

    def flaky(figs, paths, **kw):   # returns without writing, the first time (as kaleido did under load)
        calls.append(list(paths))
        if len(calls) > 1:
            for p in paths:
                Path(p).write_bytes(b"\x89PNG")

    monkeypatch.setattr(pio, "write_images", flaky)
    out = figures.save_figure(go.Figure(), tmp_path / "f", formats=("html", "png"))
    assert len(calls) == 2 and out["png"].read_bytes() == b"\x89PNG"

    monkeypatch.setattr(pio, "write_images", lambda figs, paths, **kw: None)   # never writes
    with pytest.raises(FigureExportError, match=r"kaleido \(Chromium at /usr/bin/chromium\) returned without "
                                                r"writing g as \['png'\], twice"):
        figures.save_figure(go.Figure(), tmp_path / "g", formats=("html", "png"))
    assert (tmp_path / "g.html").is_file() and not list(tmp_path.glob(".g*"))


def test_a_figure_failure_leaves_the_results_a_warning_and_exit_3(micro, tmp_path, capsys, monkeypatch):
    import workbench.figures as figures
    from workbench.errors import FigureExportError

    real = figures.save_figure

    def failing(fig, path, formats=("html",), **kw):
        if Path(path).name == "layer_importance":
            raise FigureExportError("kaleido could not export layer_importance (a test's failure)")
        return real(fig, path, formats=formats, **kw)

    monkeypatch.setattr(figures, "save_figure", failing)
    monkeypatch.setattr(figures, "browser_path", lambda: None)   # HTML only: no static export to wait for
    model, data = micro_copy(tmp_path)
    out = tmp_path / "run"
    assert main(["run", "--config", str(_yaml(tmp_path / "c.yaml", small_config(model, data, out))), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert "workbench run: warning: figure layer_importance was not written (FigureExportError" in err, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["figures_incomplete"] == ["layer_importance"] and summary["verdict"]
    assert (out / "report.html").is_file() and (out / "edited_model" / "model.safetensors").is_file()
    assert (out / "figures" / "mia_auc.html").is_file(), "the other figures are written"
