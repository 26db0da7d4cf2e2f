"""`TraceResult`: one traced (or patched) prompt, layer x position effects per kind, saved with provenance.

Saved as `<stem>.npz` (arrays) + `<stem>.json` (everything else), both written atomically.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .configfile import read_json
from .errors import ConfigError, clip
from .provenance import atomic_write_json, to_jsonable
from .sites import KINDS  # noqa: F401  the trace kinds, the keys of a causal trace's effects (defined with the sites)


@dataclass
class TraceResult:
    method: str                      # "causal_trace" | "activation_patching" | "attribution_patching"
    prompt: str
    answer: str
    tokens: list[str]                # readable token strings of the prompt, len = n_positions
    subject_range: tuple[int, int]   # [start, end) token positions of the subject (corrupted span)
    effects: dict[str, np.ndarray]   # kind -> [n_layers, n_positions]: metric after restoring/patching that site
    clean: float                     # metric on the clean run (e.g. p(answer))
    corrupted: float                 # metric on the corrupted / counterfactual run
    metric: str = "prob"             # "prob" | "logprob_mean" | "logit_diff" | ...
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. per-head effects, std over noise samples

    @property
    def kinds(self) -> list[str]:
        return list(self.effects)

    @property
    def n_layers(self) -> int:
        return next(iter(self.effects.values())).shape[0]

    @property
    def total_effect(self) -> float:
        return self.clean - self.corrupted

    def indirect_effect(self, kind: str) -> np.ndarray:
        """IE(l, t) = metric_restored - metric_corrupted.  # [n_layers, n_positions]"""
        return self.effects[kind] - self.corrupted

    def normalised(self, kind: str) -> np.ndarray:
        """IE / total effect: 0 = no recovery, 1 = full recovery of the clean metric.  # [n_layers, n_positions]"""
        te = self.total_effect
        return self.indirect_effect(kind) / te if abs(te) > 1e-12 else np.zeros_like(self.effects[kind])

    def layer_importance(self, kind: str, position: int | str = "max", normalise: bool = True) -> np.ndarray:
        """Per-layer score: the normalised (or raw indirect) effect at one position, or its max/mean over
        positions.  # [n_layers]"""
        norm = self.normalised(kind) if normalise else self.indirect_effect(kind)
        if position == "max":
            return norm.max(axis=1)
        if position == "mean":
            return norm.mean(axis=1)
        if position == "last_subject":
            return norm[:, self.subject_range[1] - 1]
        if position == "last":
            return norm[:, -1]
        return norm[:, int(position)]

    def _repr_html_(self) -> str:
        """The fact, its clean and corrupted metric, and per layer the normalised effect of each kind at the last
        subject (or last changed) token, the site ROME reads."""
        import html

        from .htmlview import table, text

        s, e = self.subject_range
        toks = "".join(f"<b><u>{html.escape(t)}</u></b>" if s <= i < e else html.escape(t)
                       for i, t in enumerate(self.tokens))
        kinds = [k for k, v in self.effects.items() if v.shape[1] == len(self.tokens)]
        rows = [[l] + [float(self.normalised(k)[l, e - 1]) for k in kinds] for l in range(self.n_layers)]
        marked = "subject" if self.method == "causal_trace" else "changed tokens"
        head = (f"<p style='margin:2px 0'><b>{html.escape(self.method)}</b>: {toks} &rarr; "
                f"<b>{html.escape(self.answer)}</b> ({marked} underlined)<br>metric {html.escape(self.metric)}: clean "
                f"{text(self.clean)}, corrupted {text(self.corrupted)}, total effect {text(self.total_effect)}</p>")
        if not kinds:
            return head
        return head + table(["layer"] + kinds, rows, caption=f"normalised effect at token {e - 1} "
                            f"({html.escape(self.tokens[e - 1])}); 0 = nothing restored, 1 = all of it")

    # --- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write `<path>.json` + `<path>.npz` (a suffix on `path` is dropped). Returns the json path."""
        stem = Path(path).with_suffix("")
        arrays = {f"effects/{k}": v for k, v in self.effects.items()}
        arrays.update({f"extra/{k}": v for k, v in self.extra.items()})
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        npz = stem.with_suffix(".npz")
        npz.parent.mkdir(parents=True, exist_ok=True)
        tmp = npz.with_name(f".{npz.name}.tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(npz)
        meta = {k: getattr(self, k) for k in ("method", "prompt", "answer", "tokens", "subject_range", "clean",
                                                "corrupted", "metric", "config", "provenance")}
        meta["arrays"] = npz.name
        return atomic_write_json(stem.with_suffix(".json"), to_jsonable(meta))

    @classmethod
    def load(cls, path: str | Path) -> "TraceResult":
        stem = Path(path).with_suffix("")
        jpath = stem.with_suffix(".json")
        if not jpath.is_file():
            raise FileNotFoundError(f"no trace result at {jpath} (expected <name>.json + <name>.npz from TraceResult.save)")
        meta = read_json(jpath, "trace result")
        try:
            arrays = stem.with_name(Path(meta.pop("arrays")).name)  # beside the JSON, never elsewhere
            with np.load(arrays) as z:
                effects = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("effects/")}
                extra = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("extra/")}
            meta["subject_range"] = tuple(meta["subject_range"])
            return cls(effects=effects, extra=extra, **meta)
        except (KeyError, TypeError, ValueError, AttributeError, OSError) as e:
            raise ConfigError(f"trace result {jpath} is not one TraceResult.save wrote ({type(e).__name__}: "
                              f"{clip(e)})") from None
