"""The user-facing error types. Each message names the thing at fault and what was expected.

Every stage raises these and none of them imports a stage, so any module may import this one."""
from __future__ import annotations


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


# What the CLI turns into one clear line instead of a traceback.
UserError = (ConfigError, DataError, ModelLoadError, TraceError, EditError, OutputError, FileNotFoundError)
