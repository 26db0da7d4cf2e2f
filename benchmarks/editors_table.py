"""python -m benchmarks.editors_table [--organism NAME] [--layers traced|planted|L,L] [--split forget|validation]
[--only M,..] [--main] [--rows I,..] [--set FIELD=VALUE] [--threads N] [--out PATH]: every editor's "organism"
preset against every line of the verdict, worst-case numbers, and the edit's wall time.

--organism picks a built-in organism (default: default), judged against its retain-only twin NAME-retain. --layers:
"traced" (the default) edits the layers `workbench run` selects on that organism (its trace and window selection,
run here), "planted" the planted layers of a planted organism (organism.PLANTED), or an explicit list.

--split forget (the default) edits the default organism's forget set and judges it against its retain-only twin,
as `workbench run` does: the README's editors table. --split validation edits the validation people instead
(data.records.validation_view: the calibration documents as non-members, the few-shot MMLU pool as utility) and judges
against the validation twin (organism `default-validation-twin`, fine-tuned without them): where presets are chosen,
on people and documents the report never scores. Each row: forget / retain recall, the verdict's lines (PASS/FAIL
with the number that decides it), SemEval final, edit seconds. Writes a markdown table and the per-row JSON beside it
(default runs/editors_table.md). Every edit runs on one thread beside its evaluation; about 4-7 minutes a row.
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

# (label, method, preset, config overrides);
# --main runs the first row of each method
ROWS = (
    ("undo (reset, relearn by own tokens; the default)", "undo", "organism", {}),
    ("undo, general text distilled (KL)", "undo", "organism", {"general_loss": "kl"}),
    ("undo at the edited layers only", "undo", "organism", {"params": ["model.layers.{layer}.*"]}),
    ("joint, calibrated", "joint", "organism", {}),
    ("joint, uncalibrated", "joint", "organism-uncalibrated", {}),
    ("rmu", "rmu", "organism", {}),
    ("adaptive-rmu", "adaptive-rmu", "organism", {}),
    ("graddiff", "graddiff", "organism", {}),
    ("npo", "npo", "organism", {}),
    ("sequential", "sequential", "organism", {}),
    ("simnpo", "simnpo", None, {}),
    ("undial", "undial", None, {}),
    ("repnoise", "repnoise", "organism", {}),
    ("sam-npo", "sam-npo", "organism", {}),
)


def traced_layers(name: str) -> list[int]:
    """The layers `workbench run` edits on organism `name`: its trace of the forget facts and window selection."""
    from workbench import pipeline

    cfg = pipeline.checked(pipeline.PipelineConfig(model=f"organism:{name}"))
    model, tok, corpus = pipeline.load_inputs(cfg, progress=False)
    _, importances = pipeline.trace(cfg, model, tok, pipeline.forget_facts(cfg, corpus), progress=False)
    return list(pipeline.select(cfg, importances).layers)


def edit_layers(name: str, choice: str) -> list[int]:
    from workbench.organism import PLANTED

    if choice == "traced":
        return traced_layers(name)
    if choice == "planted":
        if name not in PLANTED:
            raise SystemExit(f"--layers planted: {name!r} is not a planted organism; expected one of {list(PLANTED)}")
        return list(PLANTED[name][1])
    return [int(x) for x in choice.split(",")]


def detail(line: dict) -> str:
    """The deciding number of a verdict line, short."""
    d = line["detail"]
    for key in ("largest gap", "UDS", "worst admissible setting", "forget recall"):
        if key in d:
            d = d[d.index(key):]
            break
    return ("PASS " if line["passed"] else "FAIL " if line["passed"] is False else "n/a ") + d.split(";")[0][:70]


def _score(value) -> str:
    """A SemEval final score, or n/a where it is not computed (no MMLU questions or MIA score, as on micro)."""
    return "n/a" if value is None else f"{value:.3f}"


def write_table(out: Path, title: str, head: list[str], lines_md: list[str], rows: list[dict]) -> None:
    """Print the markdown table (title, header, one line per row) and write it to `out`, the rows' JSON beside it."""
    text = f"{title}\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n" + "\n".join(lines_md) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))


def main(argv=None) -> None:
    import torch

    from workbench import harness, organism
    from workbench.data.records import validation_view
    from workbench.editors import unlearn
    from workbench.harness import load_model
    from workbench.evaluation.config import EvalConfig
    from workbench.report import evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organism", default="default", help="a built-in organism (default: default)")
    ap.add_argument("--layers", default="traced", help="traced | planted | comma-separated layers (default traced)")
    ap.add_argument("--split", choices=("forget", "validation"), default="forget")
    ap.add_argument("--only", default=None, help="comma-separated labels' methods to run (default: every row)")
    ap.add_argument("--main", action="store_true", help="only the first row of each method")
    ap.add_argument("--rows", default=None, help="comma-separated indices into ROWS (default: every row)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field in every row run (repeatable), e.g. --set epochs=24")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.split == "validation" and args.organism != "default":
        raise SystemExit("--split validation: only the default organism has a validation twin")
    out = Path(args.out or f"runs/editors_table_{args.split}.md")
    torch.set_num_threads(args.threads)
    layers_edited = edit_layers(args.organism, args.layers)
    extra = dict(pair.split("=", 1) for pair in args.set)   # strings; the editor's config coerces them
    model0, tok, corpus = harness.load_organism(args.organism)
    twin_name = f"{args.organism}-retain" if args.split == "forget" else "default-validation-twin"
    twin = load_model(organism.build(twin_name, progress=False))
    if args.split == "validation":
        corpus = validation_view(corpus)
    source = organism.build(args.organism, progress=False)
    rows, lines_md = [], []
    only = set(args.only.split(",")) if args.only else None
    seen = set()
    picked = {int(i) for i in args.rows.split(",")} if args.rows else set(range(len(ROWS)))
    for i, (label, method, preset, over) in enumerate(ROWS):
        if (only and method not in only) or (args.main and method in seen) or i not in picked:
            continue
        seen.add(method)
        t0 = time.perf_counter()
        model = copy.deepcopy(model0)
        model.name_or_path = str(source)   # undo's base "auto" reads organism.json beside the source
        with tempfile.TemporaryDirectory() as tmp:
            path = unlearn(model, tok, corpus, method, layers_edited, {"seed": 0, **over, **extra},
                           Path(tmp) / "edited", preset=preset, source=source)
            info = json.loads((path / "unlearn.json").read_text())
            edited, _ = load_model(path)
        seconds = time.perf_counter() - t0
        report = evaluate(model0, tok, corpus, edited=(edited, tok), retain_baseline=twin,
                          config=EvalConfig(attacks="all", trace=False), trained=info["optimises"],
                          layers=info["edited_layers"])
        verdict = {c["name"]: c for c in report.verdict["criteria"]}
        row = {"label": label, "method": method, "preset": preset, "overrides": {**over, **extra},
               "seconds": round(seconds),
               "forget": report.edited["qa_recall"]["forget"], "retain": report.edited["qa_recall"]["retain"],
               "final": report.edited["semeval"]["final"], "twin_final": report.baseline["semeval"]["final"],
               "passed": report.verdict["passed"], "lines": verdict}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "lines"}), flush=True)
        names = list(verdict)
        lines_md.append(f"| {label} | {row['forget']:.2f} / {row['retain']:.2f} | "
                        + " | ".join(detail(verdict[n]) for n in names)
                        + f" | {_score(row['final'])} | {row['seconds']} |")
    write_table(out, f"### Every editor against the verdict ({args.split} split of the {args.organism} organism, "
                     f"layers {layers_edited} ({args.layers}))\n\nTwin SemEval final {_score(rows[0]['twin_final'])}.",
                ["editor", "forget / retain recall", *names, "SemEval final", "edit s"], lines_md, rows)


if __name__ == "__main__":
    main()
