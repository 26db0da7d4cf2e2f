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


# exit codes: 0 done; 2 bad input (one `error:` line); 3 results written but some figures were not (`run`, with a
# warning naming each); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM). Both interruptions end the child
# processes the command started, and the same command resumes from the last finished stage or checkpoint.
EXIT_FIGURES_INCOMPLETE = 3


def _terminate(signum, frame):
    """SIGTERM: raise Terminated in the main thread. Python ignores (prints and drops) an exception raised inside a
    finalizer (`__del__`), and a signal can arrive while the garbage collector runs one: there the signal is sent
    again 50 ms later instead, to land outside it."""
    import os
    import signal
    import threading

    from .errors import Terminated

    f = frame
    while f is not None:
        if f.f_code.co_name == "__del__":
            timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM))
            timer.daemon = True
            timer.start()
            return
        f = f.f_back
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    import signal
    import threading

    from .errors import Terminated, UserError, clip

    # SIGTERM unwinds like Ctrl-C, so every `finally` runs: child processes are ended and locks released
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return int(args._run(args) or 0)
    except UserError as e:  # bad input: one clear line, no traceback
        print(f"workbench {args.command}: error: {clip(e, 1000)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"workbench {args.command}: terminated; resume with the same command", file=sys.stderr)
        return 143
    except KeyboardInterrupt:  # Ctrl-C: every long step resumes from its last checkpoint or finished stage
        print(f"workbench {args.command}: interrupted; resume with the same command", file=sys.stderr)
        return 130
    except OSError as e:  # a file access the named-error paths do not cover: still one line naming the file
        from .errors import failure_reason

        reason = failure_reason(e)
        if reason is None:
            raise
        print(f"workbench {args.command}: error: could not access {e.filename or 'a file'} ({reason})", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
