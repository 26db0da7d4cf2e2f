"""`workbench localize`: does causal tracing predict where unlearning works? Trace, edit every window with each
editor and seed, correlate importance with efficacy (workbench.localize).

    workbench localize                                        # organism:deep, joint and RMU, 3 seeds
    workbench localize --config configs/localize.yaml --out runs/localize
    workbench localize --model organism:micro --window 2 --seeds 1 --editors joint --out runs/loc-micro
    workbench localize --config configs/localize-planted-early.yaml     # + depth (UDS, relearning) per window
"""
from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("localize", help="does tracing predict where unlearning works? importance vs efficacy per "
                                        "window, with bootstrap CIs and permutation p-values")
    p.add_argument("--config", help="localize YAML/JSON (keys: see workbench.localize.LocalizeConfig)")
    p.add_argument("--model", help="organism[:name], a local model dir, or a hub id")
    p.add_argument("--data", help="'organism' or a LUME directory")
    p.add_argument("--out", help="output directory (localize.json, table.md, figures/)")
    p.add_argument("--window", type=int, help="layers per edited window")
    p.add_argument("--seeds", type=int, help="edits per window and editor, each with its own seed")
    p.add_argument("--n-facts", type=int, dest="n_facts", help="facts to trace and unlearn")
    p.add_argument("--editors", help="comma-separated labels of the config's editors to run (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    from dataclasses import asdict

    from ..errors import ConfigError
    from ..localize import LocalizeConfig, run as run_localize

    cfg = LocalizeConfig.from_file(args.config) if args.config else LocalizeConfig()
    values = {**asdict(cfg), **{k: getattr(args, k) for k in ("model", "data", "out", "window", "seeds", "n_facts")
                                if getattr(args, k) is not None}}
    if args.editors is not None:
        chosen = [e.strip() for e in args.editors.split(",") if e.strip()]
        unknown = [e for e in chosen if e not in cfg.editors]
        if unknown:
            raise ConfigError(f"--editors {unknown} not in the config's editors {sorted(cfg.editors)}")
        values["editors"] = {e: cfg.editors[e] for e in chosen}
    result = run_localize(LocalizeConfig.from_dict(values), progress=not args.quiet)
    depth = {label: {"deepest_is": d["deepest_is"], "windows": {n: w["windows"] for n, w in d["windows"].items()}}
             for label, d in result["depth"].items()}
    print(json.dumps({"headline": result["headline"], **({"depth": depth} if depth else {}),
                      "seconds": result["seconds"], "out": str(result["config"]["out"])}, indent=1))
    return 0
