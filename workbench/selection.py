"""Layer selection: turn a layer-importance vector into the layers an editor will touch.

Strategies (on one kind's per-layer scores):
  top-k      the k highest-scoring layers (not necessarily adjacent)
  window     the best run of `window` consecutive layers (largest summed score) -- RMU-style editors want a block
  threshold  every layer whose score is >= threshold (scores are normalised effects, 1 = full recovery)

The result is a `LayerSelection` JSON artifact that `parse_layers` (and so every editor) accepts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .configfile import read_json
from .errors import ConfigError, quote
from .provenance import atomic_write_json, provenance, to_jsonable

STRATEGIES = ("top-k", "window", "threshold")


@dataclass
class LayerSelection:
    layers: list[int]           # chosen layers, ascending
    scores: list[float]         # score of every layer of the model (len = n_layers), not only the chosen ones
    strategy: str
    kind: str | None = None
    params: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.scores)

    @property
    def selected_scores(self) -> list[float]:
        return [self.scores[l] for l in self.layers]

    def _repr_html_(self) -> str:
        """Every layer's score with the selected ones shaded, the strategy and its parameters."""
        from .htmlview import table

        params = ", ".join(f"{k}={v}" for k, v in self.params.items() if k != "window_sums")
        cap = (f"<b>LayerSelection</b>: layers <b>{self.layers}</b> ({self.strategy}{f', {params}' if params else ''}"
               f"{f' on {self.kind}' if self.kind else ''})")
        rows = [[l, float(v), "selected" if l in self.layers else ""] for l, v in enumerate(self.scores)]
        return table(["layer", "score", ""], rows, caption=cap, highlight=set(self.layers))

    def to_json(self) -> dict:
        return to_jsonable({"type": "LayerSelection", "layers": self.layers, "scores": self.scores,
                            "selected_scores": self.selected_scores, "strategy": self.strategy, "kind": self.kind,
                            "params": self.params, "provenance": self.provenance})

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "LayerSelection":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no layer-selection file at {path}")
        d = read_json(path, "layer selection")
        if not isinstance(d, dict) or d.get("type") != "LayerSelection" or "layers" not in d:
            raise ConfigError(f"{path} is not a LayerSelection JSON (expected a file written by "
                              "`workbench select` / LayerSelection.save)")
        where = f"layer selection {path}"
        scores = d.get("scores", [])
        if not isinstance(scores, list) or not all(_is_number(x) for x in scores):
            raise ConfigError(f"{where}: scores {quote(scores)} must be a list of numbers (one per layer)")
        params, prov = d.get("params", {}), d.get("provenance", {})
        if not isinstance(params, dict) or not isinstance(prov, dict):
            raise ConfigError(f"{where}: params and provenance must be JSON objects")
        kind, strategy = d.get("kind"), d.get("strategy", "manual")
        if not (kind is None or isinstance(kind, str)) or not isinstance(strategy, str):
            raise ConfigError(f"{where}: kind and strategy must be strings, got {quote(kind)} and {quote(strategy)}")
        return cls(layers=layer_indices(d["layers"], where), scores=[float(x) for x in scores], strategy=strategy,
                   kind=kind, params=params, provenance=prov)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def layer_indices(values, where: str) -> list[int]:
    """`values` as a list of layer indices: a JSON list of integers. 1.7, true, "3" or {} are errors, not layer 1:
    a float or a bool is not a layer, and rounding or truthiness would edit a layer nobody chose."""
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{where}: layers must be a list of integers, got {quote(values)}")
    bad = [x for x in values if isinstance(x, bool) or not isinstance(x, (int, np.integer))]
    if bad:
        raise ConfigError(f"{where}: {quote(bad[0])} is not a layer index; layers must be integers, like [1, 2, 3]")
    return [int(x) for x in values]


def _scores_of(importance) -> tuple[np.ndarray, str | None, dict]:
    from .aggregate import LayerImportance

    if isinstance(importance, LayerImportance):
        return np.asarray(importance.mean, float), importance.kind, {
            "source": "LayerImportance", "n_facts": importance.n_facts, "position": importance.position,
            "source_provenance": importance.provenance}
    arr = np.asarray(importance, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ConfigError(f"layer importance must be a non-empty 1-D vector (one score per layer), got shape {arr.shape}")
    return arr, None, {"source": "vector"}


def select_layers(importance, strategy: str = "window", k: int = 3, window: int = 3, threshold: float = 0.5,
                  kind: str | None = None) -> LayerSelection:
    """Choose layers from a LayerImportance (its mean) or a per-layer score vector."""
    scores, src_kind, src = _scores_of(importance)
    kind = kind or src_kind
    if not np.all(np.isfinite(scores)):
        raise ConfigError(f"layer importance has non-finite scores {scores.tolist()}; cannot select layers")
    n = len(scores)
    if strategy == "top-k":
        if not 1 <= k <= n:
            raise ConfigError(f"top-k: k={k} must be between 1 and the number of layers ({n})")
        # stable sort on -score: ties go to the lower layer
        layers = sorted(np.argsort(-scores, kind="stable")[:k].tolist())
        params = {"k": k}
    elif strategy == "window":
        if not 1 <= window <= n:
            raise ConfigError(f"window: window={window} must be between 1 and the number of layers ({n})")
        sums = np.convolve(scores, np.ones(window), mode="valid")   # [n - window + 1], sum of each run
        start = int(best_window(scores, window))
        layers = list(range(start, start + window))
        params = {"window": window, "window_sums": sums.round(6).tolist()}
    elif strategy == "threshold":
        layers = np.flatnonzero(scores >= threshold).tolist()
        if not layers:
            raise ConfigError(f"threshold: no layer scores >= {threshold} (max score {scores.max():.4g} at layer "
                              f"{int(scores.argmax())}); lower the threshold or use top-k/window")
        params = {"threshold": threshold}
    else:
        raise ConfigError(f"unknown selection strategy {strategy!r}; expected one of {STRATEGIES}")
    prov = provenance(config={"strategy": strategy, "kind": kind, **params}, **src)
    return LayerSelection(layers=[int(l) for l in layers], scores=scores.tolist(), strategy=strategy, kind=kind,
                          params=params, provenance=prov)


def best_window(scores: np.ndarray, window: int) -> np.ndarray:
    """Start of the run of `window` consecutive layers with the largest summed score (the earliest on ties), for each
    score vector along the last axis.  [..., n_layers] -> [...]"""
    c = np.cumsum(np.asarray(scores, float), axis=-1)
    c = np.concatenate([np.zeros(c.shape[:-1] + (1,)), c], axis=-1)
    sums = c[..., window:] - c[..., :-window]                    # [..., n_layers - window + 1]
    return np.argmax(sums.round(12), axis=-1)


def selection_agreement(per_fact: np.ndarray, sizes, window: int = 3, reps: int = 200, seed: int = 0) -> list[dict]:
    """How many traced facts make a stable window selection? per_fact: [n_facts, n_layers] importance of each fact.

    For each n in `sizes`, `reps` random draws of facts:
      same_window  two disjoint sets of n facts select the same window (None when 2n > n_facts)
      jaccard      mean overlap |A & B| / |A | B| of the two sets' windows' layers (None when 2n > n_facts)
      same_as_all  a set of n facts selects the window that all n_facts select
    """
    per_fact = np.asarray(per_fact, float)
    F, L = per_fact.shape
    if not 1 <= window <= L:
        raise ConfigError(f"selection_agreement: window {window} must be between 1 and the number of layers ({L})")
    bad = [n for n in sizes if not 1 <= n <= F]
    if bad or reps < 1:
        raise ConfigError(f"selection_agreement: sizes {bad} must be between 1 and the {F} facts, reps >= 1")
    rng = np.random.default_rng(seed)
    full = int(best_window(per_fact.mean(0), window))
    rows = []
    for n in sizes:
        order = np.argsort(rng.random((reps, F)), axis=1)       # [reps, F] a random order of the facts per draw
        a = best_window(per_fact[order[:, :n]].mean(1), window)  # [reps]
        row = {"n_facts": int(n), "same_window": None, "jaccard": None, "same_as_all": float((a == full).mean())}
        if 2 * n <= F:
            b = best_window(per_fact[order[:, n:2 * n]].mean(1), window)
            overlap = np.maximum(0, window - np.abs(a - b))
            row.update(same_window=float((a == b).mean()), jaccard=float((overlap / (2 * window - overlap)).mean()))
        rows.append(row)
    return rows


_RANGE = re.compile(r"^([0-9]+)\s*-\s*([0-9]+)$")
_INDEX = re.compile(r"^[0-9]+$")


def _is_file(spec: str) -> bool:
    try:
        return Path(spec).is_file()
    except (OSError, ValueError):  # a name too long for the file system, or one holding a NUL byte
        return False


def parse_layers(spec, n_layers: int | None = None) -> list[int]:
    """Layers from "12,13,14", "12-14", "3,7-9", a LayerSelection JSON path, a LayerSelection, an int or a list.

    Returns sorted unique layers; raises ConfigError for empty, malformed or out-of-range specs.
    """
    where = f"layer spec {quote(spec)}"
    if isinstance(spec, LayerSelection):
        layers = list(spec.layers)
    elif isinstance(spec, Path) or (isinstance(spec, str) and (spec.strip().endswith(".json") or _is_file(spec))):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"{where}: no such selection file (expected '12,13,14', '12-14' or a "
                              "LayerSelection JSON path)")
        layers = LayerSelection.load(path).layers
        where = f"layer selection {quote(str(path))}"
    elif isinstance(spec, str):
        layers = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if _INDEX.match(part):
                layers.append(int(part))
            elif m := _RANGE.match(part):
                a, b = int(m.group(1)), int(m.group(2))
                if a > b:
                    raise ConfigError(f"{where}: range {quote(part)} runs backwards; expected low-high like '12-14'")
                _check_range(a, b, n_layers, where)  # before range() builds the list
                layers.extend(range(a, b + 1))
            else:
                raise ConfigError(f"{where}: cannot read {quote(part)}; expected comma-separated layers and ranges "
                                  "like '12,13,14' or '12-14', or a LayerSelection JSON path")
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        layers = [int(spec)]
    elif isinstance(spec, (list, tuple, np.ndarray)):
        layers = layer_indices(list(spec), where)
    else:
        raise ConfigError(f"{where}: expected a string like '12-14', a list of ints or a LayerSelection JSON path")
    if not layers:
        raise ConfigError(f"{where} selects no layers; expected at least one layer")
    bad = [l for l in layers if l < 0 or l >= (n_layers if n_layers is not None else MAX_LAYERS)]
    if bad:
        raise ConfigError(f"{where}: layers {quote(sorted(set(bad)))} out of range; {_depth(n_layers)}")
    return sorted(set(layers))


# no decoder has this many layers (OLMo-2 32B has 64): a bound on a spec read before the model's depth is known
MAX_LAYERS = 10_000


def _check_range(a: int, b: int, n_layers: int | None, where: str) -> None:
    """A range a-b whose end lies past the model's last layer is refused before it is expanded: its bad layers are
    named as a list when there are a few, else as a range (0-999999999 is not built to be reported)."""
    top = n_layers if n_layers is not None else MAX_LAYERS
    if b >= top:
        lo = max(a, top)
        bad = str(list(range(lo, b + 1))) if b - lo < 8 else f"{lo}-{b}"
        raise ConfigError(f"{where}: layers {bad} out of range; {_depth(n_layers)}")


def _depth(n_layers: int | None) -> str:
    if n_layers is None:  # read before the model is loaded: only the bound no model reaches
        return f"a layer index is at most {MAX_LAYERS - 1} (no decoder has more layers)"
    return f"the model has layers 0..{n_layers - 1}"
