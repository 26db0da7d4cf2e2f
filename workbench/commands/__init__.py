"""One module per CLI command: `add_parser(subparsers)` and `run(args) -> int`.

Here: the flags several commands share (model-loading opt-ins, the record length bound)."""
from __future__ import annotations

from pathlib import Path


def add_model_safety_args(p) -> None:
    """Opt-ins to load a model's own Python code or pickled weights; both are refused by default."""
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the Python code a model directory or hub repo ships (config auto_map); off by default")
    p.add_argument("--allow-bin", action="store_true",
                   help="load pickled pytorch_model.bin weights (can run code); by default only safetensors load")


def model_options(args) -> dict:
    """load_model keyword arguments from the flags of `add_model_safety_args`."""
    return {"trust_remote_code": bool(getattr(args, "trust_remote_code", False)),
            "allow_pickle_weights": bool(getattr(args, "allow_bin", False))}


def add_length_args(p) -> None:
    """The bound on one record's length (workbench.data.limits), for commands that load LUME data."""
    from ..data.limits import MAX_RECORD_TOKENS, ON_LONG

    p.add_argument("--max-record-tokens", type=int, default=MAX_RECORD_TOKENS,
                   help=f"refuse (or cut) records longer than this many tokens (default {MAX_RECORD_TOKENS})")
    p.add_argument("--long-records", choices=ON_LONG, default="error",
                   help="a record over --max-record-tokens: 'error' (default) or 'truncate' with a warning")


def check_length_args(args) -> None:
    """The length flags, checked before anything is loaded."""
    from ..data.limits import check_bound

    check_bound(args.max_record_tokens, args.long_records)


def add_placement_args(p) -> None:
    """A model larger than one device: its layers spread over several (models.load_pretrained's max_memory)."""
    p.add_argument("--max-memory", metavar="DEV=SIZE,...",
                   help="spread the model's layers over devices, each given its memory, e.g. '0=20GiB,1=20GiB,"
                        "cpu=64GiB' (GPU index or cpu; sizes in bytes or with a unit); 'auto' lets transformers size "
                        "them (device_map='auto')")
    p.add_argument("--offload-folder", metavar="DIR",
                   help="with --max-memory: where layers that fit no device go (read back to the CPU at each forward)")


def placement_options(args) -> dict:
    """load_model's device / device_map / max_memory / offload_folder from --device, --max-memory, --offload-folder
    (and, under `accelerate launch`, the process's own device), checked before anything is loaded."""
    from ..distributed import launched
    from ..errors import ConfigError

    spec, folder = getattr(args, "max_memory", None), getattr(args, "offload_folder", None)
    if spec is None:
        if folder is not None:
            raise ConfigError("--offload-folder needs --max-memory (it holds the layers that fit no device)")
        return {"device": process_device(args.device)}
    if args.device is not None:
        raise ConfigError(f"--device {args.device} and --max-memory both place the model; give one of them")
    if launched():
        raise ConfigError("--max-memory spreads one model over several devices, but under accelerate launch every "
                          "process holds its own copy on its own device; use one of the two")
    if spec.strip() == "auto":
        return {"device_map": "auto", "offload_folder": folder}
    from accelerate.utils import convert_file_size_to_int

    budget: dict = {}
    for item in spec.split(","):
        dev, _, size = item.partition("=")
        dev, size = dev.strip(), size.strip()
        value = int(size) if size.isdigit() else size  # a bare number is bytes
        try:
            if not (dev == "cpu" or dev.isdigit()) or convert_file_size_to_int(value) <= 0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--max-memory {spec!r}: {item!r} is not DEVICE=SIZE; expected e.g. '0=20GiB,1=20GiB,"
                              "cpu=64GiB' (a GPU index or cpu; a size like 500MB or 20GiB, or bytes)") from None
        budget[int(dev) if dev.isdigit() else dev] = value
    return {"max_memory": budget, "offload_folder": folder}


def process_device(device: str | None) -> str | None:
    """--device, or under `accelerate launch` this process's own device (cuda:<local rank>, or cpu)."""
    from ..distributed import device as launched_device

    if device is not None:
        return device
    dev = launched_device()
    return None if dev is None else str(dev)


def check_out(out, what: str, *specs) -> None:
    """`out` (a command's output directory) is clear of every source of `specs` (models), before any work."""
    from ..errors import ConfigError
    from ..harness import source_dirs
    from ..outputs import check_not_source

    src = check_not_source(out, source_dirs(*specs))
    if src is not None:
        raise ConfigError(f"{what} {Path(out).expanduser().resolve()} overlaps the source model directory {src}; a "
                          "command never writes into its sources or the organism cache: choose a directory outside it")
