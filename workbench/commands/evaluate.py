"""`workbench evaluate`: original vs edited model, side by side, into report.json + report.html."""
from __future__ import annotations

import json
import sys
from pathlib import Path

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
    p.add_argument("--allow-foreign-edit", action="store_true",
                   help="evaluate an --edited model whose unlearn.json says it was made from another model than "
                        "--model (refused by default; the report then says so)")
    add_model_safety_args(p)
    add_length_args(p)
    return p


def _baseline_spec(spec: str, model_spec: str) -> str:
    """'twin' -> organism:<name>-retain for an organism model; anything else is a model spec as it is."""
    if spec != "twin":
        return spec
    from ..errors import ConfigError
    from ..harness import ModelSpec
    from ..organism import retain_twin

    name = ModelSpec.parse(model_spec).organism
    if name is None:
        raise ConfigError(f"--retain-baseline twin needs --model organism[:name] (got {model_spec!r}); "
                          "for other models give the path of a model trained on the retain set only")
    return f"organism:{retain_twin(name)}"


def check_edit_source(edited: str, model_spec: str, model, allow: bool) -> str | None:
    """The edited model was made from `model` (the original given): its unlearn.json records the content key of the
    files it was made from (source_weights) and the fingerprint of the weights it started from; when neither matches
    the original, evaluating one against the other compares unrelated models, and is refused unless `allow`.
    Returns the note the report carries when `allow` let a foreign edit through, else None."""
    from ..configfile import read_json
    from ..errors import ConfigError
    from ..models import weights_key
    from ..harness import ModelSpec
    from ..provenance import model_fingerprint

    info = Path(edited) / "unlearn.json"
    if not info.is_file():
        return None  # not made by `workbench unlearn`: nothing recorded to compare
    record = read_json(info, "edit record")
    prov = record.get("provenance") if isinstance(record, dict) else None
    prov = prov if isinstance(prov, dict) else {}
    theirs_weights, theirs_fp = prov.get("source_weights"), prov.get("source_fingerprint")
    if not theirs_weights and not theirs_fp:
        return None
    if theirs_fp and theirs_fp == model_fingerprint(model):
        return None
    if theirs_weights and theirs_weights == weights_key(ModelSpec.parse(model_spec).path(), model):
        return None
    made_from = prov.get("source_model") or "another model"
    what = (f"the edited model {edited} was made from {made_from} (fingerprint {theirs_fp}), not from --model "
            f"{model_spec} (fingerprint {model_fingerprint(model)})")
    if not allow:
        raise ConfigError(f"{what}; a report would compare unrelated models. Give the original it was made from, "
                          "or pass --allow-foreign-edit to evaluate it anyway (the report then says so)")
    return f"foreign edit: {what}; evaluated anyway (--allow-foreign-edit)"


def check_same_shape(model, edited, model_spec: str, edited_spec: str) -> None:
    """The edited model has the original's architecture: layers, width and vocabulary (the report compares them
    position by position, layer by layer)."""
    from ..errors import ConfigError

    fields = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
              "vocab_size")
    diff = [f"{f} {getattr(edited.config, f, None)} vs {getattr(model.config, f, None)}" for f in fields
            if getattr(edited.config, f, None) != getattr(model.config, f, None)]
    if diff:
        raise ConfigError(f"the edited model {edited_spec} is not the shape of --model {model_spec} "
                          f"({'; '.join(diff)}); an edit has its original's shape: give the original it was made from")


def run(args) -> int:
    from .. import distributed
    from ..evaluation.config import EvalConfig
    from ..evaluation.retrace import TraceConfig
    from ..evaluation.semeval import MAX_NEW_TOKENS, ORGANISM_MAX_NEW_TOKENS
    from ..harness import Study
    from . import check_length_args

    out = Path(args.out)
    _check_out_and_counts(args, out)
    # every flag is checked before any data or model is loaded
    tc = TraceConfig(n_facts=args.n_facts, n_samples=args.n_samples)
    default_tokens = ORGANISM_MAX_NEW_TOKENS if args.data == "organism" else MAX_NEW_TOKENS
    cfg = EvalConfig(mmlu_source=args.mmlu, mmlu_shots=args.mmlu_shots, limit=args.limit, batch_size=args.batch_size,
                     trace=not args.no_trace, attacks=args.attacks or (),
                     max_new_tokens=default_tokens if args.max_new_tokens is None else args.max_new_tokens)
    baseline_spec = _baseline_spec(args.retain_baseline, args.model) if args.retain_baseline else None
    check_length_args(args)
    # under `accelerate launch` the main process writes (and locks --out), the others score their share
    with Study(out, "evaluation output", distributed=True) as study:
        report, foreign = _evaluate(args, cfg, tc, baseline_spec, study)
    if distributed.is_main():
        _print_report(report, out, foreign)
    return 0


def _evaluate(args, cfg, tc, baseline_spec, study):
    """The models and corpus loaded through the harness, the report written into the study's directory; (the
    report, the foreign-edit note or None)."""
    from .. import distributed
    from ..harness import load_corpus, load_model
    from ..report import evaluate
    from . import model_options, process_device

    opts = model_options(args)
    device = process_device(args.device)
    model, tok = load_model(args.model, device=device, **opts)
    corpus = load_corpus(args.data, args.model, tok, args.max_record_tokens, args.long_records)
    foreign = check_edit_source(args.edited, args.model, model, args.allow_foreign_edit) if args.edited else None
    edited = load_model(args.edited, device=device, **opts) if args.edited else None
    if edited is not None:
        check_same_shape(model, edited[0], args.model, args.edited)
    reference = load_model(args.reference, device=device, **opts) if args.reference else None
    baseline = load_model(baseline_spec, device=device, **opts) if baseline_spec else None
    edit_path = Path(args.edited) / "unlearn.json" if args.edited else None
    edit_info = json.loads(edit_path.read_text()) if edit_path and edit_path.is_file() else {}
    report = evaluate(model, tok, corpus, edited=edited, trace_config=tc, config=cfg, reference=reference,
                      retain_baseline=baseline, out_dir=Path(args.out) if study.main else None,
                      progress=args.progress and distributed.is_main(),
                      edit_log=(edit_info.get("summary") or {}).get("evals"),
                      trained=edit_info.get("optimises", []),
                      layers=edit_info.get("edited_layers", edit_info.get("layers")))
    return report, foreign


def _check_out_and_counts(args, out: Path) -> None:
    """--out is a directory (or new) that no model read lives in or around, and --limit and --n-samples are in
    range: checked before any work."""
    from ..configfile import MAX_SAMPLES
    from ..errors import ConfigError
    from ..harness import source_dirs
    from ..outputs import check_not_source

    # never into or around a model read, or the organism cache
    src = check_not_source(out, source_dirs(args.model, args.edited, args.reference, args.retain_baseline))
    if src is not None:
        raise ConfigError(f"--out {out.resolve()} overlaps the model directory {src}; choose a separate run directory")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.n_samples > MAX_SAMPLES:
        raise ConfigError(f"--n-samples must be <= {MAX_SAMPLES} (it sizes memory), got {args.n_samples}")


def _print_report(report, out: Path, foreign: str | None) -> None:
    """Note a foreign edit in the saved report and warn of it; print the headline metrics as JSON and the verdict
    lines to stderr."""
    if foreign:  # said in the report itself, beside the numbers it qualifies
        report.edited.setdefault("notes", []).append(foreign)
        report.provenance["foreign_edit"] = foreign
        report.save(out)
        print(f"workbench evaluate: warning: {foreign}", file=sys.stderr)
    rows = {r[0]: {"original": r[1], "edited": r[2]} for r in report.table() if not r[0].startswith("term ")}
    print(json.dumps({"out": str(out), "seconds": round(report.seconds, 1), "verdict": report.verdict,
                      "metrics": rows}, indent=2))
    for line in report.verdict_lines():
        print(line, file=sys.stderr)
