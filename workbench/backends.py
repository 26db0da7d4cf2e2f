"""One forward call, three implementations: our torch hooks, TransformerLens's TransformerBridge, and nnsight.

    run = get_backend(model, tok, "nnsight")
    logits = run(input_ids, {"mlp_out.2": fn, "embed": add_noise})   # [batch, pos, vocab]

Every backend sees the same HF weights and the same site names, each resolved by `workbench.sites.locate`; an edit
is `fn(activation) -> replacement or None`. The tracing and patching code only talks to this interface, so the three
backends must agree (tests/test_tracing.py checks it to 1e-4).

TransformerLens: `TransformerBridge.boot_transformers(name, hf_model=..., tokenizer=...)` wraps an already-loaded HF
model without any hub access (it reuses `hf_model.config`). The bridge replaces submodules of the model it is given
and forces eager attention, so we hand it a structural copy of our model that *shares the parameter tensors* (no
weight copy; in-place weight edits to the original stay visible) and keep the original untouched.

nnsight: `nnsight.NNsight(hf_model)` and, inside `with nm.trace(ids):`, read/assign `.output` / `.input` of the same
modules our hooks use, in execution order (nnsight 0.5+ requires that order). For a model too large to load, nnsight
runs the same interventions remotely on models NDIF hosts: `LanguageModel("<hosted hub id>")` and
`with model.trace(prompt, remote=True):`, with an NDIF API key (NDIF_API_KEY); `NNsightBackend.envoy` gives the
envoy of the module each site reads. This backend runs locally, on a model loaded here.
"""
from __future__ import annotations

import copy
import weakref
from typing import Callable, Mapping

import einops
import torch

from .errors import TraceError
from .hooks import HookFn, hooks
from .sites import locate, n_heads, order

BACKENDS = ("torch", "transformer_lens", "nnsight")

Edits = Mapping[str, HookFn]


class TorchBackend:
    """Plain HF forward with our hooks (workbench.hooks)."""
    name = "torch"

    def __init__(self, model, tok=None):
        self.model = model

    def __call__(self, input_ids: torch.Tensor, edits: Edits = {}, logits_to_keep: int = 0) -> torch.Tensor:
        with hooks(self.model, edits):
            return self.model(input_ids, logits_to_keep=logits_to_keep).logits  # [batch, pos or keep, vocab]


class TransformerLensBackend:
    """TransformerBridge over a parameter-sharing copy of the HF model; edits become TL `fwd_hooks`."""
    name = "transformer_lens"

    def __init__(self, model, tok):
        from transformer_lens.model_bridge import TransformerBridge

        if tok is None:
            raise TraceError("backend='transformer_lens' needs the tokenizer (the bridge is built with it)")
        self.model = model
        # Share parameters (memo maps each one to itself), copy modules/buffers/config: the bridge may rewrite those.
        twin = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
        self.bridge = TransformerBridge.boot_transformers(
            getattr(model.config, "_name_or_path", "") or "workbench-local", hf_model=twin, tokenizer=tok,
            dtype=next(model.parameters()).dtype)
        self.bridge.eval()

    def __call__(self, input_ids: torch.Tensor, edits: Edits = {}, logits_to_keep: int = 0) -> torch.Tensor:
        fwd_hooks = [(locate(self.model, site).tl_hook, (lambda fn: lambda x, hook: fn(x))(fn))
                     for site, fn in edits.items()]
        logits = self.bridge.run_with_hooks(input_ids, fwd_hooks=fwd_hooks, return_type="logits")
        return logits[:, -logits_to_keep:] if logits_to_keep else logits  # [batch, pos or keep, vocab]


class NNsightBackend:
    """`nnsight.NNsight(model)`: edits are assignments to module inputs/outputs inside one trace."""
    name = "nnsight"

    def __init__(self, model, tok=None):
        import nnsight

        self.model = model
        self.nn = nnsight.NNsight(model)
        self._paths = {module: path for path, module in model.named_modules()}

    def envoy(self, site: str):
        """(envoy, 'input'|'output', split-heads): the envoy of the module `sites.locate` names, and what to read."""
        where = locate(self.model, site)
        envoy = self.nn
        for part in self._paths[where.module].split("."):
            envoy = getattr(envoy, part)
        return envoy, where.reads, where.split_heads

    def __call__(self, input_ids: torch.Tensor, edits: Edits = {}, logits_to_keep: int = 0) -> torch.Tensor:
        sites = sorted(edits, key=lambda s: order(self.model, s))
        H = n_heads(self.model)
        with self.nn.trace(input_ids, logits_to_keep=logits_to_keep):
            for site in sites:
                envoy, attr, split = self.envoy(site)
                value = getattr(envoy, attr)
                is_tuple = isinstance(value, tuple)  # attention returns (output, weights)
                x = value[0] if is_tuple else value
                if split:
                    x = einops.rearrange(x, "b p (h d) -> b p h d", h=H)  # [batch, pos, n_heads, d_head]
                y = edits[site](x)
                if y is None:
                    continue
                if split:
                    y = einops.rearrange(y, "b p h d -> b p (h d)")
                setattr(envoy, attr, (y,) + tuple(value[1:]) if is_tuple else y)
            logits = self.nn.output.logits.save()
        return logits  # [batch, pos or keep, vocab]


_CLASSES = {"torch": TorchBackend, "transformer_lens": TransformerLensBackend, "nnsight": NNsightBackend}
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def get_backend(model, tok, name: str = "torch") -> Callable[..., torch.Tensor]:
    """The forward runner for `name`. TransformerBridges are cached per model (rebuilt if its parameter objects change;
    in-place weight edits are seen, since the bridge shares the parameters)."""
    if name not in _CLASSES:
        raise TraceError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if name != "transformer_lens":  # cheap to build; NNsight keeps a reference to the model (would pin a weak cache)
        return _CLASSES[name](model, tok)
    key = tuple(id(p) for p in model.parameters())
    per_model = _CACHE.setdefault(model, {})
    hit = per_model.get(name)
    if hit is None or hit[0] != key:
        per_model[name] = hit = (key, _CLASSES[name](model, tok))
    return hit[1]
