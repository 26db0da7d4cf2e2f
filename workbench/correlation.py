"""Does traced importance predict where unlearning works? Correlation over layer windows, with its uncertainty.

For one editor and one kind of traced importance:

    importance  [n_facts, n_windows]           each traced fact's importance of each window (mean over its layers)
    efficacy    [n_seeds, n_facts, n_windows]  how much each fact was forgotten when the edit touched that window

`correlate` gives
  - the Spearman and Pearson correlation over windows of the fact-mean importance with the fact- and seed-mean
    efficacy;
  - percentile bootstrap intervals that resample facts and seeds together (both sides are recomputed from the
    resampled facts, the efficacy also from the resampled seeds): facts and seeds are the units the claim
    generalises over;
  - a permutation p-value (two-sided; windows shuffled; every permutation when there are few enough windows).
    Windows are treated as exchangeable: overlapping windows share layers, so neighbouring points are not
    independent and the p-value is optimistic for smooth curves; the bootstrap interval does not assume it;
  - per fact: does a fact's *own* trace predict where *its* unlearning works? The mean over facts of the Spearman
    correlation over windows, tested twice: against windows shuffled within each fact (any relation at all) and
    against the traces paired with other facts (is a fact's own trace better than another fact's?). And the peak:
    how often the window where a fact's trace peaks is one where its efficacy peaks, against chance, against the
    population's peak window and against other facts' peaks.

`pearson_rows` / `spearman_rows` (row pairs along the last axis) and `pearson` / `spearman` (two arrays, flattened)
are the package's one implementation of both correlations; the attribution-vs-exact comparisons use them too.

`window_contrast` compares two sets of windows directly (e.g. the window tracing selects against the one a sweep
selects): the difference of their mean efficacy, with the same bootstrap over facts and seeds.

Hase et al. (2023, "Does Localization Inform Editing?") asked this of ROME's tracing and found no relation between
where a fact traces and where editing it works best.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata

from .errors import ConfigError
from .provenance import to_jsonable

EXACT_PERMUTATIONS = 40320  # 8!: up to 8 windows every permutation is enumerated, beyond that n_perm are drawn


def pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair along the last axis; NaN where a row is constant.  [..., n] -> [...]"""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(-1) / den
    return np.where(den > 1e-12, np.clip(r, -1.0, 1.0), np.nan)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation (Pearson of average ranks, so ties are handled) of row pairs along the last axis."""
    return pearson_rows(rankdata(a, axis=-1), rankdata(b, axis=-1))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays over all their cells (flattened); NaN where a side is constant."""
    return float(pearson_rows(np.ravel(a), np.ravel(b)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two arrays over all their cells (flattened; ties get average ranks); NaN where a side
    is constant."""
    return float(spearman_rows(np.ravel(a), np.ravel(b)))


CORRELATIONS = {"spearman": spearman_rows, "pearson": pearson_rows}


def _interval(samples: np.ndarray, ci: float) -> list[float | None]:
    ok = samples[np.isfinite(samples)]
    if ok.size == 0:
        return [None, None]
    a = (1 - ci) / 2
    return [float(v) for v in np.quantile(ok, [a, 1 - a])]


def _p(null: np.ndarray, observed: float, exact: bool, two_sided: bool = True) -> float | None:
    """Share of the null at least as extreme as `observed` (random permutations: (1 + k) / (1 + n), which counts the
    observed order as one of them, so p is never 0)."""
    if not math.isfinite(observed):
        return None
    null = null[np.isfinite(null)]
    if null.size == 0:
        return None
    stat, obs = (np.abs(null), abs(observed)) if two_sided else (null, observed)
    k = int((stat >= obs - 1e-12).sum())
    return k / null.size if exact else (k + 1) / (null.size + 1)


def window_orders(n: int, n_perm: int, rng) -> tuple[np.ndarray, bool]:
    """([n_orders, n] window orders, exact): every permutation when n! <= EXACT_PERMUTATIONS, else n_perm drawn."""
    if math.factorial(n) <= EXACT_PERMUTATIONS:
        return np.array(list(itertools.permutations(range(n)))), True
    return np.argsort(rng.random((n_perm, n)), axis=1), False


@dataclass
class WindowCorrelation:
    """One correlation over windows: the value, its bootstrap interval and its permutation p-value."""
    r: float | None
    ci: list[float | None]
    p: float | None
    n_boot_undefined: int       # bootstrap samples in which a side was constant (no correlation defined)


@dataclass
class PerFact:
    n_facts: int                      # facts with a defined correlation (neither side constant over windows)
    spearman_mean: float | None       # mean over facts of Spearman(own importance, own efficacy) over windows
    spearman_ci: list[float | None]   # bootstrap over facts and seeds
    p_windows: float | None           # null: windows shuffled within each fact
    p_own: float | None               # null: each fact's trace paired with another fact's efficacy (one-sided)
    peak_hit: float                   # share of facts whose traced peak window is one of their best-efficacy windows
    peak_hit_chance: float            # expected share for a window drawn at random
    peak_hit_population: float        # share when every fact is given the population's traced peak window
    peak_hit_shuffled: float          # mean share with traces paired with other facts
    peak_p_own: float | None          # one-sided: own peaks hit at least as often as other facts' peaks


@dataclass
class Correlation:
    n_windows: int
    n_facts: int
    n_seeds: int
    importance: list[float]           # [n_windows] fact-mean importance
    importance_ci: list[list[float]]  # [n_windows] of [lo, hi], bootstrap over facts
    efficacy: list[float]             # [n_windows] fact- and seed-mean efficacy
    efficacy_ci: list[list[float]]    # [n_windows] of [lo, hi], bootstrap over facts and seeds
    spearman: WindowCorrelation
    pearson: WindowCorrelation
    per_fact: PerFact
    n_boot: int
    n_perm: int
    exact_permutations: bool          # the window permutation p-values enumerate every order
    seed: int
    ci: float

    def to_json(self) -> dict:
        return to_jsonable(asdict(self))


def _check(importance, efficacy) -> tuple[np.ndarray, np.ndarray]:
    imp = np.asarray(importance, dtype=float)
    eff = np.asarray(efficacy, dtype=float)
    if eff.ndim == 2:
        eff = eff[None]  # one seed
    if imp.ndim != 2 or eff.ndim != 3 or eff.shape[1:] != imp.shape:
        raise ConfigError(f"correlate: expected importance [n_facts, n_windows] and efficacy "
                          f"[n_seeds, n_facts, n_windows] of the same facts and windows, got {imp.shape} and "
                          f"{np.shape(efficacy)}")
    if imp.shape[1] < 3:
        raise ConfigError(f"correlate: {imp.shape[1]} window(s); a correlation over windows needs at least 3")
    if not (np.all(np.isfinite(imp)) and np.all(np.isfinite(eff))):
        raise ConfigError("correlate: importance and efficacy must be finite numbers")
    return imp, eff


def correlate(importance, efficacy, n_boot: int = 1000, n_perm: int = 10000, seed: int = 0,
              ci: float = 0.95) -> Correlation:
    """Correlation of traced importance with efficacy over windows, with its uncertainty (see the module doc)."""
    imp, eff = _check(importance, efficacy)
    if n_boot < 1 or n_perm < 1 or not 0 < ci < 1:
        raise ConfigError(f"correlate: need n_boot >= 1, n_perm >= 1 and 0 < ci < 1, got {n_boot}, {n_perm}, {ci}")
    S, F, W = eff.shape
    rng = np.random.default_rng(seed)
    imp_w, eff_fw = imp.mean(0), eff.mean(0)          # [W], [F, W]
    eff_w = eff_fw.mean(0)                             # [W]

    # bootstrap: facts and seeds resampled together
    fi = rng.integers(0, F, size=(n_boot, F))          # [B, F]
    si = rng.integers(0, S, size=(n_boot, S))          # [B, S]
    eff_bf = eff[si].mean(1)[np.arange(n_boot)[:, None], fi]  # [B, F, W]: mean over resampled seeds, of resampled facts
    imp_bf = imp[fi]                                   # [B, F, W]
    imp_b, eff_b = imp_bf.mean(1), eff_bf.mean(1)      # [B, W]

    orders, exact = window_orders(W, n_perm, rng)
    window = {}
    for name, fn in CORRELATIONS.items():
        r = float(fn(imp_w, eff_w))
        boot = fn(imp_b, eff_b)                        # [B]
        null = fn(np.broadcast_to(imp_w, orders.shape), eff_w[orders])  # [n_orders]
        window[name] = WindowCorrelation(r=r if math.isfinite(r) else None, ci=_interval(boot, ci),
                                         p=_p(null, r, exact), n_boot_undefined=int((~np.isfinite(boot)).sum()))

    return Correlation(
        n_windows=W, n_facts=F, n_seeds=S, importance=imp_w.tolist(),
        importance_ci=np.stack(_band(imp_b, ci), 1).tolist(), efficacy=eff_w.tolist(),
        efficacy_ci=np.stack(_band(eff_b, ci), 1).tolist(), spearman=window["spearman"], pearson=window["pearson"],
        per_fact=_per_fact(imp, eff_fw, imp_bf, eff_bf, rng, n_perm, ci), n_boot=n_boot, n_perm=len(orders),
        exact_permutations=exact, seed=seed, ci=ci)


def _band(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    a = (1 - ci) / 2
    lo, hi = np.quantile(samples, [a, 1 - a], axis=0)  # [W] each
    return lo, hi


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where a row has none.  [..., F] -> [...]"""
    ok = np.isfinite(x)
    n = ok.sum(-1)
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, np.where(ok, x, 0.0).sum(-1) / np.maximum(n, 1), np.nan)


def _hits(imp: np.ndarray, eff: np.ndarray) -> np.ndarray:
    """[..., F] whether each fact's traced peak window (the first maximum) is among its best-efficacy windows."""
    peak = imp.argmax(-1)[..., None]                                   # [..., F, 1]
    return np.take_along_axis(eff, peak, -1)[..., 0] >= eff.max(-1) - 1e-12


def _per_fact(imp, eff_fw, imp_bf, eff_bf, rng, n_perm: int, ci: float) -> PerFact:
    F, W = imp.shape
    r_f = spearman_rows(imp, eff_fw)                                   # [F]
    mean_r = float(_nanmean_rows(r_f))
    boot = _nanmean_rows(spearman_rows(imp_bf, eff_bf))                # [B]
    # null 1: windows shuffled within each fact
    orders = np.argsort(rng.random((n_perm, F, W)), axis=-1)           # [P, F, W]
    null_w = _nanmean_rows(spearman_rows(np.broadcast_to(imp, orders.shape),
                                         np.take_along_axis(np.broadcast_to(eff_fw, orders.shape), orders, -1)))
    # null 2: traces paired with other facts' efficacy
    pairs = np.argsort(rng.random((n_perm, F)), axis=-1)               # [P, F]
    null_own = _nanmean_rows(spearman_rows(imp[pairs], np.broadcast_to(eff_fw, (n_perm, F, W))))
    hits = _hits(imp, eff_fw)
    hits_shuffled = _hits(imp[pairs], np.broadcast_to(eff_fw, (n_perm, F, W))).mean(-1)  # [P]
    best = eff_fw >= eff_fw.max(-1, keepdims=True) - 1e-12             # [F, W] each fact's best windows
    population = int(imp.mean(0).argmax())
    return PerFact(
        n_facts=int(np.isfinite(r_f).sum()), spearman_mean=mean_r if math.isfinite(mean_r) else None,
        spearman_ci=_interval(boot, ci), p_windows=_p(null_w, mean_r, exact=False),
        p_own=_p(null_own, mean_r, exact=False, two_sided=False), peak_hit=float(hits.mean()),
        peak_hit_chance=float(best.mean()), peak_hit_population=float(best[:, population].mean()),
        peak_hit_shuffled=float(hits_shuffled.mean()),
        peak_p_own=_p(hits_shuffled, float(hits.mean()), exact=False, two_sided=False))


def window_contrast(efficacy, a, b=None, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
    """Mean efficacy of windows `a` minus that of windows `b` (lists of window indices, each side averaged over its
    windows), over facts and seeds, with a percentile bootstrap interval that resamples facts and seeds together
    (paired: both sides come from the same resampled facts and seeds). b None: the mean of `a` alone, with its
    interval.

    efficacy: [n_seeds, n_facts, n_windows] (or [n_facts, n_windows], one seed). Returns {"a", "b": the means
    (b None without b), "difference", "ci"}."""
    eff = np.asarray(efficacy, dtype=float)
    eff = eff[None] if eff.ndim == 2 else eff
    a, b = [int(i) for i in a], None if b is None else [int(i) for i in b]
    W = eff.shape[-1] if eff.ndim == 3 else 0
    if eff.ndim != 3 or not a or b == [] or not all(0 <= i < W for i in a + (b or [])):
        raise ConfigError(f"window_contrast: expected efficacy [n_seeds, n_facts, n_windows] and non-empty window "
                          f"indices below {W}, got shape {np.shape(efficacy)}, a {a}, b {b}")
    if not np.all(np.isfinite(eff)) or n_boot < 1 or not 0 < ci < 1:
        raise ConfigError("window_contrast: efficacy must be finite, n_boot >= 1 and 0 < ci < 1")
    S, F, _ = eff.shape
    diff = eff[..., a].mean(-1) - (0.0 if b is None else eff[..., b].mean(-1))   # [S, F]
    rng = np.random.default_rng(seed)
    fi = rng.integers(0, F, size=(n_boot, F))
    si = rng.integers(0, S, size=(n_boot, S))
    boot = diff[si].mean(1)[np.arange(n_boot)[:, None], fi].mean(-1)   # [B]: resampled seeds' mean, resampled facts
    return {"a": float(eff[..., a].mean()), "b": None if b is None else float(eff[..., b].mean()),
            "difference": float(diff.mean()),
            "ci": _interval(boot, ci)}
