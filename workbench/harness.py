"""The run harness: what every study and command asks for before its own work, written once.

    spec = ModelSpec.parse("organism:micro")            # organism[:name] | a local directory | a hub id
    model, tok = load_model(spec)                        # the one loader; a built-in organism is built first
    corpus = load_corpus("organism", spec, tok)          # the organism's corpus or a LUME directory, length-bounded
    twin = load_twin("auto", spec, "organism")           # the retain-only twin, where there is one
    study = Study("runs/x", "run directory", sources=source_dirs(spec), claim="run", log="run.log.jsonl")
    with study:                                          # checked above, before any work; locked from here
        stage = study.stage("trace", model=key, data=records_hash(facts), config={...})
        if not stage.done(out_file): ...; stage.finish()
        study.log("event", ...); study.figures("name", lambda: fig)

A study (the pipeline, localize, sweep, groundtruth, and the trace, patch, unlearn and evaluate commands) is one
module that asks for these. Where results go is the harness's: a directory that is no source model's and lies around
none (checked when the Study is made, so a bad output fails before any model is loaded), claimed by one kind of study
where the study claims it, locked while one process writes (a second names the PID that holds it), a killed run's temp
files removed. A stage's artifact is reused only when the content key it recorded (`provenance.key_parts`: model,
data, config) is this run's; otherwise it runs again, and the log and the console say which input changed.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, ModelLoadError
from .provenance import JsonlLog, atomic_write_json, key_change, key_parts


# ---------------------------------------------------------------- model specs and loading
@dataclass(frozen=True)
class ModelSpec:
    """A model as a user names it: a built-in organism (`organism` or `organism:NAME`), a local directory saved by
    `save_pretrained`, or a hub id."""
    text: str
    organism: str | None     # the built-in organism's name, else None

    @classmethod
    def parse(cls, spec) -> "ModelSpec":
        if isinstance(spec, ModelSpec):
            return spec
        if spec is None or not str(spec).strip():
            raise ConfigError(f"model spec {spec!r} is empty; expected 'organism[:name]', a directory or a hub id")
        from .models import organism_name

        return cls(str(spec), organism_name(spec))

    @property
    def local_dir(self) -> Path | None:
        """The directory the model is read from, when the spec is an existing local one."""
        p = Path(self.text).expanduser()
        return p.resolve() if self.organism is None and p.is_dir() else None

    def path(self, progress: bool = False) -> str | Path:
        """What `models.load_pretrained` reads: the organism's cache entry (built first if needed), else the spec."""
        if self.organism is None:
            return self.text
        from . import organism

        return organism.build(self.organism, progress=progress)

    def twin(self) -> "ModelSpec | None":
        """The retain-only twin of a built-in organism (fine-tuned from its base without the forget set), else None."""
        if self.organism is None:
            return None
        from . import organism

        try:
            return ModelSpec.parse(f"organism:{organism.retain_twin(self.organism)}")
        except ModelLoadError:   # a twin itself, or an organism without one
            return None


def source_dirs(*specs) -> list[Path]:
    """The directories the models of `specs` are read from: each local model directory, and the organism cache for a
    built-in organism (or "twin"/"auto", which name one). A study never writes into or around any of them."""
    from .organism import cache_root

    out = []
    for spec in specs:
        if spec is None:
            continue
        if str(spec) in ("twin", "auto") or ModelSpec.parse(spec).organism is not None:
            out.append(cache_root())
        elif Path(str(spec)).expanduser().exists():
            out.append(Path(str(spec)).expanduser().resolve())
    return list(dict.fromkeys(out))


def load_model(spec, dtype=None, device: str | None = None, device_map=None, *, progress: bool = False, **kw):
    """`(model, tokenizer)` for any model spec, the model in eval mode: a built-in organism is built (once, then
    cached) and loaded from its cache entry; a directory or hub id is loaded by `models.load_pretrained`, with its
    options (placement over devices, `trust_remote_code`, `allow_pickle_weights`).

        model, tok = load_model("organism")                      # the embedded default
        model, tok = load_model("organism:micro")                # the tiny one the tests use
        model, tok = load_model("allenai/OLMo-1B-0724-hf")       # weights in the HF cache or from the hub
    """
    from .models import load_pretrained

    return load_pretrained(ModelSpec.parse(spec).path(progress), dtype, device, device_map, **kw)


def load_organism(name: str = "default"):
    """(model, tokenizer, corpus) of a built-in organism, building it first if needed."""
    spec = ModelSpec.parse(f"organism:{name}")
    model, tok = load_model(spec)
    return model, tok, load_corpus("organism", spec)


def load_corpus(data, model_spec, tok=None, max_tokens: int | None = None, on_long: str = "error"):
    """The corpus a study works on: `data="organism"`, the corpus saved beside the organism the model spec names
    (built first if needed); anything else, a LUME directory. With `tok`, every record is bounded to `max_tokens`
    tokens (`data.limits.bound_records`: refused, or cut with on_long="truncate")."""
    from . import organism
    from .data import load_lume
    from .data.limits import MAX_RECORD_TOKENS, bound_records

    if str(data) != "organism":
        corpus = load_lume(data)
    else:
        spec = ModelSpec.parse(model_spec)
        if spec.organism is None:
            raise ConfigError(f"data 'organism' is the corpus of a built-in organism, but the model is "
                              f"{model_spec!r}; give organism[:name] as the model, or a LUME directory as the data")
        corpus = organism.load_corpus(spec.path())
    if tok is None:
        return corpus
    return bound_records(corpus, tok, MAX_RECORD_TOKENS if max_tokens is None else max_tokens, on_long)


def load_twin(twin, model_spec, data="organism", *, dtype=None, device=None, progress: bool = False, say=None):
    """The retain-only baseline as (model, tokenizer, spec), or None: `twin` "auto" is the built-in organism's twin
    where the model is one and the data its corpus, None is no baseline, anything else a model spec."""
    if twin is None:
        return None
    if str(twin) == "auto":
        spec = ModelSpec.parse(model_spec).twin() if str(data) == "organism" else None
        if spec is None:
            return None
        if say is not None:
            say(f"      retain-only baseline {spec.text} (trained without the forget set; built once, then cached)")
    else:
        spec = ModelSpec.parse(twin)
    return (*load_model(spec, dtype=dtype, device=device, progress=progress), spec)


# ---------------------------------------------------------------- where results go
class Study:
    """One study's output directory. Made: every output checked (not a file, no source model's, claimable by this
    study, the figures directory writable), before any work. Entered: the directory made and locked for this
    process (with `distributed`, by the main process of an `accelerate launch` only), claimed, a killed run's temp
    files removed; `log` (a JsonlLog there, or a no-op off the main process) and `figures` (a FigureExport into
    <dir>/figures) ready."""

    def __init__(self, out, what: str, *, sources=(), claim: str | None = None, legacy: tuple[str, ...] = (),
                 log: str | None = None, figures=None, formats=None, distributed: bool = False):
        from .outputs import check_claimable, check_not_source, check_output_path

        self.dir = Path(out).expanduser().resolve()
        self.what, self.claim, self.log_name, self.formats = what, claim, log, formats
        self.publish_to = Path(figures).expanduser().resolve() if figures else None
        self.distributed = distributed
        sources = [s for s in sources if s is not None]
        for name, path in ((what, self.dir), ("figures directory", self.publish_to)):
            if path is None:
                continue
            if path.exists() and not path.is_dir():
                raise ConfigError(f"{name} {path} exists and is not a directory")
            src = check_not_source(path, sources)
            if src is not None:
                raise ConfigError(f"{name} {path} overlaps the source model directory {src}; a study never writes "
                                  "into or removes its sources or the organism cache: choose a directory outside it")
        if claim is not None:
            check_claimable(self.dir, claim, legacy=legacy)
        if self.publish_to is not None:
            check_output_path(self.publish_to, "figures directory")
        self._stack = contextlib.ExitStack()
        self.log = lambda event, **fields: None
        self._figures = None

    @property
    def main(self) -> bool:
        from . import distributed

        return not self.distributed or distributed.is_main()

    def __enter__(self) -> "Study":
        from .outputs import check_writable, claim, locked, remove_stale_temps

        if self.main:
            check_writable(self.dir, self.what)
            self._stack.enter_context(locked(self.dir, self.what))
            if self.claim is not None:
                claim(self.dir, self.claim)
            remove_stale_temps(self.dir)
            if self.log_name:
                self.log = JsonlLog(self.dir / self.log_name)
        return self

    def __exit__(self, *exc) -> bool:
        self._stack.close()
        return False

    @property
    def figures(self):
        """The study's FigureExport (made on first use: it asks whether a browser exists)."""
        if self._figures is None:
            from .figures import FigureExport

            self._figures = FigureExport(self.dir / "figures", formats=self.formats, log=self.log)
        return self._figures

    def publish(self, pattern: str = "*") -> None:
        """Copy the study's static figures where `figures=` said (the README's figures/), if it said."""
        if self.publish_to is not None:
            self.figures.publish(self.publish_to, pattern)

    def stage(self, name: str, say=print, **parts) -> "Stage":
        return Stage(self.dir, name, self.log, say, **parts)


class Stage:
    """A stage's artifact is reused when the content key it recorded (`.<name>.stamp`) is this run's (resume after a
    kill); else it runs again, and the log (event stage_rerun) and the console say which of its inputs changed."""

    def __init__(self, run_dir: Path, name: str, log, say, **parts):
        self.stamp = run_dir / f".{name}.stamp"
        self.name, self.log, self.say = name, log, say
        self.key = key_parts(**parts)
        try:
            saved = json.loads(self.stamp.read_text())
        except (OSError, ValueError):  # none, or a key written before keys had parts
            saved = None if not self.stamp.exists() else {}
        self.saved = saved if isinstance(saved, dict) or saved is None else {}

    def done(self, *outputs: Path) -> bool:
        if self.saved is None:  # never ran here
            return False
        reason = key_change(self.saved, self.key)
        if reason is None and self.saved.get("state") == "running":
            reason = "an earlier run stopped inside this stage"
        if reason is None and not all(p.exists() for p in outputs):
            reason = "its outputs are missing"
        if reason is None:
            self.log("stage_reused", stage=self.name, key=self.key["key"])
            return True
        self.rerun(reason)
        return False

    def rerun(self, reason: str) -> None:
        self.log("stage_rerun", stage=self.name, reason=reason)
        self.say(f"      {self.name} runs again: {reason}")

    def start(self, **made) -> None:
        """Record that the stage is running and what it is about to make (so a killed run's leftovers are known)."""
        atomic_write_json(self.stamp, {**self.key, "state": "running", "made": made})

    def finish(self, made: dict | None = None, **fields) -> None:
        atomic_write_json(self.stamp, {**self.key, "state": "done", "made": made or {}})
        self.log("stage_done", stage=self.name, key=self.key["key"], **fields)
