"""Thin command-line front end: `workbench <command> ...`.

Each command lives in `workbench/commands/<name>.py` with `add_parser(subparsers)`
and `run(args) -> int`; this file only discovers and dispatches them.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


def build_parser() -> argparse.ArgumentParser:
    from . import commands

    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from .errors import UserError

    try:
        return int(args._run(args) or 0)
    except UserError as e:  # bad input: one clear line, no traceback
        print(f"workbench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every long step resumes from its last checkpoint or finished stage
        print(f"workbench {args.command}: interrupted; resume with the same command", file=sys.stderr)
        return 130
    except OSError as e:  # a file access the named-error paths do not cover: still one line naming the file
        from .outputs import failure_reason

        reason = failure_reason(e)
        if reason is None:
            raise
        print(f"workbench {args.command}: error: could not access {e.filename or 'a file'} ({reason})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
