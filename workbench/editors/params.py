"""Which parameters an editor trains, chosen by name (never by index).

Patterns are shell-style globs over `model.named_parameters()` names, with
`{layer}` expanded over the selected layers:

    "model.layers.{layer}.mlp.down_proj.weight"   ->  model.layers.12.mlp.down_proj.weight, ...
    "model.layers.{layer}.self_attn.*"            ->  q/k/v/o of each selected layer
    "*"                                           ->  every parameter (full fine-tune)

A pattern that matches nothing is an error: a silently empty selection would
"train" nothing and report success.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

import torch

from ..errors import EditError


def expand(patterns: Iterable[str], layers: Sequence[int]) -> list[str]:
    out = []
    for p in patterns:
        if "{layer}" in p:
            out += [p.replace("{layer}", str(l)) for l in layers]
        else:
            out.append(p)
    return out


def select_parameters(model: torch.nn.Module, patterns: Iterable[str], layers: Sequence[int]) -> dict[str, torch.nn.Parameter]:
    """Parameters whose names match any expanded pattern, in model order. Raises EditError if a pattern matches none."""
    named = dict(model.named_parameters())
    expanded = expand(patterns, layers)
    if not expanded:
        raise EditError("no parameter patterns given; expected e.g. 'model.layers.{layer}.mlp.down_proj.weight'")
    chosen: set[str] = set()
    for pat in expanded:
        hits = [n for n in named if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            example = next(iter(named), "?")
            raise EditError(f"parameter pattern {pat!r} matches no parameter of {type(model).__name__} "
                            f"(names look like {example!r})")
        chosen.update(hits)
    return {n: p for n, p in named.items() if n in chosen}


def freeze_all_but(model: torch.nn.Module, names: Iterable[str]) -> None:
    """requires_grad only on `names`: frozen parameters then get no gradient and no optimizer state."""
    keep = set(names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
