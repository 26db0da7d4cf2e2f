"""The user-facing error types. Each message names the thing at fault and what was expected.

Every stage raises these and none of them imports a stage, so any module may import this one."""
from __future__ import annotations

import reprlib


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
