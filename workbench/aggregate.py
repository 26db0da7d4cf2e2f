"""Aggregate many traced facts: mean layer importance with bootstrap intervals, and ROME's token-role grouping.

A single fact's trace is noisy; the claim "the fact lives in layers 1-2" is a
statement about a fact *set*. `aggregate` gives the mean normalised effect per
layer with a 95% percentile bootstrap interval over facts (resampling facts,
not noise samples, since facts are the unit we generalise over).
`token_roles` groups token positions as ROME's averaged figures do.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .configfile import read_json
from .errors import ConfigError, TraceError, clip, quote
from .provenance import atomic_write_json, provenance, stable_hash, to_jsonable
from .results import TraceResult

POSITIONS = ("max", "last_subject", "last", "mean")
# A mean normalised effect outside this range is flagged: restoring one site recovers between none (0) and all (1) of
# the clean metric, give or take noise; far outside it the total effect of some facts is near 0, and the
# normalisation divides noise by it.
SANE_RANGE = (-0.5, 1.5)
ROLES = ("first subject", "middle subject", "last subject", "first subsequent", "further tokens", "last token")


def _check(results, kind: str) -> list[TraceResult]:
    results = list(results)
    if not results:
        raise TraceError("aggregate: no trace results given; expected at least one TraceResult")
    for i, r in enumerate(results):
        if kind not in r.effects:
            raise TraceError(f"aggregate: result {i} ({r.prompt!r}) has no kind {kind!r}; it has {r.kinds}")
    n_layers = {r.effects[kind].shape[0] for r in results}
    if len(n_layers) != 1:
        raise TraceError(f"aggregate: results come from models of different depth (layers: {sorted(n_layers)}); "
                         "aggregate results of one model only")
    return results


def bootstrap_mean(per_fact: np.ndarray, n_boot: int = 1000, seed: int = 0, ci: float = 0.95):
    """Mean over axis 0 and its percentile bootstrap interval (resampling rows).  per_fact: [n_facts, n_layers]"""
    n = per_fact.shape[0]
    mean = per_fact.mean(axis=0)
    if n == 1:  # nothing to resample: the interval collapses to the single value
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))           # [n_boot, n_facts]
    boots = per_fact[idx].mean(axis=1)                   # [n_boot, n_layers]
    a = (1 - ci) / 2
    lo, hi = np.quantile(boots, [a, 1 - a], axis=0)      # [n_layers] each
    return mean, lo, hi


@dataclass
class LayerImportance:
    """Mean normalised effect per layer over a fact set, with a bootstrap 95% interval."""

    kind: str                   # "resid" | "mlp" | "attn" | a patching site
    position: str               # how one fact's [layer, pos] map became a per-layer score
    mean: np.ndarray            # [n_layers] mean normalised effect over facts
    lo: np.ndarray              # [n_layers] 2.5% bootstrap percentile
    hi: np.ndarray              # [n_layers] 97.5% bootstrap percentile
    per_fact: np.ndarray        # [n_facts, n_layers] normalised per-layer score of each fact
    method: str = "causal_trace"
    metric: str = "prob"
    n_boot: int = 1000
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def n_facts(self) -> int:
        return self.per_fact.shape[0]

    @property
    def n_layers(self) -> int:
        return self.mean.shape[0]

    @property
    def peak(self) -> dict:
        """The layer with the largest mean effect, with its interval."""
        l = int(np.argmax(self.mean))
        return {"layer": l, "mean": float(self.mean[l]), "lo": float(self.lo[l]), "hi": float(self.hi[l])}

    @property
    def n_facts_excluded(self) -> int:
        """Facts left out for a total effect below the floor (config["min_total_effect"])."""
        return int(self.config.get("n_facts_excluded", 0))

    @property
    def out_of_range(self) -> list[int]:
        """Layers whose mean normalised effect lies outside SANE_RANGE (none for a raw, unnormalised importance)."""
        if not self.config.get("normalise", True):
            return []
        lo, hi = SANE_RANGE
        return [l for l, m in enumerate(self.mean) if not lo <= m <= hi]

    def warning(self) -> str | None:
        """What is wrong when `out_of_range` is not empty, in one sentence; None otherwise."""
        bad = self.out_of_range
        if not bad:
            return None
        floor = self.config.get("min_total_effect", 0.0)
        return (f"{self.kind}: mean normalised effect outside [{SANE_RANGE[0]}, {SANE_RANGE[1]}] at layer(s) {bad} "
                f"({', '.join(f'{self.mean[l]:.3g}' for l in bad)}): some facts' total effect is near 0 and their "
                f"normalisation amplifies noise (metric {self.metric}, total-effect floor {floor}); raise "
                "min_total_effect or trace with metric logprob_mean")

    def summary(self) -> dict:
        out = {"kind": self.kind, "position": self.position, "n_facts": self.n_facts,
               "n_facts_excluded": self.n_facts_excluded, "peak": self.peak,
               "mean": self.mean.round(4).tolist(), "lo": self.lo.round(4).tolist(), "hi": self.hi.round(4).tolist()}
        if self.out_of_range:
            out["out_of_range"] = {"layers": self.out_of_range, "range": list(SANE_RANGE), "warning": self.warning()}
        return out

    def _repr_html_(self) -> str:
        from .htmlview import note, table

        rows = [[l, float(self.mean[l]), float(self.lo[l]), float(self.hi[l])] for l in range(self.n_layers)]
        what = "normalised effect" if self.config.get("normalise", True) else f"indirect effect ({self.metric})"
        floor = self.config.get("min_total_effect", 0.0)
        cap = (f"<b>{self.kind}</b> importance: mean {what} at position <i>{self.position}</i> over {self.n_facts} "
               f"facts (metric {self.metric}; {self.n_facts_excluded} left out below the total-effect floor {floor}); "
               f"peak layer {self.peak['layer']}")
        out = table(["layer", "mean", "95% CI low", "95% CI high"], rows, caption=cap,
                    highlight=set(self.out_of_range) or {self.peak["layer"]})
        return out + (note(self.warning(), warning=True) if self.out_of_range else "")

    def to_json(self) -> dict:
        return to_jsonable({"type": "LayerImportance", "kind": self.kind, "position": self.position,
                            "n_facts": self.n_facts, "mean": self.mean, "lo": self.lo, "hi": self.hi,
                            "per_fact": self.per_fact, "method": self.method, "metric": self.metric,
                            "n_boot": self.n_boot, "config": self.config, "provenance": self.provenance})

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def from_json(cls, d: dict, where: str = "layer importance") -> "LayerImportance":
        if not isinstance(d, dict) or d.get("type") != "LayerImportance":
            found = d.get("type") if isinstance(d, dict) else type(d).__name__
            raise ConfigError(f"{where}: not a LayerImportance JSON (type={quote(found)}); "
                              "expected a file written by LayerImportance.save")
        missing = [k for k in ("kind", "position", "mean", "lo", "hi", "per_fact") if k not in d]
        if missing:
            raise ConfigError(f"{where}: LayerImportance JSON lacks {missing}; expected a file written by "
                              "LayerImportance.save (or `workbench trace`)")
        try:
            arrays = {k: np.asarray(d[k], dtype=float) for k in ("mean", "lo", "hi")}
            if any(a.ndim != 1 or a.shape != arrays["mean"].shape or a.size == 0 for a in arrays.values()):
                raise ValueError("mean, lo and hi must be lists of one number per layer, of equal length")
            per_fact = np.asarray(d["per_fact"], dtype=float).reshape(-1, len(arrays["mean"]))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: bad LayerImportance arrays ({clip(e)})") from None
        if not isinstance(d["kind"], str) or not isinstance(d["position"], str):
            raise ConfigError(f"{where}: kind and position must be strings, got {quote(d['kind'])} and "
                              f"{quote(d['position'])}")
        config, prov = d.get("config", {}), d.get("provenance", {})
        if not isinstance(config, dict) or not isinstance(prov, dict):
            raise ConfigError(f"{where}: config and provenance must be JSON objects")
        return cls(kind=d["kind"], position=d["position"], per_fact=per_fact,
                   method=str(d.get("method", "causal_trace")), metric=str(d.get("metric", "prob")),
                   n_boot=d.get("n_boot", 0), config=config, provenance=prov, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "LayerImportance":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no layer-importance file at {path}")
        return cls.from_json(read_json(path, "layer importance"), f"layer importance {path}")


def _source_provenance(results: list[TraceResult], **config) -> dict:
    first = results[0].provenance or {}
    return provenance(config=config, seed=config.get("seed"),
                      data={"n_facts": len(results), "prompts_hash": stable_hash([r.prompt for r in results]),
                            "source": first.get("data")},
                      source_model=first.get("model"))


def aggregate(results, kind: str, position: str = "max", n_boot: int = 1000, seed: int = 0,
              min_total_effect: float = 0.0, normalise: bool = True) -> LayerImportance:
    """Mean normalised per-layer effect of `kind` over facts, with a 95% percentile bootstrap interval over facts.

    position: "max" (best position of each layer), "last_subject", "last" or "mean" over positions.
    min_total_effect: leave out facts whose clean - corrupted metric is below this (in the metric's units). The
    normalised effect divides by that difference, so a fact the noise barely hurts (e.g. a date whose first token
    is '1' for everyone) turns into amplified noise; ROME likewise averages over facts the corruption breaks.
    normalise: False averages the raw indirect effect (metric units) instead, e.g. to compare a model before and
    after unlearning, whose total effects differ.
    """
    if position not in POSITIONS:
        raise ConfigError(f"aggregate: position {position!r} is not one of {POSITIONS}")
    if n_boot < 1:
        raise ConfigError(f"aggregate: n_boot must be >= 1, got {n_boot}")
    results = _check(results, kind)
    n_all = len(results)
    results = _above_floor(results, min_total_effect)
    per_fact = np.stack([r.layer_importance(kind, position, normalise) for r in results]).astype(float)  # [n_facts, n_layers]
    mean, lo, hi = bootstrap_mean(per_fact, n_boot=n_boot, seed=seed)
    cfg = {"kind": kind, "position": position, "n_boot": n_boot, "seed": seed,
           "min_total_effect": min_total_effect, "n_facts_excluded": n_all - len(results), "normalise": normalise}
    return LayerImportance(kind=kind, position=position, mean=mean, lo=lo, hi=hi, per_fact=per_fact,
                           method=results[0].method, metric=results[0].metric, n_boot=n_boot,
                           config=cfg, provenance=_source_provenance(results, **cfg))


def _above_floor(results: list[TraceResult], min_total_effect: float) -> list[TraceResult]:
    """The results whose total effect (clean - corrupted) is at least `min_total_effect`; none is an error."""
    kept = [r for r in results if r.total_effect >= min_total_effect] if min_total_effect > 0 else results
    if not kept:
        raise TraceError(f"no fact of {len(results)} has a total effect (clean - corrupted) >= {min_total_effect}; "
                         "lower min_total_effect or use a stronger noise")
    return kept


def importance_difference(before: LayerImportance, after: LayerImportance):
    """after - before per layer: (mean, lo, hi). A paired bootstrap over the facts when both cover the same facts
    (the tighter, right interval); otherwise the difference of the means, with no interval."""
    if before.n_layers != after.n_layers:
        raise TraceError(f"before/after: {before.n_layers} vs {after.n_layers} layers; "
                         "compare models of the same depth")
    if before.per_fact.shape == after.per_fact.shape:
        return bootstrap_mean(after.per_fact - before.per_fact, n_boot=max(after.n_boot, 100))
    d = after.mean - before.mean
    return d, d, d


def role_positions(subject_range: tuple[int, int], n_pos: int) -> list[list[int]]:
    """Token positions of each ROME role (see ROLES) for one prompt; a role may be empty.

    Tokens before the subject belong to no role (ROME's averaged figures leave them out).
    """
    s, e = subject_range
    if not (0 <= s < e <= n_pos):
        raise TraceError(f"subject range {subject_range} does not fit a prompt of {n_pos} tokens")
    last = n_pos - 1
    after = list(range(e, last))             # tokens after the subject, excluding the last token
    return [[s], list(range(s + 1, e - 1)), [e - 1], after[:1], after[1:], [last]]


@dataclass
class TokenRoles:
    """Effects grouped by ROME's token roles, averaged over facts."""

    kind: str
    values: np.ndarray          # [6, n_layers]; NaN where no fact has a token of that role
    counts: np.ndarray          # [6] number of facts that have a token of each role
    normalised: bool = True
    labels: tuple = ROLES
    n_facts_excluded: int = 0   # facts left out for a total effect below the floor

    def to_json(self) -> dict:
        vals = [[None if np.isnan(v) else float(v) for v in row] for row in self.values]
        return {"type": "TokenRoles", "kind": self.kind, "labels": list(self.labels), "values": vals,
                "counts": self.counts.tolist(), "normalised": self.normalised,
                "n_facts_excluded": self.n_facts_excluded}


def token_roles(results, kind: str, normalised: bool = True, min_total_effect: float = 0.0) -> TokenRoles:
    """ROME's grouping: per fact, average the effect over the positions of each role, then average over facts.

    A one-token subject has first = last subject token and no middle tokens; roles a fact lacks are skipped
    for that fact (the row is NaN only if no fact has that role). min_total_effect: as for `aggregate`.
    """
    results = _check(results, kind)
    n_all = len(results)
    results = _above_floor(results, min_total_effect if normalised else 0.0)
    n_layers = results[0].effects[kind].shape[0]
    total = np.zeros((len(ROLES), n_layers))
    counts = np.zeros(len(ROLES), dtype=int)
    for r in results:
        eff = r.normalised(kind) if normalised else r.indirect_effect(kind)   # [n_layers, n_pos]
        for i, pos in enumerate(role_positions(tuple(r.subject_range), eff.shape[1])):
            if pos:
                total[i] += eff[:, pos].mean(axis=1)
                counts[i] += 1
    values = np.full_like(total, np.nan)
    has = counts > 0
    values[has] = total[has] / counts[has, None]
    return TokenRoles(kind=kind, values=values, counts=counts, normalised=normalised,
                      n_facts_excluded=n_all - len(results))
