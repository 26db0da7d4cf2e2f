"""Several processes under `accelerate launch` (2 CPU processes, gloo): the README's "Several GPUs" commands, run.

- unlearn: `accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m workbench unlearn`
  gives the one-process edited weights and loss log (uneven row split, gradient accumulation, evaluations during
  training); only the main process writes.
- resume: a 2-process RMU run SIGKILLed after step 3 resumes from its step-2 checkpoint under FSDP2 (the checkpoint
  holds whole tensors, so the wrapper and the number of processes may change) and ends at the one-process weights.
- evaluate, trace, MMLU: split across the processes and gathered, equal to one process number for number.
- configs: each file in configs/accelerate parses; the loop's refusals are named errors.
The launched tests take about 15 s each on 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
DRIVER = Path(__file__).with_name("accelerate_driver.py")
MICRO = ["--model", "organism:micro", "--data", "organism"]
JOINT = ["unlearn", "--method", "joint", "--layers", "0,1", *MICRO, "--steps", "6", "--batch-size", "5",
         "--grad-accum", "2", "--set", "eval_every=3", "--quiet"]   # micro-batches of 5 rows: 3 + 2 per process
RMU = ["unlearn", "--method", "rmu", "--layers", "1,2", *MICRO, "--steps", "6", "--set", "checkpoint_every=2",
       "--set", "keep_best=false", "--quiet"]
TOL = 1e-5   # the bound on the edited weights (the measured differences are below it; see editors/parallel.py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, *args: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/<config> --num_processes 2 <args>`, one thread a process."""
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(CONFIGS / config),
           "--num_processes", "2", "--main_process_port", str(_free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def one_process(argv: list[str]) -> int:
    """The CLI in this process with one thread, as each launched process runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(argv)
    finally:
        torch.set_num_threads(threads)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def _log(path: Path, events=("step", "eval")) -> list[dict]:
    rows = [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "step_seconds")} for r in rows if r["event"] in events]


def assert_same_log(a: list[dict], b: list[dict]) -> None:
    """The same events, steps and fields; numbers equal to float rounding (1e-5 relative)."""
    assert [(r["event"], r["step"]) for r in a] == [(r["event"], r["step"]) for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys(), (x, y)
        for k in x:
            if isinstance(x[k], float):
                assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-7), (x["event"], x["step"], k, x[k], y[k])
            else:
                assert x[k] == y[k], (x["event"], x["step"], k)


@pytest.fixture(scope="module")
def joint_one(micro, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "joint"
    assert one_process([*JOINT, "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------- unlearn: two processes, one process's result
def test_two_processes_give_the_one_process_edit(joint_one, tmp_path):
    out = tmp_path / "joint"
    proc = launch("ddp.yaml", "-m", "workbench", *JOINT, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = max_weight_diff(joint_one, out)
    print(f"2 processes vs 1, joint, 6 steps: max abs weight difference {diff:.3g}")
    assert diff <= TOL
    assert_same_log(_log(joint_one), _log(out))
    log = _log(out, events=("start", "done"))
    assert [r["event"] for r in log] == ["start", "done"]          # one writer: no line twice
    assert proc.stdout.count('"out"') == 1                          # and one report on stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [".joint.lock", "joint"]  # no temp or work dir left


def test_killed_run_resumes_under_fsdp_with_the_one_process_result(micro, tmp_path):
    one = tmp_path / "one"
    assert one_process([*RMU, "--out", str(one)]) == 0
    out = tmp_path / "rmu"
    killed = launch("ddp.yaml", str(DRIVER), "--kill-at", "3", *RMU, "--out", str(out))
    assert killed.returncode != 0 and not out.exists()
    assert (tmp_path / ".rmu.work" / "checkpoint.safetensors").is_file()
    resumed = launch("fsdp.yaml", str(DRIVER), "--force-fsdp", *RMU, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = _log(out, events=("step", "resume"))
    assert [r["step"] for r in log] == [1, 2, 3, 2, 3, 4, 5, 6]  # killed after 3, resumed at the step-2 checkpoint
    assert log[3]["event"] == "resume"
    diff = max_weight_diff(one, out)
    print(f"2 processes (DDP, killed; FSDP2, resumed) vs 1, rmu, 6 steps: max abs weight difference {diff:.3g}")
    assert diff <= TOL
    steps = [r for r in log if r["event"] == "step"]   # 1 2 3 (killed) 3 4 5 6 (resumed)
    assert_same_log([r for r in _log(one) if r["event"] == "step"], steps[:2] + steps[3:])
    assert_same_log(steps[2:3], steps[3:4])             # step 3 again after the resume: the same numbers


# ---------------------------------------------------------------- evaluation and tracing split across processes
def _numbers(obj, drop=("seconds", "provenance", "wall_s", "created", "trace_s", "load_s", "out", "files")):
    """Everything but timings, provenance and paths."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if k not in drop and not k.startswith("seconds")}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


def test_evaluate_split_across_processes_equals_one_process(joint_one, tmp_path):
    args = ["evaluate", "--model", "organism:micro", "--edited", str(joint_one), "--limit", "4", "--n-facts", "3",
            "--n-samples", "2"]
    assert one_process([*args, "--out", str(tmp_path / "one")]) == 0
    proc = launch("ddp.yaml", "-m", "workbench", *args, "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert one["trace"]["facts"] and one["original"]["mia"]["auc"] and one["original"]["semeval"]["terms"]
    assert _numbers(one) == _numbers(two)   # generations, MIA statistics, re-traced facts: every number equal


def test_trace_split_across_processes_equals_one_process(micro, tmp_path):
    args = ["trace", "--model", "organism:micro", "--facts", "forget", "--limit", "3", "--samples", "2",
            "--kinds", "mlp,attn", "--formats", "none", "--n-boot", "50"]
    assert one_process([*args, "--out", str(tmp_path / "one")]) == 0
    proc = launch("ddp.yaml", "-m", "workbench", *args, "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("importance_mlp.json", "importance_attn.json", "token_roles.json"):
        one, two = (json.loads((tmp_path / d / name).read_text()) for d in ("one", "two"))
        assert _numbers(one) == _numbers(two), name
    results = sorted((tmp_path / "one" / "results").glob("*.npz"))
    assert len(results) == 3
    for f in results:
        a, b = np.load(f), np.load(tmp_path / "two" / "results" / f.name)
        assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)


MMLU_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import torch
from benchmarks.evaluation import mc_model
from workbench import distributed
from workbench.evaluation.mmlu import evaluate_mmlu
model, tok, gk = mc_model()
out = {{f: evaluate_mmlu(model, tok, gk, shots=2, batch_size=5, formulation=f).to_json(with_predictions=True)
       for f in ("letter", "cloze")}}
if distributed.is_main():
    from accelerate import PartialState
    json.dump({{"processes": PartialState().num_processes, **out}}, open(sys.argv[1], "w"))
"""


def test_mmlu_split_across_processes_equals_one_process(tmp_path):
    from benchmarks.evaluation import mc_model
    from workbench.evaluation.mmlu import evaluate_mmlu

    script = tmp_path / "mmlu.py"
    script.write_text(MMLU_SCRIPT.format(root=str(ROOT)))
    proc = launch("ddp.yaml", str(script), str(tmp_path / "two.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two.pop("processes") == 2
    model, tok, gk = mc_model()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = {f: evaluate_mmlu(model, tok, gk, shots=2, batch_size=5, formulation=f).to_json(with_predictions=True)
               for f in ("letter", "cloze")}
    finally:
        torch.set_num_threads(threads)
    assert json.loads(json.dumps(one)) == two   # predictions, accuracies, per subject: all equal


# ---------------------------------------------------------------- configs and refusals (no launch)
@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "deepspeed_zero3.yaml"])
def test_accelerate_configs_parse_into_the_plugins_the_processes_build(name, monkeypatch):
    """Each config through `accelerate launch`'s own parsing, into the environment it gives the processes, and from
    there into accelerate's plugin, as a launched process builds it."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "script.py"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.mixed_precision == "no" and args.num_processes == 2
    if name == "deepspeed_zero3.yaml":
        assert args.use_deepspeed
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if name == "ddp.yaml":
        assert args.multi_gpu and not args.use_fsdp and env.get("ACCELERATE_USE_FSDP") is None
    elif name == "fsdp.yaml":
        plugin = FullyShardedDataParallelPlugin()
        assert args.use_fsdp and plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.transformer_cls_names_to_wrap is None   # accelerate wraps the model's _no_split_modules
    else:
        plugin = DeepSpeedPlugin()
        assert plugin.zero_stage == 3 and plugin.deepspeed_config["zero_optimization"]["stage"] == 3


def test_the_loop_names_what_it_does_not_support():
    from workbench.editors.parallel import check_wrapper
    from workbench.errors import EditError

    for kind in ("MULTI_CPU", "MULTI_GPU"):
        check_wrapper(kind, None, "no")
    check_wrapper("FSDP", 2, "no")
    with pytest.raises(EditError, match="DeepSpeed is not supported.*fsdp.yaml"):
        check_wrapper("DEEPSPEED", None, "no")
    with pytest.raises(EditError, match="FSDP version 1 .*fsdp_version: 2"):
        check_wrapper("FSDP", 1, "no")
    with pytest.raises(EditError, match="mixed_precision='bf16'.*--dtype bfloat16"):
        check_wrapper("MULTI_GPU", None, "bf16")
    with pytest.raises(EditError, match="distributed type XLA"):
        check_wrapper("XLA", None, "no")
