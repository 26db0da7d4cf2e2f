"""`workbench <command> ...` under `accelerate launch`, with what tests/test_distributed.py needs and no flag gives:

    accelerate launch ... tests/accelerate_driver.py [--force-fsdp] [--kill-at N] unlearn --method ... --out ...

--force-fsdp  accelerate selects FSDP only on GPUs (on CPU it wraps with DDP, whatever the config says); this sets
              the distributed type to FSDP after accelerate has read the config's FSDP settings (FSDP_* variables
              the launcher sets from configs/accelerate/fsdp.yaml), so FSDP2 runs on CPU with gloo.
--kill-at N   the main process SIGKILLs itself right after optimizer step N (and its checkpoint, if one is due);
              the launcher then stops the other process, as it would after a crash.
"""
from __future__ import annotations

import os
import signal
import sys


def force_fsdp() -> None:
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* settings of the launch
    acc = Accelerator(cpu=True)
    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP
    PartialState().distributed_type = DistributedType.FSDP


def kill_at(step: int) -> None:
    import workbench.editors as editors
    from workbench import distributed

    unlearn = editors.unlearn

    def on_step(s):
        if s == step and distributed.is_main():
            os.kill(os.getpid(), signal.SIGKILL)

    editors.unlearn = lambda *args, **kw: unlearn(*args, on_step=on_step, **kw)


def main(argv: list[str]) -> int:
    from workbench.cli import main as workbench

    while argv and argv[0].startswith("--"):
        flag = argv.pop(0)
        if flag == "--force-fsdp":
            force_fsdp()
        elif flag == "--kill-at":
            kill_at(int(argv.pop(0)))
        else:
            raise SystemExit(f"accelerate_driver: unknown flag {flag}")
    return workbench(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
