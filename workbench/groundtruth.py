"""Does tracing find where a fact is stored? Localisation scored against planted ground truth.

A planted organism (organism.PLANTED) is its base fine-tuned on the facts with only the MLPs of chosen layers
trainable, so the facts live, by construction, in those layers' weight difference from the base. Each localisation
method gives every fact a score per layer, [n_facts, n_layers]:

    trace:<kind>   ROME causal tracing of resid / mlp / attn (the shared TraceSettings; mlp and attn restore a window
                   of layers around each layer, tracing.default_window): the normalised effect at `position`
    patch:<site>   activation patching from the fact's prompt into a counterfactual one (the same question about
                   another subject, patching.find_counterfactual), every layer of one site (mlp_out, attn_out,
                   resid_pre, resid_post): the normalised effect at `position`
    atp:<site>     attribution patching of the same pair: its estimate, normalised
    atp*:<site>    AtP* (QK fix and GradDrop): the GradDrop magnitude, divided by the total effect
    weights        the planted-weights baseline: the Frobenius norm of (original - base) over each decoder layer's
                   parameters, the same for every fact. It is what a method with access to the base would see.

Accuracy of a method against the planted layers P (`accuracy`):

    rank        each planted layer's rank in the fact-mean score (1 = the highest; ties share their mean rank), and
                per fact the mean rank of the planted layers, averaged over facts (chance: (n_layers + 1) / 2)
    precision@k |top k layers & P| / k, and recall@k |top k layers & P| / |P| (top k: the k highest scores, ties to
                the lower layer, as selection's top-k), per fact (then averaged) and of the fact-mean score; k is
                |P| and each of `top_k`. Chance under random layer labels: |P| / n_layers and k / n_layers.
    intervals   95% percentile bootstrap over facts
    p           the layer labels shuffled (one permutation of the layers for every fact; every permutation up to 8
                layers, else n_perm drawn): the share of relabellings whose per-fact mean precision@k is at least
                the observed one

The study (`run`, `workbench groundtruth`): accuracy on each organism of `organisms`, and a `workbench localize` run
with depth efficacy (UDS and relearning at equal retain cost) for each of `localize`, which answers where forgetting
is deepest: at the planted layers, at the traced layers, or elsewhere. It writes groundtruth.json, table.md, figures/
and a jsonl log into `out`, and prints its runtime.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from .configfile import MAX_BOOT, MAX_SAMPLES, coerce_fields, read_mapping
from .correlation import window_orders
from .errors import ConfigError, TraceError
from .localize import LocalizeConfig
from .patching import PATCH_SITES
from .provenance import (atomic_write_json, atomic_write_text, key_change, key_parts, provenance,
                         records_hash)
from .sites import KINDS
from .trace_settings import TraceSettings

PATCH_FAMILIES = ("patch", "atp", "atp*")
METHODS = ("trace:resid", "trace:mlp", "trace:attn", "patch:mlp_out", "atp:mlp_out", "atp*:mlp_out", "weights")


# ---------------------------------------------------------------- accuracy on hand-made or measured scores
def _scores(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    if s.ndim < 1 or s.shape[-1] < 1 or not np.all(np.isfinite(s)):
        raise ConfigError(f"layer scores must be finite numbers, one per layer along the last axis; got shape "
                          f"{s.shape}")
    return s


def _planted(planted, n_layers: int) -> list[int]:
    p = sorted({int(l) for l in planted})
    if not p or not all(0 <= l < n_layers for l in p):
        raise ConfigError(f"planted layers {list(planted)} must be a non-empty set of layers below {n_layers}")
    return p


def ranks(scores, planted) -> np.ndarray:
    """[..., |planted|]: the rank of each planted layer among a score vector's layers (1 = the highest score; tied
    layers share their mean rank).  scores: [..., n_layers]"""
    s = _scores(scores)
    return rankdata(-s, axis=-1, method="average")[..., _planted(planted, s.shape[-1])]


def top_k(scores, k: int) -> np.ndarray:
    """[..., k]: the k highest-scoring layers, ties to the lower layer."""
    s = _scores(scores)
    if not 1 <= k <= s.shape[-1]:
        raise ConfigError(f"top-k: k = {k} must be between 1 and the {s.shape[-1]} layers")
    return np.argsort(-s, axis=-1, kind="stable")[..., :k]


def precision_recall(scores, planted, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(precision [...], recall [...]) of the top k layers of each score vector [..., n_layers] against the planted
    layers: |top k & planted| / k and |top k & planted| / |planted|."""
    s = _scores(scores)
    p = _planted(planted, s.shape[-1])
    hits = np.isin(top_k(s, k), p).sum(-1)
    return hits / k, hits / len(p)


def _interval(samples: np.ndarray, ci: float = 0.95) -> list[float]:
    a = (1 - ci) / 2
    return [float(v) for v in np.quantile(samples, [a, 1 - a])]


def shuffled_labels(per_fact, planted, k: int, n_perm: int = 10000, seed: int = 0) -> dict:
    """Does the agreement need the layer labels? The per-fact mean precision@k with the layers relabelled (one
    permutation for every fact): every permutation when there are few enough layers, else n_perm drawn.
    Returns {"observed", "null_mean", "p" (one-sided: relabellings at least as precise), "exact"}."""
    s = _scores(per_fact)
    s = s[None] if s.ndim == 1 else s
    orders, exact = window_orders(s.shape[1], n_perm, np.random.default_rng(seed))     # [n_orders, n_layers]
    observed = float(precision_recall(s, planted, k)[0].mean())
    null = precision_recall(s[:, orders], planted, k)[0].mean(0)                       # [n_orders]
    n_at_least = int((null >= observed - 1e-12).sum())
    return {"observed": observed, "null_mean": float(null.mean()), "exact": exact,
            "p": n_at_least / len(null) if exact else (n_at_least + 1) / (len(null) + 1)}


def accuracy(per_fact, planted, ks=(), n_boot: int = 1000, n_perm: int = 10000, seed: int = 0) -> dict:
    """How well one method's scores [n_facts, n_layers] find the planted layers (see the module doc), at k = the
    number of planted layers and each of `ks`."""
    s = _scores(per_fact)
    if s.ndim != 2 or s.shape[0] < 1:
        raise ConfigError(f"accuracy: expected scores [n_facts, n_layers], got shape {s.shape}")
    F, L = s.shape
    p = _planted(planted, L)
    if n_boot < 1 or n_perm < 1:
        raise ConfigError(f"accuracy: n_boot and n_perm must be >= 1, got {n_boot}, {n_perm}")
    rng = np.random.default_rng(seed)
    boot = rng.integers(0, F, size=(n_boot, F))                 # [B, F] facts resampled with replacement
    mean = s.mean(0)
    mean_b = s[boot].mean(1)                                    # [B, L] the fact-mean score of each resample
    fact_rank = ranks(s, p).mean(-1)                            # [F] each fact's mean planted rank
    out = {"n_facts": F, "n_layers": L, "planted": p, "mean_score": mean.tolist(), "peak_layer": int(np.argmax(mean)),
           "ranks": ranks(mean, p).tolist(), "mean_rank": float(ranks(mean, p).mean()),
           "mean_rank_ci": _interval(ranks(mean_b, p).mean(-1)), "rank_per_fact": float(fact_rank.mean()),
           "rank_per_fact_ci": _interval(fact_rank[boot].mean(-1)), "rank_chance": (L + 1) / 2, "top_k": {}}
    for k in sorted({len(p), *(int(k) for k in ks if 1 <= k <= L)}):
        prec_f, rec_f = precision_recall(s, p, k)               # [F] each
        prec_m, rec_m = precision_recall(mean, p, k)
        prec_b, rec_b = precision_recall(mean_b, p, k)          # [B]
        out["top_k"][str(k)] = {
            "k": k, "precision": float(prec_m), "precision_ci": _interval(prec_b), "recall": float(rec_m),
            "recall_ci": _interval(rec_b), "precision_per_fact": float(prec_f.mean()),
            "precision_per_fact_ci": _interval(prec_f[boot].mean(-1)), "recall_per_fact": float(rec_f.mean()),
            "recall_per_fact_ci": _interval(rec_f[boot].mean(-1)), "precision_chance": len(p) / L,
            "recall_chance": k / L, "shuffled": shuffled_labels(s, p, k, n_perm, seed)}
    return out


@torch.no_grad()
def weight_difference(model, base) -> np.ndarray:
    """[n_layers]: the Frobenius norm of model - base over each decoder layer's parameters (the planted-weights
    baseline; both models of one shape)."""
    from .models import decoder_layers

    ours, theirs = decoder_layers(model), decoder_layers(base)
    if len(ours) != len(theirs):
        raise ConfigError(f"weight difference: the model has {len(ours)} layers, its base {len(theirs)}")
    out = []
    for l, (a, b) in enumerate(zip(ours, theirs)):
        pb = dict(b.named_parameters())
        if set(pb) != {n for n, _ in a.named_parameters()}:
            raise ConfigError(f"weight difference: layer {l} has other parameters than its base's")
        out.append(sum(float(((p.float() - pb[n].float()) ** 2).sum()) for n, p in a.named_parameters()) ** 0.5)
    return np.array(out)


# ---------------------------------------------------------------- the methods' scores on one organism
def parse_method(spec: str) -> tuple[str, str | None]:
    """'trace:mlp' -> ('trace', 'mlp'); 'atp*:mlp_out' -> ('atp*', 'mlp_out'); 'weights' -> ('weights', None)."""
    family, _, kind = str(spec).partition(":")
    if family == "weights" and not kind:
        return family, None
    if family == "trace" and kind in KINDS:
        return family, kind
    if family in PATCH_FAMILIES and kind in PATCH_SITES:
        return family, kind
    raise ConfigError(f"localisation method {spec!r}: expected 'weights', trace:{{{','.join(KINDS)}}} or "
                      f"{{{','.join(PATCH_FAMILIES)}}}:{{{','.join(PATCH_SITES)}}}")


@dataclass
class GroundTruthConfig:
    organisms: tuple[str, ...] = ("deep-early", "deep-middle", "deep-late", "default-planted")
    out: str = "runs/groundtruth"
    figures: str | None = None        # also copy the PNG figures here (e.g. the README's figures/)
    seed: int = 0
    # facts, as localize chooses them: the first n_facts traceable forget facts of `task` the model recalls
    task: str | None = "Task2"
    n_facts: int | None = 16
    methods: tuple[str, ...] = METHODS
    # how each fact is scored (tracing: the shared TraceSettings, as localize traces; patching: the same metric,
    # floor and position)
    n_samples: int = TraceSettings.n_samples
    metric: str = TraceSettings.metric
    position: str = TraceSettings.position
    min_total_effect: float = TraceSettings.min_total_effect
    # accuracy
    top_k: tuple[int, ...] = (1,)     # k's besides the number of planted layers
    n_boot: int = TraceSettings.n_boot
    n_perm: int = 10000
    # localize runs with depth efficacy: each a LocalizeConfig file (relative to the config file naming it) or a
    # mapping of its fields; its out is set to <out>/localize-<organism>
    localize: tuple = ()

    @classmethod
    def from_dict(cls, d: dict, base: Path | None = None) -> "GroundTruthConfig":
        d = dict(d)
        for key in ("organisms", "methods"):  # "a,b": a short list, not its characters
            if isinstance(d.get(key), str):
                d[key] = [k.strip() for k in d[key].split(",") if k.strip()]
        if base is not None and isinstance(d.get("localize"), (list, tuple)):
            d["localize"] = [str(base / x) if isinstance(x, str) and not Path(x).is_absolute() else x
                             for x in d["localize"]]
        return checked(cls(**coerce_fields(cls, d, "groundtruth config")))

    @classmethod
    def from_file(cls, path: str | Path) -> "GroundTruthConfig":
        return cls.from_dict(read_mapping(path, "groundtruth config"), base=Path(path).resolve().parent)

    def trace_config(self, kinds) -> LocalizeConfig:
        """The tracing settings as localize's (its `trace_set` traces and caches the facts): a trace saved by a
        localize run of the same organism, facts and settings is reused, and the other way round."""
        return LocalizeConfig(task=self.task, n_facts=self.n_facts, n_samples=self.n_samples, kinds=tuple(kinds),
                              kind=kinds[0], position=self.position, metric=self.metric,
                              min_total_effect=self.min_total_effect, seed=self.seed, n_boot=self.n_boot, editors={})

    def localize_configs(self) -> list[LocalizeConfig]:
        """Each localize run's config, its output under this study's."""
        from .models import organism_name

        out = []
        for i, entry in enumerate(self.localize):
            if isinstance(entry, str):
                cfg = LocalizeConfig.from_file(entry)
            elif isinstance(entry, dict):
                cfg = LocalizeConfig.from_dict(entry)
            else:
                raise ConfigError(f"groundtruth config localize[{i}]: expected a localize config file or a mapping of "
                                  f"its fields, got {type(entry).__name__}")
            name = organism_name(cfg.model)
            if name is None:
                raise ConfigError(f"groundtruth config localize[{i}]: model {cfg.model!r} is not an organism; the "
                                  "study's localize runs edit planted organisms")
            out.append(dataclasses.replace(cfg, out=str(Path(self.out) / f"localize-{name}"), figures=None))
        names = [c.model for c in out]
        if len(set(names)) != len(names):
            raise ConfigError(f"groundtruth config localize: each organism once, got {names}")
        return out


def checked(cfg: GroundTruthConfig) -> GroundTruthConfig:
    """Every setting checked before any model work; a bad one is a ConfigError naming it."""
    from .organism import PRESETS

    def need(ok, msg):
        if not ok:
            raise ConfigError(f"groundtruth config: {msg}")

    cfg = GroundTruthConfig(**coerce_fields(GroundTruthConfig, {f.name: getattr(cfg, f.name) for f in fields(cfg)},
                                            "groundtruth config"))
    need(cfg.organisms or cfg.localize, "give organisms to score, localize runs, or both")
    for name in cfg.organisms:
        need(name in PRESETS and PRESETS[name].plant,
             f"organism {name!r} has no planted layers; expected one of "
             f"{sorted(k for k, v in PRESETS.items() if v.plant and not v.leave_out)}")
    need(len(set(cfg.organisms)) == len(cfg.organisms), f"each organism once, got {list(cfg.organisms)}")
    need(cfg.methods, "give at least one localisation method")
    for m in cfg.methods:
        parse_method(m)
    need(len(set(cfg.methods)) == len(cfg.methods), f"each method once, got {list(cfg.methods)}")
    need(cfg.n_facts is None or cfg.n_facts >= 3, f"n_facts must be >= 3 or null (every fact), got {cfg.n_facts}")
    TraceSettings(n_samples=cfg.n_samples, metric=cfg.metric, position=cfg.position,
                  min_total_effect=cfg.min_total_effect, seed=cfg.seed, n_boot=cfg.n_boot).check(
        lambda key: f"groundtruth config: {key}")
    need(cfg.n_samples <= MAX_SAMPLES, f"n_samples must be <= {MAX_SAMPLES} (it sizes memory), got {cfg.n_samples}")
    need(all(k >= 1 for k in cfg.top_k), f"top_k must be >= 1, got {list(cfg.top_k)}")
    need(1 <= cfg.n_boot <= MAX_BOOT and 1 <= cfg.n_perm <= MAX_BOOT,
         f"n_boot and n_perm must be between 1 and {MAX_BOOT} (they size memory), got {cfg.n_boot}, {cfg.n_perm}")
    cfg.localize_configs()
    return cfg


def _recalled(model, tok, records) -> np.ndarray:
    from .evaluation.attacks.recall import encode_qa, score

    return score(model, tok, encode_qa(tok, records)).exact.numpy()


def _counterfactual_pool(corpus) -> list:
    """Every QA record that may serve as a counterfactual prompt, people the model was trained on first."""
    from .data.records import questions

    return [r for s in ("retain", "validation", "forget", "holdout", "calibration", "population")
            for r in questions(corpus.split(s))]


def method_scores(model, tok, corpus, base, cfg: GroundTruthConfig, trace_path: Path, progress: bool = False,
                  log=None, model_key: str | None = None) -> dict:
    """Every method's scores [n_facts, n_layers] on the same facts: the first cfg.n_facts traceable forget facts of
    cfg.task that the model recalls, that the tracing noise hurts by at least cfg.min_total_effect (when a trace
    method is asked) and that have a counterfactual the patched metric separates by as much (when a patching method
    is asked). The trace is localize's `trace_set`, saved at `trace_path` with its content key (model_key: the
    model's, as models.weights_key; default a hash of its parameters).
    Returns {"scores": {method: [F, L]}, "facts": ids, "excluded": {id: why}, "seconds": {family: s}}."""
    log = log or (lambda *a, **k: None)
    methods = {m: parse_method(m) for m in cfg.methods}
    records = corpus.facts("forget", cfg.task)
    records = records[: cfg.n_facts] if cfg.n_facts else records
    if len(records) < 3:
        raise ConfigError(f"task {cfg.task!r} has {len(records)} traceable forget facts; the accuracy needs at least 3")
    seconds: dict[str, float] = {}
    excluded, traces = _traced(model, tok, records, cfg, methods, trace_path, progress, log, model_key, seconds)
    todo = [r for r in records if r.id not in excluded]

    families = {f: sorted({k for ff, k in methods.values() if ff == f}) for f in PATCH_FAMILIES}
    patched = _patched(model, tok, corpus, todo, cfg, families, excluded, seconds) if any(families.values()) else {}
    kept = [r for r in todo if r.id not in excluded]
    if len(kept) < 3:
        raise ConfigError(f"only {len(kept)} of {len(records)} facts can be scored by every method (excluded: "
                          f"{excluded}); the accuracy needs at least 3: raise n_facts or lower min_total_effect")
    scores = {}
    for name, (family, kind) in methods.items():
        if family == "weights":
            scores[name] = np.tile(weight_difference(model, base), (len(kept), 1))
        elif family == "trace":
            scores[name] = np.stack([traces[kind][r.id] for r in kept])
        else:
            scores[name] = np.stack([patched[r.id][family].layer_importance(kind, cfg.position) for r in kept])
    log("scored", facts=len(kept), excluded=excluded, seconds=seconds)
    return {"scores": scores, "facts": [r.id for r in kept], "excluded": excluded, "seconds": seconds,
            "counterfactuals": {i: p["counterfactual"] for i, p in patched.items() if i in {r.id for r in kept}}}


def _traced(model, tok, records, cfg: GroundTruthConfig, methods: dict, trace_path: Path, progress: bool, log,
            model_key: str | None, seconds: dict) -> tuple[dict, dict]:
    """The facts left out ({id: why}) and, when a trace method is asked, each traced kind's per-fact importance
    ({kind: {id: [L]}}, the trace's time in `seconds`): recall and the total-effect floor decide the facts, as in
    localize; without a trace method, recall alone."""
    from .localize import trace_set

    kinds = [k for f, k in methods.values() if f == "trace"]
    if not kinds:
        return {r.id: "not recalled by the model" for r, ok in zip(records, _recalled(model, tok, records))
                if not ok}, {}
    t0 = time.perf_counter()
    traced = trace_set(model, tok, records, cfg.trace_config(kinds), tuple(kinds), Path(trace_path), progress,
                       log, model_key)
    seconds["trace"] = round(time.perf_counter() - t0, 2)
    return (dict(traced["excluded"]),
            {k: dict(zip(traced["facts"], imp.per_fact)) for k, imp in traced["importance"].items()})


def _patched(model, tok, corpus, records, cfg: GroundTruthConfig, families: dict, excluded: dict,
             seconds: dict) -> dict:
    """Each record patched against its counterfactual at every family's sites: {id: {"counterfactual": its id,
    family: result}}. A record without a counterfactual, or whose patched total effect is below
    cfg.min_total_effect, is entered in `excluded`; each family's time is added to `seconds`."""
    from .patching import find_counterfactual
    from .prompts import prepare

    pool = _counterfactual_pool(corpus)
    patched: dict[str, dict] = {}
    for r in records:
        try:
            cf = find_counterfactual(tok, r, pool)
        except TraceError:
            excluded[r.id] = "no counterfactual prompt of the same template and token length"
            continue
        subject = prepare(model, tok, r.input, r.output, r.subject).subject_range
        patched[r.id] = {"counterfactual": cf.id}
        for family, sites in families.items():
            if not sites:
                continue
            t0 = time.perf_counter()
            res = _patch(model, tok, r, cf, family, sites, cfg.metric)
            patched[r.id][family] = dataclasses.replace(res, subject_range=subject)
            seconds[family] = round(seconds.get(family, 0.0) + time.perf_counter() - t0, 2)
        effect = next(v for k, v in patched[r.id].items() if k != "counterfactual").total_effect
        if effect < cfg.min_total_effect:
            excluded[r.id] = (f"patched total effect {effect:.3f} (counterfactual {cf.id}) < min_total_effect "
                              f"{cfg.min_total_effect}")
    return patched


def _patch(model, tok, r, cf, family: str, sites: list[str], metric: str):
    """One family's result of patching counterfactual `cf` into fact `r` at `sites` (whole sites, no heads)."""
    from .attribution import attribute
    from .patching import activation_patching

    if family == "patch":
        return activation_patching(model, tok, r.input, cf.input, r.output, sites=tuple(sites), heads=False,
                                   metric=metric)
    res = attribute(model, tok, r.input, cf.input, r.output, sites=tuple(sites), heads=False, metric=metric,
                    method=family)
    if family == "atp*":   # ranked by the GradDrop magnitude: as effects, it normalises like them
        res = dataclasses.replace(res, effects={s: res.corrupted + res.extra[f"graddrop_{s}"] for s in sites})
    return res


def organism_accuracy(name: str, cfg: GroundTruthConfig, out: Path, progress: bool = False, log=None,
                      trace_path: Path | None = None) -> dict:
    """Every method's accuracy on planted organism `name` (built first if needed). Saved at out/accuracy.json with a
    content key (the organism's and its base's weights, the facts, the settings) and reused when the key matches.
    trace_path: where the facts' trace is saved (default out/trace.json); a localize run of the same organism
    reuses it when given its trace path (<its out>/trace/main.json)."""
    from . import organism
    from .harness import ModelSpec, load_corpus, load_model
    from .models import weights_key
    from .sites import n_layers

    log = log or (lambda *a, **k: None)
    t0 = time.perf_counter()
    path = organism.build(name, progress=progress)
    meta = organism.info(path)
    planted = meta.get("planted_layers") or []
    if not planted:
        raise ConfigError(f"organism {name!r} records no planted layers ({path / 'organism.json'})")
    base_path = organism.cache_root() / meta["base"]["path"]
    model, tok = load_model(path)
    corpus = load_corpus("organism", ModelSpec.parse(f"organism:{name}"), tok)
    model_key = weights_key(path, model)
    key = key_parts(model=model_key, base=weights_key(base_path), data=records_hash(corpus.forget),
                    config={k: getattr(cfg, k) for k in ("task", "n_facts", "methods", "n_samples", "metric",
                                                         "position", "min_total_effect", "top_k", "n_boot", "n_perm",
                                                         "seed")})
    saved_path = out / "accuracy.json"
    if saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        reason = key_change(saved.get("key"), key)
        if reason is None:
            log("accuracy_reused", organism=name, path=str(saved_path))
            return saved
        log("accuracy_rerun", organism=name, reason=reason)
    base, _ = load_model(base_path)
    scored = method_scores(model, tok, corpus, base, cfg, trace_path or out / "trace.json", progress, log, model_key)
    result = {"key": key, "organism": name, "planted_layers": list(planted), "n_layers": n_layers(model),
              "facts": scored["facts"], "excluded": scored["excluded"], "counterfactuals": scored["counterfactuals"],
              "weight_difference": weight_difference(model, base).tolist(),
              "accuracy": {m: accuracy(s, planted, cfg.top_k, cfg.n_boot, cfg.n_perm, cfg.seed)
                           for m, s in scored["scores"].items()},
              "per_fact_scores": {m: s.round(6).tolist() for m, s in scored["scores"].items()},
              "seconds": {**scored["seconds"], "total": round(time.perf_counter() - t0, 1)}}
    atomic_write_json(saved_path, result)
    log("accuracy", organism=name, planted=planted, seconds=result["seconds"])
    return result


# ---------------------------------------------------------------- the study
def _fmt(v, ci=None, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    s = f"{v:.{digits}f}"
    return s + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci is not None else "")


def accuracy_table(res: dict) -> list[str]:
    """Markdown lines for one organism: the weight difference per layer and each method's accuracy."""
    L, planted = res["n_layers"], res["planted_layers"]
    out = [f"### {res['organism']}: planted layers {', '.join(map(str, planted))} of {L}; {len(res['facts'])} facts "
           f"(excluded {len(res['excluded'])})\n",
           "weight difference per layer (Frobenius norm of original - base): "
           + ", ".join(f"{v:.3g}" for v in res["weight_difference"]) + "\n",
           f"| method | peak layer | ranks of the planted layers (chance {(L + 1) / 2:g}) | mean planted rank per fact "
           "[95% CI] | k | precision@k: fact-mean [CI] | per fact [CI] | recall@k: fact-mean [CI] | per fact [CI] | "
           "chance precision / recall | p (layer labels shuffled) |", "|---" * 11 + "|"]
    for m, a in res["accuracy"].items():
        for k, t in a["top_k"].items():
            p = t["shuffled"]["p"]
            out.append(f"| {m} | {a['peak_layer']} | {', '.join(f'{r:g}' for r in a['ranks'])} | "
                       f"{_fmt(a['rank_per_fact'], a['rank_per_fact_ci'], 1)} | {k} | "
                       f"{_fmt(t['precision'], t['precision_ci'])} | "
                       f"{_fmt(t['precision_per_fact'], t['precision_per_fact_ci'])} | "
                       f"{_fmt(t['recall'], t['recall_ci'])} | {_fmt(t['recall_per_fact'], t['recall_per_fact_ci'])} | "
                       f"{t['precision_chance']:.2f} / {t['recall_chance']:.2f} | {p:.2g} |")
    return out + [""]


def table(result: dict) -> str:
    """The study as markdown: accuracy per organism and method, then each localize run's table."""
    from .localize import table as localize_table

    out = ["# Does tracing find where a fact is stored?\n"]
    if result["organisms"]:
        cfg = result["config"]
        out += ["## Localisation accuracy against the planted layers\n",
                f"Scores per layer at position `{cfg['position']}` (metric {cfg['metric']}, total-effect floor "
                f"{cfg['min_total_effect']}); 95% bootstrap intervals over facts; p: share of layer relabellings "
                "whose per-fact precision@k is at least the observed.\n"]
        for res in result["organisms"].values():
            out += accuracy_table(res)
    for name, run in result["localize"].items():
        text = localize_table(run).replace("\n## ", "\n#### ").replace("# Does tracing predict where unlearning "
                                                                         "works?", f"## Depth efficacy on {name}")
        out.append(text)
    out.append(f"Runtime: {result['seconds']['total']:.0f} s")
    return "\n".join(out) + "\n"


def _figures(result: dict, out: Path, study) -> list[str]:
    """An accuracy heatmap per organism and each localize run's depth figure; returns the warnings of figures
    that could not be written."""
    from .figures import localisation_heatmap

    figs = {}
    for name, res in result["organisms"].items():
        scores = {m: a["mean_score"] for m, a in res["accuracy"].items()}
        title = f"{name}: where each method localises {len(res['facts'])} facts"
        figs[f"groundtruth_{name}"] = localisation_heatmap(scores, res["planted_layers"], title)
    study.figures.write(figs)   # one browser session for every heatmap
    for name in result["localize"]:   # drawn by the localize run: copied under a name of this study
        for ext in ("html", "png"):
            src = out / f"localize-{name}" / "figures" / f"localize_depth.{ext}"
            if src.is_file():
                shutil.copyfile(src, out / "figures" / f"groundtruth_depth_{name}.{ext}")
    study.publish("groundtruth_*")
    return study.figures.warnings


def run(cfg: GroundTruthConfig, progress: bool = True) -> dict:
    """The study (module doc): accuracy per organism, the localize runs, then groundtruth.json, table.md, figures/."""
    from . import localize
    from .harness import Study, source_dirs

    cfg = checked(cfg)
    out = Path(cfg.out)
    study = Study(out, "groundtruth output", sources=source_dirs("organism"), log="groundtruth.jsonl",
                  figures=cfg.figures)   # every output, before any work
    runs_cfg = cfg.localize_configs()
    t_start = time.perf_counter()
    with study:
        log = study.log
        log("start", config=asdict(cfg))
        organisms, seconds = {}, {}
        # an organism with a localize run traces once: its localize run finds the trace where it saves its own
        traces = {Path(c.out).name.removeprefix("localize-"): Path(c.out) / "trace" / "main.json" for c in runs_cfg}
        for name in cfg.organisms:
            t0 = time.perf_counter()
            organisms[name] = organism_accuracy(name, cfg, out / name, progress, log, traces.get(name))
            seconds[f"accuracy {name}"] = round(time.perf_counter() - t0, 1)
        runs = {}
        for lcfg in runs_cfg:
            t0 = time.perf_counter()
            res = localize.run(lcfg, progress=progress)
            name = Path(lcfg.out).name.removeprefix("localize-")
            runs[name] = {k: v for k, v in res.items() if k not in ("editors", "provenance")}
            seconds[f"localize {name}"] = round(time.perf_counter() - t0, 1)
            log("localize", organism=name, depth=res["depth"], seconds=res["seconds"])
        seconds["total"] = round(time.perf_counter() - t_start, 1)
        result = {"question": "Does tracing find where a fact is stored?", "config": asdict(cfg),
                  "organisms": {n: {k: v for k, v in r.items() if k != "key"} for n, r in organisms.items()},
                  "localize": runs, "seconds": seconds,
                  "provenance": provenance(config=asdict(cfg), seed=cfg.seed)}
        atomic_write_text(out / "table.md", table(result))
        result["figure_warnings"] = _figures(result, out, study)
        result["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
        atomic_write_text(out / "table.md", table(result))
        atomic_write_json(out / "groundtruth.json", result)
        log("done", seconds=result["seconds"])
    return result
