"""The deep editor on micro (undo): it forgets and keeps like the calibrated joint loss, and relearning brings back
less of what it removed than of what the calibrated joint loss removed (the direction of the default organism's
editors table). Both edit micro's last two layers, where the joint loss's edit is shallow: measured, it forgets to
0.08 and relearning at lr 1e-3 for 10 steps brings back 0.31 of the other half (4 of 13 facts), against the twin's
0.00. undo, reset to the base and retrained on the kept records, must come back at least 0.1 less.

Relearning is the verdict's attack at a reduced grid (lr 1e-3, 10 and 30 steps, every parameter): each edited
model is fine-tuned on half its forget facts and the recall of the other half is measured, next to the twin, which
keeps every setting admissible here (it recovers nothing)."""
from __future__ import annotations

import copy

import pytest

from workbench.data.records import questions
from workbench.editors import unlearn
from workbench.evaluation.attacks import grid, relearn
from workbench.generation import qa_accuracy
from workbench.harness import load_model

CALIBRATED_JOINT = {"retain_loss": "kl", "m_init": 5.0, "m_max": 10.0, "epochs": 20, "lr": 2e-3, "eval_every": 10,
                    "calibrate": True}
GRID = relearn.RelearnConfig(lrs=(1e-3,), steps=(10, 30), scopes=("all",))


@pytest.fixture(scope="module")
def recoveries(micro, micro_retain, tmp_path_factory):
    model0, tok, corpus = micro
    out = {}
    for name, method, config in (("joint", "joint", CALIBRATED_JOINT), ("undo", "undo", None)):
        model = copy.deepcopy(model0)
        path = unlearn(model, tok, corpus, method, [2, 3], config, tmp_path_factory.mktemp(name) / "e",
                       progress=False)
        edited, _ = load_model(path)
        res = grid.judge(relearn.run({"edited": (edited, tok), "twin": (micro_retain[0], tok)}, corpus, GRID))
        out[name] = {"forget": qa_accuracy(edited, tok, questions(corpus.forget)),
                     "retain": qa_accuracy(edited, tok, questions(corpus.retain)),
                     "recovery": res["per_model"]["edited"]["recovery"], "admissible": res["admissible"]}
    return out


@pytest.mark.slow
def test_deep_editors_forget_keep_and_come_back_less_than_the_calibrated_joint_loss(recoveries):
    for name, r in recoveries.items():
        assert r["forget"] <= 0.2 and r["retain"] >= 0.8, (name, r)
        assert all(r["admissible"]), (name, r)
    joint = recoveries["joint"]["recovery"]
    assert joint >= 0.15, recoveries                               # the shallow edit: its answers come back
    assert recoveries["undo"]["recovery"] <= joint - 0.1, recoveries
