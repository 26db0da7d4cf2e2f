"""Named activation sites on HF OLMo / OLMo-2 models: one table resolves a site to its torch module, its
TransformerLens hook and its nnsight envoy (the role of TransformerLens's `utils.get_act_name`).

Sites (TransformerLens-style names, `l` = decoder layer index):

    embed          token embeddings                          # [batch, pos, d_model]
    resid_pre.l    input of block l (resid_pre.0 == embed)   # [batch, pos, d_model]
    resid_post.l   output of block l                         # [batch, pos, d_model]
    attn_out.l     what attention adds to the residual       # [batch, pos, d_model]
    mlp_out.l      what the MLP adds to the residual         # [batch, pos, d_model]
    head.l         per-head attention output, o_proj input   # [batch, pos, n_heads, d_head]

Causal tracing names the three sites it restores by short kinds, the `--kinds` of the CLI and the keys of a trace's
effects: resid = resid_post, mlp = mlp_out, attn = attn_out (`KIND_SITE`). `name` accepts either vocabulary:

    name("mlp_out", 3) == name("mlp", 3) == "mlp_out.3";  name("embed") == "embed"
    locate(model, "mlp_out.3").module          # the torch module whose output is the activation
    locate(model, "resid_post", 3).tl_hook     # "blocks.3.hook_resid_post"

OLMo (v1) blocks are pre-norm: `h = h + self_attn(norm(h)); h = h + mlp(norm(h))`, so attn_out / mlp_out are the
outputs of `self_attn` / `mlp`. OLMo-2 (and OLMo-3) blocks are post-norm: `h = h + post_attention_layernorm(self_attn(h))`,
`h = h + post_feedforward_layernorm(mlp(h))` (transformers 5.x `Olmo2DecoderLayer.forward`), so there the tensor added
to the residual is the output of the post-norm and that is what the table names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import TraceError
from .models import decoder_layers

SITE_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "head")  # the per-layer sites; plus "embed"
KIND_SITE = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}  # trace kind -> the site it restores
KINDS = tuple(KIND_SITE)  # residual stream (block output), MLP output, attention output

_SITE = re.compile(r"^(resid_pre|resid_post|attn_out|mlp_out|head)\.(-?\d+)$")
_ORDER = ("resid_pre", "head", "attn_out", "mlp_out", "resid_post")  # execution order within a block


@dataclass(frozen=True)
class _Row:
    """Where a site kind lives in a decoder block: the submodule ("" = the block itself) in pre-norm and post-norm
    blocks, whether the activation is that module's first input or its output, and the TransformerLens hook."""
    pre_norm: str
    post_norm: str
    reads: str              # "input" | "output"
    tl_hook: str            # TransformerLens hook name, {l} = layer
    split_heads: bool = False


_TABLE = {
    "resid_pre": _Row("", "", "input", "blocks.{l}.hook_resid_pre"),
    "resid_post": _Row("", "", "output", "blocks.{l}.hook_resid_post"),
    "attn_out": _Row("self_attn", "post_attention_layernorm", "output", "blocks.{l}.hook_attn_out"),
    "mlp_out": _Row("mlp", "post_feedforward_layernorm", "output", "blocks.{l}.hook_mlp_out"),
    "head": _Row("self_attn.o_proj", "self_attn.o_proj", "input", "blocks.{l}.attn.hook_z", split_heads=True),
}


@dataclass(frozen=True)
class Site:
    """A resolved site: the module to hook and what of it to read."""
    name: str                   # e.g. "mlp_out.3"
    kind: str                   # "embed" or one of SITE_KINDS
    layer: int                  # -1 for embed
    module: torch.nn.Module     # whose first input (reads == "input") or output is the activation
    reads: str                  # "input" | "output"
    split_heads: bool           # the input [batch, pos, n_heads * d_head] is seen as [batch, pos, n_heads, d_head]
    tl_hook: str                # the TransformerLens hook of the same activation


def name(kind: str, layer: int | None = None) -> str:
    """The site name of a site kind or trace kind at `layer`: ("mlp", 3) and ("mlp_out", 3) -> "mlp_out.3"."""
    if kind == "embed" and layer is None:
        return "embed"
    kind = KIND_SITE.get(kind, kind)
    if kind not in SITE_KINDS or layer is None:
        raise TraceError(f"no site {kind!r} at layer {layer!r}: expected 'embed' or one of {SITE_KINDS} (or trace "
                         f"kinds {KINDS}) with a layer")
    return f"{kind}.{layer}"


def n_layers(model) -> int:
    return len(decoder_layers(model))


def n_heads(model) -> int:
    return model.config.num_attention_heads


def valid_sites(model) -> list[str]:
    """Every site name the model has, in execution order."""
    return ["embed"] + [name(kind, l) for l in range(n_layers(model)) for kind in _ORDER]


def parse(model, site: str) -> tuple[str, int]:
    """'mlp_out.3' -> ('mlp_out', 3); 'embed' -> ('embed', -1). Raises TraceError for unknown names or layers."""
    L = n_layers(model)
    if site == "embed":
        return "embed", -1
    m = _SITE.match(site)
    if m is None or not 0 <= int(m.group(2)) < L:
        why = "layer out of range" if m else "unknown site"
        raise TraceError(f"{why}: {site!r}; valid sites are 'embed' and "
                         f"{{{','.join(SITE_KINDS)}}}.{{0..{L - 1}}} (this model has {L} layers)")
    return m.group(1), int(m.group(2))


def order(model, site: str) -> int:
    """Execution order of a site in the forward pass (nnsight needs interventions in this order)."""
    kind, layer = parse(model, site)
    return 0 if kind == "embed" else 1 + 5 * layer + _ORDER.index(kind)


def is_post_norm(block) -> bool:
    """OLMo-2/3 blocks normalise each sublayer's output before adding it to the residual."""
    return hasattr(block, "post_feedforward_layernorm")


def locate(model, site: str, layer: int | None = None) -> Site:
    """Resolve a site name (or a kind and a layer) on `model`: the one place a site meets a module."""
    site = site if layer is None else name(site, layer)
    kind, l = parse(model, site)
    if kind == "embed":
        return Site(site, kind, l, model.get_input_embeddings(), "output", False, "hook_embed")
    row, block = _TABLE[kind], decoder_layers(model)[l]
    path = row.post_norm if is_post_norm(block) else row.pre_norm
    module = block.get_submodule(path) if path else block
    return Site(site, kind, l, module, row.reads, row.split_heads, row.tl_hook.format(l=l))


def module(model, site: str, layer: int | None = None) -> torch.nn.Module:
    """The torch module whose input or output is the site's activation (`locate(...).reads` says which)."""
    return locate(model, site, layer).module
