"""RMU (Li et al. 2024, WMDP) and adaptive RMU (Dang et al. 2024): steer layer-l activations on forget data.

    forget loss = MSE(h^l(x_f), c * u_task)            u_task: fixed random unit vector per task
    retain loss = alpha * MSE(h^l(x_r), h_frozen^l(x_r))
    adaptive:   c = beta * mean over forget tokens of ||h_frozen^l(x_f)||_2

h^l is decoder layer l's output (the residual stream), read by a forward hook that
is registered for one forward only and then removed. The hook also stops the
forward right after layer l: nothing above l enters either loss, so the later
layers and the unembedding are never computed. Adaptive c is measured on the
*frozen* model over the whole forget set (the reference code uses the first batch
of the model being updated).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import sites
from ..errors import EditError
from ..models import decoder_layers
from ..provenance import stable_hash
from .config import LoopConfig
from .loop import Batch, Editor
from .parallel import RowSharded, unwrap


@dataclass
class RMUConfig(LoopConfig):
    """RMU (Li et al. 2024): steer layer-l activations on forget data to c*u, keep retain activations.

    Layer rule: the hook layer l is max(selected layers) unless `hook_layer` is set; the trained
    parameters are `params` expanded over the selected layers (a 3-layer window l-2..l reproduces WMDP)."""
    lr: float = 3e-2
    epochs: int = 12
    batch_size: int = 4
    max_grad_norm: float | None = None
    steering_coef: float = 100.0   # c (fixed); ignored when adaptive
    alpha: float = 10.0            # retain weight
    adaptive: bool = False
    beta: float = 3.0              # adaptive RMU: c = beta * mean ||h_frozen^l(x_forget)||
    hook_layer: int | None = None
    params: tuple[str, ...] = ("model.layers.{layer}.mlp.down_proj.weight",)

    def check(self, need) -> None:
        super().check(need)
        need(self.alpha >= 0 and self.steering_coef > 0 and self.beta > 0,
             "alpha >= 0, steering_coef > 0, beta > 0 required")
        need(self.hook_layer is None or self.hook_layer >= 0, f"hook_layer must be >= 0 or None, got {self.hook_layer}")


class _StopForward(Exception):
    """Raised by the capture hook once layer l has run: the rest of the forward is not needed."""


@contextmanager
def capture_layer(model, layer: int, stop: bool = True):
    """Forward hook on site resid_post.`layer` (decoder layer `layer`'s output); it lands in the yielded dict
    under "h"."""
    store: dict[str, torch.Tensor] = {}

    def hook(module, inputs, output):
        store["h"] = output[0] if isinstance(output, tuple) else output  # [batch, pos, d_model]
        if stop:
            raise _StopForward

    site = sites.locate(model, "resid_post", layer)   # decoder layer `layer`'s output: the residual stream h^l
    handle = site.module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def layer_output(model, batch: Batch, layer: int) -> torch.Tensor:
    """Decoder layer `layer`'s output on `batch`, with gradients if enabled. [batch, pos, d_model]

    On the loop's multi-process view of the model (editors/parallel.py) the hook sits on the unwrapped model's
    layer, the forward runs to its end (DDP and FSDP set up their gradient sync when their forward returns, which a
    forward stopped by an exception never does) and every process's rows are gathered."""
    sharded = isinstance(model, RowSharded)
    with capture_layer(unwrap(model), layer, stop=not sharded) as store:
        try:
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        except _StopForward:
            return store["h"]
    return out.gather(store["h"])


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the d_model entries of the tokens where mask is set (padding left out).
    a, b: [batch, pos, d_model]; mask: [batch, pos]."""
    per_token = (a.float() - b.float()).pow(2).mean(-1)  # [batch, pos]
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def control_vector(task: str, d_model: int, seed: int) -> torch.Tensor:
    """u ~ uniform[0,1)^d, normalised; one fixed vector per (task, seed), as the reference script draws it."""
    g = torch.Generator().manual_seed(int(stable_hash({"task": task, "seed": seed}), 16) % (2**63))
    u = torch.rand(d_model, generator=g)
    return u / u.norm()


class RMU(Editor):
    name = "rmu"
    Config = RMUConfig
    # alpha chosen on micro's validation view (data.records.validation_view) at layers 0-2: 10 forgets the validation
    # people (0.00) but keeps 0.44 of the retain answers, 30 keeps 0.96 and forgets to 0.07, 100 stops forgetting (0.53)
    defaults = {"alpha": 30.0}
    # wmdp: Li et al. 2024 (WMDP); organism: tuned on the default organism at the layers its trace selects;
    # localize: a trajectory gradual enough that `workbench localize` resolves its forget/retain trade-off step by step
    presets = {"organism": dict(epochs=160, lr=1e-2, steering_coef=300.0),
               "wmdp": dict(lr=5e-5, batch_size=4, epochs=1, max_steps=150, steering_coef=20.0, alpha=100.0,
                            max_grad_norm=None),
               "wmdp-zephyr": dict(lr=5e-5, batch_size=4, epochs=1, max_steps=150, steering_coef=6.5, alpha=1200.0,
                                   max_grad_norm=None),
               "localize": dict(lr=2e-2, epochs=30, steering_coef=300.0)}
    uses = ("forget", "retain")

    def __init__(self, model, cfg, layers):
        super().__init__(model, cfg, layers)
        n = len(decoder_layers(model))
        self.layer = cfg.hook_layer if cfg.hook_layer is not None else max(layers)
        if not 0 <= self.layer < n:
            raise EditError(f"RMU hook layer {self.layer} is out of range for a {n}-layer model")
        self.coef = cfg.steering_coef
        self.u: dict[str, torch.Tensor] = {}

    def reference_fns(self):
        fn = lambda m, b: layer_output(m, b, self.layer)
        # forget activations: for adaptive c and the cosine-to-frozen log; retain: the retain target
        return {"forget": fn, "retain": fn}

    def setup(self, ref, data):
        super().setup(ref, data)
        d_model = self.model.config.hidden_size
        self.u = {t: control_vector(t, d_model, self.cfg.seed) for t in sorted({e.task for e in data["forget"]})}
        if self.cfg.adaptive:
            if ref.cache:
                acts = ref.all("forget")
            else:  # measured once on the frozen copy
                from .loop import collate

                device = next(self.model.parameters()).device
                acts = [ref.get("forget", collate([e], ref.pad_id, device))[0] for e in data["forget"]]
            norms = torch.cat([a.float().norm(dim=-1) for a in acts])  # [all forget tokens]
            self.coef = self.cfg.beta * norms.mean().item()

    def loss(self, batch):
        f, r = batch["forget"], batch["retain"]
        h_f = layer_output(self.model, f, self.layer)  # [batch, pos, d_model]
        target = self.coef * torch.stack([self.u[t] for t in f.tasks]).to(h_f.device, h_f.dtype)[:, None, :]
        forget_loss = masked_mse(h_f, target.expand_as(h_f), f.attention_mask)
        h_r = layer_output(self.model, r, self.layer)
        h_r_frozen = self.ref.get("retain", r).to(h_r.dtype)
        retain_loss = self.cfg.alpha * masked_mse(h_r, h_r_frozen, r.attention_mask)
        with torch.no_grad():
            h_f_frozen = self.ref.get("forget", f).float()
            stats = {
                "forget_loss": forget_loss.item(), "retain_loss": retain_loss.item(), "c": self.coef,
                "forget_act_norm": masked_mean(h_f.float().norm(dim=-1), f.attention_mask).item(),
                "forget_frozen_norm": masked_mean(h_f_frozen.norm(dim=-1), f.attention_mask).item(),
                "forget_cos_frozen": masked_mean(F.cosine_similarity(h_f.float(), h_f_frozen, dim=-1),
                                                 f.attention_mask).item(),
                "retain_act_norm": masked_mean(h_r.float().norm(dim=-1), r.attention_mask).item(),
                "retain_cos_frozen": masked_mean(F.cosine_similarity(h_r.float(), h_r_frozen.float(), dim=-1),
                                                 r.attention_mask).item(),
            }
        return forget_loss + retain_loss, stats

    def describe(self):
        return {"hook_layer": self.layer, "steering_coef": self.coef, "adaptive": self.cfg.adaptive}

