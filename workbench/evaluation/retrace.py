"""Re-tracing, a verification step: the same causal trace on the original and the edited model.

Both models trace the same facts with the same config and the same noise (one sigma, measured on the original),
so the per-layer indirect effects compare: unlearning that removed a fact should remove the effect of the layers
that carried it. This module computes; the report draws the curves it returns (figures.importance_before_after).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..aggregate import POSITIONS, aggregate, bootstrap_mean
from ..errors import ConfigError, DataError
from ..results import KINDS
from ..tracing import METRICS, noise_scale, trace_facts


@dataclass
class TraceConfig:
    """What re-tracing runs on both models (the same for both)."""

    kinds: tuple = ("resid", "mlp", "attn")
    n_samples: int = 10
    n_facts: int | None = 16      # forget facts traced (None: all traceable ones)
    split: str = "forget"
    window: int | None = None
    position: str = "max"
    metric: str = "prob"          # prob | logprob_mean (workbench.tracing.METRICS)
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self):
        self.kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        bad = [k for k in self.kinds if k not in KINDS]
        _need(self.kinds and not bad, f"re-trace kinds {list(self.kinds)}: expected some of {list(KINDS)}")
        _need(self.n_samples >= 1, f"re-trace n_samples must be >= 1, got {self.n_samples}")
        _need(self.n_facts is None or self.n_facts >= 1,
              f"re-trace n_facts must be >= 1 (or None: every fact; turn re-tracing off with trace=False), "
              f"got {self.n_facts}")
        _need(self.window is None or self.window >= 1, f"re-trace window must be >= 1 layer, got {self.window}")
        _need(self.position in POSITIONS, f"re-trace position {self.position!r}: expected one of {POSITIONS}")
        _need(self.metric in METRICS, f"re-trace metric {self.metric!r}: expected one of {METRICS}")
        _need(self.n_boot >= 1, f"re-trace n_boot must be >= 1, got {self.n_boot}")


def _need(ok, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def retrace(original, edited, corpus, tc: TraceConfig, progress: bool = False) -> tuple[dict, dict]:
    """Trace the same facts with the same config and noise on both models: (numbers, curves).

    numbers: JSON-ready per-kind summaries and the raw indirect-effect drop with its bootstrap interval;
    curves: {kind: (before, after)}, the raw (not normalised) LayerImportance of each model, what the report
    draws."""
    facts = corpus.facts(tc.split)[:tc.n_facts] if tc.n_facts else corpus.facts(tc.split)
    if not facts:
        raise DataError(f"re-tracing: the {tc.split} split has no traceable QA facts (records with a subject)")
    (m0, t0), (m1, t1) = original, edited
    sigma = noise_scale(m0, t0, [r.subject for r in facts])  # one sigma for both: the same corruption
    kw = dict(kinds=tuple(tc.kinds), n_samples=tc.n_samples, window=tc.window, seed=tc.seed, noise=sigma,
              metric=tc.metric, progress=progress)
    before, after = trace_facts(m0, t0, facts, **kw), trace_facts(m1, t1, facts, **kw)
    numbers: dict[str, Any] = {"config": asdict(tc), "noise": sigma, "facts": [r.id for r in facts],
                               "p_clean": {"before": [r.clean for r in before], "after": [r.clean for r in after]},
                               "kinds": {}}
    curves = {}
    for kind in tc.kinds:
        b = aggregate(before, kind, tc.position, tc.n_boot, tc.seed)
        a = aggregate(after, kind, tc.position, tc.n_boot, tc.seed)
        # raw indirect effect (not normalised by each model's total effect): what unlearning should remove
        ie_b = np.stack([r.indirect_effect(kind).max(axis=1) for r in before])  # [n_facts, n_layers]
        ie_a = np.stack([r.indirect_effect(kind).max(axis=1) for r in after])
        d_mean, d_lo, d_hi = bootstrap_mean(ie_b - ie_a, n_boot=tc.n_boot, seed=tc.seed)
        numbers["kinds"][kind] = {
            "normalised_before": b.summary(), "normalised_after": a.summary(),
            "ie_before": ie_b.mean(0).tolist(), "ie_after": ie_a.mean(0).tolist(),
            "ie_drop": d_mean.tolist(), "ie_drop_lo": d_lo.tolist(), "ie_drop_hi": d_hi.tolist(),
        }
        # the curves are raw indirect effects: normalising each model by its own total effect would blow up
        # the edited model's (small, once the fact is gone) denominator
        curves[kind] = (aggregate(before, kind, tc.position, tc.n_boot, tc.seed, normalise=False),
                        aggregate(after, kind, tc.position, tc.n_boot, tc.seed, normalise=False))
    return numbers, curves
