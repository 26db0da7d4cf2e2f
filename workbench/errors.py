"""The user-facing error types. Each message names the thing at fault and what was expected."""
from __future__ import annotations

from .data.records import DataError
from .models import ModelLoadError


class ConfigError(ValueError):
    """A configuration (CLI flags, YAML/JSON file, dataclass) that cannot work."""


class TraceError(ValueError):
    """A prompt, subject, answer, site or kind that tracing cannot use."""


class EditError(ValueError):
    """An unlearning run that cannot start or had to stop (bad selection, NaN loss, ...)."""


class OutputError(RuntimeError):
    """An output that cannot be written: disk full, read-only, not a directory, or in use by another run."""


# What the CLI turns into one clear line instead of a traceback.
UserError = (ConfigError, DataError, ModelLoadError, TraceError, EditError, OutputError, FileNotFoundError)
