"""Provenance and safe writes: every result file says which model, data, config, seed and versions made it.

Writes are atomic (temp file + rename) so an interrupted run never leaves a
half-written artifact over a good one.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from .errors import named_write_errors

_PACKAGES = ("workbench", "torch", "transformers", "transformer_lens", "nnsight", "numpy", "plotly", "datasets")


def versions() -> dict[str, str]:
    """Python and package versions; read once per process (a metadata lookup costs ~3 ms per package)."""
    return dict(_versions())


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data; a NaN or infinite float becomes None (null), since JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch
        return to_jsonable(obj.tolist())
    return obj


def stable_hash(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(to_jsonable(obj), sort_keys=True).encode()).hexdigest()[:n]


# ---------------------------------------------------------------- content keys
# The files of a model directory that decide what the model computes: weights, config, tokenizer. A directory's own
# records (unlearn.json, log.jsonl, organism.json) are left out: they carry timestamps, not weights.
MODEL_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt", "*.pth",
               "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
               "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja")
_CHUNK = 8 << 20
_DIGESTS: dict[tuple, str] = {}   # this process's file digests, by _stat_key
_DIGEST_CACHE_ENTRIES = 4096      # the on-disk cache keeps at most this many files


def cache_base() -> Path:
    """The workbench's cache directory: $WORKBENCH_CACHE, else $XDG_CACHE_HOME/workbench (~/.cache/workbench)."""
    base = os.environ.get("WORKBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "workbench")
    return Path(base)


def _stat_key(path: Path) -> tuple:
    """What tells an unchanged file: its resolved path, size, mtime, ctime and inode. ctime cannot be set back by a
    copy that keeps mtimes (cp -p, rsync -t), and a file replaced by a rename gets a new inode."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _digest_cache_path() -> Path:
    return cache_base() / "file-digests.json"


def _read_digest_cache() -> dict:
    try:
        data = json.loads(_digest_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember_digests(new: dict[str, str]) -> None:
    """Add digests to the on-disk cache (best effort: a cache that cannot be written costs a re-read, nothing else)."""
    cache = _read_digest_cache()
    cache.update(new)
    if len(cache) > _DIGEST_CACHE_ENTRIES:  # the most recently added entries are kept (dicts keep insertion order)
        cache = dict(list(cache.items())[-_DIGEST_CACHE_ENTRIES:])
    try:
        atomic_write_text(_digest_cache_path(), json.dumps(cache))
    except Exception:  # noqa: BLE001 - a read-only or full cache directory only loses the cache
        pass


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 8 MiB chunks. Cached by (path, size, mtime, ctime, inode) in this process and
    in $WORKBENCH_CACHE/file-digests.json, so an unchanged checkpoint is read once, not once per run."""
    path = Path(path)
    key = _stat_key(path)
    if key in _DIGESTS:
        return _DIGESTS[key]
    text_key = json.dumps(key)
    cached = _read_digest_cache().get(text_key)
    if isinstance(cached, str):
        _DIGESTS[key] = cached
        return cached
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if _stat_key(path) == key:  # not rewritten while it was read
        _DIGESTS[key] = digest
        _remember_digests({text_key: digest})
    return digest


def model_files(directory: str | Path) -> list[Path]:
    """The files of a model directory that `weights_hash` reads (MODEL_FILES), sorted by name."""
    d = Path(directory)
    return sorted({p for pattern in MODEL_FILES for p in d.glob(pattern) if p.is_file()}, key=lambda p: p.name)


def weights_hash(directory: str | Path) -> str:
    """Hash of the content of a saved model: every weight file, its config and its tokenizer (MODEL_FILES), by name
    and bytes. Two directories holding the same files hash the same, wherever they are; new weights at the same path
    hash differently. Each file's bytes are read once (`file_digest`)."""
    files = model_files(directory)
    return stable_hash([(p.name, file_digest(p)) for p in files], n=32)


def state_hash(model) -> str:
    """Hash of every parameter and buffer of an in-memory model, by name, dtype, shape and bytes: the content key of a
    model that has no directory (or may differ from it). Offloaded (meta) tensors are read back one module at a time."""
    import torch

    h = hashlib.sha256()
    for name, t in _tensors(model):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _tensors(model):
    """(name, tensor) of every entry of the model's state dict, an offloaded one read back from its offload."""
    for name, p in model.state_dict().items():
        if p.is_meta:
            from accelerate.utils import align_module_device

            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner)
            with align_module_device(module):
                yield name, getattr(module, leaf).detach().clone()
        else:
            yield name, p


def records_hash(records) -> str:
    """Hash of records' content (every field of each record: id, input, output, task, split, subject), in order."""
    return stable_hash([r if isinstance(r, (str, dict)) else {k: v for k, v in to_jsonable(r).items() if k != "meta"}
                        for r in records], n=32)


def key_parts(**parts) -> dict:
    """A content key: each named part hashed on its own, and the whole. `key_change` names the parts that differ."""
    hashed = {name: stable_hash(value) for name, value in parts.items()}
    return {"key": stable_hash(hashed), "parts": hashed}


def key_change(saved, key: dict) -> str | None:
    """None when `saved` (a key_parts dict read back, or anything else) is `key`; else why not, in a few words."""
    if not isinstance(saved, dict) or not isinstance(saved.get("parts"), dict):
        return "no content key was recorded for it"
    if saved.get("key") == key["key"]:
        return None
    theirs = saved["parts"]
    changed = [name for name, h in key["parts"].items() if theirs.get(name) != h]
    changed += [name for name in theirs if name not in key["parts"]]
    return f"{', '.join(_PART_NAMES.get(c, c) for c in changed)} changed" if changed else "its key changed"


# how key_change names a part in its one-line reason
_PART_NAMES = {"model": "the model's files (weights, config or tokenizer)", "data": "the records' text",
               "trace": "the trace it used", "config": "its settings", "layers": "its layers",
               "scores": "the scores taken", "windows": "the windows"}


def model_fingerprint(model) -> str:
    """Hash of parameter names, shapes and leading bytes: tells two checkpoints apart cheaply. A model whose layers
    are offloaded (meta tensors until a forward, models.load_pretrained with an offload folder) has its offloaded
    tensors read back one module at a time, so it gets the fingerprint of the same weights loaded in one piece."""
    h = hashlib.sha256()
    for name, p in _tensors(model):
        t = p.detach().flatten()[:4096].float().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def model_name(model) -> str:
    return str(getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "") or "unnamed")


def provenance(model=None, data: Any = None, config: Any = None, seed: int | None = None, **extra) -> dict:
    rec = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    if model is not None:
        rec["model"] = {"name": model_name(model), "fingerprint": model_fingerprint(model),
                        "architecture": type(model).__name__}
    if data is not None:
        rec["data"] = to_jsonable(data)
    if config is not None:
        rec["config"] = to_jsonable(config)
    if seed is not None:
        rec["seed"] = seed
    rec.update(to_jsonable(extra))
    return rec


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to a temp file beside `path`, then rename it over `path`. A failed write (disk full, read-only)
    is an OutputError naming `path`, and leaves the old file and no temp behind. The temp's name carries the PID,
    so a killed writer's leftover is recognised (workbench.outputs.remove_stale_temps)."""
    path = Path(path)
    with named_write_errors("file", path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared like any other file
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


class JsonlLog:
    """Append-only jsonl log beside a run's outputs: one line per event, flushed at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: str, **fields) -> None:
        row = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"), "event": event}
        row.update(to_jsonable(fields))
        with named_write_errors("log", self.path), self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, allow_nan=False) + "\n")
