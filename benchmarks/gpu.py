"""The two steps of benchmarks/gpu.sh that are Python: prepare a run, then report its wall time per stage.

    python -m benchmarks.gpu prepare --out runs/gpu-bench [--model DIR_OR_HUB_ID] [--data LUME_DIR]
    python -m benchmarks.gpu report --out runs/gpu-bench

prepare: without --model, an OLMo-1B-shaped model (16 layers, d_model 2048, d_mlp 8192, 16 heads, vocabulary
50304) with random weights (seed 0) and the micro organism's tokenizer, saved in bfloat16; the data is the micro
organism's corpus (LUME-format files) unless --data is given. Then pipeline.yaml: bfloat16 on `--device`, tracing,
selection, the joint editor capped at 50 steps, evaluation and re-tracing. Random weights recall no fact, so no
traced fact is left out for a small total effect (min_total_effect 0); the timings are the point.
report: the wall time of each stage, from the pipeline's log (the time between consecutive stage events), and of
the multi-GPU unlearning run when there is one; written to timings.json and timings.md and printed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

SHAPES = {  # OLMo-1B-0724-hf's shape, and a tiny one that lets the script's logic run on a CPU
    "olmo-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16,
                    vocab_size=50304, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 vocab_size=None, max_position_embeddings=256),
}
STAGES = [("load model and data", "start", "data"), ("trace", "data", "stage_done"), ("select", "stage_done", "selection"),
          ("unlearn", "selection", "stage_done"), ("evaluate and re-trace", "stage_done", "done")]


def random_model(out: Path, shape: str = "olmo-1b", seed: int = 0) -> Path:
    """An OLMo with `shape` and random weights, the micro organism's tokenizer, saved in bfloat16 to `out`."""
    import torch
    from transformers import OlmoConfig, OlmoForCausalLM

    from workbench import organism
    from workbench.harness import load_model

    _, tok = load_model("organism:micro")
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = dims["vocab_size"] or len(tok)
    torch.manual_seed(seed)
    cfg = OlmoConfig(**dims, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                     bos_token_id=tok.eos_token_id)
    model = OlmoForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    organism.build("micro", progress=False)
    return out


def prepare(out: Path, model: str | None = None, data: str | None = None, device: str = "cuda",
            shape: str = "olmo-1b") -> Path:
    """Write `out`/pipeline.yaml (building the random-weight model first when no `model` is given)."""
    import yaml

    from workbench import organism

    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = str(random_model(out / f"{shape}-random", shape))
    data = data or str(organism.build("micro", progress=False))  # forget/retain/holdout jsonl of the micro organism
    cfg = {"model": model, "data": data, "out": str(out / "run"), "figures": None, "dtype": "bfloat16",
           "device": device, "task": None, "n_facts": 24, "n_samples": 10, "min_total_effect": 0.0,
           "method": "joint", "preset": None, "editor": {"max_steps": 50}, "retain_baseline": None,
           "retrace_facts": 8, "evaluation": {"max_new_tokens": 64, "attacks": "none"}}
    path = out / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def stage_timings(events: list[dict]) -> dict[str, float]:
    """Seconds per stage of one pipeline run, from its log events (the last run in the log)."""
    starts = [i for i, e in enumerate(events) if e["event"] == "start"]
    run = events[starts[-1]:] if starts else events
    when = lambda e: dt.datetime.fromisoformat(e["time"])  # noqa: E731
    out, i = {}, 0
    for name, first, last in STAGES:
        a = next(j for j in range(i, len(run)) if run[j]["event"] == first)
        b = next(j for j in range(a + 1, len(run)) if run[j]["event"] == last)
        out[name] = round((when(run[b]) - when(run[a])).total_seconds(), 2)
        i = b
    out["total"] = round((when(run[-1]) - when(run[0])).total_seconds(), 2)
    return out


def report(out: Path) -> dict:
    """timings.json and timings.md for the run in `out` (and its multi-GPU unlearning run, when there is one)."""
    import torch

    log = out / "run" / "pipeline.log.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    rows = stage_timings(events)
    for multi in sorted(out.glob("unlearn-*gpu/unlearn.json")):
        rows[f"unlearn under accelerate, {multi.parent.name.split('-')[1]}"] = json.loads(
            multi.read_text())["summary"]["train_seconds"]
    info = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "gpus": torch.cuda.device_count(), "torch": torch.__version__,
            "model": json.loads((out / "run" / "pipeline_config.json").read_text())["config"]["model"]}
    (out / "timings.json").write_text(json.dumps({"info": info, "seconds": rows}, indent=2))
    lines = [f"# benchmarks/gpu.sh: {info['device']} x {info['gpus']}, torch {info['torch']}", "",
             f"model: {info['model']}, bfloat16", "", "| stage | seconds |", "|---|---|",
             *[f"| {k} | {v:.1f} |" for k, v in rows.items()]]
    (out / "timings.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["prepare", "report"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", help="a checkpoint (local dir or hub id); default: random weights at --shape")
    p.add_argument("--data", help="a LUME directory; default: the micro organism's corpus")
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", choices=list(SHAPES), default="olmo-1b")
    args = p.parse_args(argv)
    if args.step == "prepare":
        print(prepare(args.out, args.model, args.data, args.device, args.shape))
    else:
        report(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
