"""Load an OLMo model and its tokenizer from a local directory or a hub id (`load_pretrained`). Studies load every
spec, the built-in organism included (trained before it can be loaded), through `workbench.harness.load_model`,
which builds an organism and then calls this.

    model, tok = load_pretrained("/path/to/OLMo-1B-0724-hf")       # local weights
    model, tok = load_pretrained("allenai/OLMo-1B-0724-hf")        # hub id: network or a local HF cache
    model, tok = load_pretrained(path, device_map="auto", max_memory={0: "20GiB", 1: "20GiB", "cpu": "64GiB"})

A model larger than one device is spread over several by layer: `max_memory` (GPU index or "cpu" -> size) plans
the placement as `from_pretrained(device_map="auto")` does (`plan_device_map`), layers that fit nowhere go to
`offload_folder` on disk (loaded to the CPU at each forward, meta tensors in between), and accelerate's hooks move
activations between devices. The workbench's hooks sit on the same modules, so tracing and patching work unchanged
(tests/test_placement.py traces a model whose later layers are offloaded, against the same model in one piece).
"""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import torch

from .errors import ModelLoadError, clip, quote
from .outputs import safetensors_problem

log = logging.getLogger(__name__)

OLMO_TYPES = ("olmo", "olmo2", "olmo3")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


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


def check_device(device) -> None:
    """A device string this torch can use; 'cuda' on a CPU-only build is a ModelLoadError, not a deep traceback."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelLoadError(f"device {device!r} is not a torch device ({e}); expected e.g. cpu, cuda, cuda:1") from None
    if dev.type == "meta":
        raise ModelLoadError(f"device {device!r} holds shapes without data, so nothing can run on it; expected e.g. "
                             "cpu, cuda, cuda:1")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r}: this torch ({torch.__version__}) has no usable CUDA GPU; "
                                 "use --device cpu or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r}: MPS is not available in this torch build")


CONVERT_HINT = ("convert it once to safetensors, trusting the file only for that step: python -c \"from transformers "
                "import AutoModelForCausalLM as M, AutoTokenizer as T; d='{src}'; "
                "M.from_pretrained(d, use_safetensors=False).save_pretrained(d + '-safetensors'); "
                "T.from_pretrained(d).save_pretrained(d + '-safetensors')\"")


def check_weight_files(directory: str | Path, allow_pickle_weights: bool = False) -> list[Path]:
    """The weight files of a saved model directory, each checked complete; refuses pickle-only weights.

    A safetensors file whose length is not what its header says is truncated (outputs.safetensors_problem)."""
    d = Path(directory)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        pickles = sorted(d.glob("*.bin")) + sorted(d.glob("*.pt")) + sorted(d.glob("*.pth"))
        if not pickles:
            raise ModelLoadError(f"{d} has no weights (no *.safetensors); expected a directory saved by "
                                 "`save_pretrained`")
        if not allow_pickle_weights:
            raise ModelLoadError(
                f"{d} has only pickle weights ({', '.join(p.name for p in pickles[:3])}), which can run code when "
                f"loaded; they are not loaded by default. If you trust their source, {CONVERT_HINT.format(src=d)} "
                "(or load them as they are with allow_pickle_weights=True / --allow-bin)")
        return pickles
    for f in files:
        problem = safetensors_problem(f)
        if problem:
            raise ModelLoadError(f"weight file {f} is truncated or corrupt ({problem}); re-save or re-copy the model")
    return files


# config fields that size the model: each must be a whole number >= 1 (a negative depth builds an empty model)
_SIZE_FIELDS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings")
# files a tokenizer's vocabulary comes from; without one, AutoTokenizer builds an empty tokenizer without a word
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
_SHOWN_KEYS = 4


def check_config(config, source) -> None:
    """The config's size fields are whole numbers >= 1 (a ModelLoadError naming the field otherwise)."""
    for name in _SIZE_FIELDS:
        value = getattr(config, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelLoadError(f"{source}: config.json gives {name} = {quote(value)}; expected a whole number >= 1")


def _skeleton(config, source):
    """The model `config` describes, on the meta device (shapes, no memory, no random initialisation)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config)
    except Exception as e:  # a config transformers cannot build (a bad head count, an unknown type, ...)
        raise ModelLoadError(f"{source}: config.json does not describe a model transformers can build "
                             f"({type(e).__name__}: {clip(e)})") from None


def _checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files from_pretrained reads: the shards an index names, else model.safetensors."""
    import json

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{index} is not a safetensors index ({clip(e)})") from None
        missing = [n for n in names if not (directory / Path(n).name).is_file()]
        if missing:
            raise ModelLoadError(f"{index} names shard(s) that are not in {directory}: {quote(missing)}")
        return [directory / Path(n).name for n in names]
    single = directory / "model.safetensors"
    return [single] if single.is_file() else []


def _natural(key: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _some(keys, n: int = _SHOWN_KEYS) -> str:
    keys = sorted(keys, key=_natural)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def check_checkpoint(directory: str | Path, config) -> None:
    """The weights in `directory` are the model its config describes, compared from the safetensors headers before
    transformers builds anything: no tensor missing (transformers would initialise it at random), none unexpected
    (it would be dropped: a model silently cut short), no shape different, no header that lies about its data.
    A ModelLoadError names the keys. Tied weights (lm_head = embeddings) may be absent, as transformers allows."""
    from .outputs import safetensors_header

    directory = Path(directory)
    check_config(config, directory)
    files = _checkpoint_files(directory)
    if not files:
        return  # pickle weights (allow_pickle_weights): transformers' load report is checked after loading
    found: dict[str, list[int]] = {}
    for f in files:
        try:
            header = safetensors_header(f)
        except (OSError, ValueError, OverflowError) as e:
            raise ModelLoadError(f"weight file {f} is truncated or corrupt ({clip(e)}); re-save or re-copy the "
                                 "model") from None
        found.update({k: v["shape"] for k, v in header.items()})
    skeleton = _skeleton(config, directory)
    expected = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    prefix = getattr(skeleton, "base_model_prefix", "") or ""
    if prefix and not any(k.startswith(prefix + ".") for k in found) and any(k.startswith(prefix + ".")
                                                                              for k in expected):
        found = {(f"{prefix}.{k}" if f"{prefix}.{k}" in expected else k): v for k, v in found.items()}
    may_miss = getattr(skeleton, "all_tied_weights_keys", None)   # transformers 5: the ties this config makes
    if may_miss is None:  # transformers 4: the class's tie candidates, tied when the config says so
        tie = getattr(config, "tie_word_embeddings", False)
        may_miss = (getattr(skeleton, "_tied_weights_keys", None) or []) if tie else []
    may_miss = set(may_miss)
    ignore_missing = [re.compile(p) for p in getattr(skeleton, "_keys_to_ignore_on_load_missing", None) or []]
    ignore_unexpected = [re.compile(p) for p in getattr(skeleton, "_keys_to_ignore_on_load_unexpected", None) or []]
    buffers = {n for n, _ in skeleton.named_buffers()} - set(expected)   # non-persistent: saved by some versions
    missing = [k for k in expected if k not in found and k not in may_miss
               and not any(p.search(k) for p in ignore_missing)]
    unexpected = [k for k in found if k not in expected and k not in buffers
                  and not any(p.search(k) for p in ignore_unexpected)]
    wrong = [f"{k} is {found[k]} in the weights but {expected[k]} by the config" for k in expected
             if k in found and found[k] != expected[k]]
    if not (missing or unexpected or wrong):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) the config needs are not in the weights ({_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) in the weights are not in the config's model "
                        f"({_some(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} shape(s) differ ({'; '.join(wrong[:2])}{'; ...' if len(wrong) > 2 else ''})")
    layers = getattr(config, "num_hidden_layers", None)
    raise ModelLoadError(f"{directory}: config.json does not match the weights"
                         f"{f' (config: {layers} layers)' if layers is not None else ''}: {'; '.join(problems)}. "
                         "Nothing was loaded (transformers would start a missing tensor at random and drop an "
                         "unexpected one); use the config.json saved with these weights")


def check_tokenizer_files(directory: str | Path) -> None:
    """A local model directory has a tokenizer vocabulary (TOKENIZER_FILES): without one transformers builds an
    empty tokenizer, and every prompt becomes nothing."""
    d = Path(directory)
    if not any((d / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{d} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files "
                             "saved with the model (`tokenizer.save_pretrained(dir)`) into it")


def check_vocabulary(model, tok, source) -> None:
    """Every token id the tokenizer makes has a row in the model's embedding (else the first such token is an
    IndexError deep in a forward)."""
    emb = model.get_input_embeddings()
    rows = getattr(emb, "num_embeddings", None)
    if rows is not None and len(tok) > rows:
        raise ModelLoadError(f"{source}: the tokenizer has {len(tok)} tokens but the model's embedding has {rows} "
                             "rows (config vocab_size); the tokenizer and the weights do not belong together")


def plan_device_map(config, max_memory: dict, dtype=None) -> dict[str, int | str]:
    """Where each module of a model with `config` goes under `max_memory` ({GPU index or "cpu": size, e.g. "20GiB"}):
    accelerate's infer_auto_device_map on an empty (meta-device) copy of the model, decoder layers kept whole, the
    rest filled in device order; what does not fit goes to "disk". {module name: GPU index, "cpu" or "disk"}"""
    from accelerate import infer_auto_device_map, init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    return infer_auto_device_map(skeleton, max_memory=max_memory, dtype=dtype or getattr(config, "dtype", None),
                                 no_split_module_classes=list(skeleton._no_split_modules or []))


def layer_devices(model) -> list[str]:
    """The device each decoder layer runs on ('cpu', 'cuda:1', ...; 'disk' for a layer offloaded to disk)."""
    placed = getattr(model, "hf_device_map", None) or {}
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        name = f"model.layers.{i}"
        covering = [k for k in placed if k in ("", name) or name.startswith(k + ".")]  # the most specific entry wins
        where = placed[max(covering, key=len)] if covering else next(layer.parameters()).device
        out.append(f"cuda:{where}" if isinstance(where, int) else str(where))
    return out


def _from_pretrained(source: str, dtype, device, device_map, local_only: bool, trust_remote_code: bool = False,
                     allow_pickle_weights: bool = False, max_memory: dict | None = None,
                     offload_folder: str | None = None):
    check_device(device)
    # trust_remote_code is always passed: left None, transformers asks on stdin whether to run a directory's code
    remote = {"trust_remote_code": bool(trust_remote_code)}
    config = _checked_config(source, local_only, remote, allow_pickle_weights)
    kwargs = {"local_files_only": local_only, "use_safetensors": not allow_pickle_weights, **remote}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if max_memory is not None:  # an explicit plan, checked before any weight is read
        device_map = _planned_device_map(source, config, max_memory, dtype, offload_folder)
    if device_map is not None:
        kwargs["device_map"] = device_map  # accelerate spreads layers over several devices
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    # the tokenizer first: one with more tokens than the config's vocabulary is refused before any weight
    tok = _tokenizer(source, config, local_only, remote)
    model, report = _weights(source, config, kwargs, allow_pickle_weights)
    _check_load_report(report, source)
    check_vocabulary(model, tok, source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if device is not None and device_map is None:
        model = model.to(device)
    return model, tok


def _checked_config(source: str, local_only: bool, remote: dict, allow_pickle_weights: bool):
    """The model's config, read and checked (a decoder-only model the workbench supports); for a local directory,
    its weight files, checkpoint shapes and tokenizer files are checked too, before any weight is read."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only, **remote)
    except Exception as e:
        where = f"directory {source}" if local_only else f"hub id {source!r}"
        custom = "custom code" in str(e) or "trust_remote_code" in str(e)
        raise ModelLoadError(
            f"could not read a model config from {where} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            + ("Its config needs the model's own Python code, which is not run unless trust_remote_code=True "
               "(--trust-remote-code) is given." if custom else
               "Expected a directory with config.json and weights saved by `save_pretrained`."
               if local_only else "Offline? Download the weights elsewhere and pass their local directory, "
                                  "or use the built-in model organism: --model organism")) from None
    if getattr(config, "is_encoder_decoder", False):
        raise ModelLoadError(f"{source}: {config.model_type} is an encoder-decoder; the workbench needs a decoder-only OLMo")
    check_config(config, source)
    if local_only:
        check_weight_files(source, allow_pickle_weights)
        check_checkpoint(source, config)
        check_tokenizer_files(source)
    return config


def _planned_device_map(source: str, config, max_memory: dict, dtype, offload_folder: str | None) -> dict:
    """The device map that fits `max_memory`; modules it puts on disk need an offload folder."""
    device_map = plan_device_map(config, dict(max_memory), dtype)
    on_disk = [k for k, v in device_map.items() if v == "disk"]
    if on_disk and offload_folder is None:
        raise ModelLoadError(f"{source}: {len(on_disk)} module(s) ({', '.join(on_disk[:3])}"
                             f"{', ...' if len(on_disk) > 3 else ''}) do not fit max_memory {max_memory}; give "
                             "more memory or an offload folder (--offload-folder DIR) for them")
    return device_map


def _tokenizer(source: str, config, local_only: bool, remote: dict):
    """The tokenizer, refused when it has more tokens than the config's vocabulary."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only, **remote)
    except Exception as e:
        raise ModelLoadError(f"{source}: no usable tokenizer ({type(e).__name__}: {clip(e)})") from None
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and len(tok) > vocab:
        raise ModelLoadError(f"{source}: the tokenizer has {len(tok)} tokens but the model's embedding has {vocab} "
                             "rows (config vocab_size); the tokenizer and the weights do not belong together")
    return tok


def _weights(source: str, config, kwargs: dict, allow_pickle_weights: bool):
    """(model, loading info) from `source`; transformers' errors become ModelLoadErrors that say what to do."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source, config=config, output_loading_info=True, **kwargs)
    except ValueError as e:
        raise ModelLoadError(f"{source}: model type {config.model_type!r} is not a causal LM ({clip(e)})") from None
    except RuntimeError as e:  # a shape mismatch check_checkpoint could not see (a hub model's remote files)
        if "mismatch" not in str(e):
            raise
        raise ModelLoadError(f"{source}: the weights do not fit the config ({clip(str(e).splitlines()[0])})") from None
    except OSError as e:
        hint = (f"; the workbench loads safetensors only: {CONVERT_HINT.format(src=source)}, or pass "
                "allow_pickle_weights=True / --allow-bin" if not allow_pickle_weights and "safetensors" in str(e) else "")
        raise ModelLoadError(f"{source}: config found but weights could not be loaded "
                             f"({str(e).splitlines()[0][:300]}){hint}") from None


def _check_load_report(report: dict, source) -> None:
    """transformers' own account of the load: a tensor it initialised at random or dropped is a ModelLoadError
    (check_checkpoint sees this first for a local directory; this covers hub ids and pickle weights)."""
    missing = sorted(report.get("missing_keys") or [])
    unexpected = sorted(report.get("unexpected_keys") or [])
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in report.get("mismatched_keys") or [])
    if missing or unexpected or mismatched:
        parts = [f"{what} {_some(keys)}" for what, keys in (("missing (initialised at random):", missing),
                                                            ("unexpected (dropped):", unexpected),
                                                            ("of another shape:", mismatched)) if keys]
        raise ModelLoadError(f"{source}: the weights do not match the config; {'; '.join(parts)}")


def weights_key(source, model=None) -> str:
    """The content key of a model: `weights_hash` of its directory (a local directory, or a hub id's snapshot in the
    local Hugging Face cache), else, for a model with no files to read, `state_hash` of the loaded `model`."""
    from .provenance import state_hash, weights_hash

    path = Path(str(source)).expanduser()
    if path.is_dir():
        return weights_hash(path)
    if _HUB_ID.match(str(source)):
        try:
            from huggingface_hub import snapshot_download

            return weights_hash(snapshot_download(str(source), local_files_only=True))
        except Exception:  # noqa: BLE001 - not in the local cache (or no hub client): hash what was loaded
            pass
    if model is None:
        raise ModelLoadError(f"model {quote(str(source))} has no local files to hash; pass the loaded model")
    return state_hash(model)


def organism_name(spec) -> str | None:
    """The built-in organism a model spec names ('organism' -> 'default', 'organism:micro' -> 'micro'), else None."""
    spec_s = str(spec)
    if spec_s != "organism" and not spec_s.startswith("organism:"):
        return None
    return spec_s.partition(":")[2] or "default"


def load_pretrained(spec: str | Path, dtype=None, device: str | None = None, device_map=None, *,
               max_memory: dict | None = None, offload_folder: str | Path | None = None,
               trust_remote_code: bool = False, allow_pickle_weights: bool = False):
    """Return `(model, tokenizer)`, the model in eval mode. See the module docstring for specs.

    device_map ("auto", "balanced", a dict) or max_memory spread the layers over devices (module docstring); with
    max_memory the placement is `plan_device_map`'s, and modules that fit nowhere need `offload_folder`.
    Safe by default: a model's own Python code (config `auto_map`) is never run unless trust_remote_code=True, and
    only safetensors weights are read unless allow_pickle_weights=True (pickled .bin weights can run code)."""
    dtype = resolve_dtype(dtype)
    if (device_map is not None or max_memory is not None) and device is not None:
        raise ModelLoadError(f"device {device!r} and a device map / max_memory both place the model; give one of them")
    opts = {"trust_remote_code": trust_remote_code, "allow_pickle_weights": allow_pickle_weights}
    place = {"max_memory": max_memory, "offload_folder": None if offload_folder is None else str(offload_folder)}
    spec_s = str(spec)
    if organism_name(spec_s) is not None:
        raise ModelLoadError(f"{spec_s!r} names a built-in organism, which is built before it is loaded: use "
                             "workbench.harness.load_model, which loads every spec this function loads and organisms")
    if Path(spec_s).expanduser().exists():
        p = Path(spec_s).expanduser()
        if not p.is_dir():
            raise ModelLoadError(f"model path {p} is a file; expected a directory saved by `save_pretrained`")
        model, tok = _from_pretrained(str(p), dtype, device, device_map, local_only=True, **opts, **place)
    elif spec_s.startswith((".", "/", "~")) or spec_s.count("/") > 1 or "\\" in spec_s:
        raise ModelLoadError(f"model directory {spec_s} does not exist (expected a directory saved by `save_pretrained`)")
    elif _HUB_ID.match(spec_s):
        model, tok = _from_pretrained(spec_s, dtype, device, device_map, local_only=False, **opts, **place)
    else:
        raise ModelLoadError(f"model spec {spec_s!r} is neither 'organism[:name]', an existing directory, "
                             f"nor a hub id like 'allenai/OLMo-1B-0724-hf'")
    check_architecture(model)
    model.eval()
    return model, tok
