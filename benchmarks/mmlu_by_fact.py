"""python -m benchmarks.mmlu_by_fact [--seeds 1]: is the default edit's general knowledge more than the training
questions recited?

The editors' general text (organism.load_corpus) is what the organism read: the world's sentences and its training
questions. Two thirds of the MMLU test questions ask a fact the general text also holds as a training question; a
third ask facts it holds only as sentences, which only knowledge learnt from the sentences answers. This prints the
0-shot cloze accuracy on all test questions and on each part, for the original, its retain-only twin, twins of
other fine-tune seeds (`default-ft{s}-retain`, as `benchmarks.twin_spread` builds them) and undo's organism preset
at the layers `workbench run` selects ([0, 1, 2]).
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path


def main(argv=None) -> None:
    from workbench import harness, organism
    from workbench.editors import unlearn
    from workbench.evaluation.mmlu import evaluate_mmlu
    from workbench.harness import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1", help="comma-separated fine-tune seeds of the other twins (default 1)")
    args = ap.parse_args(argv)
    original, tok, corpus = harness.load_organism("default")
    source = organism.build("default", progress=False)
    asked_as_question = {(q.subject, q.question) for q in corpus.mmlu if q.split == "train"}
    dev = [q for q in corpus.mmlu if q.split == "dev"]
    test = [q for q in corpus.mmlu if q.split == "test"]
    parts = {"all": test, "asked as a training question": [q for q in test if (q.subject, q.question) in asked_as_question],
             "held only as sentences": [q for q in test if (q.subject, q.question) not in asked_as_question]}
    models = {"original": original, "twin": load_model(organism.build("default-retain", progress=False))[0]}
    for seed in map(int, args.seeds.split(",")):
        cfg = organism.with_overrides("default-retain", name=f"default-ft{seed}-retain", finetune_seed=seed)
        models[f"twin of seed {seed}"] = load_model(organism.build(cfg, progress=False))[0]
    edited = copy.deepcopy(original)
    edited.name_or_path = str(source)   # undo's base "auto" reads organism.json beside the source
    with tempfile.TemporaryDirectory() as tmp:
        path = unlearn(edited, tok, corpus, "undo", [0, 1, 2], {"seed": 0}, Path(tmp) / "edited", preset="organism",
                       source=source, progress=False)
        models["undo (the default edit)"] = load_model(path)[0]
    print("| model | " + " | ".join(f"{k} ({len(v)})" for k, v in parts.items()) + " |\n|---|---|---|---|")
    for name, model in models.items():
        acc = {k: evaluate_mmlu(model, tok, qs + dev, shots=0, formulation="cloze").accuracy for k, qs in parts.items()}
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in acc.values()) + " |", flush=True)
        print(json.dumps({"model": name, **acc}))


if __name__ == "__main__":
    main()
