"""`workbench run`: the main job on the embedded default (for now: build the organism, show its recall)."""
from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("run", help="run the full pipeline (default: on the built-in organism)")
    p.add_argument("--organism", default="default", help="organism preset when no --config is given")
    return p


def run(args) -> int:
    from .. import organism

    path = organism.build(args.organism)
    info = organism.info(path)
    print(json.dumps({"organism": str(path), "n_parameters": info["n_parameters"],
                      "build_seconds": info["build_seconds"], "recall": info["recall"]}, indent=2))
    return 0
