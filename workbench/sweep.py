"""Layer sweep: run one editor at every consecutive w-layer window and score each (Mr. Snuffleupagus style).

    result = sweep(model, tok, corpus, "adaptive-rmu", window=3, out_dir="runs/sweep")

For each window [s, s+w) a fresh copy of the original model is edited with `unlearn`, then scored:
forget / retain QA exact match (greedy, as SemEval scores knowledge) and, when the corpus allows,
MIA (workbench.evaluation.mia.corpus_mia; needs corpus.holdout) and MMLU-format utility
(workbench.evaluation.mmlu.evaluate_mmlu; needs corpus.mmlu with a test split). `extra_metrics`
is an optional hook `(model, tok, corpus) -> dict` for anything else. Writes sweep.json (all windows
+ the unedited baseline + provenance) and sweep.jsonl (one line per window, as they finish).

Resume: each window records a content key (windows/layers-<a>-<b>.json): the model's content, the corpus's text,
the method and its resolved config, the layers, and which scores were taken. A window whose key matches is reused; one
whose key differs (another method, model or data) is edited again, and sweep.jsonl says what changed. The sweep
writes only into a directory it made (its claim file) and never into its source model.
"""
from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from .data.records import questions
from .errors import ConfigError
from .generation import qa_accuracy
from .models import decoder_layers
from .provenance import (atomic_write_json, key_change, key_parts, provenance, records_hash, state_hash,
                         to_jsonable)


def windows(n_layers: int, window: int, stride: int = 1) -> list[list[int]]:
    """Every run of `window` consecutive layers: [[0..w-1], [1..w], ...]."""
    if not 1 <= window <= n_layers:
        raise ConfigError(f"sweep window {window} must be between 1 and the number of layers ({n_layers})")
    if stride < 1:
        raise ConfigError(f"sweep stride must be >= 1, got {stride}")
    return [list(range(s, s + window)) for s in range(0, n_layers - window + 1, stride)]


def sweep_study(out_dir: str | Path, sources=()):
    """The sweep's output as a harness Study: a new directory, or an unfinished sweep of its own to resume (windows
    whose content key matches are reused); never into or around a source model directory (`sources`). Made, it has
    checked every output; entered, it locks and claims the directory."""
    from .harness import Study

    out = Path(out_dir)
    if (out / "sweep.json").exists():
        raise ConfigError(f"{out / 'sweep.json'} already exists: that sweep is finished; choose a new --out")
    return Study(out, "--out", sources=sources, claim="sweep", legacy=("sweep.jsonl",), log="sweep.jsonl")


def _model_dir(model) -> Path | None:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
    p = Path(str(name)).expanduser() if name else None
    return p.resolve() if p is not None and p.is_dir() else None


def _edit_parts(model_key: str, corpus, method: str, config, preset) -> dict:
    """What a window's edit depends on: the model's content, every record's text, the method and its resolved config."""
    from .editors import resolve_config

    resolved = resolve_config(method, preset=preset, overrides=dict(config or {}))
    records = [*corpus.forget, *corpus.retain, *getattr(corpus, "holdout", []), *getattr(corpus, "calibration", []),
               *getattr(corpus, "general", []), *getattr(corpus, "mmlu", [])]
    return {"model": model_key, "data": records_hash(records),
            "config": {"method": method, "preset": preset, "editor": to_jsonable(resolved)}}


def sweep_key(model_key: str, corpus, method: str, config=None, preset: str | None = None, window: int = 3,
              stride: int = 1, mia: bool = True, mmlu: bool = True) -> dict:
    """The content key of a whole sweep (sweep.json's "key"): its windows' inputs, the windows and the scores."""
    return key_parts(**_edit_parts(model_key, corpus, method, config, preset),
                     windows={"window": window, "stride": stride}, scores={"mia": mia, "mmlu": mmlu})


def score(model, tok, corpus, mia: bool = True, mmlu: bool = True,
          extra_metrics: Callable | None = None) -> dict:
    """Forget/retain QA exact match, plus MIA and utility where the corpus has what they need."""
    out = {"forget_qa_em": qa_accuracy(model, tok, questions(corpus.forget)),
           "retain_qa_em": qa_accuracy(model, tok, questions(corpus.retain))}
    if mia and corpus.holdout:
        from .evaluation.mia import corpus_mia

        r = corpus_mia(model, tok, corpus)
        out.update(mia_score=r.mia_score, mia_auc_loss=r.auc["loss"])
    if mmlu and any(q.split == "test" for q in corpus.mmlu):
        from .evaluation.mmlu import evaluate_mmlu

        # the corpus's own set: the organism's general-knowledge world, scored in the cloze formulation
        out["mmlu"] = evaluate_mmlu(model, tok, corpus.mmlu, shots=0 if not any(q.split == "dev" for q in corpus.mmlu)
                                    else 5, formulation="cloze").accuracy
    if extra_metrics is not None:
        out.update(extra_metrics(model, tok, corpus))
    return out


def sweep(model, tok, corpus, method: str, window: int = 3, out_dir: str | Path = "sweep", *, config=None,
          preset: str | None = None, stride: int = 1, keep_models: bool = False, mia: bool = True,
          mmlu: bool = True, extra_metrics: Callable | None = None, progress: bool = False,
          model_key: str | None = None) -> dict:
    """Edit a copy of `model` at each window; returns (and writes to out_dir/sweep.json) the per-window scores.

    model_key: the content key of `model` (models.weights_key of the directory it was loaded from); default: a
    hash of its parameters (provenance.state_hash)."""
    from .editors import resolve_config

    resolve_config(method, preset=preset, overrides=dict(config or {}))  # a bad config fails before any run
    study = sweep_study(out_dir, [_model_dir(model)])
    wins = windows(len(decoder_layers(model)), window, stride)
    with study:  # one sweep per directory at a time
        out, log = study.dir, study.log
        original = copy.deepcopy(model)  # every window starts from the same weights
        parts = _edit_parts(model_key or state_hash(original), corpus, method, config, preset)
        base = score(original, tok, corpus, mia, mmlu, extra_metrics)
        log("baseline", **base)
        rows = []
        for layers in tqdm(wins, desc=f"sweep:{method}", disable=not progress):
            name = f"layers-{layers[0]}-{layers[-1]}"
            model_dir, record = out / "models" / name, out / "windows" / f"{name}.json"
            edit = key_parts(**parts, layers=layers)
            scored = key_parts(**parts, layers=layers, scores={"mia": mia, "mmlu": mmlu})
            saved = _read_record(record)
            if (saved and extra_metrics is None and key_change(saved.get("scored"), scored) is None
                    and saved.get("state") == "done" and (not keep_models or model_dir.is_dir())):
                rows.append(saved["row"])  # a finished window from an interrupted sweep, made from the same inputs
                log("window_reused", layers=layers)
                continue
            t0 = time.perf_counter()
            m = _edited_window(original, tok, corpus, method, layers, config, preset, model_dir, record, saved, edit,
                               log)
            row = {"layers": layers, "seconds": round(time.perf_counter() - t0, 2),
                   **score(m, tok, corpus, mia, mmlu, extra_metrics)}
            atomic_write_json(record, {"edit": edit, "scored": scored, "state": "done", "row": row})
            rows.append(row)
            log("window", **row)
            if not keep_models:
                shutil.rmtree(model_dir, ignore_errors=True)
            del m
        result = {"method": method, "window": window, "stride": stride, "baseline": base, "windows": rows,
                  "key": key_parts(**parts, windows={"window": window, "stride": stride},
                                   scores={"mia": mia, "mmlu": mmlu}),
                  "provenance": provenance(model=original, data=getattr(corpus, "source", None),
                                           config={"method": method, "preset": preset, "config": config or {},
                                                   "window": window, "stride": stride})}
        atomic_write_json(out / "sweep.json", result)
        return result


def _edited_window(original, tok, corpus, method: str, layers: list[int], config, preset: str | None,
                   model_dir: Path, record: Path, saved: dict | None, edit: dict, log):
    """The model edited at `layers`: the one at `model_dir` when its saved record's edit key is `edit` (edited
    before the sweep stopped, from the same inputs); otherwise a copy of `original` edited again into `model_dir`
    (what an earlier run left there removed first), its record marked running meanwhile."""
    from .editors import unlearn

    if saved is not None and key_change(saved.get("edit"), edit) is None and _is_edit(model_dir):
        from .harness import load_model

        m, _ = load_model(model_dir)
        return m
    if saved is not None or model_dir.exists() or model_dir.is_symlink():
        reason = (key_change(saved.get("edit"), edit) if saved is not None else None) or \
            "its edited model is missing or incomplete"
        log("window_rerun", layers=layers, reason=reason)
        _remove_window(model_dir)
    atomic_write_json(record, {"edit": edit, "state": "running"})
    m = copy.deepcopy(original)
    unlearn(m, tok, corpus, method, layers, config, model_dir, preset=preset)
    return m


def _read_record(path: Path) -> dict | None:
    import json

    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _is_edit(model_dir: Path) -> bool:
    return model_dir.is_dir() and not model_dir.is_symlink() and (model_dir / "unlearn.json").is_file()


def _remove_window(model_dir: Path) -> None:
    """Remove a window's edited model made from other inputs, and its unfinished work, inside this sweep's own
    output. A link there is not the sweep's: refused, not followed."""
    from .errors import OutputError

    for stale in (model_dir, model_dir.parent / f".{model_dir.name}.work"):
        if stale.is_symlink():
            raise OutputError(f"{stale} is a symbolic link, which the sweep did not make; move it away")
        shutil.rmtree(stale, ignore_errors=True)
