"""`workbench evaluate`: original vs edited model, side by side, into report.json + report.html."""
from __future__ import annotations

import json
import sys

from ..trace_settings import TraceSettings
from . import add_length_args, add_model_safety_args


def add_parser(sub):
    p = sub.add_parser("evaluate", help="verify an unlearning edit: recall, MIA, MMLU, SemEval score, re-tracing")
    p.add_argument("--model", required=True, help="original model: organism[:name], local dir or hub id")
    p.add_argument("--edited", default=None, help="edited model (directory written by `workbench unlearn`)")
    p.add_argument("--data", default="organism",
                   help="'organism' (the original organism's own corpus) or a LUME directory (forget/retain[/holdout].jsonl)")
    p.add_argument("--out", required=True, help="run directory for report.json / report.html")
    p.add_argument("--limit", type=int, default=None, help="at most N items per split/task/kind group (quick look)")
    p.add_argument("--no-trace", action="store_true", help="skip re-tracing before/after")
    p.add_argument("--mmlu", default=None, help="MMLU source: hendrycks dir, .jsonl/.parquet, hub:cais/mmlu "
                                                 "(default: the organism's MMLU-format set, if any)")
    p.add_argument("--mmlu-shots", type=int, default=None,
                   help="few-shot examples per MMLU question (default: 0 on the organism's own set, 5 for --mmlu)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation budget (default 256 as SemEval; 64 on organism data)")
    p.add_argument("--retain-baseline", default=None,
                   help="a model trained without the forget set ('twin': the organism's retain-only twin): a third "
                        "column, the privleak baseline, and the reference model unless --reference is given")
    p.add_argument("--reference", default=None, help="reference model for the reference-model MIA attack")
    p.add_argument("--attacks", default=None,
                   help="recovery attacks run on the original, edited and retain-only models: a comma-separated "
                        "list of relearn, quantize, lens, depth, or 'all' (default: none)")
    p.add_argument("--n-facts", type=int, default=16, help="forget facts to re-trace")
    p.add_argument("--n-samples", type=int, default=TraceSettings.n_samples, help="noise samples per traced fact "
                   "(the re-trace uses the shared tracing settings, workbench/trace_settings.py)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None)
    p.add_argument("--progress", action="store_true")
    add_model_safety_args(p)
    add_length_args(p)
    return p


def _baseline_spec(spec: str, model_spec: str) -> str:
    """'twin' -> organism:<name>-retain for an organism model; anything else is a model spec as it is."""
    if spec != "twin":
        return spec
    from ..errors import ConfigError
    from ..models import organism_name
    from ..organism import retain_twin

    name = organism_name(model_spec)
    if name is None:
        raise ConfigError(f"--retain-baseline twin needs --model organism[:name] (got {model_spec!r}); "
                          "for other models give the path of a model trained on the retain set only")
    return f"organism:{retain_twin(name)}"


def run(args) -> int:
    from pathlib import Path

    from ..errors import ConfigError
    from ..corpus import load_corpus
    from ..report import EvalConfig, evaluate
    from ..evaluation.retrace import TraceConfig
    from ..evaluation.semeval import MAX_NEW_TOKENS, ORGANISM_MAX_NEW_TOKENS
    from .. import distributed
    from ..organism import load_model
    from ..outputs import check_not_source, check_writable
    from ..data.limits import bound_records
    from . import check_length_args, model_options, process_device

    out = Path(args.out)
    sources = [Path(m) for m in (args.model, args.edited, args.reference, args.retain_baseline)
               if m and Path(m).expanduser().exists()]
    src = check_not_source(out, sources)
    if src is not None:
        raise ConfigError(f"--out {out.resolve()} overlaps the model directory {src}; choose a separate run directory")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    # every flag is checked before any data or model is loaded
    tc = TraceConfig(n_facts=args.n_facts, n_samples=args.n_samples)
    default_tokens = ORGANISM_MAX_NEW_TOKENS if args.data == "organism" else MAX_NEW_TOKENS
    cfg = EvalConfig(mmlu_source=args.mmlu, mmlu_shots=args.mmlu_shots, limit=args.limit, batch_size=args.batch_size,
                     trace=not args.no_trace, attacks=args.attacks or (),
                     max_new_tokens=default_tokens if args.max_new_tokens is None else args.max_new_tokens)
    baseline_spec = _baseline_spec(args.retain_baseline, args.model) if args.retain_baseline else None
    check_length_args(args)
    if distributed.is_main():  # under `accelerate launch` the main process writes, the others score their share
        check_writable(out, "--out")
    corpus, _ = load_corpus(args.data, args.model)
    opts = model_options(args)
    device = process_device(args.device)
    model, tok = load_model(args.model, device=device, **opts)
    corpus = bound_records(corpus, tok, args.max_record_tokens, args.long_records)
    edited = load_model(args.edited, device=device, **opts) if args.edited else None
    reference = load_model(args.reference, device=device, **opts) if args.reference else None
    baseline = load_model(baseline_spec, device=device, **opts) if baseline_spec else None
    edit_info = Path(args.edited) / "unlearn.json" if args.edited else None
    edit_log = json.loads(edit_info.read_text())["summary"]["evals"] if edit_info and edit_info.is_file() else None
    with distributed.main_locked(out, "evaluation output"):
        report = evaluate(model, tok, corpus, edited=edited, trace_config=tc, config=cfg, reference=reference,
                          retain_baseline=baseline, out_dir=out if distributed.is_main() else None,
                          progress=args.progress and distributed.is_main(), edit_log=edit_log)
    if not distributed.is_main():
        return 0
    rows = {r[0]: {"original": r[1], "edited": r[2]} for r in report.table() if not r[0].startswith("term ")}
    print(json.dumps({"out": str(out), "seconds": round(report.seconds, 1), "verdict": report.verdict,
                      "metrics": rows}, indent=2))
    for line in report.verdict_lines():
        print(line, file=sys.stderr)
    return 0
