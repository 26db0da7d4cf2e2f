"""Resumable checkpoints that hold tensors and plain data only: loading one can never run code.

One safetensors file: every tensor of the state (trainable parameters, optimizer moments, RNG state, best-so-far
weights) in its body, and everything else (step, phase, run key, editor state, evals) as JSON in its header
metadata, where each tensor is a reference `{"$tensor": key}`. Dicts with non-string keys (an optimizer's
per-parameter state) and tuples (Python's RNG state) are tagged so they come back as they went in. safetensors
parses a bounds-checked header and raw bytes, never a pickle; a pickle (torch.save's format) at the checkpoint
path is refused, never unpickled.

    save_checkpoint(path, {"step": 3, "params": {"w": tensor}, "rng": (3, (1, 2), None)})
    state = load_checkpoint(path)     # the same structure back, tensors bit-identical
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import torch

from ..errors import EditError

_TENSOR, _TUPLE, _ITEMS = "$tensor", "$tuple", "$items"
_META_KEY = "workbench_checkpoint"
_FORMAT = 1


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        # safetensors stores contiguous, unshared buffers; a clone is both
        tensors[key] = obj.detach().to("cpu").clone().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {_ITEMS: [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state holds a {type(obj).__name__}; only tensors and plain data are stored")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _TUPLE in obj:
            return tuple(_decode(v, tensors) for v in obj[_TUPLE])
        if _ITEMS in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj[_ITEMS]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` to `path` atomically (temp file beside it, then rename); a failed write leaves no temp."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps({"format": _FORMAT, "state": _encode(state, tensors)})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={_META_KEY: meta})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _looks_like_pickle(path: Path) -> bool:
    """torch.save writes a zip archive (or, legacy, a raw pickle: the PROTO opcode, then protocol 2-5)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def load_checkpoint(path: str | Path) -> dict:
    """The state saved by `save_checkpoint`. Anything else at `path` is an EditError, and is never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = (fh.metadata() or {}).get(_META_KEY)
        if meta is None:
            raise ValueError("no workbench checkpoint header")
        doc = json.loads(meta)
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"checkpoint format {doc.get('format') if isinstance(doc, dict) else doc!r}, "
                             f"expected {_FORMAT}")
        return _decode(doc["state"], load_file(str(path)))
    except (SafetensorError, ValueError, KeyError, TypeError, OSError) as e:
        what = ("is a pickle (torch.save's format), which can run code when loaded" if _looks_like_pickle(path) else
                f"is not a readable workbench checkpoint ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''})")
        raise EditError(f"checkpoint {path} {what}; it is not loaded. Delete it (or its work directory "
                        f"{path.parent}) to start the run afresh, or pick another --out") from None


# ---------------------------------------------------------------- a training run's checkpoint (editors/loop.py)
def rng_state() -> dict:
    """The torch and Python RNG states, which a resumed run restores to draw what the killed one would have."""
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def read_run_checkpoint(work_dir: Path, ckpt_path: Path) -> dict | None:
    """The run's checkpoint at `ckpt_path` in `work_dir` (None: none yet), after removing a killed write's temp
    files. A pickle checkpoint there is refused, never read."""
    from ..outputs import remove_stale_temps

    pickled = work_dir / "checkpoint.pt"
    if pickled.exists():  # torch.save's pickle format: loading it could run code, so it is never read
        raise EditError(f"{pickled} is a pickle checkpoint, which can run code when loaded; it is not loaded. "
                        f"Delete {work_dir} to start the run afresh, or pick another --out")
    remove_stale_temps(work_dir)
    return load_checkpoint(ckpt_path) if ckpt_path.is_file() else None


def check_resumable(ck: dict, run_key: dict[str, str], ckpt_path: Path, work_dir: Path) -> None:
    """Refuse a checkpoint of another run: another model, other data or another config (named in the error)."""
    theirs = ck.get("run_key") if isinstance(ck.get("run_key"), dict) else {}
    what = {"model": "the model (fingerprint)", "data": "the data", "config": "the config"}
    differ = [f"{what.get(k, k)} {theirs.get(k)} != {v}" for k, v in run_key.items() if theirs.get(k) != v]
    if differ:
        raise EditError(f"{ckpt_path} was written by a different run: {'; '.join(differ)} (checkpoint != this run). "
                        f"Resuming would continue another run's weights; delete {work_dir} or pick another --out")


def write_run_checkpoint(ckpt_path: Path, payload: dict, saved_step: int | None) -> None:
    """Save `payload` at `ckpt_path`; a failed write names the last good checkpoint (of step `saved_step`), which it
    leaves intact."""
    from ..errors import named_write_errors

    last_good = (f"the last good checkpoint {ckpt_path} (step {saved_step}) is intact"
                 if saved_step is not None else "no checkpoint was written yet")
    with named_write_errors("checkpoint", ckpt_path, last_good):
        save_checkpoint(ckpt_path, payload)
