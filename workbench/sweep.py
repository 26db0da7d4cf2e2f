"""Layer sweep: run one editor at every consecutive w-layer window and score each (Mr. Snuffleupagus style).

    result = sweep(model, tok, corpus, "adaptive-rmu", window=3, out_dir="runs/sweep")

For each window [s, s+w) a fresh copy of the original model is edited with `unlearn`, then scored:
forget / retain QA exact match (greedy, as SemEval scores knowledge) and, when the corpus allows,
MIA (workbench.evaluation.mia.corpus_mia; needs corpus.holdout) and MMLU-format utility
(workbench.evaluation.mmlu.evaluate_mmlu; needs corpus.mmlu with a test split). `extra_metrics`
is an optional hook `(model, tok, corpus) -> dict` for anything else. Writes sweep.json (all windows
+ the unedited baseline + provenance) and sweep.jsonl (one line per window, as they finish).
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
from .outputs import check_writable, locked
from .provenance import JsonlLog, atomic_write_json, provenance


def windows(n_layers: int, window: int, stride: int = 1) -> list[list[int]]:
    """Every run of `window` consecutive layers: [[0..w-1], [1..w], ...]."""
    if not 1 <= window <= n_layers:
        raise ConfigError(f"sweep window {window} must be between 1 and the number of layers ({n_layers})")
    if stride < 1:
        raise ConfigError(f"sweep stride must be >= 1, got {stride}")
    return [list(range(s, s + window)) for s in range(0, n_layers - window + 1, stride)]


def check_sweep_out(out_dir: str | Path) -> Path:
    """A sweep writes into a new directory, or resumes an unfinished one (finished windows are reused)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory; a sweep writes a directory of results")
    if (out / "sweep.json").exists():
        raise ConfigError(f"{out / 'sweep.json'} already exists: that sweep is finished; choose a new --out")
    return out


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
          mmlu: bool = True, extra_metrics: Callable | None = None, progress: bool = False) -> dict:
    """Edit a copy of `model` at each window; returns (and writes to out_dir/sweep.json) the per-window scores."""
    from .editors import resolve_config, unlearn

    resolve_config(method, preset=preset, overrides=dict(config or {}))  # a bad config fails before any run
    out = check_sweep_out(out_dir)
    wins = windows(len(decoder_layers(model)), window, stride)
    with locked(check_writable(out, "sweep output"), "sweep output"):  # one sweep per directory at a time
        log = JsonlLog(out / "sweep.jsonl")
        original = copy.deepcopy(model)  # every window starts from the same weights
        base = score(original, tok, corpus, mia, mmlu, extra_metrics)
        log("baseline", **base)
        rows = []
        for layers in tqdm(wins, desc=f"sweep:{method}", disable=not progress):
            m = copy.deepcopy(original)
            t0 = time.perf_counter()
            model_dir = out / "models" / f"layers-{layers[0]}-{layers[-1]}"
            if model_dir.exists():  # a finished window from an interrupted sweep: reuse it
                from .organism import load_model

                m, _ = load_model(model_dir)
            else:
                unlearn(m, tok, corpus, method, layers, config, model_dir, preset=preset)
            row = {"layers": layers, "seconds": round(time.perf_counter() - t0, 2),
                   **score(m, tok, corpus, mia, mmlu, extra_metrics)}
            rows.append(row)
            log("window", **row)
            if not keep_models:
                shutil.rmtree(model_dir, ignore_errors=True)
            del m
        result = {"method": method, "window": window, "stride": stride, "baseline": base, "windows": rows,
                  "provenance": provenance(model=original, data=getattr(corpus, "source", None),
                                           config={"method": method, "preset": preset, "config": config or {},
                                                   "window": window, "stride": stride})}
        atomic_write_json(out / "sweep.json", result)
        return result
