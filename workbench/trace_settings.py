"""`TraceSettings`: the one set of causal-tracing settings every entry point uses unless told otherwise.

The pipeline, `localize`, `workbench trace`, `workbench select`, the evaluation's re-trace and the notebooks build
their tracing from this class, so the same facts on the same model give the same per-layer importance everywhere.

    metric "logprob_mean"    mean log-prob of the whole teacher-forced answer. LUME's Task2 answers (dates, SSNs,
                             phone numbers) share their first tokens across people (every birth year starts with
                             "1"), so the first token's probability ("prob") barely moves under corruption.
    position "last_subject"  one fact's per-layer score: its effect at the last subject token (ROME's site)
    min_total_effect 0.5     facts the noise hurts by less than this (metric units: nats for logprob_mean) are left
                             out of the average and counted (LayerImportance.config["n_facts_excluded"]). The
                             normalised effect divides by the total effect, and a near-zero divisor turns noise into
                             effects of any size.
    n_samples 10, kinds resid/mlp/attn, window None (ROME's 10 of 48 layers, scaled to the model's depth), noise None
    (3 x the subjects' embedding std), seed 0, n_boot 1000 (bootstrap resamples of the interval over facts).

Whatever the settings, a mean normalised effect outside `aggregate.SANE_RANGE` is flagged
(`LayerImportance.out_of_range`): in its summary, on its figure and in the commands' output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

from .errors import ConfigError


@dataclass
class TraceSettings:
    kinds: tuple = ("resid", "mlp", "attn")
    n_samples: int = 10
    metric: str = "logprob_mean"
    position: str = "last_subject"
    min_total_effect: float = 0.5
    window: int | None = None          # layers restored together for mlp/attn; None: tracing.default_window(depth)
    noise: float | None = None         # noise sigma; None: 3 x the embedding std over the traced subjects
    seed: int = 0
    n_boot: int = 1000

    def __post_init__(self):
        if isinstance(self.kinds, str):  # "mlp" or "resid,mlp": a short list, not its characters
            self.kinds = [k.strip() for k in self.kinds.split(",") if k.strip()]
        self.kinds = tuple(self.kinds)

    def check(self, name: Callable[[str], str] = str) -> "TraceSettings":
        """Every setting checked; a bad one is a ConfigError that calls the setting `name(field)` (a config key, a
        command-line flag). Returns self."""
        from .aggregate import POSITIONS
        from .results import KINDS
        from .tracing import METRICS

        def need(ok, field: str, detail: str) -> None:
            if not ok:
                raise ConfigError(f"{name(field)} {detail}")

        bad = [k for k in self.kinds if k not in KINDS]
        need(self.kinds and not bad, "kinds", f"{list(self.kinds)}: expected some of {list(KINDS)}")
        need(_is_int(self.n_samples) and self.n_samples >= 1, "n_samples", f"must be >= 1, got {self.n_samples}")
        need(self.metric in METRICS, "metric", f"{self.metric!r} unknown; expected one of {METRICS}")
        need(self.position in POSITIONS, "position", f"{self.position!r} unknown; expected one of {POSITIONS}")
        need(_is_number(self.min_total_effect) and self.min_total_effect >= 0, "min_total_effect",
             f"must be a number >= 0 (0: keep every fact), got {self.min_total_effect}")
        need(self.window is None or (_is_int(self.window) and self.window >= 1), "window",
             f"must be >= 1 layer (or None: 10/48 of the model's depth), got {self.window}")
        need(self.noise is None or (_is_number(self.noise) and self.noise > 0), "noise",
             f"must be a finite number > 0 (or None: 3 x the subjects' embedding std), got {self.noise}")
        need(_is_int(self.seed), "seed", f"must be an integer, got {self.seed!r}")
        need(_is_int(self.n_boot) and self.n_boot >= 1, "n_boot", f"must be >= 1, got {self.n_boot}")
        return self

    def to_json(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(TraceSettings)}

    # --- the tracing and aggregation every entry point runs --------------------------------------------------
    def trace(self, model, tok, records, *, progress: bool = False, **engine) -> list:
        """`tracing.trace_facts` of `records` with these settings; `engine`: how the numbers are computed, not
        which (facts_per_batch, backend, batch_size, memory_budget)."""
        from .tracing import trace_facts

        self.check()
        return trace_facts(model, tok, records, kinds=self.kinds, n_samples=self.n_samples, window=self.window,
                           metric=self.metric, seed=self.seed, noise=self.noise, progress=progress, **engine)

    def trace_one(self, model, tok, prompt: str, answer: str, subject: str, *, progress: bool = False, **engine):
        """`tracing.causal_trace` of one prompt with these settings."""
        from .tracing import causal_trace

        self.check()
        return causal_trace(model, tok, prompt, answer, subject, kinds=self.kinds, n_samples=self.n_samples,
                            window=self.window, metric=self.metric, seed=self.seed, noise=self.noise,
                            progress=progress, **engine)

    def importance(self, results, kind: str, normalise: bool = True):
        """The LayerImportance of `kind` over `results`: the per-fact score at `position`, facts below the
        total-effect floor left out and counted (normalised only: the raw indirect effect divides by nothing)."""
        from .aggregate import aggregate

        self.check()
        return aggregate(results, kind, position=self.position, n_boot=self.n_boot, seed=self.seed,
                         min_total_effect=self.min_total_effect if normalise else 0.0, normalise=normalise)

    def roles(self, results, kind: str):
        """ROME's token-role view (aggregate.TokenRoles) of `kind`, the same facts left out as `importance`."""
        from .aggregate import token_roles

        self.check()
        return token_roles(results, kind, min_total_effect=self.min_total_effect)

    def importances(self, results) -> dict:
        """{kind: LayerImportance} for every traced kind."""
        return {k: self.importance(results, k) for k in self.kinds}

    def _repr_html_(self) -> str:
        from .htmlview import table

        return table(["setting", "value"], [[f.name, getattr(self, f.name)] for f in fields(self)],
                     caption="Tracing settings (workbench.trace_settings)")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
