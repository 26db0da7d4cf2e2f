"""python -m benchmarks.null_edit [--split forget|validation] [--seeds 1,2] [--layers 0,1,2] [--out PATH]: the
verdict on a perfect edit.

A twin fine-tuned with another data order (`finetune_seed = s`) never saw the people to forget: it is what exact
unlearning by retraining produces. Judged as if it were the edit, against the seed-0 twin the verdict uses, with every
attack at its worst-case grid (`EvalConfig(attacks="all")`), it shows how often each line fails a model that holds
nothing to recover: the run-to-run floor under every line's tolerance. --split forget judges the default organism's
retain-only twins (`default-ft{s}-retain`, the ones `benchmarks.twin_spread` builds) on the forget split, as
`workbench run` does; --split validation judges validation twins (`default-ft{s}-validation-twin`) on the validation
view, as `benchmarks.editors_table --split validation` does. --layers is the relearning attack's "edited" scope
(default: the layers `workbench run` selects, [0, 1, 2]). Writes a markdown table and per-seed JSON (default
runs/null_edit_SPLIT.md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv=None) -> None:
    import torch

    from benchmarks.editors_table import _score, detail, write_table
    from workbench import harness, organism
    from workbench.data.records import validation_view
    from workbench.evaluation.config import EvalConfig
    from workbench.harness import load_model
    from workbench.report import evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("forget", "validation"), default="forget")
    ap.add_argument("--seeds", default="1,2", help="comma-separated fine-tune seeds of the judged twins")
    ap.add_argument("--layers", default="0,1,2", help="the relearning attack's edited layers")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    out = Path(args.out or f"runs/null_edit_{args.split}.md")
    twin_preset = "default-retain" if args.split == "forget" else "default-validation-twin"
    suffix = twin_preset.removeprefix("default")
    model0, tok, corpus = harness.load_organism("default")
    if args.split == "validation":
        corpus = validation_view(corpus)
    twin = load_model(organism.build(twin_preset, progress=False))
    rows, lines_md, names = [], [], []
    for seed in map(int, args.seeds.split(",")):
        t0 = time.perf_counter()
        cfg = organism.with_overrides(twin_preset, name=f"default-ft{seed}{suffix}", finetune_seed=seed)
        judged = load_model(organism.build(cfg, progress=False))
        report = evaluate(model0, tok, corpus, edited=judged, retain_baseline=twin,
                          config=EvalConfig(attacks="all", trace=False),
                          layers=[int(x) for x in args.layers.split(",")])
        verdict = {c["name"]: c for c in report.verdict["criteria"]}
        names = list(verdict)
        row = {"seed": seed, "seconds": round(time.perf_counter() - t0),
               "forget": report.edited["qa_recall"]["forget"], "retain": report.edited["qa_recall"]["retain"],
               "final": report.edited["semeval"]["final"], "twin_final": report.baseline["semeval"]["final"],
               "passed": report.verdict["passed"], "lines": verdict}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "lines"}), flush=True)
        lines_md.append(f"| twin of seed {seed} | {row['forget']:.2f} / {row['retain']:.2f} | "
                        + " | ".join(detail(verdict[n]) for n in names) + f" | {_score(row['final'])} |")
    write_table(out, f"### The verdict on a perfect edit ({args.split} split): twins of other seeds judged against "
                     f"the seed-0 twin\n\nSeed-0 twin SemEval final {_score(rows[0]['twin_final'])}.",
                ["judged as the edit", "forget / retain recall", *names, "SemEval final"], lines_md, rows)

if __name__ == "__main__":
    main()
