"""SHA256's joint loss (SemEval-2025 Task 4): -CE(forget answers) + m * CE(retain answers), layer-constrained.

m = m_init (1.2) during epoch 0, whose retain losses give a baseline mean; afterwards, per step,
if the retain loss exceeds that mean by dL > 0: m = clip(round(0.3 * 6**dL + 0.8, 1), m_init, m_max)
(m_max 2.3 in the released code, 2.8 in the paper), else m = m_init.

Freezing modes (both readings of the paper, clearly named):
  train-mlp-only  only the MLP of the selected layers trains (the released code)
  freeze-mlp      the MLP of the selected layers is frozen and their attention trains (the paper's text);
                  layers outside the selection stay frozen too
retain_loss="kl" replaces the retain CE by KL(p_ref || p) on the retain answer tokens, p_ref the frozen
model's next-token distribution (cached once before training).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import LoopConfig
from .gradient import answer_nll, mean_ce
from .loop import Editor

@dataclass
class JointConfig(LoopConfig):
    """SHA256 joint loss: -CE(forget answers) + m * CE(retain answers) (or m * KL to the frozen reference)."""
    lr: float = 5e-3
    epochs: int = 8
    batch_size: int = 8
    freeze_mode: str = "train-mlp-only"  # or "freeze-mlp": in the selected layers only attention trains
    retain_loss: str = "ce"              # "ce" | "kl"
    m_init: float = 1.2
    m_max: float = 2.3                    # released code; the paper text says 2.8
    forget_floor: float | None = 3.0      # stop pushing a forget token's CE above this (None: unbounded ascent)
    params: tuple[str, ...] | None = None  # overrides freeze_mode when set

    def check(self, need) -> None:
        super().check(need)
        need(self.freeze_mode in ("freeze-mlp", "train-mlp-only"),
             f"freeze_mode must be 'freeze-mlp' or 'train-mlp-only', got {self.freeze_mode!r}")
        need(self.retain_loss in ("ce", "kl"), f"retain_loss must be 'ce' or 'kl', got {self.retain_loss!r}")
        need(1.0 <= self.m_init <= self.m_max, "need 1 <= m_init <= m_max")


FREEZE_PATTERNS = {
    "train-mlp-only": ("model.layers.{layer}.mlp.*",),
    "freeze-mlp": ("model.layers.{layer}.self_attn.*",),
}


def adaptive_m(retain_loss: float, epoch0_mean: float | None, m_init: float = 1.2, m_max: float = 2.3) -> float:
    """SHA256's retain weight: m_init until a baseline exists or while the retain loss is at/below it."""
    if epoch0_mean is None:
        return m_init
    dl = retain_loss - epoch0_mean
    if dl <= 0:
        return m_init
    return min(max(round(0.3 * 6.0 ** dl + 0.8, 1), m_init), m_max)


def answer_kl(logits: torch.Tensor, ref_logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of KL(p_ref || p). logits, ref_logp: [batch, pos, vocab] (ref_logp already
    log-softmaxed, aligned with logits), labels [batch, pos]."""
    mask = labels[:, 1:] != -100                        # [batch, pos-1]
    logp = F.log_softmax(logits[:, :-1].float(), -1)     # [batch, pos-1, vocab]
    ref = ref_logp[:, :-1].float()
    kl = (ref.exp() * (ref - logp)).sum(-1)              # [batch, pos-1]
    return (kl * mask).sum() / mask.sum().clamp(min=1)


class Joint(Editor):
    name = "joint"
    Config = JointConfig
    defaults = {}
    # sha256 / sha256-paper: the SHA256 team's released code / paper text. organism: the pipeline's default edit,
    # tuned on the default organism; it calibrates (editors/calibration.py): it matches the forget documents' loss
    # and Min-K%++ statistics to never-seen documents', with a KL anchor (half never-seen documents, half the
    # organism's general text) that keeps held-out losses and general knowledge where they were. localize: a
    # trajectory gradual enough that `workbench localize` resolves its forget/retain trade-off step by step.
    presets = {"organism": dict(retain_loss="kl", m_init=5.0, m_max=10.0, lr=1e-3, epochs=60, eval_every=30,
                                calibrate=True, calibration_anchor=4.0, calibration_anchor_batch=32,
                                calibration_refresh=10, calibration_statistics=("loss", "min_k_pp")),
               "organism-uncalibrated": dict(retain_loss="kl", m_init=5.0, m_max=10.0, epochs=30),
               "sha256": dict(lr=1.5e-5, batch_size=12, grad_accum=10, epochs=8, freeze_mode="train-mlp-only",
                              m_max=2.3, forget_floor=None, eval_metric="loss"),
               "sha256-paper": dict(lr=1.5e-5, batch_size=12, grad_accum=10, epochs=8, freeze_mode="freeze-mlp",
                                    m_max=2.8, forget_floor=None, eval_metric="loss"),
               "localize": dict(retain_loss="kl", m_init=5.0, m_max=10.0, lr=2e-3, epochs=12)}
    uses = ("forget", "retain")

    def __init__(self, model, cfg, layers):
        super().__init__(model, cfg, layers)
        self.epoch = 0
        self.epoch0: list[float] = []   # retain losses seen in epoch 0
        self.m = cfg.m_init

    def param_patterns(self):
        return list(self.cfg.params) if self.cfg.params else list(FREEZE_PATTERNS[self.cfg.freeze_mode])

    def reference_fns(self):
        if self.cfg.retain_loss != "kl":
            return {}
        return {"retain": lambda m, b: F.log_softmax(
            m(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits.float(), -1)}

    def start_epoch(self, epoch):
        self.epoch = epoch

    def baseline(self) -> float | None:
        return sum(self.epoch0) / len(self.epoch0) if self.epoch > 0 and self.epoch0 else None

    def loss(self, batch):
        f, r = batch["forget"], batch["retain"]
        nll_f, mask_f = answer_nll(self.model, f)
        forget_ce = mean_ce(nll_f, mask_f, self.cfg.forget_floor)
        if self.cfg.retain_loss == "kl":
            logits = self.model(input_ids=r.input_ids, attention_mask=r.attention_mask, use_cache=False).logits
            retain = answer_kl(logits, self.ref.get("retain", r), r.labels)
        else:
            retain = mean_ce(*answer_nll(self.model, r))
        if self.epoch == 0:
            self.epoch0.append(retain.item())
            self.m = self.cfg.m_init
        else:
            self.m = adaptive_m(retain.item(), self.baseline(), self.cfg.m_init, self.cfg.m_max)
        stats = {"forget_loss": mean_ce(nll_f, mask_f).item(), "retain_loss": retain.item(), "m": self.m}
        return -forget_ce + self.m * retain, stats

    def state_dict(self):
        return {"epoch": self.epoch, "epoch0": list(self.epoch0), "m": self.m}

    def load_state_dict(self, state):
        self.epoch, self.epoch0, self.m = state["epoch"], list(state["epoch0"]), state["m"]

    def describe(self):
        return {"freeze_mode": self.cfg.freeze_mode, "retain_loss": self.cfg.retain_loss, "m_max": self.cfg.m_max}
