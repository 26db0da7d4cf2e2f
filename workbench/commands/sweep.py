"""`workbench sweep`: run one editor at every consecutive w-layer window; forget/retain recall, MIA, utility per window.

    workbench sweep --method adaptive-rmu --window 3 --model organism:micro --data organism --out runs/sweep
"""
from __future__ import annotations

import json


def add_parser(sub):
    from ..editors import EDITORS
    from .unlearn import add_data_args

    p = sub.add_parser("sweep", help="unlearn at every consecutive layer window and score each")
    p.add_argument("--method", required=True, choices=list(EDITORS))
    p.add_argument("--window", type=int, default=3, help="layers per window")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--out", required=True, help="directory for sweep.json / sweep.jsonl")
    p.add_argument("--keep-models", action="store_true", help="keep each window's edited model")
    p.add_argument("--no-mia", action="store_true")
    p.add_argument("--no-mmlu", action="store_true")
    add_data_args(p)
    return p


def run(args) -> int:
    from dataclasses import asdict

    from ..editors import resolve_config
    from ..errors import ConfigError
    from ..harness import ModelSpec, source_dirs
    from ..models import weights_key
    from ..sweep import sweep, sweep_study
    from . import check_length_args
    from .unlearn import load_inputs, overrides

    cfg = resolve_config(args.method, preset=args.preset, file=args.config, overrides=overrides(args))
    check_length_args(args)
    if args.window < 1 or args.stride < 1:
        raise ConfigError(f"--window and --stride must be >= 1, got {args.window} and {args.stride}")
    sweep_study(args.out, source_dirs(args.model, args.data))  # every output checked before any work
    model, tok, corpus, _ = load_inputs(args)
    res = sweep(model, tok, corpus, args.method, args.window, args.out, config=asdict(cfg), stride=args.stride,
                keep_models=args.keep_models, mia=not args.no_mia, mmlu=not args.no_mmlu, progress=not args.quiet,
                model_key=weights_key(ModelSpec.parse(args.model).path(), model))
    print(json.dumps({"baseline": res["baseline"], "windows": res["windows"]}, indent=1))
    return 0
