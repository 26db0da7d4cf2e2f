"""`workbench unlearn`: edit a model with one unlearning method at a layer selection.

    workbench unlearn --method adaptive-rmu --layers selection.json --model organism:micro --data organism --out runs/armu
    workbench unlearn --method joint --layers 0-5 --model /path/OLMo-1B --data /path/lume --preset sha256 --out runs/sha
    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m workbench unlearn ...
                                                      # same flags, data parallel, the same edited model (README)
"""
from __future__ import annotations

import json
from pathlib import Path

from . import add_length_args, add_model_safety_args, check_length_args


def add_data_args(p) -> None:
    p.add_argument("--model", default="organism:micro", help="organism[:name], a local model dir, or a hub id")
    p.add_argument("--data", default="organism",
                   help="'organism' (the corpus the organism memorised) or a LUME dir with forget.jsonl/retain.jsonl")
    p.add_argument("--config", help="YAML/JSON file of config fields (flags override it)")
    p.add_argument("--preset", help="named preset, e.g. wmdp, snuffleupagus-1b, sha256, cyber-1b, cyber-7b")
    p.add_argument("--steps", type=int, dest="max_steps", help="cap on optimizer steps")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    p.add_argument("--grad-accum", type=int, dest="grad_accum")
    p.add_argument("--dtype", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config field, JSON-valued (e.g. --set alpha=900 --set freeze_mode='\"freeze-mlp\"')")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: where the model loads)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_safety_args(p)
    add_length_args(p)


def overrides(args) -> dict:
    from ..errors import ConfigError

    out = {k: getattr(args, k) for k in ("max_steps", "epochs", "lr", "batch_size", "grad_accum", "dtype", "seed")
           if getattr(args, k, None) is not None}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v  # a bare string
    return out


def load_inputs(args):
    """(model, tok, corpus, source) from --model / --data, through the harness; source: the directory the model
    was read from (an organism's cache entry with data "organism"), else its name."""
    from ..harness import ModelSpec, load_corpus, load_model
    from . import model_options, process_device

    spec = ModelSpec.parse(args.model)
    model, tok = load_model(spec, dtype=getattr(args, "dtype", None), device=process_device(args.device),
                            **model_options(args))
    corpus = load_corpus(args.data, spec, tok, args.max_record_tokens, args.long_records)
    source = spec.path() if str(args.data) == "organism" else getattr(model, "name_or_path", None)
    return model, tok, corpus, source


def saved_depth(source) -> int | None:
    """The number of decoder layers a local model directory's config.json gives, read without loading the model
    (None for a hub id, or a config without a usable num_hidden_layers: the range is then checked after loading)."""
    config = Path(str(source)).expanduser() / "config.json"
    try:
        depth = json.loads(config.read_text()).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return None
    return depth if isinstance(depth, int) and not isinstance(depth, bool) and depth >= 1 else None


def add_parser(sub):
    from ..editors import EDITORS

    p = sub.add_parser("unlearn", help="unlearn the forget set with RMU, adaptive RMU, joint loss or gradient baselines")
    p.add_argument("--method", required=True, choices=list(EDITORS))
    p.add_argument("--layers", required=True, help="LayerSelection JSON path, or layers like 12,13,14 or 12-14")
    p.add_argument("--out", required=True, help="new directory for the edited model (never the source)")
    add_data_args(p)
    return p


def run(args) -> int:
    from ..editors import resolve_config, unlearn

    from ..selection import parse_layers
    from . import check_out

    over = overrides(args)
    cfg = resolve_config(args.method, preset=args.preset, file=args.config, overrides=over)  # fail before loading
    check_length_args(args)
    # the spec's syntax and range, before anything is built or loaded: against a local model's depth (its
    # config.json), else against the depth no model reaches (an organism's is checked once it is loaded)
    parse_layers(args.layers, saved_depth(args.model))
    check_out(args.out, "--out", args.model, args.data)
    model, tok, corpus, source = load_inputs(args)
    from .. import distributed

    out = unlearn(model, tok, corpus, args.method, args.layers, cfg, args.out, preset=args.preset, source=source,
                  progress=not args.quiet)
    if not distributed.is_main():  # under `accelerate launch` the main process reports
        return 0
    summary = json.loads((out / "unlearn.json").read_text())["summary"]
    print(json.dumps({"out": str(out), "steps": summary["steps"], "best_step": summary["best_step"],
                      "train_seconds": summary["train_seconds"], "last_eval": (summary["evals"] or [None])[-1]},
                     indent=2))
    return 0
