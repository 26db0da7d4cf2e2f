"""`workbench organism build|info|path`: the embedded default model; build and info print its size, build time,
final training loss and what it recalls (evaluation/knowledge.recall, scored here on the built model)."""
from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("organism", help="build or inspect the built-in model organism")
    p.add_argument("action", choices=["build", "info", "path"])
    p.add_argument("--name", default="default", help="organism preset: default or micro")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    return p


def run(args) -> int:
    from .. import harness, organism

    if args.name not in organism.PRESETS:
        from ..errors import ConfigError

        raise ConfigError(f"unknown organism {args.name!r}; expected one of {sorted(organism.PRESETS)}")
    path = organism.build(args.name, force=args.force and args.action == "build")
    if args.action == "path":
        print(path)
    else:
        from ..evaluation.knowledge import recall

        info = organism.info(path)
        model, tok, corpus = harness.load_organism(args.name)
        print(json.dumps({"path": str(path), **{k: info[k] for k in ("n_parameters", "build_seconds", "train_loss")},
                          "recall": recall(model, tok, corpus)}, indent=2))
    return 0
