"""Load an OLMo model and its tokenizer: hub id, local directory, or the built-in organism.

    model, tok = load_model("organism")                       # embedded default (built once, cached)
    model, tok = load_model("organism:micro")                 # the tiny one the tests use
    model, tok = load_model("/path/to/OLMo-1B-0724-hf")       # local weights
    model, tok = load_model("allenai/OLMo-1B-0724-hf")        # hub id: network or a local HF cache
"""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

OLMO_TYPES = ("olmo", "olmo2", "olmo3")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says what was given and what was expected."""


def resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of an HF causal LM (`model.model.layers` for OLMo, Llama, ...)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ModelLoadError(f"{type(model).__name__} has no `model.layers` list of decoder blocks; "
                             f"the workbench hooks need an OLMo-style decoder")
    return layers


def check_architecture(model) -> None:
    """OLMo/OLMo-2 are supported; another decoder-only model is allowed with a warning if our hooks resolve."""
    model_type = getattr(model.config, "model_type", "?")
    layers = decoder_layers(model)
    block = layers[0]
    if not (hasattr(block, "mlp") and hasattr(block, "self_attn")):
        raise ModelLoadError(f"{type(model).__name__} blocks lack `mlp`/`self_attn`; the hooks cannot resolve its sites")
    if model_type not in OLMO_TYPES:
        warnings.warn(f"model type {model_type!r} is not OLMo; hooks resolved, but results are untested for it",
                      stacklevel=3)


def _from_pretrained(source: str, dtype, device, device_map, local_only: bool):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except Exception as e:
        where = f"directory {source}" if local_only else f"hub id {source!r}"
        raise ModelLoadError(
            f"could not read a model config from {where} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            + ("Expected a directory with config.json and weights saved by `save_pretrained`."
               if local_only else "Offline? Download the weights elsewhere and pass their local directory, "
                                  "or use the built-in model organism: --model organism")) from None
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(f"{source}: {config.model_type} is an encoder-decoder; the workbench needs a decoder-only OLMo")
    kwargs = {"local_files_only": local_only}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map  # accelerate spreads layers over several GPUs
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config, **kwargs)
    except ValueError as e:
        raise ModelLoadError(f"{source}: model type {config.model_type!r} is not a causal LM ({e})") from None
    except OSError as e:
        raise ModelLoadError(f"{source}: config found but weights could not be loaded ({e})") from None
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except Exception as e:
        raise ModelLoadError(f"{source}: no usable tokenizer ({type(e).__name__}: {e})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if device is not None and device_map is None:
        model = model.to(device)
    return model, tok


def organism_name(spec) -> str | None:
    """The built-in organism a model spec names ('organism' -> 'default', 'organism:micro' -> 'micro'), else None."""
    spec_s = str(spec)
    if spec_s != "organism" and not spec_s.startswith("organism:"):
        return None
    return spec_s.partition(":")[2] or "default"


def load_model(spec: str | Path = "organism", dtype=None, device: str | None = None, device_map=None):
    """Return `(model, tokenizer)`, the model in eval mode. See the module docstring for specs."""
    dtype = resolve_dtype(dtype)
    spec_s = str(spec)
    name = organism_name(spec_s)
    if name is not None:
        from . import organism

        path = organism.build(name)
        model, tok = _from_pretrained(str(path), dtype, device, device_map, local_only=True)
    elif Path(spec_s).expanduser().exists():
        p = Path(spec_s).expanduser()
        if not p.is_dir():
            raise ModelLoadError(f"model path {p} is a file; expected a directory saved by `save_pretrained`")
        model, tok = _from_pretrained(str(p), dtype, device, device_map, local_only=True)
    elif spec_s.startswith((".", "/", "~")) or spec_s.count("/") > 1 or "\\" in spec_s:
        raise ModelLoadError(f"model directory {spec_s} does not exist (expected a directory saved by `save_pretrained`)")
    elif _HUB_ID.match(spec_s):
        model, tok = _from_pretrained(spec_s, dtype, device, device_map, local_only=False)
    else:
        raise ModelLoadError(f"model spec {spec_s!r} is neither 'organism[:name]', an existing directory, "
                             f"nor a hub id like 'allenai/OLMo-1B-0724-hf'")
    check_architecture(model)
    model.eval()
    return model, tok
