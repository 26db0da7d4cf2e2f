"""One module per CLI command: `add_parser(subparsers)` and `run(args) -> int`.

Here: the model-loading flags every command that loads a model shares."""
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
