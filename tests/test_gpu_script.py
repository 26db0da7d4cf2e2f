"""benchmarks/gpu.sh without a GPU: its syntax, its refusal on a CPU-only torch, the pipeline config it writes (valid
for the pipeline, bfloat16, OLMo-1B's shape) and the per-stage timing it reports from a pipeline log."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def test_script_parses_and_needs_a_gpu(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script would run the benchmark")
    # the script calls `python`: on its PATH, this interpreter (the one running the tests, with torch), whichever
    # python comes first on the caller's PATH
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env={
        "PATH": f"{bin_dir}:/usr/bin:/bin", "OUT": str(tmp_path / "bench")})
    assert proc.returncode != 0 and "needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "bench").exists()   # refused before writing anything


def test_prepared_config_is_a_valid_pipeline_at_olmo_1b_shape(micro, tmp_path):
    from transformers import AutoConfig

    from workbench.pipeline import PipelineConfig, checked

    path = gpu.prepare(tmp_path, shape="tiny", device="cpu")
    cfg = checked(PipelineConfig.from_file(path))
    assert cfg.dtype == "bfloat16" and cfg.method == "joint" and cfg.editor == {"max_steps": 50}
    saved = AutoConfig.from_pretrained(cfg.model)
    assert saved.num_hidden_layers == gpu.SHAPES["tiny"]["num_hidden_layers"] and saved.dtype == torch.bfloat16
    assert gpu.SHAPES["olmo-1b"] == dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                         num_attention_heads=16, vocab_size=50304, max_position_embeddings=4096)


def test_stage_timings_from_a_pipeline_log():
    t = lambda s: f"2026-01-01T00:00:{s:06.3f}+00:00"  # noqa: E731
    events = [{"event": "start", "time": t(0)}, {"event": "stage_done", "time": t(1)},      # an earlier run
              {"event": "start", "time": t(10)}, {"event": "data", "time": t(12.5)},
              {"event": "stage_done", "stage": "trace", "time": t(20)}, {"event": "selection", "time": t(21)},
              {"event": "stage_done", "stage": "unlearn", "time": t(31)}, {"event": "done", "time": t(40)}]
    assert gpu.stage_timings(events) == {"load model and data": 2.5, "trace": 7.5, "select": 1.0, "unlearn": 10.0,
                                         "evaluate and re-trace": 9.0, "total": 30.0}
