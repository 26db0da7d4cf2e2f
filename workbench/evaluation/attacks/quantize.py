"""The quantisation attack (Zhang et al., ICLR 2025, arXiv 2410.16454): round every linear layer's weights to a few
bits and see whether forgotten answers come back.

Unlearning with a small learning rate moves each weight by far less than one quantisation step, so rounding the edited
weights can land them on the same grid points as the original's, and the original's answers with them; the paper saw
forget-set knowledge rise from 21% to 83% at 4 bits.

Round-to-nearest, group-wise, asymmetric (min-max) quantisation, in torch so it runs on a CPU: each row of a weight
[out, in] is cut into groups of `group` consecutive inputs (the last group of a row may be shorter); a group's
2**bits levels span its min..max, and each weight becomes its nearest level (stored back in the weight's dtype, so
the model runs unchanged: "fake" quantisation, the arithmetic of a real int kernel's weights).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ...errors import ConfigError
from .recall import encode_qa, score


def quantize_weight(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """w [out, in] rounded to `bits`-bit levels per group of `group` inputs; returns a new tensor of w's dtype."""
    if not 1 <= bits <= 16:
        raise ConfigError(f"quantisation bits must be between 1 and 16, got {bits}")
    if group < 1:
        raise ConfigError(f"quantisation group size must be >= 1, got {group}")
    levels = 2 ** bits - 1
    out = torch.empty_like(w)
    for s in range(0, w.shape[1], group):
        g = w[:, s:s + group].float()                                  # [out, group]
        lo, hi = g.min(-1, keepdim=True).values, g.max(-1, keepdim=True).values  # [out, 1]
        step = ((hi - lo) / levels).clamp(min=torch.finfo(torch.float32).tiny)
        q = torch.round((g - lo) / step).clamp(0, levels)             # [out, group] integer levels
        out[:, s:s + group] = (lo + q * step).to(w.dtype)
    return out


def step_size(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """[out, in]: the quantisation step of the group each weight belongs to."""
    out = torch.empty_like(w, dtype=torch.float32)
    for s in range(0, w.shape[1], group):
        g = w[:, s:s + group].float()
        out[:, s:s + group] = (g.max(-1, keepdim=True).values - g.min(-1, keepdim=True).values) / (2 ** bits - 1)
    return out


def linear_layers(model) -> dict[str, torch.nn.Linear]:
    """Every nn.Linear of the model (attention and MLP projections of every block, and the unembedding)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@torch.no_grad()
def quantized(model, bits: int, group: int = 128):
    """A copy of `model` with every linear layer's weight rounded (biases and norms stay in full precision)."""
    q = copy.deepcopy(model)
    for mod in linear_layers(q).values():
        mod.weight.copy_(quantize_weight(mod.weight, bits, group))
    return q


@dataclass
class QuantizeConfig:
    bits: tuple[int, ...] = (8, 4, 3)
    groups: tuple[int, ...] = (32, 128)

    def __post_init__(self):
        self.bits = (self.bits,) if isinstance(self.bits, int) else tuple(self.bits)
        self.groups = (self.groups,) if isinstance(self.groups, int) else tuple(self.groups)
        if not self.bits or any(not 1 <= b <= 16 for b in self.bits):
            raise ConfigError(f"quantize bits {list(self.bits)}: expected one or more bit widths between 1 and 16")
        if not self.groups or any(g < 1 for g in self.groups):
            raise ConfigError(f"quantize groups {list(self.groups)}: expected one or more group sizes >= 1 input")


def run_model(model, tok, corpus, cfg: QuantizeConfig) -> dict:
    """Forget and retain recall of `model` unquantised and at every (bits, group) of the grid; recovery at each =
    forget recall gained."""
    forget, retain = encode_qa(tok, corpus.forget), encode_qa(tok, corpus.retain)
    before = {"forget": score(model, tok, forget).recall, "retain": score(model, tok, retain).recall}
    after = {}
    for bits in cfg.bits:
        for group in cfg.groups:
            q = quantized(model, bits, group)
            after[f"{bits}-bit, group {group}"] = {"forget": score(q, tok, forget).recall,
                                                   "retain": score(q, tok, retain).recall}
    return {"before": before, "after": after,
            "by_setting": {s: a["forget"] - before["forget"] for s, a in after.items()}}


def run(models: dict, corpus, cfg: QuantizeConfig, layers=None, progress: bool = False) -> dict:
    return {"per_model": {n: run_model(m, tok, corpus, cfg) for n, (m, tok) in models.items()}}
