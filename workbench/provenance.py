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


def model_fingerprint(model) -> str:
    """Hash of parameter names, shapes and leading bytes: tells two checkpoints apart cheaply. A model whose layers
    are offloaded (meta tensors until a forward, models.load_model with an offload folder) has its offloaded
    tensors read back one module at a time, so it gets the fingerprint of the same weights loaded in one piece."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        if p.is_meta:
            from accelerate.utils import align_module_device

            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner)
            with align_module_device(module):
                p = getattr(module, leaf)
                t = p.detach().flatten()[:4096].float().cpu().contiguous()
        else:
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
    from .outputs import named_write_errors

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
        from .outputs import named_write_errors

        row = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"), "event": event}
        row.update(to_jsonable(fields))
        with named_write_errors("log", self.path), self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, allow_nan=False) + "\n")
