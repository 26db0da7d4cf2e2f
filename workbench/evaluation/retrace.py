"""Re-tracing, a verification step: the same causal trace on the original and the edited model.

Both models trace the same facts with the same config and the same noise (one sigma, measured on the original),
so the per-layer indirect effects compare: unlearning that removed a fact should remove the effect of the layers
that carried it. This module computes; the report draws the curves it returns (figures.importance_before_after).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from ..aggregate import bootstrap_mean
from ..errors import ConfigError, DataError, TraceError
from ..trace_settings import TraceSettings
from ..tracing import noise_scale


@dataclass
class TraceConfig(TraceSettings):
    """What re-tracing runs on both models (the same for both): the shared tracing settings (trace_settings.py, the
    pipeline's unless told otherwise) and which facts."""

    n_facts: int | None = 16      # forget facts traced (None: all traceable ones)
    split: str = "forget"

    def __post_init__(self):
        super().__post_init__()
        self.check(lambda field: f"re-trace {field}")
        if not (self.n_facts is None or self.n_facts >= 1):
            raise ConfigError(f"re-trace n_facts must be >= 1 (or None: every fact; turn re-tracing off with "
                              f"trace=False), got {self.n_facts}")


def _normalised(settings: TraceSettings, results, kind: str) -> dict:
    """The LayerImportance summary of one model's traces; when every fact is below the total-effect floor (an edit
    that removed the facts leaves little for the noise to hurt) the summary says so instead."""
    try:
        return settings.importance(results, kind).summary()
    except TraceError:
        return {"kind": kind, "position": settings.position, "n_facts": 0, "n_facts_excluded": len(results),
                "note": f"every fact's total effect is below min_total_effect {settings.min_total_effect}"}


def retrace(original, edited, corpus, tc: TraceConfig, progress: bool = False) -> tuple[dict, dict]:
    """Trace the same facts with the same config and noise on both models: (numbers, curves).

    numbers: JSON-ready per-kind summaries and the raw indirect-effect drop with its bootstrap interval;
    curves: {kind: (before, after)}, the raw (not normalised) LayerImportance of each model, what the report
    draws."""
    facts = corpus.facts(tc.split)[:tc.n_facts] if tc.n_facts else corpus.facts(tc.split)
    if not facts:
        raise DataError(f"re-tracing: the {tc.split} split has no traceable QA facts (records with a subject)")
    (m0, t0), (m1, t1) = original, edited
    # one sigma for both, measured on the original unless the settings fix it: the same corruption
    sigma = tc.noise if tc.noise is not None else noise_scale(m0, t0, [r.subject for r in facts])
    settings = replace(TraceSettings(**{f.name: getattr(tc, f.name) for f in fields(TraceSettings)}), noise=sigma)
    before, after = settings.trace(m0, t0, facts, progress=progress), settings.trace(m1, t1, facts, progress=progress)
    numbers: dict[str, Any] = {"config": asdict(tc), "noise": sigma, "facts": [r.id for r in facts],
                               "p_clean": {"before": [r.clean for r in before], "after": [r.clean for r in after]},
                               "kinds": {}}
    curves = {}
    for kind in tc.kinds:
        # raw indirect effect (not normalised by each model's total effect): what unlearning should remove
        ie_b = np.stack([r.indirect_effect(kind).max(axis=1) for r in before])  # [n_facts, n_layers]
        ie_a = np.stack([r.indirect_effect(kind).max(axis=1) for r in after])
        d_mean, d_lo, d_hi = bootstrap_mean(ie_b - ie_a, n_boot=tc.n_boot, seed=tc.seed)
        numbers["kinds"][kind] = {
            "normalised_before": _normalised(settings, before, kind),
            "normalised_after": _normalised(settings, after, kind),
            "ie_before": ie_b.mean(0).tolist(), "ie_after": ie_a.mean(0).tolist(),
            "ie_drop": d_mean.tolist(), "ie_drop_lo": d_lo.tolist(), "ie_drop_hi": d_hi.tolist(),
        }
        # the curves are raw indirect effects: normalising each model by its own total effect would blow up
        # the edited model's (small, once the fact is gone) denominator
        curves[kind] = (settings.importance(before, kind, normalise=False),
                        settings.importance(after, kind, normalise=False))
    return numbers, curves
