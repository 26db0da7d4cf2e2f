"""`workbench select`: layer importance (or trace results) -> a LayerSelection JSON for the editors.

    workbench select runs/task2/importance_mlp.json --strategy window --window 3 --out selection.json
    workbench select runs/task2 --kind mlp --strategy top-k --k 3          # a `workbench trace` output directory
    workbench select runs/trace1/results/0000_x.json --kind resid          # one TraceResult

Prints the selection JSON to stdout when no --out is given.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError


def add_parser(sub):
    p = sub.add_parser("select", help="choose layers from a layer-importance / trace result",
                       description=__doc__.splitlines()[0])
    p.add_argument("source", help="LayerImportance JSON, TraceResult JSON, or a `workbench trace --out` directory")
    p.add_argument("--kind", help="resid, mlp, attn (or a patching site); default: the importance file's kind, "
                                  "else mlp")
    p.add_argument("--strategy", default="window", help="window, top-k or threshold")
    p.add_argument("--window", type=int, default=3, help="window strategy: number of consecutive layers")
    p.add_argument("--k", type=int, default=3, help="top-k strategy: number of layers")
    p.add_argument("--threshold", type=float, default=0.5, help="threshold strategy: minimum normalised effect")
    p.add_argument("--position", default=None,
                   help="when aggregating trace results: max, last_subject, last, mean (default: as traced, "
                        "else the shared tracing default, last_subject)")
    p.add_argument("--min-total-effect", type=float, default=None,
                   help="when aggregating trace results: leave out facts the noise hurts less than this (default: "
                        "the shared tracing default, 0.5)")
    p.add_argument("--out", help="write the LayerSelection JSON here (default: print it)")
    return p


def _kind_of_json(path: Path):
    from ..configfile import read_json

    return read_json(path, "importance or trace result")


def load_importance(source: str | Path, kind: str | None = None, position: str | None = None,
                    min_total_effect: float | None = None):
    """A LayerImportance from an importance JSON (as saved), or aggregated from a TraceResult JSON or a trace output
    directory's results with the shared tracing settings (trace_settings.py; `position` and `min_total_effect`
    override them). A trace directory's importance_<kind>.json is used as it is when no override asks otherwise."""
    from ..aggregate import LayerImportance
    from ..results import TraceResult
    from ..trace_settings import TraceSettings

    d = TraceSettings()
    settings = TraceSettings(position=position or d.position, min_total_effect=d.min_total_effect
                             if min_total_effect is None else min_total_effect).check(
        {"position": "--position", "min_total_effect": "--min-total-effect"}.get)
    path = Path(source)
    if path.is_dir():
        if kind is None:
            kind = "mlp"
        imp_file = path / f"importance_{kind}.json"
        results = sorted((path / "results").glob("*.json")) if (path / "results").is_dir() else []
        if imp_file.is_file() and (not results or (position is None and min_total_effect is None)):
            return load_importance(imp_file, kind, position, min_total_effect)
        if not results:
            raise ConfigError(f"{path} has neither importance_{kind}.json nor results/*.json; expected a "
                              "`workbench trace --out` directory")
        return settings.importance([TraceResult.load(p) for p in results], kind)
    if not path.is_file():
        raise FileNotFoundError(f"no layer-importance or trace result at {path}")
    d = _kind_of_json(path)
    if isinstance(d, dict) and d.get("type") == "LayerImportance":
        imp = LayerImportance.from_json(d, f"layer importance {path}")
        if kind is not None and kind != imp.kind:
            raise ConfigError(f"{path} holds the importance of kind {imp.kind!r}, not --kind {kind!r}; pass "
                              f"importance_{kind}.json or the trace directory")
        floor = imp.config.get("min_total_effect", 0.0)
        if (position is not None and position != imp.position) or (
                min_total_effect is not None and min_total_effect != floor):
            raise ConfigError(f"{path} was aggregated with position {imp.position!r} and min_total_effect {floor}; "
                              "select from the trace directory (its results) to aggregate differently")
        return imp
    if isinstance(d, dict) and "arrays" in d and "effects" not in d and "method" in d:
        result = TraceResult.load(path)
        return settings.importance([result], kind or ("mlp" if "mlp" in result.effects else result.kinds[0]))
    raise ConfigError(f"{path} is neither a LayerImportance JSON nor a TraceResult JSON")


def run(args) -> int:
    from ..selection import STRATEGIES, select_layers

    if args.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {args.strategy!r} unknown; expected one of {STRATEGIES}")
    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a directory; expected the path of the selection JSON file to write")
    imp = load_importance(args.source, args.kind, args.position, args.min_total_effect)
    sel = select_layers(imp, args.strategy, k=args.k, window=args.window, threshold=args.threshold)
    sel.provenance["source_file"] = str(args.source)
    if args.out:
        path = sel.save(args.out)
        print(json.dumps({"layers": sel.layers, "kind": sel.kind, "strategy": sel.strategy,
                          "selected_scores": [round(s, 4) for s in sel.selected_scores], "out": str(path)}))
    else:
        print(json.dumps(sel.to_json(), indent=2))
    return 0
