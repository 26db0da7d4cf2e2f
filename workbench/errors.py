"""The user-facing error types. Each message names the thing at fault and what was expected.

Every stage raises these and none of them imports a stage, so any module may import this one."""
from __future__ import annotations

import contextlib
import errno
import re
import reprlib
from pathlib import Path
from typing import Iterator


class ConfigError(ValueError):
    """A configuration (CLI flags, YAML/JSON file, dataclass) that cannot work."""


class DataError(ValueError):
    """Bad input data: the message names the file/record and what was expected."""


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says what was given and what was expected."""


class TraceError(ValueError):
    """A prompt, subject, answer, site or kind that tracing cannot use."""


class EditError(ValueError):
    """An unlearning run that cannot start or had to stop (bad selection, NaN loss, ...)."""


class OutputError(RuntimeError):
    """An output that cannot be written: disk full, read-only, not a directory, or in use by another run."""


class FigureExportError(ConfigError):
    """Static export (PNG/SVG/PDF) is impossible here, typically because no Chrome/Chromium is installed."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every `finally` runs (child processes are ended, locks released)."""


# the longest quote of an input an error message carries: a 20 MB field or an alias-bomb list is named, not copied
QUOTE_CHARS = 200
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = QUOTE_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3


def quote(value, limit: int = QUOTE_CHARS) -> str:
    """`repr(value)` for an error message, at most about `limit` characters: long strings and deep or long
    containers are abbreviated (reprlib, which never builds the whole repr), and a cut says how long the value was."""
    text = _REPR.repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if isinstance(value, (str, bytes)) and len(value) > limit:
        text += f" ({len(value)} characters)"
    return text


def clip(text: str, limit: int = 2 * QUOTE_CHARS) -> str:
    """Text (an exception's message, a path) cut to `limit` characters for an error message."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# What the CLI turns into one clear line instead of a traceback.
UserError = (ConfigError, DataError, ModelLoadError, TraceError, EditError, OutputError, FileNotFoundError)


# --- write failures named: which write, where, why (outputs, provenance and the editors raise these) ---------
# errno of the write failures a user can fix (space, permissions, a read-only mount, quota, file size limit)
_FIXABLE = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.EDQUOT: "disk quota exceeded",
            errno.EFBIG: "file too large"}
# the same conditions as Rust I/O error kinds, for messages that name the kind but not the errno
_RUST_KINDS = {"StorageFull": "disk full", "ReadOnlyFilesystem": "read-only file system",
               "PermissionDenied": "permission denied", "FileTooLarge": "file too large",
               "QuotaExceeded": "disk quota exceeded"}



def failure_reason(exc: BaseException) -> str | None:
    """'disk full', 'read-only file system', ... when `exc` is a write failure a user can fix; else None."""
    if isinstance(exc, OSError) and exc.errno in _FIXABLE:
        return _FIXABLE[exc.errno]
    text = str(exc)
    m = re.search(r"os error (\d+)", text)  # safetensors: "I/O error: No space left on device (os error 28)"
    if m and int(m.group(1)) in _FIXABLE:
        return _FIXABLE[int(m.group(1))]
    for kind, reason in _RUST_KINDS.items():
        if kind in text:
            return reason
    return None


def write_error(what: str, path: str | Path, exc: BaseException, last_good: str | None = None) -> OutputError:
    """The OutputError of a failed write: which write, where, why, and what is still safe."""
    reason = failure_reason(exc) or f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    msg = f"could not write the {what} {path} ({reason})"
    if last_good:
        msg += f"; {last_good}"
    if reason in ("disk full", "disk quota exceeded", "file too large"):
        msg += "; free space and rerun the same command to resume"
    elif reason in ("read-only file system", "permission denied", "operation not permitted"):
        msg += "; choose a writable --out"
    return OutputError(msg)


@contextlib.contextmanager
def named_write_errors(what: str, path: str | Path, last_good: str | None = None) -> Iterator[None]:
    """Turn a fixable write failure inside the block into an OutputError (see `write_error`)."""
    try:
        yield
    except OutputError:
        raise
    except Exception as e:
        if failure_reason(e) is None:
            raise
        raise write_error(what, path, e, last_good) from None
