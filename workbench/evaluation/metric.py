"""One entry of the evaluation registry (evaluation/registry.py): a metric or an attack.

An entry declares
    name        its key in the registry (and, for a joint entry, in report.json)
    needs       the entries whose numbers its compute reads: they run before it
    prepare     what it resolves once before any model is scored, so a bad setting fails before the heavy work
    compute     its numbers on one model, written into that model's metrics dict (original, edited, twin alike)
    joint       True: `compute_models` runs once on the models together ({"original", "edited", "twin"}) after
                every per-model entry, and its result is kept under `name`
    rows        the table rows it shows: (label, path into a model's metrics)
    criteria    its verdict lines (evaluation/verdict.Criterion), given the three models' metrics and its joint
                result; none when it only reports

The registry's order is the order of the table's rows and of the verdict's lines.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Context:
    """What every entry may read while the models are scored."""
    corpus: Any
    config: Any                                   # evaluation/config.EvalConfig
    prepared: dict = field(default_factory=dict)  # {entry name: what its prepare returned}
    reference: tuple | None = None                # (model, tokenizer) of the reference-model MIA attack
    retain_auc: dict | None = None                # the retain-only model's AUCs, privleak's baseline
    layers: Any = None                            # the edited layers (the relearning attack's "edited" scope)
    importance: dict | None = None                # {kind: the original's traced per-layer importance}
    progress: bool = False
    log: Callable | None = None                   # a JsonlLog, or None


class Metric:
    name: str = ""
    needs: tuple[str, ...] = ()
    joint: bool = False

    def prepare(self, tok, ctx: Context) -> Any:
        """Resolved once, before any model is scored; kept as ctx.prepared[name]."""
        return None

    def compute(self, model, tok, ctx: Context, out: dict) -> None:
        """Write this entry's numbers for one model into `out` (that model's metrics so far)."""

    def compute_models(self, models: dict, ctx: Context) -> Any:
        """A joint entry's result over {"original", "edited", "twin"}: (model, tokenizer), the absent ones None."""
        return None

    def rows(self, metrics: dict) -> list[tuple[str, tuple]]:
        """(label, path into a model's metrics) of each table row; `metrics`: the original model's."""
        return []

    def criteria(self, original: dict, edited: dict, twin: dict | None, result: Any, cfg, trained=()) -> list:
        """Verdict lines (evaluation/verdict.Criterion) for the edited model; `result`: a joint entry's result;
        `trained`: the MIA statistics the edit optimised."""
        return []
