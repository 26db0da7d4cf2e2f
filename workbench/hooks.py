"""Torch forward hooks on named activation sites (workbench.sites resolves each name to its module).

    with hooks(model, {"mlp_out.3": lambda x: x * 0}):   # fn(tensor) -> replacement or None (keep)
        logits = model(ids).logits
    with capture(model, ["resid_post.1", "head.2"]) as acts:
        model(ids)
    acts["head.2"]                                       # [batch, pos, n_heads, d_head]
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Mapping

import einops
import torch

from .errors import TraceError
from .sites import locate, n_heads, parse

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


# --- hook plumbing -----------------------------------------------------------------------------------------
def _apply(fns: list[HookFn], x: torch.Tensor) -> torch.Tensor:
    for fn in fns:
        y = fn(x)
        if y is not None:
            if y.shape != x.shape:
                raise TraceError(f"a hook returned shape {tuple(y.shape)} for an activation of shape {tuple(x.shape)}")
            x = y
    return x


def _output_hook(fns: list[HookFn]):
    """Forward hook editing a module's output (a tensor, or a tuple whose first item is the activation)."""
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (_apply(fns, output[0]),) + tuple(output[1:])
        return _apply(fns, output)
    return hook


def _input_hook(fns: list[HookFn], heads: int | None = None):
    """Forward pre-hook editing a module's first input (positional or `hidden_states=`); `heads` splits it per head."""
    def edit(x):
        if heads is None:
            return _apply(fns, x)
        z = einops.rearrange(x, "b p (h d) -> b p h d", h=heads)  # [batch, pos, n_heads, d_head]
        return einops.rearrange(_apply(fns, z), "b p h d -> b p (h d)")

    def hook(module, args, kwargs):
        if args:
            return (edit(args[0]),) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = edit(kwargs["hidden_states"])
        return args, kwargs
    return hook


def _register(model, name: str, fns: list[HookFn]) -> torch.utils.hooks.RemovableHandle:
    site = locate(model, name)
    if site.reads == "input":
        heads = n_heads(model) if site.split_heads else None
        return site.module.register_forward_pre_hook(_input_hook(fns, heads=heads), with_kwargs=True)
    return site.module.register_forward_hook(_output_hook(fns))


@contextlib.contextmanager
def hooks(model, edits: Mapping[str, "HookFn | list[HookFn]"]) -> Iterator[None]:
    """Run `fn(activation)` at each named site while inside the block; a returned tensor replaces the activation.

    Every site is validated before any hook is attached; all hooks are removed on exit, also on error.
    """
    items = [(name, fn if isinstance(fn, (list, tuple)) else [fn]) for name, fn in edits.items()]
    for name, _ in items:
        parse(model, name)
    handles = []
    try:
        for name, fns in items:
            handles.append(_register(model, name, list(fns)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def capture(model, sites: Iterable[str], detach: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Record activations at `sites` during the forwards run inside the block: {site: tensor} (last forward wins)."""
    acts: dict[str, torch.Tensor] = {}

    def recorder(name):
        def fn(x):
            acts[name] = x.detach().clone() if detach else x
        return fn

    with hooks(model, {name: recorder(name) for name in sites}):
        yield acts
