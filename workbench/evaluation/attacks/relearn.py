"""The relearning attack (Hu et al., arXiv 2406.13356): fine-tune a copy on a little related data and see whether
the forgotten answers it was *not* shown come back.

The forget set's QA facts are split in two by a seeded shuffle. A copy of the model is fine-tuned for `steps`
optimizer steps on half A's answers; after every step, exact-match recall of half B (never trained on) is measured.
A model that only hides its answers regains B from A's gradient; a model that never knew B (the retain-only twin)
cannot guess random names and numbers. A second copy is fine-tuned the same way on retain QA only: benign fine-tuning
that should not bring B back either.

The fine-tuning is the editors' own loop (editors.loop.train) running the `gd` editor, which descends the answer
cross-entropy of the split it is given, on every parameter; AdamW, the loop's batching, gradient clipping and
per-step evaluation come with it. Its checkpoints and log go to a temporary directory, removed after.
"""
from __future__ import annotations

import copy
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...data.records import questions
from ...errors import ConfigError, EditError
from .recall import MAX_LEN, encode_qa, score


@dataclass
class RelearnConfig:
    steps: int = 10          # optimizer steps of each fine-tune (the curve runs 0..steps)
    # on the default organism 1e-3 already costs the original a quarter of the held-out half (recall 1.00 -> 0.77
    # in 10 steps) while 3e-4 leaves it and the twin where they were; micro, a quarter the size, takes 1e-3
    lr: float = 3e-4
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1:
            raise ConfigError(f"relearn steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"relearn lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"relearn batch_size must be >= 1, got {self.batch_size}")


def split_halves(records, seed: int) -> tuple[list, list]:
    """The forget QA records in two halves (A: fine-tuned on, B: measured), by a seeded shuffle."""
    qa = questions(records)
    if len(qa) < 2:
        raise EditError(f"the relearning attack needs at least 2 forget QA records (one to train, one to measure), "
                        f"got {len(qa)}")
    order = list(range(len(qa)))
    random.Random(seed).shuffle(order)
    half = len(qa) // 2
    return [qa[i] for i in order[:half]], [qa[i] for i in order[half:]]


def fine_tune_curve(model, tok, train_records, measure, cfg: RelearnConfig, progress: bool = False,
                    desc: str = "relearn") -> list[float]:
    """Recall of `measure` (encoded examples) before and after each of `cfg.steps` steps of fine-tuning a copy of
    `model` on `train_records` with the editors' loop: [steps + 1] values."""
    from ...editors import GradientConfig, build_phases
    from ...editors.loop import train
    from ...editors.params import freeze_all_but, select_parameters
    from ...provenance import JsonlLog

    if not questions(train_records):
        raise EditError(f"{desc}: no QA records to fine-tune on")
    attacked = copy.deepcopy(model)
    curve = [score(attacked, tok, measure).recall]
    cfg_loop = GradientConfig(lr=cfg.lr, batch_size=cfg.batch_size, epochs=cfg.steps, max_steps=cfg.steps,
                              params=("*",), keep_best=False, eval_every=1, checkpoint_every=cfg.steps,
                              seed=cfg.seed, max_len=MAX_LEN)
    phases = build_phases(attacked, "gd", cfg_loop, layers=[])
    params = select_parameters(attacked, ["*"], [])
    freeze_all_but(attacked, params)

    def evaluate():
        r = score(attacked, tok, measure).recall
        curve.append(r)
        return r, {"recall": r}

    data = {"retain": encode_qa(tok, train_records)}  # the gd editor descends on its "retain" split
    with tempfile.TemporaryDirectory(prefix="workbench-relearn-") as tmp:
        train(attacked, phases, data, cfg_loop, Path(tmp), pad_id=tok.pad_token_id, params=params,
              evaluate=evaluate, log=JsonlLog(Path(tmp) / "log.jsonl"), run_key={"attack": desc},
              progress=progress)
    return curve


def run(model, tok, corpus, cfg: RelearnConfig, progress: bool = False) -> dict:
    """Recall of forget half B along fine-tuning on forget half A, and along fine-tuning on retain QA only."""
    half_a, half_b = split_halves(corpus.forget, cfg.seed)
    measure = encode_qa(tok, half_b)
    forget_curve = fine_tune_curve(model, tok, half_a, measure, cfg, progress, "relearn:forget-half")
    retain_curve = fine_tune_curve(model, tok, corpus.retain, measure, cfg, progress, "relearn:retain")
    return {"n_train": len(half_a), "n_measured": len(half_b), "steps": list(range(cfg.steps + 1)),
            "forget_half": forget_curve, "retain_only": retain_curve,
            "before": forget_curve[0], "after": forget_curve[-1],
            "recovery": forget_curve[-1] - forget_curve[0],
            "recovery_retain_only": retain_curve[-1] - retain_curve[0]}


def figure(result: dict, importance=None):
    """Recall of the held-out forget half along fine-tuning, per model: on the other half (solid), on retain only
    (dotted)."""
    import plotly.graph_objects as go

    from . import COLORS, LABELS

    fig = go.Figure()
    for n, r in result["per_model"].items():
        fig.add_scatter(x=r["steps"], y=r["forget_half"], mode="lines+markers", name=f"{LABELS[n]}: forget half",
                        legendgroup=n, line=dict(color=COLORS[n]))
        fig.add_scatter(x=r["steps"], y=r["retain_only"], mode="lines", line=dict(dash="dot", color=COLORS[n]),
                        name=f"{LABELS[n]}: retain only", legendgroup=n)
    fig.update_layout(title="Relearning: recall of forget facts never fine-tuned on", xaxis_title="fine-tuning steps",
                      yaxis_title="exact-match recall", yaxis_range=[-0.02, 1.02], width=700, height=400)
    return fig
