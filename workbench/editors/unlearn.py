"""`unlearn`: the one entry point that edits a model with a registered method.

    from workbench.editors import unlearn
    out = unlearn(model, tok, corpus, "adaptive-rmu", layers=[1, 2, 3], config={"beta": 3}, out_dir="runs/armu")

`unlearn` checks everything it can before training (method, layers, parameter patterns, data,
output path), trains the model *in place* (pass a copy to keep the original), and writes the
edited model atomically to a new directory: safetensors + tokenizer + config.json, `unlearn.json`
(resolved config, layers, summary, provenance) and `log.jsonl` (one line per step / eval).
A killed run resumes from `.<out>.work/checkpoint.safetensors` when called again with the same model, data and
config (a checkpoint of any other run is refused, naming what differs).

Several processes: under `accelerate launch` (README, "Several GPUs") the loop is data parallel and gives the
one-process result (editors/parallel.py); the main process writes the log, the checkpoints and the edited model.
"""
from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from .. import distributed
from ..errors import ConfigError, EditError, named_write_errors
from ..outputs import remove_stale_temps, share_permissions
from ..provenance import (JsonlLog, atomic_write_json, model_files, model_fingerprint, provenance, stable_hash,
                          to_jsonable, weights_hash)
from .calibration import Calibrated, Calibration
from .config import LoopConfig
from .loop import CHECKPOINT, Reference, encode, train
from .params import freeze_all_but, select_parameters
from .registry import build_phases, editor_class, optimised_statistics, resolve_config


def resolve_layers(spec, n_layers: int) -> list[int]:
    """Layers from a LayerSelection, its JSON path, "12,13,14" / "12-14", or a list of ints; sorted, checked
    (workbench.selection.parse_layers does the reading; empty or out-of-range selections are errors)."""
    from ..selection import parse_layers

    if spec is None or (isinstance(spec, (list, tuple)) and not spec):
        raise EditError("the layer selection is empty; expected at least one decoder layer")
    return parse_layers(spec, n_layers)


def check_selection(spec, n_layers: int, fingerprint: str) -> None:
    """A LayerSelection (or its JSON path) must come from this model: as many layer scores as it has layers, and,
    when the selection records it, the fingerprint of the model that was traced."""
    from ..selection import LayerSelection

    if isinstance(spec, LayerSelection):
        sel, where = spec, "the layer selection"
    elif isinstance(spec, (str, Path)) and str(spec).strip().endswith(".json") and Path(spec).is_file():
        sel, where = LayerSelection.load(spec), f"layer selection {str(spec)!r}"
    else:
        return  # explicit layers: the user's choice, checked for range only
    if sel.scores and len(sel.scores) != n_layers:
        raise EditError(f"{where} scores {len(sel.scores)} layers, but this model has {n_layers}: it was made on "
                        "another model; trace and select on this model, or pass explicit layers (e.g. --layers 1,2)")
    traced = (sel.provenance.get("source_provenance") or {}).get("source_model") or {}
    theirs = traced.get("fingerprint") if isinstance(traced, dict) else None
    if theirs and theirs != fingerprint:
        raise EditError(f"{where} was made on model {traced.get('name', '?')} (fingerprint {theirs}), not on this "
                        f"model (fingerprint {fingerprint}); trace and select on this model, or pass its layers "
                        f"explicitly (--layers {','.join(map(str, sel.layers))}) to use them anyway")


def edited_layers(params) -> list[int]:
    """The decoder layers holding at least one trained parameter (names model.layers.<l>....)."""
    return sorted({int(n.split(".")[2]) for n in params if n.startswith("model.layers.") and n.split(".")[2].isdigit()})


def _sample(records, n: int, seed: int):
    records = list(records)
    if len(records) <= n:
        return records
    return random.Random(seed).sample(records, n)


def _model_source(model) -> Path | None:
    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", "")
    return Path(name).expanduser().resolve() if name and Path(name).expanduser().exists() else None


def data_hash(records: dict[str, list]) -> str:
    """Hash of every record's content per split: a resumed run must train on exactly the same data."""
    return stable_hash({s: [(r.id, r.input, r.output, r.task) for r in recs] for s, recs in records.items()})


def _check_sources(out: Path, model, source: str | Path | None) -> None:
    """`out` is clear of the source model's directory: checked before the output's lock file (beside `out`) is
    written, so a refused run writes nothing into the source."""
    sources = [p for p in (_model_source(model), Path(source).resolve() if source else None) if p is not None]
    for src in sources:
        if out == src or src in out.parents or out in src.parents:
            raise EditError(f"output {out} overlaps the source model directory {src}; "
                            f"the source is never overwritten: choose a new --out")


def _check_out_dir(out: Path, model, source: str | Path | None) -> None:
    _check_sources(out, model, source)
    if out.exists():
        raise EditError(f"output {out} already exists; edited models are written to a new path (choose another --out)")


def _calibration(cfg, tok, corpus, given) -> Calibration:
    """The calibration of calibrated forgetting: given documents or targets, else the corpus's calibration split.
    Documents the evaluation scores as non-members (corpus.holdout) are refused: nothing is tuned on the test."""
    if isinstance(given, dict):
        return Calibration.build(tok, corpus.forget, targets=given, weight=cfg.calibration_weight,
                                 max_len=cfg.max_len, pad_id=tok.pad_token_id, statistics=("loss",),
                                 anchor=cfg.calibration_anchor, general=getattr(corpus, "general", []))
    docs = list(given if given is not None else getattr(corpus, "calibration", []))
    if not docs:
        raise EditError("calibrate=True needs calibration documents (never-trained-on documents like the forget "
                        "set: a calibration.jsonl beside forget/retain, corpus.calibration) or per-document target "
                        "losses; the corpus has none")
    holdout = getattr(corpus, "holdout", [])
    shared = ({r.id for r in docs} & {r.id for r in holdout}) | ({r.text for r in docs} & {r.text for r in holdout})
    if shared:
        raise EditError(f"{len(shared)} calibration document(s) are also MIA non-members (holdout), e.g. "
                        f"{sorted(shared)[0]!r}: calibration must be disjoint from the documents the report scores")
    return Calibration.build(tok, corpus.forget, docs, weight=cfg.calibration_weight, max_len=cfg.max_len,
                             pad_id=tok.pad_token_id, statistics=cfg.calibration_statistics,
                             anchor=cfg.calibration_anchor, general=getattr(corpus, "general", []))


def unlearn(model, tok, corpus, method: str, layers, config: LoopConfig | dict | None = None,
            out_dir: str | Path | None = None, **kw) -> Path:
    """Unlearn `corpus.forget` (keeping `corpus.retain`) with `method` at `layers`; returns the edited model dir.

    One run at a time per output: the output's lock is held throughout, so a second run on the same `out_dir` is
    an OutputError naming the PID that holds it (keyword arguments: see `_unlearn`)."""
    if out_dir is None:
        raise ConfigError("out_dir is required: the edited model is written to a new directory")
    out = Path(out_dir).expanduser().resolve()
    _check_sources(out, model, kw.get("source"))
    with distributed.main_locked(out, "unlearn output"):  # under `accelerate launch`, the main process writes
        if distributed.is_main():
            remove_stale_temps(out.parent, out.name)  # a killed final save's `.<out>.tmp-<pid>`
        return _unlearn(model, tok, corpus, method, layers, config, out, **kw)


def _unlearn(model, tok, corpus, method: str, layers, config: LoopConfig | dict | None, out_dir: Path, *,
             preset: str | None = None, source: str | Path | None = None, progress: bool = False,
             on_step: Callable[[int], None] | None = None, calibration=None) -> Path:
    """`unlearn` under its output's lock.

    With `calibrate=True` in the config, `calibration` gives the never-trained-on documents (Records; default
    `corpus.calibration`) or a mapping forget-record id -> target loss (editors/calibration.py)."""
    # ---- everything that can be wrong is checked before any forward pass
    cfg = _resolve(method, config, preset)
    from ..models import decoder_layers

    n_layers = len(decoder_layers(model))
    layer_list = resolve_layers(layers, n_layers)
    fingerprint = model_fingerprint(model)  # of the source weights, before any change: the resume key's model
    source_weights = _source_weights(model, source)
    check_selection(layers, n_layers, fingerprint)
    out = Path(out_dir).expanduser().resolve()
    _check_out_dir(out, model, source)
    phases, params, records, extra = _edit_plan(model, tok, corpus, method, cfg, layer_list)
    calib = _calibration(cfg, tok, corpus, calibration) if cfg.calibrate else None
    if calib is not None:
        for ph in phases:
            ph.editor = Calibrated(ph.editor, calib, cfg.calibration_refresh, cfg.grad_accum,
                                   cfg.calibration_anchor_batch)

    # ---- set up: dtype, trainable parameters, data, frozen reference
    data = _set_up(model, tok, cfg, params, records, extra, calib)
    work = out.parent / f".{out.name}.work"
    if distributed.is_main():
        work.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(work / "log.jsonl") if distributed.is_main() else (lambda event, **fields: None)
    resolved = {"method": method, "layers": layer_list, "preset": preset, "config": to_jsonable(cfg),
                "trainable": list(params), "edited_layers": edited_layers(params),
                "optimises": sorted(calib.statistics) if calib is not None else optimised_statistics(method, cfg)}
    run_key = {"model": fingerprint, "data": _data_key(records, extra, calib), "config": stable_hash(resolved)}
    if distributed.is_main():
        atomic_write_json(work / "unlearn_config.json", resolved)
    log("start", **resolved, n_forget=len(records["forget"]), n_retain=len(records["retain"]))

    if calib is not None:
        calib.set_targets(model)  # before any update (a resumed run takes them from its checkpoint)
    ref, ref_seconds = _reference(model, tok, phases, data, cfg, progress)
    evaluate, metric = _evaluator(model, tok, phases, data, records, cfg, calib)

    t1 = time.perf_counter()
    summary = train(model, phases, data, cfg, work, pad_id=tok.pad_token_id, params=params, evaluate=evaluate,
                    log=log, run_key=run_key, progress=progress, on_step=on_step)
    summary.update(train_seconds=round(time.perf_counter() - t1, 3), reference_seconds=round(ref_seconds, 3),
                   reference_cache_bytes=ref.nbytes(), eval_metric=metric,
                   editor=[ph.editor.describe() for ph in phases])
    log("done", **{k: v for k, v in summary.items() if k != "evals"})
    _save(model, tok, corpus, out, work, resolved, summary, cfg, source, fingerprint, source_weights)
    return out


def _resolve(method: str, config: LoopConfig | dict | None, preset: str | None) -> LoopConfig:
    """The method's resolved config: a LoopConfig of the method's own class, or a preset with overrides."""
    Config = editor_class(method).Config
    if isinstance(config, LoopConfig):
        if not isinstance(config, Config):
            raise ConfigError(f"{method} needs a {Config.__name__}, got {type(config).__name__}")
        return resolve_config(method, base=config)
    return resolve_config(method, preset=preset, overrides=dict(config or {}))


def _source_weights(model, source: str | Path | None) -> str | None:
    """The content key of the files the source was loaded from (None without them): `evaluate` compares it with the
    original it is given."""
    source_dir = _model_source(model) or (Path(source).expanduser().resolve() if source else None)
    return weights_hash(source_dir) if source_dir is not None and model_files(source_dir) else None


def _edit_plan(model, tok, corpus, method: str, cfg: LoopConfig,
               layer_list: list[int]) -> tuple[list, dict, dict, dict]:
    """The method's phases, the parameters they train, the records ({"forget", "retain"}) and the editor's extra
    data; every split a phase uses must be non-empty (an editor checks its extra data itself)."""
    phases = build_phases(model, method, cfg, layer_list)
    patterns = sorted({p for ph in phases for p in ph.editor.param_patterns()})
    params = select_parameters(model, patterns, layer_list)
    records = {"forget": list(corpus.forget), "retain": list(corpus.retain)}
    extra = editor_class(method).extra_data(model, tok, corpus, cfg)
    for split in sorted({u for ph in phases for u in ph.editor.uses} - set(extra)):
        if not records.get(split):
            raise EditError(f"{method} needs a non-empty {split} set, but the corpus has no {split} records")
    return phases, params, records, extra


def _set_up(model, tok, cfg: LoopConfig, params: dict, records: dict, extra: dict, calib: Calibration | None) -> dict:
    """Cast the model to the config's dtype, seed torch and random, freeze all but `params`; the encoded training
    data by split (the calibration's documents among them)."""
    dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[cfg.dtype]
    if next(model.parameters()).dtype != dtype:
        model.to(dtype)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    freeze_all_but(model, params)
    data = {s: encode(tok, recs, cfg.max_len) for s, recs in records.items()}
    data.update(extra)
    if calib is not None:
        data["forget_doc"] = calib.forget
        if calib.anchor_docs:
            data["anchor_doc"] = calib.anchor_docs
    return data


def _data_key(records: dict, extra: dict, calib: Calibration | None) -> str:
    """The resume key's data: the records, the calibration's source and the editor's extra data."""
    data_key = data_hash(records) if calib is None else stable_hash([data_hash(records), calib.source_hash])
    if extra:
        data_key = stable_hash([data_key, {s: [e.ids for e in ex] for s, ex in extra.items()}])
    return data_key


def _reference(model, tok, phases: list, data: dict, cfg: LoopConfig, progress: bool) -> tuple[Reference, float]:
    """The frozen model's outputs every phase's editor needs, given to each editor; and the seconds they took."""
    fns: dict[str, Callable] = {}
    for ph in phases:
        fns.update(ph.editor.reference_fns())
    t0 = time.perf_counter()
    ref = Reference(model, fns, data, tok.pad_token_id, cache=cfg.cache_reference, progress=progress)
    ref_seconds = time.perf_counter() - t0
    for ph in phases:
        ph.editor.setup(ref, data)
    return ref, ref_seconds


def _evaluator(model, tok, phases: list, data: dict, records: dict, cfg: LoopConfig,
               calib: Calibration | None) -> tuple[Callable, str]:
    """The loop's evaluation () -> (score, stats) and its metric: QA exact match on samples of the forget and retain
    questions ("qa", when both have some), else the last phase's loss on the first examples; minus the calibration
    penalty when calibrated."""
    from ..data.records import questions
    from ..generation import qa_accuracy

    eval_f = _sample(questions(records["forget"]), cfg.eval_size, cfg.seed)
    eval_r = _sample(questions(records["retain"]), cfg.eval_size, cfg.seed + 1)
    metric = cfg.eval_metric if (eval_f and eval_r) else "loss"

    def evaluate():
        score, stats = evaluate_editor()
        if calib is None:
            return score, stats
        cstats = calib.measure(model)
        return score - calib.score(cstats), {**stats, **cstats}

    def evaluate_editor():
        if metric == "qa":
            fe, re_ = qa_accuracy(model, tok, eval_f), qa_accuracy(model, tok, eval_r)
            return re_ - fe, {"forget_qa_em": fe, "retain_qa_em": re_}
        from .loop import collate

        ed = phases[-1].editor
        saved = ed.state_dict()
        dev = next(model.parameters()).device
        with torch.no_grad():
            mb = {s: collate(data[s][: cfg.eval_size], tok.pad_token_id, dev) for s in ed.uses}
            loss, stats = ed.loss(mb)
        ed.load_state_dict(saved)
        return -loss.item(), {f"eval_{k}": v for k, v in stats.items()}

    return evaluate, metric


def _save(model, tok, corpus, out: Path, work: Path, resolved: dict, summary: dict, cfg: LoopConfig,
          source: str | Path | None, fingerprint: str, source_weights: str | None) -> None:
    """Write the edited model to a temp dir beside `out`, then rename it to `out` (never a half model), with
    unlearn.json (the resolved config, the summary, provenance) and the log; then remove the work dir."""
    for p in model.parameters():
        p.requires_grad_(True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    kept = f"the checkpoint {work / CHECKPOINT} holds all {summary['steps']} steps"

    def save():  # by the main process only, under `accelerate launch`; the others wait for it
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with named_write_errors("edited model", out, kept):
                model.save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
                atomic_write_json(tmp / "unlearn.json", {
                    **resolved, "summary": summary,
                    "provenance": provenance(model=model, data=getattr(corpus, "source", None), config=resolved,
                                             seed=cfg.seed, source_model=str(_model_source(model) or source or ""),
                                             source_fingerprint=fingerprint, source_weights=source_weights)})
                shutil.copy(work / "log.jsonl", tmp / "log.jsonl")
                share_permissions(tmp)  # safetensors writes model.safetensors 0600
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(work, ignore_errors=True)
    distributed.on_main(save, f"edited model {out}")
