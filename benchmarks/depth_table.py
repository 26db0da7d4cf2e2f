"""python -m benchmarks.depth_table [--out PATH]: the README's depth-of-forgetting table.

Every "organism" preset (and the joint editor without calibration) edits the default organism at the layers the
pipeline selects, [0, 1, 2]; each edit, the original and the retain-only twin then meet three recovery attacks
(workbench.evaluation.attacks): relearning on half the forget facts for 10 steps, 4-bit quantisation and the
layer-wise readouts (logit lens, retain-trained probe). Recovery = forget recall after the attack minus before;
an edit whose recovery exceeds the twin's by more than 0.1 hid the answers rather than removing them. Beside them,
forget / retain QA recall and the loss-attack AUC (forget vs held-out documents). Prints a markdown table and
writes it to PATH (default runs/depth_table.md). About 10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

EDITS = (("joint", "organism"), ("joint", "organism-uncalibrated"), ("rmu", "organism"),
         ("adaptive-rmu", "organism"), ("graddiff", "organism"), ("npo", "organism"), ("sequential", "organism"))
LAYERS = [0, 1, 2]


def row(name: str, model, tok, corpus) -> dict:
    from workbench.data.records import questions
    from workbench.evaluation.attacks import recoveries, run_attacks
    from workbench.generation import qa_accuracy
    from workbench.evaluation.mia import mia

    # the three attacks act on each model alone: this one goes in the original's slot
    rec = recoveries(run_attacks(("relearn", "quantize", "lens"), {"original": (model, tok)}, corpus))
    auc = mia(model, tok, [r.text for r in corpus.forget], [r.text for r in corpus.holdout]).auc["loss"]
    return {"model": name, "forget": qa_accuracy(model, tok, questions(corpus.forget)),
            "retain": qa_accuracy(model, tok, questions(corpus.retain)), "auc": auc,
            **{a: rec[a]["original"] for a in ("relearn", "quantize", "lens")}}


def main() -> None:
    import torch

    from workbench import harness, organism
    from workbench.editors import unlearn
    from workbench.harness import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/depth_table.md")
    args = ap.parse_args()
    torch.manual_seed(0)
    model0, tok, corpus = harness.load_organism("default")
    twin = organism.retain_twin("default")
    organism.build(twin, progress=False)
    rows = [row("original", model0, tok, corpus), row("retain-only twin", *load_model(f"organism:{twin}"), corpus)]
    for method, preset in EDITS:
        t0 = time.perf_counter()
        model = copy.deepcopy(model0)
        with tempfile.TemporaryDirectory() as tmp:
            unlearn(model, tok, corpus, method, LAYERS, {"seed": 0}, Path(tmp) / "edited", preset=preset)
        rows.append({**row(f"{method} `{preset}`", model.eval(), tok, corpus),
                     "seconds": round(time.perf_counter() - t0)})
        print(rows[-1], flush=True)
    lines = ["| model | forget | retain | loss AUC | relearn (10 steps) | 4-bit | lens | edit s |", "|---|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['model']} | {r['forget']:.2f} | {r['retain']:.2f} | {r['auc']:.2f} | {r['relearn']:+.2f} | "
                     f"{r['quantize']:+.2f} | {r['lens']:+.2f} | {r.get('seconds', '')} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
