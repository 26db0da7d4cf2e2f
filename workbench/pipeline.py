"""The main job, read top to bottom: model → facts → trace → select → unlearn → evaluate + re-trace → figures.

Each stage writes its artifact into the run directory with a content key (`.<stage>.stamp`): a hash of the model's
files, of the text of the records it read, of its settings and of the keys of the stages it used. A re-run reuses
the artifact when the key is the same, so a killed run resumes where it stopped; when anything it read has changed
the stage runs again, and the log and the console say what changed, in one line.

A run writes only into a directory it made (its claim file, workbench.outputs.claim) and removes only what it made
there. A figure that cannot be written never ends a run whose results are computed: the run finishes, warns, and
lists the figure in summary.json's `figures_incomplete` (`workbench run` then exits 3).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from .configfile import MAX_SAMPLES, MAX_SEED, build, coerce_fields, read_mapping
from .data.limits import MAX_RECORD_TOKENS
from .errors import ConfigError, quote
from .provenance import atomic_write_json, key_change, provenance, records_hash, weights_hash
from .trace_settings import TraceSettings

if TYPE_CHECKING:
    from .harness import Stage, Study


@dataclass
class PipelineConfig:
    # what
    model: str = "organism"          # organism[:name] | local dir | hub id (workbench.harness.load_model)
    data: str = "organism"           # "organism" = the corpus the organism learned | a LUME directory
    out: str = "runs/default"        # run directory (artifacts, report.html, log)
    figures: str | None = "figures"  # also copy the main figures (PNG) here: the README's figures/
    seed: int = 0
    dtype: str | None = None         # float32 | bfloat16 (None: as saved)
    device: str | None = None
    # trace
    task: str | None = "Task2"       # which forget facts to trace (None: every traceable one)
    n_facts: int | None = 24
    # how to trace: the shared defaults of workbench/trace_settings.py (why these, there)
    n_samples: int = TraceSettings.n_samples
    kinds: tuple = TraceSettings.kinds
    position: str = TraceSettings.position   # per-layer score of one fact: "last_subject" (ROME's site), "max", ...
    metric: str = TraceSettings.metric
    min_total_effect: float = TraceSettings.min_total_effect  # facts the noise hurts less are left out, and counted
    # selection
    select_kind: str = "mlp"
    strategy: str = "window"         # window | top-k | threshold
    window: int = 3
    k: int = 3
    threshold: float = 0.5
    # unlearning
    # the default edit: undo, the editor whose "organism" preset (chosen on the validation people) fails the fewest
    # lines of the verdict on the default organism, utility alone (README, "The default edit"); "joint" is the
    # calibrated joint loss the verdict shows to be shallow
    method: str = "undo"
    # named editor preset (the method's `presets`, workbench/editors/<method>.py); "auto": the method's "organism"
    # preset on the built-in default organism (where it has one), else the dataclass defaults; None: those defaults
    preset: str | None = "auto"
    editor: dict = field(default_factory=dict)   # overrides of the editor's config (see workbench/editors/)
    # evaluation
    evaluation: dict = field(default_factory=dict)  # overrides of workbench.evaluation.config.EvalConfig
    retrace_facts: int | None = 16
    # a model trained without the forget set: privleak's baseline, the reference MIA attack's reference and a third
    # report column. "auto": the organism's retain-only twin (built once, cached) on a built-in organism, else none
    retain_baseline: str | None = "auto"
    # layer sweep (optional): the editor at every `sweep_window`-layer window, next to traced importance
    sweep_window: int | None = None
    # the bound on one record's length (workbench.data.limits): a longer record is an error, or cut ("truncate")
    max_record_tokens: int = MAX_RECORD_TOKENS
    long_records: str = "error"

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown pipeline config key(s) {quote(unknown)}; expected some of {sorted(known)}")
        d = dict(d)
        if isinstance(d.get("kinds"), str):  # "mlp" or "resid,mlp": a short list, not its characters
            d["kinds"] = [k.strip() for k in d["kinds"].split(",") if k.strip()]
        return cls(**coerce_fields(cls, d, "pipeline config"))

    @classmethod
    def from_file(cls, path: str | Path) -> "PipelineConfig":
        return cls.from_dict(read_mapping(path, "pipeline config"))


def checked(cfg: PipelineConfig) -> PipelineConfig:
    """`cfg` with every field coerced to its type and every stage's settings validated: a bad value anywhere
    (a method, an editor or evaluation field, n_samples) is a ConfigError before the first stage runs."""
    from .data.limits import check_bound
    from .editors import EDITORS, resolve_config
    from .harness import ModelSpec
    from .models import check_device, resolve_dtype
    from .organism import PRESETS as ORGANISMS
    from .selection import STRATEGIES

    cfg = PipelineConfig.from_dict({f.name: getattr(cfg, f.name) for f in fields(cfg)})

    def need(ok, msg):
        if not ok:
            raise ConfigError(f"pipeline config: {msg}")

    need(cfg.n_facts is None or cfg.n_facts >= 1, f"n_facts must be >= 1 or null (every fact), got {cfg.n_facts}")
    trace_settings(cfg).check(lambda key: f"pipeline config: {key}")
    need(cfg.n_samples <= MAX_SAMPLES, f"n_samples must be <= {MAX_SAMPLES} (it sizes memory), got {cfg.n_samples}")
    need(0 <= cfg.seed <= MAX_SEED, f"seed must be from 0 to {MAX_SEED}, got {cfg.seed}")
    need(cfg.select_kind in cfg.kinds, f"select_kind {cfg.select_kind!r} is not traced; kinds are {list(cfg.kinds)}")
    need(cfg.strategy in STRATEGIES, f"strategy {cfg.strategy!r}: expected one of {STRATEGIES}")
    need(cfg.window >= 1 and cfg.k >= 1, f"window and k must be >= 1, got window={cfg.window}, k={cfg.k}")
    need(cfg.retrace_facts is None or cfg.retrace_facts >= 1, f"retrace_facts must be >= 1, got {cfg.retrace_facts}")
    need(cfg.sweep_window is None or cfg.sweep_window >= 1, f"sweep_window must be >= 1, got {cfg.sweep_window}")
    need(cfg.method in EDITORS, f"method {cfg.method!r}: expected one of {list(EDITORS)}")
    name = ModelSpec.parse(cfg.model).organism
    need(name is None or name in ORGANISMS, f"model {cfg.model!r}: unknown organism; expected one of {sorted(ORGANISMS)}")
    need(cfg.data != "organism" or name is not None,
         f"data 'organism' needs an organism model, but model is {cfg.model!r}; give a LUME directory as data")
    need(cfg.data == "organism" or Path(cfg.data).expanduser().exists(),
         f"data {cfg.data!r} does not exist (expected 'organism' or a LUME directory with forget.jsonl/retain.jsonl)")
    resolve_dtype(cfg.dtype)
    check_bound(cfg.max_record_tokens, cfg.long_records)
    check_device(cfg.device)
    resolve_config(cfg.method, preset=_preset(cfg), overrides={"seed": cfg.seed, **cfg.editor})
    _eval_config(cfg)
    retrace_config(cfg)
    return cfg


def trace_settings(cfg: PipelineConfig) -> TraceSettings:
    """How the run traces: the config's tracing fields as the shared TraceSettings."""
    return TraceSettings(kinds=cfg.kinds, n_samples=cfg.n_samples, metric=cfg.metric, position=cfg.position,
                         min_total_effect=cfg.min_total_effect, seed=cfg.seed)


def retrace_config(cfg: PipelineConfig):
    """What the evaluation re-traces on the original and the edited model: the run's tracing, on retrace_facts."""
    from .evaluation.retrace import TraceConfig

    settings = trace_settings(cfg)
    return TraceConfig(**{f.name: getattr(settings, f.name) for f in fields(TraceSettings)}, n_facts=cfg.retrace_facts)


def _eval_config(cfg: PipelineConfig):
    from .evaluation.attacks import DEFAULT_ATTACKS
    from .evaluation.config import EvalConfig

    # the pipeline runs the recovery attacks unless `evaluation: {attacks: none}` (or a shorter list) says otherwise
    return build(EvalConfig, {"seed": cfg.seed, "attacks": DEFAULT_ATTACKS, **cfg.evaluation}, "evaluation")


def study(cfg: PipelineConfig):
    """The run directory as a harness Study: refused when it is, holds or lies inside a source model directory (a
    previous run's edited_model as `model` and that run's directory as `out` would otherwise replace the source with
    its own edit), or holds what no run wrote; the figures directory checked the same way."""
    from .harness import Study, source_dirs

    return Study(cfg.out, "run directory", sources=source_dirs(cfg.model, cfg.retain_baseline), claim="run",
                 legacy=RUN_FILES, log="pipeline.log.jsonl", figures=cfg.figures)


# what a run directory held before runs claimed theirs: one of those is reused (and claimed), not refused
RUN_FILES = ("pipeline_config.json", "pipeline.log.jsonl")


def _remove_old_edit(edited_dir: Path, stage: "Stage", cfg: PipelineConfig) -> None:
    """Remove the edited model an earlier run in this directory made, to make it again. Only what the unlearn stage
    recorded as made (its files and their content hash) is removed; a link, a source model, a directory the stage
    did not record, one holding other files or changed since, is refused with what is wrong, and left alone."""
    from .harness import source_dirs
    from .outputs import check_not_source

    def refuse(why: str):
        raise ConfigError(f"{edited_dir} is in the way of this run's edited model and {why}; it was not removed: "
                          "move it away or choose another out")

    if edited_dir.is_symlink():
        refuse("is a symbolic link")
    if not edited_dir.is_dir():
        refuse("is not a directory")
    if check_not_source(edited_dir, source_dirs(cfg.model, cfg.retain_baseline)) is not None:
        refuse("is a source model of this run")
    made = ((stage.saved or {}).get("made") or {}).get("edited_model")
    if not isinstance(made, dict) and _legacy_edit(edited_dir, stage):
        made = {"pending": True}
    if not isinstance(made, dict):
        refuse("was not made by a run in this directory (none is recorded in its .unlearn.stamp)")
    if not made.get("pending"):  # a finished edit: exactly what the run wrote, unchanged
        extra = sorted({p.name for p in edited_dir.iterdir()} - set(made.get("files", [])))
        if extra:
            refuse(f"holds files the run did not write ({', '.join(extra[:5])})")
        if weights_hash(edited_dir) != made.get("weights"):
            refuse("was changed after the run wrote it (its weights, config or tokenizer differ)")
    shutil.rmtree(edited_dir)


def _legacy_edit(edited_dir: Path, stage: "Stage") -> bool:
    """An edited model a run wrote before stages recorded what they made: its stamp is the bare key of that time,
    and the directory holds only what `unlearn` writes (model files, unlearn.json, log.jsonl)."""
    from .provenance import model_files

    try:
        bare = stage.stamp.is_file() and stage.stamp.read_text().strip().isalnum()
    except (OSError, UnicodeDecodeError):
        return False
    names = {p.name for p in edited_dir.iterdir()}
    ours = {p.name for p in model_files(edited_dir)} | {"unlearn.json", "log.jsonl"}
    return bare and "unlearn.json" in names and names <= ours and not any(p.is_dir() for p in edited_dir.iterdir())


def run(cfg: PipelineConfig, progress: bool = True, say=print) -> Path:
    """Run the pipeline; returns the path of report.html. The whole config and every output path are checked first;
    the run directory is locked for the run (a second run on it is an OutputError naming the PID that holds it),
    and a child process the run started is ended when the run ends, however it ends."""
    cfg = checked(cfg)
    with study(cfg) as run_study, contextlib.ExitStack() as children:
        return _run(cfg, run_study, progress, say, children)


def _run(cfg: PipelineConfig, run_study: "Study", progress: bool, say, children: contextlib.ExitStack) -> Path:
    import torch

    from .harness import ModelSpec, load_model
    from .models import weights_key

    run_dir, log = run_study.dir, run_study.log
    atomic_write_json(run_dir / "pipeline_config.json", {"config": asdict(cfg), "provenance": provenance(
        config=asdict(cfg), seed=cfg.seed, data=cfg.data)})
    log("start", config=asdict(cfg))
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    spec = ModelSpec.parse(cfg.model)

    # 1. model and data ------------------------------------------------------------------------------
    model_path, twin_build = _build_organism(cfg, spec.organism, run_dir, children, progress, say, t_start)
    source = model_path or spec.text
    model, tok, corpus = load_inputs(cfg, model_path)
    facts = forget_facts(cfg, corpus)
    log("data", source=corpus.source, n_forget=len(corpus.forget), n_retain=len(corpus.retain), n_traced=len(facts))
    weights = weights_key(source, model)  # the model's content: its files, read once (cached)
    runtime = {"dtype": cfg.dtype, "device": cfg.device}

    # 2. trace the forget facts, aggregate per kind ---------------------------------------------------
    say(_elapsed(t_start) + f"[2/5] causal tracing of {len(facts)} forget facts ({', '.join(cfg.kinds)})")
    trace_key, importances = _trace_stage(cfg, model, tok, facts, run_study, say, weights, runtime, progress)

    # 3. select layers -------------------------------------------------------------------------------
    selection = select(cfg, importances)
    selection_path = selection.save(run_dir / "selection.json")
    say(_elapsed(t_start) + f"[3/5] selected layers {selection.layers} ({cfg.strategy} on {cfg.select_kind}) "
        f"-> {selection_path}")
    log("selection", layers=selection.layers, scores=selection.selected_scores)

    if cfg.sweep_window:
        _sweep(cfg, model, tok, corpus, importances[cfg.select_kind], run_study, progress, say, weights)
        model, tok = load_model(source, dtype=cfg.dtype, device=cfg.device)

    # 4. unlearn -------------------------------------------------------------------------------------
    preset = _preset(cfg)
    edit_stage = run_study.stage("unlearn", say, model=weights, data=_edit_data(corpus), trace=trace_key,
                                 config={"layers": selection.layers, "method": cfg.method, "preset": preset,
                                         "editor": cfg.editor, "seed": cfg.seed, **runtime})
    edited_dir = run_dir / "edited_model"
    if twin_build is not None and twin_build.poll() is not None:  # the twin is built: both threads for the edit
        torch.set_num_threads(twin_build.threads)
    say(_elapsed(t_start) + f"[4/5] unlearning with {cfg.method}{f' (preset {preset})' if preset else ''} "
        f"at layers {selection.layers}")
    _unlearn_stage(cfg, edit_stage, model, tok, corpus, selection_path, edited_dir, model_path, progress)
    # the editor trained `model` in place: reload both from disk so "original" really is the original
    model, tok = load_model(source, dtype=cfg.dtype, device=cfg.device)
    edited, edited_tok = load_model(edited_dir, dtype=cfg.dtype, device=cfg.device)

    # 5. evaluate both, re-trace both ------------------------------------------------------------------
    report = _evaluate_stage(cfg, (model, tok), (edited, edited_tok), edited_dir, corpus, run_study, twin_build,
                             progress, say, t_start)
    return _finish(cfg, run_study, t_start, selection, report, say)


def _build_organism(cfg: PipelineConfig, name: str | None, run_dir: Path, children: contextlib.ExitStack,
                    progress: bool, say, t_start: float):
    """Build the organism `name` (None: cfg.model is a directory or a hub name) while its twin builds in a child
    process the run ends with it (`_start_twin_build`); (the organism's path or None, the twin build or None)."""
    from . import organism

    if name is not None:  # the organism and its twin are fine-tuned from one base: pretrained first, on every thread
        say(_elapsed(t_start) + f"[1/5] organism {name!r}: its base, then the fine-tune (built once, then cached)")
        organism.build_base(name, progress=progress)
    twin_build = _start_twin_build(cfg, name, run_dir)
    if twin_build is not None:
        children.callback(_stop, twin_build)
    model_path = organism.build(name, progress=progress) if name is not None else None
    return model_path, twin_build


def _trace_stage(cfg: PipelineConfig, model, tok, facts: list, run_study: "Study", say, weights: str,
                 runtime: dict, progress: bool) -> tuple[str, dict]:
    """Stage 2: the importance of every kind, traced or reused (with the example heatmap and the importance
    curve); returns the stage's content key and {kind: LayerImportance}."""
    from .aggregate import LayerImportance
    from .figures import heatmaps, importance_curve

    run_dir, figure = run_study.dir, run_study.figures
    stage = run_study.stage("trace", say, model=weights, data=records_hash(facts), config={
        "n": cfg.n_samples, "kinds": cfg.kinds, "seed": cfg.seed, "position": cfg.position, "metric": cfg.metric,
        "min_total_effect": cfg.min_total_effect, **runtime})
    imp_path = {k: run_dir / "trace" / f"importance_{k}.json" for k in cfg.kinds}
    if stage.done(*imp_path.values()):
        importances = {k: LayerImportance.load(p) for k, p in imp_path.items()}
    else:
        results, importances = trace(cfg, model, tok, facts, progress)
        for k, imp in importances.items():
            imp.save(imp_path[k])
        results[0].save(run_dir / "trace" / "example_fact")
        stage.finish(peaks={k: imp.peak for k, imp in importances.items()})
        figure("trace_example", lambda: heatmaps(results[0]))
    figure("layer_importance", lambda: importance_curve(list(importances.values())))
    for line in _trace_notes(importances, len(facts)):
        say(line)
        run_study.log("trace_note", message=line.strip())
    return stage.key["key"], importances


def _unlearn_stage(cfg: PipelineConfig, stage: "Stage", model, tok, corpus, selection_path: Path, edited_dir: Path,
                   model_path: Path | None, progress: bool) -> None:
    """Stage 4: the edited model at `edited_dir`, reused when the stage's key matches and it is intact, else edited
    again (removing what an earlier run here made under other inputs). model_path: the built organism's, if any."""
    from .harness import ModelSpec
    from .selection import LayerSelection

    if not stage.done(edited_dir) or not _edit_intact(edited_dir, stage):
        if edited_dir.exists() or edited_dir.is_symlink():  # made by an earlier run here under other inputs
            _remove_old_edit(edited_dir, stage, cfg)
        stage.start(edited_model={"pending": True})
        edit(cfg, model, tok, corpus, LayerSelection.load(selection_path), edited_dir,
             source=model_path or ModelSpec.parse(cfg.model).local_dir, progress=progress)
        stage.finish({"edited_model": {"files": sorted(p.name for p in edited_dir.iterdir()),
                                       "weights": weights_hash(edited_dir)}}, out=str(edited_dir))


def _evaluate_stage(cfg: PipelineConfig, original: tuple, edited: tuple, edited_dir: Path, corpus,
                    run_study: "Study", twin_build, progress: bool, say, t_start: float):
    """Stage 5: evaluate and re-trace the `original` and the `edited` (model, tokenizer) (the twin build awaited
    first), write the report's figures and publish them where cfg.figures says; the report."""
    import torch

    say(_elapsed(t_start) + "[5/5] evaluation (recall, MIA, MMLU, SemEval score) and re-tracing before/after")
    if twin_build is not None:
        run_study.log("twin_build", returncode=twin_build.wait())  # a failed one is redone below, under its lock
        torch.set_num_threads(twin_build.threads)
    report = verify(cfg, original, edited, edited_dir, corpus, run_study.dir, progress, say)
    for name, fig in report.figures.items():
        run_study.figures(name, lambda fig=fig: fig)
    run_study.publish()
    return report


def _finish(cfg: PipelineConfig, run_study: "Study", t_start: float, selection, report, say) -> Path:
    """Write summary.json, log the end, say the verdict and warn of unwritten figures; the report's path."""
    run_dir, figure = run_study.dir, run_study.figures
    summary = {"seconds": round(time.perf_counter() - t_start, 1), "layers": selection.layers,
               "method": cfg.method, "report": str(run_dir / "report.html"),
               "table": [list(r) for r in report.table()[:8]]}
    summary["verdict"] = report.verdict
    summary["figures_incomplete"] = figure.failed
    atomic_write_json(run_dir / "summary.json", summary)
    run_study.log("done", **summary)
    for line in report.verdict_lines():
        say(line)
    for warning in figure.warnings:
        print(f"workbench run: warning: {warning}", file=sys.stderr)
    return run_dir / "report.html"


def _edit_data(corpus) -> str:
    """Content key of what an editor reads: the forget and retain records, calibration documents, general text."""
    return records_hash([*corpus.forget, *corpus.retain, *getattr(corpus, "calibration", []),
                         *getattr(corpus, "general", [])])


def _edit_intact(edited_dir: Path, stage: "Stage") -> bool:
    """The edited model the unlearn stage recorded is still what it wrote (a changed one is made again, or, when
    it cannot be removed safely, refused by _remove_old_edit)."""
    made = ((stage.saved or {}).get("made") or {}).get("edited_model") or {}
    if edited_dir.is_symlink() or not edited_dir.is_dir() or weights_hash(edited_dir) != made.get("weights"):
        stage.rerun("edited_model is not what the stage wrote")
        return False
    return True


# --- the stages, each one call: the pipeline above and notebooks/03_select_and_unlearn run these -------------------
def load_inputs(cfg: PipelineConfig, model_path=None, progress: bool = True) -> tuple:
    """Stage 1: (model, tokenizer, corpus) as the run loads them, through the harness: the model (a built-in
    organism, built first if needed, a local directory or a hub id; model_path: the organism's built directory, when
    known), the corpus (the organism's or a LUME directory), records over the length bound refused or cut."""
    from .harness import load_corpus, load_model

    model, tok = load_model(model_path or cfg.model, dtype=cfg.dtype, device=cfg.device, progress=progress)
    corpus = load_corpus(cfg.data, cfg.model, tok, cfg.max_record_tokens, cfg.long_records)
    return model, tok, corpus


def forget_facts(cfg: PipelineConfig, corpus) -> list:
    """The forget facts the run traces: the first n_facts traceable ones of the task."""
    facts = corpus.facts("forget", cfg.task)
    facts = facts[: cfg.n_facts] if cfg.n_facts else facts
    if not facts:
        raise ConfigError(f"no traceable forget facts for task {cfg.task!r} in {corpus.source} "
                          "(QA records that name their subject)")
    return facts


def trace(cfg: PipelineConfig, model, tok, facts, progress: bool = True) -> tuple[list, dict]:
    """Stage 2: (TraceResult per fact, {kind: LayerImportance}) with the run's trace settings."""
    settings = trace_settings(cfg)
    results = settings.trace(model, tok, facts, progress=progress)
    return results, settings.importances(results)


def select(cfg: PipelineConfig, importances: dict):
    """Stage 3: the LayerSelection of select_kind's importance by the configured strategy."""
    from .selection import select_layers

    if cfg.select_kind not in importances:
        raise ConfigError(f"select_kind {cfg.select_kind!r} was not traced; traced kinds: {list(importances)}")
    return select_layers(importances[cfg.select_kind], strategy=cfg.strategy, k=cfg.k, window=cfg.window,
                         threshold=cfg.threshold)


def edit(cfg: PipelineConfig, model, tok, corpus, selection, out_dir: Path, source=None, progress: bool = True) -> Path:
    """Stage 4: the configured method with its resolved preset (`_preset`) at the selected layers; trains `model` in
    place and writes the edited model to out_dir (a new directory)."""
    from .editors import unlearn

    return unlearn(model, tok, corpus, cfg.method, selection, config={"seed": cfg.seed, **cfg.editor},
                   out_dir=out_dir, preset=_preset(cfg), source=source, progress=progress)


def verify(cfg: PipelineConfig, original, edited, edited_dir: Path, corpus, out_dir: Path, progress: bool = True,
           say=print):
    """Stage 5: the edited model beside the original and the retain-only baseline (recall, MIA, MMLU, SemEval score,
    recovery attacks, re-tracing) and the verdict; writes report.json/report.html into out_dir. Returns the Report."""
    from .report import evaluate

    from .harness import load_twin

    twin = load_twin(cfg.retain_baseline, cfg.model, cfg.data, dtype=cfg.dtype, device=cfg.device,
                     progress=progress, say=say)
    baseline = twin[:2] if twin else None
    edit_info = json.loads((Path(edited_dir) / "unlearn.json").read_text())
    return evaluate(*original, corpus, edited=edited, trace_config=retrace_config(cfg), config=_eval_config(cfg),
                    retain_baseline=baseline, out_dir=out_dir, progress=progress,
                    edit_log=edit_info["summary"]["evals"], trained=edit_info.get("optimises", []),
                    layers=edit_info.get("edited_layers", edit_info["layers"]))


def _trace_notes(importances: dict, n_facts: int) -> list[str]:
    """The facts the total-effect floor left out, and any importance outside the sane range, as lines to print."""
    first = next(iter(importances.values()))
    floor = first.config.get("min_total_effect", 0.0)
    lines = [f"      {first.n_facts_excluded} of {n_facts} facts left out: total effect below the floor {floor} "
             f"({first.metric})"] if first.n_facts_excluded else []
    return lines + [f"      warning: {imp.warning()}" for imp in importances.values() if imp.out_of_range]


def sweep_rows(result: dict, importance) -> list[dict]:
    """One row per sweep window: its scores, the drop in forget recall, and the mean traced importance of its layers."""
    import numpy as np

    return [{**w, "window": f"{w['layers'][0]}-{w['layers'][-1]}",
             "traced_importance": float(np.mean([importance.mean[l] for l in w["layers"]])),
             "forget_drop": result["baseline"]["forget_qa_em"] - w["forget_qa_em"]} for w in result["windows"]]


def _elapsed(t_start: float) -> str:
    """The stage lines' prefix: seconds since the run started."""
    return f"{time.perf_counter() - t_start:6.0f} s  "


def _start_twin_build(cfg: PipelineConfig, name: str | None, run_dir: Path):
    """The retain-only twin of a built-in organism trains in a second process, on one torch thread, while this
    one builds the organism, traces and unlearns on the other (a model this small trains as fast on one thread
    as on two). `harness.load_twin` then finds it cached, or waits on its entry's lock. None when there is no
    twin to build; returns the process, with this process's thread count to restore once it has finished."""
    import torch

    from .harness import ModelSpec

    twin = ModelSpec.parse(cfg.model).twin() if name is not None else None
    if cfg.retain_baseline != "auto" or cfg.data != "organism" or twin is None:
        return None
    code = ("import torch; torch.set_num_threads(1); from workbench import organism; "
            f"organism.build({twin.organism!r}, progress=False)")
    log = open(run_dir / "twin_build.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_end_with_parent if sys.platform.startswith("linux") else None)
    log.close()
    proc.threads = torch.get_num_threads()
    torch.set_num_threads(max(1, proc.threads - 1))
    return proc


def _end_with_parent() -> None:
    """Run in the child between fork and exec: the kernel sends it SIGTERM when the run that started it dies, even
    by SIGKILL, which no handler in the run can see (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End a child process the run started, if it still runs: SIGTERM, then SIGKILL after `grace` seconds. Its
    half-built cache entry is a temp directory the next build removes."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _preset(cfg: PipelineConfig) -> str | None:
    """Resolve preset "auto": the tuned "organism" preset only on the default organism (micro and real models get
    the dataclass defaults or what the config names)."""
    if cfg.preset != "auto":
        return cfg.preset
    from .editors import editor_class
    from .harness import ModelSpec

    on_default = ModelSpec.parse(cfg.model).organism == "default"
    return "organism" if on_default and "organism" in editor_class(cfg.method).presets else None


def _sweep(cfg, model, tok, corpus, importance, run_study: "Study", progress: bool, say, weights: str) -> None:
    """Unlearning efficacy per window beside the traced importance of the same window. A finished sweep is reused
    when its content key (model, data, method and settings) is this run's; else it runs again, reusing the windows
    whose own keys still match."""
    from .figures import sweep_plot
    from .sweep import sweep, sweep_key

    say(f"[3b] layer sweep: {cfg.method} at every {cfg.sweep_window}-layer window")
    out, log, figure = run_study.dir / "sweep", run_study.log, run_study.figures
    config = {"seed": cfg.seed, **cfg.editor}
    key = sweep_key(weights, corpus, cfg.method, config, _preset(cfg), cfg.sweep_window)
    saved = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").is_file() else None
    reason = None if saved is None else key_change(saved.get("key"), key)
    if saved is not None and reason is None:
        result = saved
    else:
        if saved is not None:  # this run's own finished sweep, made from other inputs
            log("stage_rerun", stage="sweep", reason=reason)
            say(f"      sweep runs again: {reason}")
            (out / "sweep.json").unlink()
        result = sweep(model, tok, corpus, cfg.method, window=cfg.sweep_window, out_dir=out, config=config,
                       preset=_preset(cfg), progress=progress, model_key=weights)
    rows = sweep_rows(result, importance)
    atomic_write_json(out / "sweep_vs_trace.json", {"kind": importance.kind, "rows": rows})
    figure("sweep", lambda: sweep_plot(rows, x="window", ys=["forget_drop", "retain_qa_em", "traced_importance"],
                                       title=f"{cfg.method}: efficacy per window vs traced {importance.kind} "
                                             "importance", y_title="recall", right=("traced_importance",)))
    log("sweep", rows=rows)


