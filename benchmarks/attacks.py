"""Recovery attacks (workbench.evaluation.attacks): wall time of all four, at their default worst-case grids, on the
original, an edited model and the retain-only twin of the default organism (micro with --quick); the budget is
3 minutes on 2 CPU cores, grids included.

The edited model here is a stand-in: the original with Gaussian noise in its last layer's MLP weights. The attacks'
work does not depend on what the edit did (same shapes, same records, fixed grids and fact counts), so an editor run
(a minute or more) would only lengthen the benchmark.

What makes the budget: recall is read from one teacher-forced forward per batch instead of generating; its equality
with greedy generation (the report's exact match) is checked on every model first, and the time of both is shown.
"""
from __future__ import annotations

import copy

import torch

from . import Section, goal, measure, table

BUDGET_S = 180.0


def stand_in_edit(model, sd: float = 0.25, seed: int = 0):
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.model.layers[-1].mlp.parameters():
            p.add_(torch.randn(p.shape, generator=g) * sd)
    return out


def run(quick: bool = False, log=print) -> Section:
    from workbench import harness
    from workbench.data.records import questions
    from workbench.evaluation.attacks import ATTACKS, AttackConfig, recoveries, run_attacks
    from workbench.evaluation.attacks.recall import encode_qa, score
    from workbench.generation import exact_match, greedy_generate

    name = "micro" if quick else "default"
    log(f"attacks: organism {name} and its twin")
    model, tok, corpus = harness.load_organism(name)
    twin = harness.load_organism(f"{name}-retain")[0]
    models = {"original": (model, tok), "edited": (stand_in_edit(model), tok), "twin": (twin, tok)}

    qa = questions(corpus.forget)
    same, t_forced, t_generated = True, 0.0, 0.0
    for m, _ in models.values():
        forced, t_f, _ = measure(lambda: score(m, tok, encode_qa(tok, qa)).exact.tolist())
        texts, t_g, _ = measure(lambda: greedy_generate(m, tok, [r.input for r in qa], 32))
        same &= forced == [exact_match(p, r.output) for p, r in zip(texts, qa)]
        t_forced, t_generated = t_forced + t_f, t_generated + t_g

    log("attacks: relearn, quantize, lens, depth")
    cfg = AttackConfig()
    res, wall, peak = measure(lambda: run_attacks(ATTACKS, models, corpus, cfg, layers=[0, 1, 2]))
    rec = recoveries(res)
    rows = [[a, res["seconds"][a]] + [f"{rec[a][m]:+.3f}" for m in res["models"]]
            + [f"{sum(res[a]['admissible'])} of {len(res[a]['admissible'])}" if a != "depth" else "UDS"]
            for a in ATTACKS]
    rows.append(["all four", wall, "", "", "", ""])
    r = cfg.relearn
    md = (f"### Recovery attacks on the {name} organism (original, stand-in edit, retain-only twin)\n\n"
          f"{len(qa)} forget QA records, {len(questions(corpus.retain))} retain QA records. Grids: relearn lr "
          f"{list(r.lrs)} x scopes {list(r.scopes)} measured after {list(r.steps)} steps, on 3 models; quantize "
          f"{list(cfg.quantize.bits)} bits x groups {list(cfg.quantize.groups)}; four readouts of every layer (own "
          f"and original decoder, probe, tuned lens); UDS stage 1 (cached after the first run) and stage 2 for every "
          f"model. Peak RSS delta {peak:.0f} MiB. Recall of the forget QA records on all three models: "
          f"teacher-forced {t_forced:.2f} s, greedy generation {t_generated:.2f} s, identical exact match: "
          f"{'yes' if same else 'NO'}.\n\n"
          + table(["attack", "seconds", "worst-case original", "worst-case edited", "worst-case twin",
                   "admissible settings"], rows))
    goals = [goal(f"attacks on the {name} organism within {BUDGET_S:.0f} s", BUDGET_S / wall, 1.0, same,
                  f"{wall:.1f} s wall; ratio = budget / wall")]
    return Section("Recovery attacks", md, goals)
