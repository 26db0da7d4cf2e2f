"""Several processes of one run, started by `accelerate launch`: who writes, and how work is split and gathered.

A run started without a launcher (or a launch of one process) is one process: every function here is then the
identity, and accelerate is not even imported. Under `accelerate launch` with several processes, accelerate's
`PartialState` holds the process group (gloo on a CPU-only machine, nccl on GPUs):

    is_main()                       the process that writes outputs, logs and checkpoints (the others write nothing)
    split(items, model)             this process's contiguous part of `items` (accelerate's split_between_processes);
                                    all of them when `model` is sharded across the processes (FSDP, DeepSpeed ZeRO-3),
                                    whose every forward needs all processes in step
    gather(found)                   {index: value} from every process, merged (every process gets the whole)
    on_main(fn, what[, share])      fn() on the main process (its result sent to all with share); the others
                                    wait, and fail too if it failed
    main_locked(path, what)         the output's lock, held by the main process

Work is split in whole batches, the batches one process would run: each item meets exactly the computation it
meets in one process, so gathered results equal one process's bit for bit (on the same device and thread count).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")


def launched() -> bool:
    """True when this process is one of several started together (WORLD_SIZE > 1, as torchrun and accelerate set)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def state():
    """accelerate's PartialState of this launch (its process group is created on the first call); None for one
    process. A machine without CUDA runs the processes on CPU with gloo."""
    if not launched():
        return None
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    s = state()
    return s is None or s.is_main_process


def device() -> torch.device | None:
    """The device of this process in a launch (cuda:<local rank> on GPUs, cpu otherwise); None for one process."""
    s = state()
    return None if s is None else s.device


def replicated(model) -> bool:
    """True when every process holds the whole of `model` (a plain module or DDP), so processes can run different
    batches; False for FSDP (DTensor parameters) and DeepSpeed ZeRO-3 (partitioned parameters), where every
    forward gathers parameters from all processes and all of them must run the same forwards."""
    from torch.distributed.tensor import DTensor

    for p in model.parameters():
        return not (isinstance(p, DTensor) or hasattr(p, "ds_id"))
    return True


def split(items: Sequence[T], model=None) -> list[T]:
    """This process's contiguous share of `items` (the first processes take one more when they do not divide
    evenly); all of `items` for one process or a model sharded across the processes (see `replicated`)."""
    s = state()
    items = list(items)
    if s is None or (model is not None and not replicated(model)):
        return items
    with s.split_between_processes(items) as mine:
        return list(mine)


def gather(found: dict[int, Any]) -> dict[int, Any]:
    """The union of every process's {index: value} (every process receives it; tensor values on the CPU); `found`
    itself for one process."""
    if state() is None:
        return found
    from accelerate.utils import gather_object

    merged: dict[int, Any] = {}
    # tensors travel through the CPU: a pickled GPU tensor would land on the sender's GPU number in the receiver
    for i, value in gather_object([(i, v.cpu() if torch.is_tensor(v) else v) for i, v in found.items()]):
        merged[i] = value
    return merged


def broadcast(value: T) -> T:
    """The main process's `value`, on every process."""
    if state() is None:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def on_main(fn: Callable[[], T], what: str, share: bool = False) -> T | None:
    """fn() (a write, or a read of what the main process wrote) on the main process only; with `share` its result
    goes to every process, else the others get None once it is done. If it fails, the main process raises its error
    and the others an error of the same kind naming `what`, so that no process waits for ever for a dead partner."""
    if state() is None:
        return fn()
    error, result = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as e:  # re-raised below, after the others have heard of it
            error = e
    failed, shared = broadcast((None if error is None else (type(error).__name__, str(error)),
                                result if share else None))
    if error is not None:
        raise error
    if failed is not None:
        from .errors import UserError

        kind = next((c for c in UserError if c.__name__ == failed[0]), RuntimeError)
        raise kind(f"the main process failed at the {what}: {failed[1]}")
    return result if is_main() else shared


@contextlib.contextmanager
def main_locked(path, what: str) -> Iterator[None]:
    """`outputs.locked(path, what)` on the main process; the other processes of a launch write nothing there."""
    if not is_main():
        yield
        return
    from .outputs import locked

    with locked(path, what):
        yield
