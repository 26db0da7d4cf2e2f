"""The shared loop across several processes (`accelerate launch`): data parallel, with one process's result.

The config's batch stays the global batch. Every process collates the whole micro-batch (cheap), runs the model on
its contiguous share of the rows (`RowSharded`), and the outputs the editors read (logits, a layer's activations)
are gathered, so every process computes the loss of the whole micro-batch, exactly as one process would: losses that
are means over a batch's tokens, the joint loss's adaptive weight and calibrated forgetting's targets come out the
same, and so do the logged statistics. In the backward pass each process keeps the gradient of its own rows
(every process computes the same loss from the same gathered rows, so that gradient is already the whole one)
times the number of processes, which DDP and FSDP average away: the summed gradient is the one-process gradient up
to the order of floating-point additions. Adding processes changes the speed, never the result (to ~1e-6).

Wrappers, by accelerate's config (`configs/accelerate/`): DDP (MULTI_CPU / MULTI_GPU) wraps the model itself;
FSDP2 (`fsdp_version: 2`) shards a copy of it into DTensors, and the loop copies the trained weights into the model
before every evaluation and at the end, so evaluation and saving see a whole model, as in one process. Checkpoints
hold whole tensors (a resume shards them again), so a run may resume with another wrapper or number of processes.
`check_wrapper` names what is refused. A hook-based editor registers its hooks on the unwrapped model (`unwrap`),
and an editor's hook that stops the forward early (RMU) lets a wrapped forward run to its end: DDP and FSDP set up
their gradient synchronisation when the forward returns.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch

from ..errors import EditError


class _GatherRows(torch.autograd.Function):
    """Forward: every process's rows, concatenated in process order and cut to the batch. Backward: this process's
    rows of the incoming gradient times the number of processes (see the module docstring)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, n_rows: int, rank: int, world: int) -> torch.Tensor:
        from accelerate.utils import gather

        ctx.rank, ctx.world, ctx.chunk = rank, world, local.shape[0]
        return gather(local.contiguous())[:n_rows]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = ctx.world * ctx.chunk
        padded = torch.cat([grad, grad.new_zeros((total - grad.shape[0],) + tuple(grad.shape[1:]))])
        mine = padded[ctx.rank * ctx.chunk:(ctx.rank + 1) * ctx.chunk]
        return mine * ctx.world, None, None, None


class _Rows:
    """A forward's output on this process's rows; `.logits` (and `gather` of any per-row tensor) is the batch's."""

    def __init__(self, output, n_rows: int, rank: int, world: int):
        self.output, self.n_rows, self.rank, self.world = output, n_rows, rank, world
        self._logits = None

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        return _GatherRows.apply(local, self.n_rows, self.rank, self.world)

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            self._logits = self.gather(self.output.logits)
        return self._logits


class RowSharded:
    """The model as the editors see it in a multi-process run: called on a whole batch, it runs the wrapped model
    on this process's rows and returns `_Rows`. Rows are split contiguously, ceil(batch / processes) per process; a
    process left with fewer repeats its first row (or the batch's first) to keep every process's forward the same
    shape, and those rows are dropped when gathering, so they get no gradient."""

    def __init__(self, wrapped, base, rank: int, world: int):
        self.wrapped, self.base, self.rank, self.world = wrapped, base, rank, world

    def rows(self, n: int) -> list[int]:
        chunk = -(-n // self.world)
        mine = list(range(self.rank * chunk, min((self.rank + 1) * chunk, n)))
        return mine + [mine[0] if mine else 0] * (chunk - len(mine))

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw) -> _Rows:
        n = input_ids.shape[0]
        idx = torch.tensor(self.rows(n), device=input_ids.device)
        mask = None if attention_mask is None else attention_mask[idx]
        out = self.wrapped(input_ids=input_ids[idx], attention_mask=mask, **kw)
        return _Rows(out, n, self.rank, self.world)

    # what editors and calibration read of a model besides its forward
    @property
    def config(self):
        return self.base.config

    @property
    def training(self) -> bool:
        return self.base.training

    def train(self, mode: bool = True):
        self.wrapped.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def parameters(self):
        return self.base.parameters()


def unwrap(model):
    """The module whose submodules hold the layers: the model itself, or what a multi-process run wraps."""
    return model.base if isinstance(model, RowSharded) else model


def check_wrapper(kind: str, fsdp_version: int | None, mixed_precision: str) -> None:
    """DDP (MULTI_CPU, MULTI_GPU) and FSDP2 are supported. Refused, named: accelerate's mixed precision (the editors
    take their dtype from their config, so that a launch computes what one process computes), FSDP version 1, and
    DeepSpeed (its engine owns the optimizer step, gradient clipping and checkpoint format)."""
    if mixed_precision != "no":
        raise EditError(f"accelerate mixed_precision={mixed_precision!r}: the editors take their dtype from their "
                        "config (--dtype bfloat16), so that several processes compute what one does; launch with "
                        "mixed_precision 'no' (configs/accelerate/*.yaml)")
    if kind == "FSDP" and fsdp_version != 2:
        raise EditError(f"FSDP version {fsdp_version} is not supported by the editors' loop; set fsdp_version: 2 in "
                        "the accelerate config (configs/accelerate/fsdp.yaml)")
    if kind == "DEEPSPEED":
        raise EditError("DeepSpeed is not supported by the editors' loop (its engine owns the optimizer step, "
                        "gradient clipping and checkpoint format, which the loop needs to give one process's result "
                        "and to resume); use configs/accelerate/fsdp.yaml (FSDP2 shards parameters, gradients and "
                        "optimizer state, as ZeRO-3 does) or configs/accelerate/ddp.yaml")
    if kind not in ("MULTI_CPU", "MULTI_GPU", "FSDP"):
        raise EditError(f"accelerate distributed type {kind} is not supported by the editors' loop; expected DDP "
                        "(several CPU or GPU processes, configs/accelerate/ddp.yaml) or FSDP2 (fsdp.yaml)")


class Parallel:
    """accelerate's Accelerator for the loop: wraps the model with the first optimizer, and holds what the loop does
    differently across processes (backward, gradient sync, whole tensors for checkpoints)."""

    def __init__(self):
        from accelerate import Accelerator

        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        plugin = self.acc.state.fsdp_plugin if self.acc.distributed_type == "FSDP" else None
        check_wrapper(self.acc.distributed_type.value, getattr(plugin, "fsdp_version", None),
                      str(self.acc.mixed_precision))
        self.forward: RowSharded | None = None

    def prepare(self, model, names: list[str], make_opt) -> tuple[dict[str, torch.nn.Parameter], Any]:
        """Wrap `model` (DDP) or a copy of it (FSDP2: the model itself stays whole, for evaluation and saving) with
        the optimizer `make_opt(trainable)` builds; returns the parameters the optimizer updates, by name, and the
        optimizer (accelerate re-points it at FSDP2's sharded parameters)."""
        from accelerate.utils import DistributedType

        target = copy.deepcopy(model) if self.acc.distributed_type == DistributedType.FSDP else model
        trainable = dict(target.named_parameters())
        wrapped, opt = self.acc.prepare(target, make_opt({n: trainable[n] for n in names}))
        base = self.acc.unwrap_model(wrapped)
        named = dict(base.named_parameters())
        missing = [n for n in names if n not in named]
        if missing:
            raise EditError(f"after wrapping for {self.acc.distributed_type}, the model has no parameter(s) "
                            f"{missing[:3]}; parameter names must survive the wrapper")
        self.forward = RowSharded(wrapped, base, self.acc.process_index, self.acc.num_processes)
        return {n: named[n] for n in names}, opt

    def no_sync(self, sync: bool):
        """No gradient synchronisation inside the block unless `sync` (the last micro-batch of a step)."""
        return contextlib.nullcontext() if sync else self.acc.no_sync(self.forward.wrapped)

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
        return self.whole(self.acc.clip_grad_norm_(params, max_norm))

    @torch.no_grad()
    def copy_into(self, params: dict[str, torch.nn.Parameter], live: dict[str, torch.nn.Parameter]) -> None:
        """The trained weights (`live`) into the model's own parameters, where they are other tensors (FSDP2)."""
        for n, p in params.items():
            if live[n] is not p:
                p.copy_(self.whole(live[n].detach()))

    @staticmethod
    def whole(obj):
        """`obj` with every DTensor (an FSDP2 shard) replaced by the whole tensor (a collective: every process calls
        it on the same structure); everything else as it is."""
        from torch.distributed.tensor import DTensor

        if isinstance(obj, DTensor):
            return obj.full_tensor()
        if isinstance(obj, dict):
            return {k: Parallel.whole(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(Parallel.whole(v) for v in obj)
        return obj

    @staticmethod
    def like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """`full` laid out as `param`: this process's shard when `param` is a DTensor, else `full` on its device."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        if isinstance(param, DTensor):
            return distribute_tensor(full.to(param.device), param.device_mesh, param.placements)
        return full.to(param.device)

    @staticmethod
    def optimizer_state_like(state: dict, params: list[torch.Tensor]) -> dict:
        """An optimizer state dict of whole tensors (a checkpoint's) with each parameter's tensors laid out as that
        parameter (`like`); the 0-d step counters stay as they are."""
        out = dict(state)
        out["state"] = {i: {k: Parallel.like(v, params[i]) if torch.is_tensor(v) and v.dim() > 0 else v
                            for k, v in s.items()} for i, s in state["state"].items()}
        return out
