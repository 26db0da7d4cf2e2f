"""`workbench trace`: causal tracing of one prompt or a fact set -> results, layer importance, figures, summary.

    workbench trace --model organism:micro --prompt "What is the birth date of Ada Roe?" --subject "Ada Roe" \\
                    --answer 1987-03-12 --out runs/trace1
    workbench trace --facts forget --task Task2 --limit 125 --kinds resid,mlp,attn --samples 10 --out runs/task2

Writes into --out: results/<n>.json+.npz (TraceResult per fact), importance_<kind>.json (LayerImportance with
bootstrap intervals), token_roles.json, figures/*.html|png, trace.jsonl (log), summary.json; prints the summary.
"""
from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from ..trace_settings import TraceSettings
from . import add_length_args, add_model_safety_args, add_placement_args, check_length_args

FIGURE_FACTS = 3  # per-fact heatmaps drawn for the first few facts only (a 125-fact run needs no 125 figures)
# the flag of each tracing setting, to name it in an error
FLAGS = {"kinds": "--kinds", "n_samples": "--samples", "metric": "--metric", "position": "--position",
         "min_total_effect": "--min-total-effect", "window": "--window", "noise": "--noise", "seed": "--seed",
         "n_boot": "--n-boot"}


def add_parser(sub):
    p = sub.add_parser("trace", help="causal tracing (ROME) of a prompt or a fact set, with figures",
                       description=__doc__.splitlines()[0])
    p.add_argument("--model", default="organism", help="organism[:name], a model directory or a hub id")
    one = p.add_argument_group("one prompt")
    one.add_argument("--prompt", help="the prompt, e.g. 'What is the birth date of Ada Roe?'")
    one.add_argument("--subject", help="substring of the prompt to corrupt")
    one.add_argument("--answer", help="the expected answer")
    many = p.add_argument_group("a fact set")
    many.add_argument("--facts", help="'forget' / 'retain' (the model's corpus, or --data) or a LUME-format .jsonl")
    many.add_argument("--data", help="LUME directory/file for --facts forget|retain when the model is not an organism")
    many.add_argument("--task", help="only facts of this task, e.g. Task2")
    many.add_argument("--limit", type=int, help="trace at most this many facts (first N)")
    many.add_argument("--facts-per-batch", type=int, default=1,
                      help="trace this many facts in shared right-padded full forwards (default 1: one at a time, "
                           "which on OLMo-family models uses the suffix engine and does fewer FLOPs)")
    d = TraceSettings()  # the defaults every entry point shares (workbench/trace_settings.py)
    p.add_argument("--kinds", default=",".join(d.kinds), help="comma-separated: resid, mlp, attn")
    p.add_argument("--samples", type=int, default=d.n_samples, help=f"noise samples per prompt (default {d.n_samples})")
    p.add_argument("--noise", type=float, help="noise sigma (default: 3 x embedding std over the subjects)")
    p.add_argument("--window", type=int, help="layers restored together for mlp/attn (default: 10/48 of depth)")
    p.add_argument("--metric", default=d.metric,
                   help=f"prob (first answer token) or logprob_mean (whole answer; default {d.metric})")
    p.add_argument("--backend", default="torch", help="torch, transformer_lens or nnsight")
    p.add_argument("--position", default=d.position,
                   help=f"per-layer score: max, last_subject, last or mean (default {d.position})")
    p.add_argument("--min-total-effect", type=float, default=d.min_total_effect,
                   help="leave facts the noise hurts less than this (metric units) out of the importance, and count "
                        f"them (default {d.min_total_effect}; 0 keeps every fact)")
    p.add_argument("--n-boot", type=int, default=d.n_boot, help="bootstrap resamples for the intervals")
    p.add_argument("--seed", type=int, default=d.seed)
    add_length_args(many)
    add_run_args(p)
    return p


def add_run_args(p) -> None:
    """Flags `trace` and `patch` share: batching, figure formats, model dtype/device, progress, output dir."""
    p.add_argument("--batch-size", type=int, help="rows per forward (default: from a memory budget)")
    p.add_argument("--formats", default="html,png", help="figure formats: html,png,svg,pdf; 'none' for no figures")
    p.add_argument("--dtype", help="model dtype, e.g. float32 or bfloat16")
    p.add_argument("--device", help="e.g. cpu or cuda")
    add_placement_args(p)
    p.add_argument("--progress", action="store_true", help="show progress bars (stderr)")
    p.add_argument("--out", required=True, help="output directory")
    add_model_safety_args(p)


def parse_list(value: str, what: str, allowed=None) -> list[str]:
    items = [x.strip() for x in (value or "").split(",") if x.strip()]
    if not items:
        raise ConfigError(f"{what} {value!r} is empty; expected a comma-separated list"
                          + (f" of {list(allowed)}" if allowed else ""))
    bad = [x for x in items if allowed is not None and x not in allowed]
    if bad:
        raise ConfigError(f"{what} {bad} unknown; expected some of {list(allowed)}")
    return items


def settings(args) -> TraceSettings:
    """The flags' tracing settings, checked (an error names the flag)."""
    return TraceSettings(kinds=args.kinds_list, n_samples=args.samples, metric=args.metric, position=args.position,
                         min_total_effect=args.min_total_effect, window=args.window, noise=args.noise,
                         seed=args.seed, n_boot=args.n_boot).check(FLAGS.get)


def check_args(args) -> str:
    """Validate flags before loading anything; returns 'prompt' or 'facts'."""
    from ..configfile import MAX_BOOT, MAX_SAMPLES, check_count, check_seed
    from ..figures import STATIC_FORMATS
    from ..results import KINDS
    from . import placement_options

    single = [args.prompt, args.subject, args.answer]
    if args.facts and any(x is not None for x in single):
        raise ConfigError("give either --prompt/--subject/--answer or --facts, not both")
    if not args.facts:
        if any(x is None for x in single):
            missing = [n for n, x in zip(("--prompt", "--subject", "--answer"), single) if x is None]
            raise ConfigError(f"missing {' '.join(missing)}: tracing one prompt needs --prompt, --subject and "
                              "--answer (or use --facts forget|retain|FILE.jsonl)")
        if args.subject not in args.prompt:
            raise ConfigError(f"subject {args.subject!r} is not in prompt {args.prompt!r}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    check_count(args.samples, "--samples", MAX_SAMPLES)
    check_count(args.n_boot, "--n-boot", MAX_BOOT)
    check_seed(args.seed, "--seed")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.facts_per_batch < 1:
        raise ConfigError(f"--facts-per-batch must be >= 1, got {args.facts_per_batch}")
    check_length_args(args)
    placement_options(args)  # a bad --max-memory fails here, before anything is loaded
    args.kinds_list = parse_list(args.kinds, "--kinds", KINDS)
    args.settings = settings(args)
    args.formats_list = [] if args.formats.strip().lower() == "none" else parse_list(
        args.formats.lower(), "--formats", ("html", *STATIC_FORMATS))
    return "facts" if args.facts else "prompt"


def load_facts(spec: str, model_spec: str, data: str | None = None, task: str | None = None,
               limit: int | None = None):
    """Traceable QA records (with a subject) from a split of the model's corpus or a LUME jsonl file."""
    from ..data.lume import load_lume, read_jsonl
    from ..data.records import questions
    from ..harness import ModelSpec, load_corpus

    if spec in ("forget", "retain"):
        if data:
            corpus = load_lume(data)
        elif ModelSpec.parse(model_spec).organism is not None:
            corpus = load_corpus("organism", model_spec)
        elif (Path(model_spec) / "forget.jsonl").is_file():   # an organism directory (or an edited copy of one)
            corpus = load_lume(model_spec)
        else:
            raise ConfigError(f"--facts {spec}: model {model_spec!r} has no corpus of its own; pass --data "
                              "DIR_WITH_forget.jsonl_AND_retain.jsonl or --facts FILE.jsonl")
        records, source = corpus.facts(spec), f"{corpus.source}:{spec}"
    elif spec.endswith(".jsonl") or Path(spec).is_file():
        records, source = [r for r in questions(read_jsonl(spec, "forget")) if r.subject], str(spec)
    else:
        raise ConfigError(f"--facts {spec!r}: expected 'forget', 'retain' or a LUME-format .jsonl file")
    if task is not None:
        tasks = sorted({r.task for r in records})
        records = [r for r in records if r.task == task]
        if not records:
            raise ConfigError(f"--task {task!r}: no traceable facts of that task in {source}; tasks there: {tasks}")
    if not records:
        raise ConfigError(f"no traceable facts (QA records with a subject) in {source}")
    return records[:limit] if limit else records, source


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:40].strip("_") or "fact"


def write_figures(figs: dict, export, command: str = "trace"):
    """Save figures with the study's FigureExport; a figure that cannot be written is a warning on stderr and in the
    log (HTML is still written), not a failed run. Returns (the files written, the last warning or None)."""
    written = [str(p) for p in export.write(figs)]
    for warning in export.warnings:
        print(f"workbench {command}: warning: {warning}", file=sys.stderr)
    return written, (export.warnings[-1] if export.warnings else None)


def run(args) -> int:
    from ..harness import Study, source_dirs

    mode = check_args(args)
    out = Path(args.out)
    # under `accelerate launch` the main process writes (and locks --out), the others trace their share
    study = Study(out, "--out", sources=source_dirs(args.model), log="trace.jsonl", formats=args.formats_list,
                  distributed=True)
    records, source = (load_facts(args.facts, args.model, args.data, args.task, args.limit) if mode == "facts"
                       else (None, "command line"))
    with study:
        return _trace(args, mode, out, records, source, study)


def _trace(args, mode: str, out: Path, records, source: str, study) -> int:
    from .. import distributed
    from ..provenance import atomic_write_json

    log = study.log
    t0 = time.perf_counter()
    model, tok, records = _load(args, records, source)
    load_s, t1 = time.perf_counter() - t0, time.perf_counter()
    results = _trace_all(args, mode, model, tok, records, source, log)
    trace_s = time.perf_counter() - t1
    if not distributed.is_main():
        return 0

    files = _save_results(results, out, source, log)
    imps, excluded, figs = _aggregate(args.settings, results, out, source, files, log)
    fig_files, fig_warning = write_figures(figs, study.figures)
    summary = _summary(args, source, results, imps, excluded)
    summary.update({"load_s": round(load_s, 2), "trace_s": round(trace_s, 2),
                    "wall_s": round(time.perf_counter() - t0, 2), "out": str(out), "files": files + fig_files})
    if fig_warning:
        summary["figure_warning"] = fig_warning
    atomic_write_json(out / "summary.json", summary)
    log("done", peaks=summary["peaks"], wall_s=summary["wall_s"])
    # stdout: the headline (peaks with intervals); per-layer curves and file list are in summary.json
    print(json.dumps({k: v for k, v in summary.items() if k not in ("files", "layers")}, indent=2))
    return 0


def _load(args, records, source: str) -> tuple:
    """The model and tokenizer, placed as the options say, and `records` (None: one prompt) bounded to the record
    length the options allow."""
    from ..data.limits import bound_records
    from ..data.records import Corpus
    from ..harness import load_model
    from . import model_options, placement_options

    model, tok = load_model(args.model, dtype=args.dtype, **placement_options(args), **model_options(args))
    if records is not None:
        records = bound_records(Corpus(forget=records, retain=[], source=source), tok, args.max_record_tokens,
                                args.long_records).forget
    return model, tok, records


def _trace_all(args, mode: str, model, tok, records, source: str, log) -> list:
    """A TraceResult per fact (mode "facts"; under `accelerate launch` each process traces its share) or for the
    one prompt."""
    from .. import distributed
    from ..models import layer_devices

    st = args.settings
    engine = dict(backend=args.backend, batch_size=args.batch_size)
    placed = {"layer_devices": layer_devices(model)} if args.max_memory else {}  # where --max-memory put each layer
    log("start", model=args.model, mode=mode, source=source, n_facts=len(records) if records else 1, **placed,
        settings=st.to_json(), **engine)
    if mode == "facts":
        return st.trace(model, tok, records, facts_per_batch=args.facts_per_batch,
                        progress=args.progress and distributed.is_main(), **engine)
    return [st.trace_one(model, tok, args.prompt, args.answer, args.subject, progress=args.progress, **engine)]


def _save_results(results: list, out: Path, source: str, log) -> list[str]:
    """Save each result under out/results; the paths written."""
    files = []
    for i, r in enumerate(results):
        r.provenance.setdefault("data", {"source": source})
        name = f"{i:04d}_{_slug(r.config.get('record_id') or r.prompt)}"
        files.append(str(r.save(out / "results" / name)))
        log("traced", index=i, prompt=r.prompt, answer=r.answer, p_clean=r.clean, p_corrupted=r.corrupted,
            wall_s=r.config.get("wall_s"))
    return files


def _aggregate(st: TraceSettings, results: list, out: Path, source: str, files: list[str], log) -> tuple:
    """The layer importance and token roles of every kind, saved (their paths appended to `files`), and the figures
    to draw; (importances, why there are none or None, figures)."""
    from ..errors import TraceError
    from ..figures import heatmaps, importance_curve, token_role_heatmap
    from ..provenance import atomic_write_json

    imps, roles, figs, excluded = {}, {}, {}, None
    try:
        imps = st.importances(results)
    except TraceError as e:  # every fact below the total-effect floor: the per-fact results and heatmaps still stand
        excluded = str(e)
        log("importance_skipped", reason=excluded)
    for kind, imp in imps.items():
        imp.provenance["data"]["source"] = source
        files.append(str(imp.save(out / f"importance_{kind}.json")))
    for kind in imps:
        roles[kind] = st.roles(results, kind)
        figs[f"token_roles_{kind}"] = token_role_heatmap(roles[kind])
    files.append(str(atomic_write_json(out / "token_roles.json", {k: v.to_json() for k, v in roles.items()})))
    if imps:
        figs["importance"] = importance_curve(list(imps.values()))
    for i, r in enumerate(results[:FIGURE_FACTS]):
        figs[f"trace_{i:04d}"] = heatmaps(r)
    return imps, excluded, figs


def _summary(args, source: str, results: list, imps: dict, excluded: str | None) -> dict:
    """summary.json's settings, means, peaks, warnings and per-layer curves (the timings and files follow)."""
    st, n = args.settings, len(results)
    first = next(iter(imps.values()), None)
    return {
        "model": args.model, "source": source, "n_facts": n, "metric": st.metric, "position": st.position,
        "min_total_effect": st.min_total_effect,
        "n_facts_excluded": first.n_facts_excluded if first else n,  # below the total-effect floor
        "clean_mean": sum(r.clean for r in results) / n, "corrupted_mean": sum(r.corrupted for r in results) / n,
        "noise_sigma": results[0].config.get("noise_sigma"), "window": results[0].config.get("window"),
        "peaks": {k: imp.peak for k, imp in imps.items()},
        "warnings": [imp.warning() for imp in imps.values() if imp.out_of_range]
        + ([] if imps else [f"no importance: {excluded}"]),
        "layers": {k: {"mean": imp.mean.round(4).tolist(), "lo": imp.lo.round(4).tolist(),
                       "hi": imp.hi.round(4).tolist()} for k, imp in imps.items()},
    }
