"""Editors: optimizer steps per second with the frozen reference cached once (cache_reference=True) vs a frozen
copy of the model recomputing it every step (False). Same model, data, seed and steps; the trained weights of the
two runs must agree (max abs diff <= TOL) before the ratio counts.

RMU's reference = layer-l activations of the frozen model on forget and retain batches; joint loss with
retain_loss="kl" = the frozen model's log-probs on retain batches (with the default retain_loss="ce" joint has no
frozen reference, so caching cannot matter there).

The profile column says why a ratio is what it is: in the frozen-copy run, the seconds spent in the frozen
model's forwards (`Reference.get`) per step over the step's seconds. Removing that share alone gives
1 / (1 - share); a measured ratio above it means the cached run saves more than the time inside those forwards,
or is the noise of a 10-step timer.
"""
from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path

from . import TOL, Section, goal, measure, table

CASES = {"rmu": {}, "joint": {"retain_loss": "kl"}}


def run_case(model, tok, corpus, method: str, extra: dict, cache: bool, steps: int, out: Path):
    """The trained model, the run's summary, wall seconds, peak MiB and the seconds spent in Reference.get."""
    from workbench.editors.loop import Reference

    m = copy.deepcopy(model)
    cfg = {**extra, "max_steps": steps, "cache_reference": cache, "eval_size": 4, "keep_best": False,
           "checkpoint_every": 10 ** 6}
    spent = [0.0]
    get = Reference.get

    def timed_get(self, split, batch):
        t0 = time.perf_counter()
        try:
            return get(self, split, batch)
        finally:
            spent[0] += time.perf_counter() - t0
    Reference.get = timed_get
    try:
        path, dt, mib = measure(lambda: __import__("workbench.editors", fromlist=["unlearn"]).unlearn(
            m, tok, corpus, method, [2, 3], cfg, out / f"{method}-{cache}"))
    finally:
        Reference.get = get
    summary = json.loads((path / "unlearn.json").read_text())["summary"]
    return m, summary, dt, mib, spent[0]


def run(quick: bool = False, log=print) -> Section:
    from workbench import harness

    model, tok, corpus = harness.load_organism("micro")
    steps = 3 if quick else 10
    rows, goals = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for method, extra in CASES.items():
            log(f"editors: {method}")
            res = {c: run_case(model, tok, corpus, method, extra, c, steps, Path(tmp)) for c in (False, True)}
            diff = max(float((a - b).abs().max()) for a, b in zip(res[True][0].state_dict().values(),
                                                                  res[False][0].state_dict().values()))
            sps = {c: 1.0 / res[c][1]["mean_step_seconds"] for c in res}
            frozen = res[False][1]
            share = res[False][4] / (frozen["mean_step_seconds"] * frozen["steps"])
            for c in (False, True):
                s = res[c][1]
                rows.append([method + (" (kl)" if extra else ""), "cached" if c else "frozen copy", s["steps"],
                             sps[c], s["reference_seconds"], s["reference_cache_bytes"] / 2 ** 20, res[c][2],
                             res[c][3], f"{diff:.2e}", f"{share:.0%}" if not c else ""])
            goals.append(goal(f"{method}: steps/s cached vs frozen copy", sps[True] / sps[False], 1.5, diff <= TOL,
                              f"frozen forwards {share:.0%} of a step: removing them alone gives "
                              f"{1 / max(1 - share, 1e-9):.2f}x"))
    md = ("### Editors: steps per second with the frozen reference cached vs recomputed\n\n"
          f"micro organism, layers [2, 3], {steps} optimizer steps each, defaults otherwise. steps/s from the loop's "
          "own per-step timer (excludes the one-off cache build, shown separately); wall s and peak MiB cover the "
          "whole `unlearn` call (cache build, training, final eval, save). Peak MiB with the frozen copy includes "
          "the deep copy of the model.\n\n"
          + table(["editor", "reference", "steps", "steps/s", "cache build s", "cache MiB", "wall s", "peak MiB",
                   "max abs diff of trained weights", "frozen forwards / step"], rows))
    return Section("Editors", md, goals)
