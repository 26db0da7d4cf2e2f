"""`workbench groundtruth`: does tracing find where a fact is stored? Score every localisation method against the
layers a planted organism's facts were planted in, and measure where forgetting is deepest (workbench.groundtruth).

    workbench groundtruth --config configs/groundtruth.yaml        # the deep planted organisms (the README's study)
    workbench groundtruth --config configs/groundtruth-ci.yaml     # micro-planted, reduced: under 2 minutes
    workbench groundtruth --organisms micro-planted --out runs/gt-micro

Writes groundtruth.json, table.md, figures/ and groundtruth.jsonl into --out and prints the headline and runtime.
"""
from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("groundtruth", help="does tracing find where a fact is stored? localisation accuracy against "
                                           "planted organisms, and depth efficacy per window")
    p.add_argument("--config", help="groundtruth YAML/JSON (keys: see workbench.groundtruth.GroundTruthConfig)")
    p.add_argument("--organisms", help="comma-separated planted organisms to score (replaces the config's)")
    p.add_argument("--out", help="output directory (groundtruth.json, table.md, figures/)")
    p.add_argument("--n-facts", type=int, dest="n_facts", help="facts per organism")
    p.add_argument("--no-localize", action="store_true", help="skip the config's localize runs (accuracy only)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    import time
    from dataclasses import asdict
    from pathlib import Path

    from ..groundtruth import GroundTruthConfig, run as run_groundtruth

    t0 = time.perf_counter()
    cfg = GroundTruthConfig.from_file(args.config) if args.config else GroundTruthConfig()
    values = {**asdict(cfg), **{k: getattr(args, k) for k in ("organisms", "out", "n_facts")
                                if getattr(args, k) is not None}}
    if args.no_localize:
        values["localize"] = []
    base = Path(args.config).parent if args.config else None
    result = run_groundtruth(GroundTruthConfig.from_dict(values, base=base), progress=not args.quiet)
    headline = {name: {m: {"ranks": a["ranks"], "precision": a["top_k"][str(len(a["planted"]))]["precision_per_fact"]}
                       for m, a in res["accuracy"].items()} for name, res in result["organisms"].items()}
    depth = {name: {label: {"deepest_is": d["deepest_is"], "deepest_relearn_is": d["deepest_relearn_is"]}
                    for label, d in r["depth"].items()} for name, r in result["localize"].items()}
    print(json.dumps({"planted_ranks_and_precision": headline, "depth": depth, "seconds": result["seconds"],
                      "out": str(result["config"]["out"])}, indent=1))
    print(f"workbench groundtruth: {time.perf_counter() - t0:.1f} s")
    return 0
