"""`workbench run [--config pipeline.yaml]`: the whole pipeline (default: on the built-in organism).

Exit code 3: the results (report, summary, edited model) are written, but some figures are not; a warning names
each one (workbench/cli.py lists every exit code)."""
from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("run", help="run the full pipeline: trace -> select -> unlearn -> evaluate + re-trace")
    p.add_argument("--config", help="pipeline YAML/JSON (keys: see workbench.pipeline.PipelineConfig)")
    p.add_argument("--model", help="override the config's model (organism, organism:micro, a dir, a hub id)")
    p.add_argument("--method", help="override the unlearning method")
    p.add_argument("--out", help="override the run directory")
    p.add_argument("--figures", help="also copy the main figures into this directory (e.g. figures)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    from dataclasses import replace

    from ..pipeline import PipelineConfig, run as run_pipeline

    cfg = PipelineConfig.from_file(args.config) if args.config else PipelineConfig()
    overrides = {k: getattr(args, k) for k in ("model", "method", "out", "figures") if getattr(args, k)}
    cfg = replace(cfg, **overrides)
    report = run_pipeline(cfg, progress=not args.quiet)
    print(f"report: {report.resolve()}")
    summary = json.loads((report.parent / "summary.json").read_text())
    if summary.get("figures_incomplete"):  # results are complete; the warnings above name each missing figure
        from ..cli import EXIT_FIGURES_INCOMPLETE

        return EXIT_FIGURES_INCOMPLETE
    return 0
