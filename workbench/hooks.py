"""Named activation sites on HF OLMo / OLMo-2 models, over plain torch forward hooks.

Sites (TransformerLens-style names, `l` = decoder layer index):

    embed          token embeddings                          # [batch, pos, d_model]
    resid_pre.l    input of block l (resid_pre.0 == embed)   # [batch, pos, d_model]
    resid_post.l   output of block l                         # [batch, pos, d_model]
    attn_out.l     what attention adds to the residual       # [batch, pos, d_model]
    mlp_out.l      what the MLP adds to the residual         # [batch, pos, d_model]
    head.l         per-head attention output, o_proj input   # [batch, pos, n_heads, d_head]

OLMo (v1) blocks are pre-norm: `h = h + self_attn(norm(h)); h = h + mlp(norm(h))`, so attn_out / mlp_out are the
outputs of `self_attn` / `mlp`. OLMo-2 (and OLMo-3) blocks are post-norm: `h = h + post_attention_layernorm(self_attn(h))`,
`h = h + post_feedforward_layernorm(mlp(h))` (transformers 5.x `Olmo2DecoderLayer.forward`), so there the tensor added
to the residual is the output of the post-norm and that is what we hook.

    with hooks(model, {"mlp_out.3": lambda x: x * 0}):   # fn(tensor) -> replacement or None (keep)
        logits = model(ids).logits
    with capture(model, ["resid_post.1", "head.2"]) as acts:
        model(ids)
    acts["head.2"]                                       # [batch, pos, n_heads, d_head]
"""
from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterable, Iterator, Mapping

import einops
import torch

from .errors import TraceError
from .models import decoder_layers

SITE_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head")
_SITE = re.compile(r"^(resid_pre|resid_post|attn_out|mlp_out|head)\.(-?\d+)$")

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


def site_name(kind: str, layer: int) -> str:
    return f"{kind}.{layer}"


def n_layers(model) -> int:
    return len(decoder_layers(model))


def valid_sites(model) -> list[str]:
    """Every site name the model has, in execution order."""
    out = ["embed"]
    for l in range(n_layers(model)):
        out += [f"resid_pre.{l}", f"head.{l}", f"attn_out.{l}", f"mlp_out.{l}", f"resid_post.{l}"]
    return out


def parse_site(model, name: str) -> tuple[str, int]:
    """'mlp_out.3' -> ('mlp_out', 3); 'embed' -> ('embed', -1). Raises TraceError for unknown names or layers."""
    L = n_layers(model)
    if name == "embed":
        return "embed", -1
    m = _SITE.match(name)
    if m is None or not 0 <= int(m.group(2)) < L:
        why = "layer out of range" if m else "unknown site"
        raise TraceError(f"{why}: {name!r}; valid sites are 'embed' and "
                         f"{{{','.join(SITE_KINDS)}}}.{{0..{L - 1}}} (this model has {L} layers)")
    return m.group(1), int(m.group(2))


def site_order(model, name: str) -> int:
    """Execution order of a site in the forward pass (nnsight needs interventions in this order)."""
    kind, layer = parse_site(model, name)
    return 0 if kind == "embed" else 1 + 5 * layer + ("resid_pre", "head", "attn_out", "mlp_out", "resid_post").index(kind)


def is_post_norm(block) -> bool:
    """OLMo-2/3 blocks normalise each sublayer's output before adding it to the residual."""
    return hasattr(block, "post_feedforward_layernorm")


def n_heads(model) -> int:
    return model.config.num_attention_heads


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
    kind, l = parse_site(model, name)
    if kind == "embed":
        return model.get_input_embeddings().register_forward_hook(_output_hook(fns))
    block = decoder_layers(model)[l]
    if kind == "resid_pre":
        return block.register_forward_pre_hook(_input_hook(fns), with_kwargs=True)
    if kind == "resid_post":
        return block.register_forward_hook(_output_hook(fns))
    if kind == "head":
        return block.self_attn.o_proj.register_forward_pre_hook(_input_hook(fns, heads=n_heads(model)), with_kwargs=True)
    post = is_post_norm(block)
    if kind == "attn_out":
        module = block.post_attention_layernorm if post else block.self_attn
    else:  # mlp_out
        module = block.post_feedforward_layernorm if post else block.mlp
    return module.register_forward_hook(_output_hook(fns))


@contextlib.contextmanager
def hooks(model, edits: Mapping[str, "HookFn | list[HookFn]"]) -> Iterator[None]:
    """Run `fn(activation)` at each named site while inside the block; a returned tensor replaces the activation.

    Every site is validated before any hook is attached; all hooks are removed on exit, also on error.
    """
    items = [(name, fn if isinstance(fn, (list, tuple)) else [fn]) for name, fn in edits.items()]
    for name, _ in items:
        parse_site(model, name)
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
