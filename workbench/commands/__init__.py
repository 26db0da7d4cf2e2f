"""One module per CLI command: `add_parser(subparsers)` and `run(args) -> int`.

Here: the flags several commands share (model-loading opt-ins, the record length bound)."""
from __future__ import annotations


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
