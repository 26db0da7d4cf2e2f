"""Which corpus a run works on: a LUME directory, or the one a built-in organism was trained on.

`data="organism"` means the corpus saved beside the organism the model spec names (`organism[:name]`), built first
if needed; any other value is a LUME directory. The pipeline and every command resolve their data here.
"""
from __future__ import annotations

from pathlib import Path

from . import organism
from .data import Corpus, load_lume
from .errors import ConfigError
from .models import organism_name


def load_corpus(data: str | Path, model_spec) -> tuple[Corpus, Path | None]:
    """(corpus, the organism directory it was read from, or None for a LUME directory)."""
    if str(data) != "organism":
        return load_lume(data), None
    name = organism_name(model_spec)
    if name is None:
        raise ConfigError(f"data 'organism' is the corpus of a built-in organism, but the model is {model_spec!r}; "
                          "give organism[:name] as the model, or a LUME directory as the data")
    path = organism.build(name, progress=False)
    return organism.load_corpus(path), path
