"""python -m benchmarks.twin_spread [--organism default] [--seeds 3] [--out PATH]: how like-for-like the original and its
retain-only twin are, and how much a second fine-tune moves the numbers the verdict compares.

For each fine-tune seed s (the data order of the fine-tune; one shared base) the original and its twin are built with
`finetune_seed = s`. Reported per seed: forget / retain / holdout recall and cloze MMLU of both, and the MMLU gap
(original - twin), with the mean and spread over seeds. Against seed 0's pair, every other seed's twin is a model that
also never saw the forget set: its UDS (stage 1 from seed 0's twin, stage 2 from it) and its membership AUCs against
seed 0's twin are the run-to-run spread of a perfect edit, the scale that the verdict's depth threshold and AUC
tolerance must clear. Prints a markdown report and writes it to PATH (default runs/twin_spread.md). Builds 2 x seeds
fine-tunes (two at a time, one thread each) plus the base once.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path


def _build(spec: tuple[str, str, int]) -> str:
    import torch

    from workbench import organism

    torch.set_num_threads(1)
    preset, name, seed = spec
    return str(organism.build(organism.with_overrides(preset, name=name, finetune_seed=seed), progress=False))


def main(argv=None) -> None:
    import numpy as np
    import torch

    from workbench import organism
    from workbench.evaluation.attacks import depth
    from workbench.evaluation.knowledge import recall
    from workbench.evaluation.mia import mia
    from workbench.harness import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--organism", default="default")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="runs/twin_spread.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    organism.build_base(args.organism)
    specs = [(p, f"{args.organism}-ft{s}{'-retain' if p.endswith('-retain') else ''}", s)
             for s in range(args.seeds) for p in (args.organism, organism.retain_twin(args.organism))]
    with mp.get_context("spawn").Pool(2) as pool:
        paths = pool.map(_build, specs)
    built = {(spec[0], spec[2]): Path(p) for spec, p in zip(specs, paths)}
    corpus = organism.load_corpus(built[(args.organism, 0)])
    rows, gaps = [], []
    for s in range(args.seeds):
        o = recall(*load_model(built[(args.organism, s)]), corpus)
        t = recall(*load_model(built[(organism.retain_twin(args.organism), s)]), corpus)
        gaps.append(o["mmlu_cloze_accuracy"] - t["mmlu_cloze_accuracy"])
        rows.append(f"| {s} | {o['forget_qa_exact_match']:.3f} / {t['forget_qa_exact_match']:.3f} | "
                    f"{o['retain_qa_exact_match']:.3f} / {t['retain_qa_exact_match']:.3f} | "
                    f"{o['holdout_qa_exact_match']:.3f} / {t['holdout_qa_exact_match']:.3f} | "
                    f"{o['mmlu_cloze_accuracy']:.3f} / {t['mmlu_cloze_accuracy']:.3f} | {gaps[-1]:+.3f} |")
    torch.set_num_threads(2)
    original, tok = load_model(built[(args.organism, 0)])
    twins = [load_model(built[(organism.retain_twin(args.organism), s)])[0] for s in range(args.seeds)]
    members, nonmembers = [r.text for r in corpus.forget], [r.text for r in corpus.holdout]
    aucs = [mia(t, tok, members, nonmembers).auc for t in twins]
    other = []
    for s in range(1, args.seeds):
        res = depth.run({"original": (original, tok), "edited": (twins[s], tok), "twin": (twins[0], tok)}, corpus,
                        depth.DepthConfig())
        gap = {a: abs(aucs[s][a] - aucs[0][a]) for a in aucs[s] if a in aucs[0]}
        other.append(f"| {s} | {res['per_model']['edited']['uds']:.3f} | "
                     f"{res['per_model']['edited']['uds_all_positions']:.3f} | "
                     f"{max(gap.values()):.3f} ({max(gap, key=gap.get)}) | "
                     + ", ".join(f"{a} {v:.3f}" for a, v in sorted(aucs[s].items())) + " |")
    text = (f"### Like-for-like: original and twin of `{args.organism}` over {args.seeds} fine-tune seeds\n\n"
            "One base; each seed fine-tunes an original and its twin with the same data order. Recall and cloze MMLU "
            "(0-shot) as original / twin.\n\n"
            "| seed | forget recall | retain recall | holdout recall | cloze MMLU | MMLU gap |\n|---|---|---|---|---|---|\n"
            + "\n".join(rows)
            + f"\n\nMMLU gap (original - twin): mean {np.mean(gaps):+.3f}, sd {np.std(gaps, ddof=1) if len(gaps) > 1 else 0:.3f}, "
              f"largest |gap| {max(abs(g) for g in gaps):.3f}.\n\n"
            f"Run-to-run spread of a model that never saw the forget set: twin of seed s against seed 0's pair (UDS "
            f"with seed 0's twin as stage 1; membership AUC distance from seed 0's twin; seed 0's twin AUCs "
            + ", ".join(f"{a} {v:.3f}" for a, v in sorted(aucs[0].items())) + ").\n\n"
            "| seed | UDS | UDS (all positions) | largest AUC distance | AUCs |\n|---|---|---|---|---|\n"
            + "\n".join(other) + f"\n\n{time.perf_counter() - t0:.0f} s on this machine.\n")
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
