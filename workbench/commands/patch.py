"""`workbench patch`: activation patching (and optionally attribution patching) from a clean into a counterfactual prompt.

    workbench patch --model organism:micro --clean "What is the birth date of Ada Roe?" \\
                    --corrupt "What is the birth date of Bo Lin?" --answer 1987-03-12 --wrong 1990-01-02 \\
                    --attribution --out runs/patch1

Writes activation.json+.npz (and attribution.json+.npz), figures/*.html|png, patch.jsonl and summary.json into --out;
prints the summary (peak site per kind; attribution-vs-exact correlations).

--method atp|atp_qk|atp* runs that attribution estimate (workbench.attribution) next to exact patching (--attribution
is --method atp). --method prefilter --top-k K skips the full grid: the --rank-by estimate ranks every cell and exact
patching verifies the top K (prefilter.json+.npz: exact values there, NaN elsewhere; no figures).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .trace import add_run_args, parse_list, write_figures


def add_parser(sub):
    p = sub.add_parser("patch", help="activation / attribution patching between a clean and a counterfactual prompt",
                       description=__doc__.splitlines()[0])
    p.add_argument("--model", default="organism", help="organism[:name], a model directory or a hub id")
    p.add_argument("--clean", required=True, help="the clean prompt")
    p.add_argument("--corrupt", required=True, help="the counterfactual prompt (same length in tokens)")
    p.add_argument("--answer", required=True, help="the clean prompt's answer")
    p.add_argument("--wrong", help="the counterfactual answer (needed for --metric logit_diff)")
    p.add_argument("--metric", help="logit_diff (default with --wrong), logprob (default without), logprob_mean, prob")
    p.add_argument("--sites", default="resid_pre,attn_out,mlp_out", help="comma-separated patching sites")
    p.add_argument("--no-heads", action="store_true", help="skip per-head patching")
    p.add_argument("--attribution", action="store_true",
                   help="also run attribution patching and report its correlation with exact patching")
    p.add_argument("--method", default="exact", choices=("exact", "atp", "atp_qk", "atp*", "prefilter"),
                   help="exact (default; plus AtP with --attribution), atp / atp_qk / atp* (exact plus that estimate), "
                        "prefilter (rank by --rank-by, verify the top --top-k exactly; no full grid)")
    p.add_argument("--top-k", type=int, help="cells exact patching verifies with --method prefilter")
    p.add_argument("--rank-by", default="atp*", choices=("atp", "atp_qk", "atp*"),
                   help="the attribution estimate --method prefilter ranks cells by (default atp*)")
    p.add_argument("--backend", default="torch", help="torch, transformer_lens or nnsight (attribution: not nnsight)")
    add_run_args(p)
    return p


def peak(result, kind: str) -> dict:
    """Where patching recovers most: (layer, position or head) of the largest normalised effect."""
    norm = result.normalised(kind)                                   # [n_layers, n_pos | n_heads]
    l, t = np.unravel_index(int(np.argmax(norm)), norm.shape)
    where = {"head": int(t)} if kind == "head" else {"position": int(t), "token": result.tokens[t]}
    return {"layer": int(l), **where, "normalised": float(norm[l, t]), "metric": float(result.effects[kind][l, t])}


def run(args) -> int:
    from ..patching import PATCH_SITES
    from ..figures import STATIC_FORMATS

    sites = parse_list(args.sites, "--sites", PATCH_SITES)
    formats = [] if args.formats.strip().lower() == "none" else parse_list(
        args.formats.lower(), "--formats", ("html", *STATIC_FORMATS))
    metric = args.metric or ("logit_diff" if args.wrong else "logprob")
    if metric == "logit_diff" and not args.wrong:
        raise ConfigError("--metric logit_diff needs --wrong (the counterfactual prompt's answer); "
                          "or use --metric logprob")
    if args.method == "prefilter" and args.top_k is None:
        raise ConfigError("--method prefilter needs --top-k K (how many top-ranked cells exact patching verifies)")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_k is not None and args.method != "prefilter":
        raise ConfigError(f"--top-k is for --method prefilter, not --method {args.method}")
    if args.method not in ("exact", "atp") and args.backend != "torch":
        raise ConfigError(f"--method {args.method} needs --backend torch (it recomputes attention from the model)")
    if args.attribution and args.method != "exact":
        raise ConfigError(f"--attribution is --method atp; drop it or --method {args.method}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    from . import placement_options

    placement_options(args)  # a bad --max-memory fails here, before anything is loaded
    if args.clean == args.corrupt:
        raise ConfigError(f"--clean and --corrupt are the same prompt {args.clean!r}; patching needs a counterfactual")
    from ..harness import Study, source_dirs

    out = Path(args.out)
    with Study(out, "--out", sources=source_dirs(args.model), log="patch.jsonl", formats=formats) as study:
        return _patch(args, out, sites, metric, study)


def _patch(args, out: Path, sites: list[str], metric: str, study) -> int:
    from .. import patching
    from ..figures import heatmaps
    from ..harness import load_model
    from . import model_options, placement_options
    from ..provenance import atomic_write_json

    log = study.log
    t0 = time.perf_counter()
    model, tok = load_model(args.model, dtype=args.dtype, **placement_options(args), **model_options(args))
    kw = dict(wrong_answer=args.wrong, sites=tuple(sites), heads=not args.no_heads, metric=metric,
              backend=args.backend, batch_size=args.batch_size, progress=args.progress)
    log("start", model=args.model, clean=args.clean, corrupt=args.corrupt, answer=args.answer,
        attribution=args.attribution, method=args.method, **{k: v for k, v in kw.items() if k != "progress"})
    if args.method == "prefilter":
        return _prefilter(args, out, model, tok, kw, log, t0)
    exact = patching.activation_patching(model, tok, args.clean, args.corrupt, args.answer, **kw)
    files = [str(exact.save(out / "activation"))]
    log("activation_patching", clean=exact.clean, corrupted=exact.corrupted, wall_s=exact.config.get("wall_s"))
    figs = {"activation": heatmaps(exact, normalised=True)}
    summary = {"model": args.model, "clean_prompt": args.clean, "corrupt_prompt": args.corrupt, "answer": args.answer,
               "wrong": args.wrong, "metric": metric, "clean": exact.clean, "corrupted": exact.corrupted,
               "peaks": {k: peak(exact, k) for k in exact.effects}}
    if args.attribution or args.method != "exact":
        from .. import attribution

        method = "atp" if args.attribution else args.method
        attr = attribution.attribute(model, tok, args.clean, args.corrupt, args.answer, wrong_answer=args.wrong,
                                     sites=kw["sites"], heads=kw["heads"], metric=metric, method=method,
                                     backend=args.backend)
        attr.config["vs_exact"] = attribution.vs_exact(attr, exact)
        files.append(str(attr.save(out / "attribution")))
        log("attribution_patching", vs_exact=attr.config["vs_exact"], wall_s=attr.config.get("wall_s"))
        figs["attribution"] = heatmaps(attr, normalised=True)
        summary["attribution"] = {"vs_exact": attr.config["vs_exact"],
                                  "peaks": {k: peak(attr, k) for k in attr.effects}}
    fig_files, fig_warning = write_figures(figs, study.figures, "patch")
    summary.update(wall_s=round(time.perf_counter() - t0, 2), out=str(out))
    if fig_warning:
        summary["figure_warning"] = fig_warning
    atomic_write_json(out / "summary.json", {**summary, "files": files + fig_files})
    log("done", wall_s=summary["wall_s"])
    print(json.dumps(summary, indent=2))
    return 0


def _prefilter(args, out: Path, model, tok, kw: dict, log, t0: float) -> int:
    """--method prefilter: attribution ranks every cell, exact patching verifies the top --top-k."""
    from .. import attribution
    from ..provenance import atomic_write_json

    pf = attribution.prefilter(model, tok, args.clean, args.corrupt, args.answer, k=args.top_k,
                               wrong_answer=kw["wrong_answer"], sites=kw["sites"], heads=kw["heads"],
                               metric=kw["metric"], method=args.rank_by, batch_size=kw["batch_size"])
    files = [str(pf.save(out / "prefilter"))]
    norm = pf.total_effect
    cells = [{"kind": kind, "layer": l, ("head" if kind == "head" else "position"): i,
              "metric": float(pf.effects[kind][l, i]),
              "normalised": float((pf.effects[kind][l, i] - pf.corrupted) / norm) if norm else None}
             for kind, l, i in pf.config["verified"]]
    log("prefilter", k=args.top_k, rank_by=args.rank_by, wall_s=pf.config["wall_s"])
    summary = {"model": args.model, "clean_prompt": args.clean, "corrupt_prompt": args.corrupt,
               "answer": args.answer, "wrong": args.wrong, "metric": kw["metric"], "clean": pf.clean,
               "corrupted": pf.corrupted, "method": "prefilter", "rank_by": args.rank_by, "top_k": args.top_k,
               "verified": cells, "wall_s": round(time.perf_counter() - t0, 2), "out": str(out)}
    atomic_write_json(out / "summary.json", {**summary, "files": files})
    log("done", wall_s=summary["wall_s"])
    print(json.dumps(summary, indent=2))
    return 0
