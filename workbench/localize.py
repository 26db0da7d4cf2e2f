"""Does causal tracing predict where unlearning works? One run answers it for one model and one fact set.

    from workbench.localize import LocalizeConfig, localize
    result = localize(model, tok, corpus, LocalizeConfig(), out_dir="runs/localize")
    workbench localize --config configs/localize.yaml          # the same from the command line

1. Facts: the first `n_facts` traceable forget facts of `task`. Kept are those the model recalls (exact match) and
   the noise hurts by at least `min_total_effect` (the normalised effect divides by that amount).
2. Trace: ROME causal tracing of each kept fact, every kind; per-layer importance with a bootstrap interval over
   facts. A window's importance for one fact is the mean of that fact's per-layer importance over the window.
3. Edits: every window x editor x seed edits a fresh copy of the model. The forget set is the kept facts and the
   retain set the corpus's retain records. Every window gets the same editor settings and the same number of steps
   (matched effort). Every `eval_every` steps each fact's forget recall and the retain recall are measured
   (teacher-forced exact match, workbench.evaluation.attacks.recall), giving each run's forget/retain trade-off curve.
4. Efficacy of a window, per fact and seed (`efficacy_of`):
     budget  the forget-recall drop at the edit's best point whose retain recall is within `retain_budget` of the
             original's. The number of steps is the edit strength, tuned per window and seed (as early stopping
             would) under a fixed cost in retained knowledge. This is the headline: what a window buys at a set
             cost, the quantity a practitioner choosing layers cares about.
     area    the area under the envelope of forget drop against retain damage, from 0 to `area_damage`, normalised
             to 1. It covers the whole trade-off instead of one budget, and so checks that the answer does not
             hinge on the budget chosen.
   Depth (`depth`, optional): how deep the forgetting goes, measured on the weights of the budget's operating point
   (so every window is compared at the same retain cost) against the original and its retain-only twin
   (`EditDepth`):
     uds      per fact, the Unlearning Depth Score (workbench.evaluation.attacks.depth): 1 = the edited model's
              hidden states carry no more of the answer than the twin's, 0 = as much as the original's. It is a third
              efficacy definition, correlated with importance like the other two.
     relearn  per window and seed, the forgetting that survives a small worst-case relearning grid
              (workbench.evaluation.attacks.relearn: fine-tune on half the facts, measure the other half; the
              strongest setting under which the twin recovers at most `admissible`): the original's recall of the
              measured half minus the recall after the attack (or before it, where every setting lowers it).
              1 = nothing comes back.
   `depth_summary` names the windows that matter (the planted ones, where an organism records them; the traced
   one; the one a sweep picks; the deepest) and contrasts their depth with bootstrap intervals.
5. Statistics (workbench.correlation) for each editor, kind of importance and efficacy definition.
6. Outputs: localize.json (with provenance), table.md, figures/, a jsonl log, and runs/ (one file per finished edit:
   a killed run resumes from them and from the saved trace).

Two trace-only studies answer open questions about localisation:
  tasks            trace every listed LUME task's facts and compare where their importance peaks
  agreement_sizes  how often windows selected from two disjoint sets of n traced facts agree (SHA256 traced 125)
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .configfile import MAX_BOOT, MAX_SAMPLES, MAX_SEED, build, coerce_fields, read_mapping
from .errors import ConfigError
from .evaluation.attacks.depth import DepthConfig
from .evaluation.attacks.grid import ADMISSIBLE
from .evaluation.attacks.relearn import RelearnConfig
from .provenance import (atomic_write_json, atomic_write_text, key_change, key_parts, provenance,
                         records_hash, state_hash)
from .trace_settings import TraceSettings

EFFICACIES = ("budget", "area")
DEPTHS = ("uds", "relearn")
# Loop housekeeping for every edit: localize measures the trajectory itself (on every step callback), so the loop
# evaluates only once, cheaply, keeps the last weights and checkpoints only at its start and end.
RUN_SETTINGS = {"eval_metric": "loss", "eval_size": 4, "eval_every": 0, "keep_best": False,
                "checkpoint_every": 1_000_000}


@dataclass
class EditorSpec:
    """One editor arm: a method with a preset and overrides (workbench.editors.config), and how often its
    trajectory is measured."""
    method: str
    preset: str | None = None
    config: dict = field(default_factory=dict)
    eval_every: int = 5


def _default_editors() -> dict:
    return {"joint": {"method": "joint", "preset": "localize"}, "rmu": {"method": "rmu", "preset": "localize"}}


def _default_relearn() -> dict:
    """The per-window relearning grid: 2 learning rates x 2 lengths, every parameter trainable (4 settings; the
    attacks' default grid has 40, too many to run after every edit). With every parameter trainable the twin's
    curves are the same for every window, so they are run once."""
    return {"lrs": [1e-3, 3e-3], "steps": [10, 30], "scopes": ["all"]}


@dataclass
class LocalizeConfig:
    model: str = "organism:deep"     # organism[:name] | local dir | hub id
    data: str = "organism"           # "organism" = the corpus the organism learned | a LUME directory
    out: str = "runs/localize"
    figures: str | None = None       # also copy the PNG figures here (e.g. the README's figures/)
    seed: int = 0
    # facts and trace (the shared tracing defaults, workbench/trace_settings.py, as the pipeline traces)
    task: str | None = "Task2"
    n_facts: int | None = 16
    n_samples: int = TraceSettings.n_samples
    kinds: tuple[str, ...] = TraceSettings.kinds
    position: str = TraceSettings.position
    metric: str = TraceSettings.metric
    min_total_effect: float = TraceSettings.min_total_effect
    kind: str = "mlp"                # the importance of the headline correlation and figure
    # windows and edits
    window: int = 3
    stride: int = 1
    editors: dict = field(default_factory=_default_editors)  # label -> EditorSpec fields
    seeds: int = 3
    # efficacy
    efficacy: str = "budget"         # headline definition: budget | area (both are computed)
    retain_budget: float = 0.1       # budget: largest allowed fall of retain recall below the original's
    area_damage: float = 0.5         # area: retain damage the area integrates up to
    # statistics
    n_boot: int = TraceSettings.n_boot
    n_perm: int = 10000
    # depth of each edit at its budget operating point (module doc, 4): some of DEPTHS
    depth: tuple[str, ...] = ()
    twin: str | None = None          # the retain-only twin (a model spec); None: the organism's own twin
    uds_tau: float = DepthConfig.tau
    relearn: dict = field(default_factory=_default_relearn)   # RelearnConfig fields
    admissible: float = ADMISSIBLE   # a relearning setting counts when the twin recovers at most this under it
    # trace-only studies
    tasks: tuple[str, ...] = ()            # trace each task's facts too and compare the peaks
    agreement_sizes: tuple[int, ...] = ()  # selection agreement vs number of traced facts
    agreement_reps: int = 200

    @classmethod
    def from_dict(cls, d: dict) -> "LocalizeConfig":
        d = dict(d)
        for key in ("kinds", "tasks", "depth"):  # "mlp" or "resid,mlp": a short list, not its characters
            if isinstance(d.get(key), str):
                d[key] = [k.strip() for k in d[key].split(",") if k.strip()]
        return checked(cls(**coerce_fields(cls, d, "localize config")))

    @classmethod
    def from_file(cls, path: str | Path) -> "LocalizeConfig":
        return cls.from_dict(read_mapping(path, "localize config"))

    def trace_settings(self, kinds=None) -> TraceSettings:
        """How the facts are traced: the config's tracing fields as the shared TraceSettings (every kind, or `kinds`)."""
        return TraceSettings(kinds=self.kinds if kinds is None else kinds, n_samples=self.n_samples,
                             metric=self.metric, position=self.position, min_total_effect=self.min_total_effect,
                             seed=self.seed, n_boot=self.n_boot)

    def editor_specs(self) -> dict[str, EditorSpec]:
        return {label: build(EditorSpec, spec, f"localize editor {label!r}") for label, spec in self.editors.items()}

    def relearn_config(self) -> RelearnConfig:
        return build(RelearnConfig, self.relearn, "localize relearn settings")

    def efficacies(self) -> tuple[str, ...]:
        """The efficacy definitions this run computes: EFFICACIES, and "uds" when the depth includes it."""
        return EFFICACIES + (("uds",) if "uds" in self.depth else ())


def checked(cfg: LocalizeConfig) -> LocalizeConfig:
    """Every setting checked before any model work; a bad one is a ConfigError naming it."""
    from .editors import EDITORS, resolve_config

    def need(ok, msg):
        if not ok:
            raise ConfigError(f"localize config: {msg}")

    cfg = LocalizeConfig(**coerce_fields(LocalizeConfig, {f.name: getattr(cfg, f.name) for f in fields(cfg)},
                                         "localize config"))
    need(cfg.n_facts is None or cfg.n_facts >= 3, f"n_facts must be >= 3 or null (every fact), got {cfg.n_facts}")
    cfg.trace_settings().check(lambda key: f"localize config: {key}")
    need(cfg.n_samples <= MAX_SAMPLES, f"n_samples must be <= {MAX_SAMPLES} (it sizes memory), got {cfg.n_samples}")
    need(0 <= cfg.seed <= MAX_SEED - cfg.seeds + 1,
         f"seed must be from 0 to {MAX_SEED - cfg.seeds + 1} (the runs use seed .. seed + seeds - 1), got {cfg.seed}")
    need(cfg.kind in cfg.kinds, f"kind {cfg.kind!r} is not traced; kinds are {list(cfg.kinds)}")
    need(cfg.window >= 1 and cfg.stride >= 1, f"window and stride must be >= 1, got {cfg.window}, {cfg.stride}")
    need(cfg.seeds >= 1, f"seeds must be >= 1, got {cfg.seeds}")
    need(cfg.efficacy in EFFICACIES, f"efficacy {cfg.efficacy!r}: expected one of {EFFICACIES} (the output "
                                     "efficacy the sweep window and the headline are chosen by)")
    bad = [d for d in cfg.depth if d not in DEPTHS]
    need(not bad, f"depth {bad}: expected some of {list(DEPTHS)}")
    need(not cfg.depth or cfg.editors, "depth is measured on the edits: give at least one editor")
    need(cfg.uds_tau >= 0, f"uds_tau must be >= 0 nats, got {cfg.uds_tau}")
    need(0 <= cfg.admissible <= 1, f"admissible must be a recall between 0 and 1, got {cfg.admissible}")
    need(isinstance(cfg.relearn, dict), "relearn must map RelearnConfig fields to values")
    cfg.relearn_config()
    need(0 < cfg.retain_budget <= 1, f"retain_budget must be in (0, 1], got {cfg.retain_budget}")
    need(0 < cfg.area_damage <= 1, f"area_damage must be in (0, 1], got {cfg.area_damage}")
    need(cfg.n_perm >= 1, f"n_perm must be >= 1, got {cfg.n_perm}")
    need(cfg.n_boot <= MAX_BOOT and cfg.n_perm <= MAX_BOOT,
         f"n_boot and n_perm must be <= {MAX_BOOT} (they size memory), got {cfg.n_boot}, {cfg.n_perm}")
    need(all(n >= 1 for n in cfg.agreement_sizes), f"agreement_sizes must be >= 1, got {list(cfg.agreement_sizes)}")
    need(cfg.n_facts is None or all(n <= cfg.n_facts for n in cfg.agreement_sizes),
         f"agreement_sizes {list(cfg.agreement_sizes)} exceed n_facts {cfg.n_facts}")
    need(cfg.agreement_reps >= 1, f"agreement_reps must be >= 1, got {cfg.agreement_reps}")
    need(isinstance(cfg.editors, dict), "editors must map a label to {method, preset, config, eval_every}")
    for label, spec in cfg.editor_specs().items():
        need(spec.method in EDITORS, f"editor {label!r}: method {spec.method!r}; expected one of {list(EDITORS)}")
        need(spec.eval_every >= 1, f"editor {label!r}: eval_every must be >= 1, got {spec.eval_every}")
        resolve_config(spec.method, preset=spec.preset, overrides={**spec.config, **RUN_SETTINGS})
    return cfg


# ---------------------------------------------------------------- efficacy of one edit
def efficacy_of(forget: np.ndarray, retain: np.ndarray, retain_budget: float, area_damage: float) -> dict:
    """Per-fact efficacy of one edit from its trajectory.

    forget [n_points, n_facts]: each fact's recall (1/0) at each measured point, point 0 the unedited model.
    retain [n_points]: retain recall at the same points.
    budget: the drop of each fact's recall at the edit's best point within the retain budget: among the points whose
    retain recall is at most `retain_budget` below point 0's, the one with the largest mean forget drop (the earliest
    on ties; point 0 qualifies, so there always is one). Retain recall is not monotone along an edit (a KL or CE
    retain term wins back what a step lost), so the best point is taken, not the last one before a first dip.
    area: the area under each fact's envelope (its best drop among the points with retain damage <= x) over x in
    [0, area_damage], divided by area_damage.
    Returns {"budget": [n_facts], "area": [n_facts], "operating_point": the budget's point}."""
    forget, retain = np.asarray(forget, float), np.asarray(retain, float)
    if forget.ndim != 2 or retain.shape != forget.shape[:1] or len(retain) < 1:
        raise ConfigError(f"efficacy_of: expected forget [n_points, n_facts] and retain [n_points], got "
                          f"{forget.shape} and {retain.shape}")
    drop = forget[0] - forget                                   # [P, F]
    damage = np.maximum(0.0, retain[0] - retain)                # [P]
    within = damage <= retain_budget + 1e-9                     # [P]; point 0 always
    point = int(np.argmax(np.where(within, drop.mean(1), -np.inf)))
    order = np.argsort(damage, kind="stable")
    d = np.minimum(damage[order], area_damage)                  # [P] ascending
    best = np.maximum.accumulate(drop[order], axis=0)           # [P, F] envelope from each point's damage on
    widths = np.diff(np.append(d, area_damage))                 # [P] the stretch of x each envelope value holds
    area = (best * widths[:, None]).sum(0) / area_damage        # [F]
    return {"budget": drop[point], "area": area, "operating_point": point}


# ---------------------------------------------------------------- facts and trace
def _recalled(model, tok, records) -> np.ndarray:
    from .evaluation.attacks.recall import encode_qa, score

    return score(model, tok, encode_qa(tok, records)).exact.numpy()


def trace_set(model, tok, records, cfg: LocalizeConfig, kinds, path: Path, progress: bool, log,
              model_key: str | None = None) -> dict:
    """Trace `records`, keep the recalled facts the noise hurts enough; {kind: LayerImportance} and the fact ids.
    Saved at `path` with a content key (the model's content, the records' text, the settings) and reused when the
    key matches; otherwise traced again, the log saying what changed."""
    from .aggregate import LayerImportance

    settings = cfg.trace_settings(kinds)
    key = key_parts(model=model_key or state_hash(model), data=records_hash(records), config={
        "kinds": list(kinds), "n_samples": cfg.n_samples, "position": cfg.position, "metric": cfg.metric,
        "min_total_effect": cfg.min_total_effect, "seed": cfg.seed, "n_boot": cfg.n_boot})
    if path.is_file():
        saved = json.loads(path.read_text())
        reason = key_change(saved.get("key"), key)
        if reason is None:
            log("trace_reused", path=str(path))
            return {**saved, "importance": {k: LayerImportance.from_json(v) for k, v in saved["importance"].items()}}
        log("trace_rerun", path=str(path), reason=reason)
    recalled = _recalled(model, tok, records)
    results = settings.trace(model, tok, records, progress=progress)
    excluded = {}
    for r, res, ok in zip(records, results, recalled):
        if not ok:
            excluded[r.id] = "not recalled by the model"
        elif res.total_effect < cfg.min_total_effect:
            excluded[r.id] = f"total effect {res.total_effect:.3f} < min_total_effect {cfg.min_total_effect}"
    kept = [res for r, res in zip(records, results) if r.id not in excluded]
    if len(kept) < 3:
        raise ConfigError(f"only {len(kept)} of {len(records)} facts are recalled and hurt enough by the noise "
                          f"(excluded: {excluded}); tracing needs at least 3: raise n_facts or lower min_total_effect")
    importance = settings.importances(kept)  # the floor was applied above, with the recall filter
    out = {"key": key, "facts": [r.id for r in records if r.id not in excluded], "excluded": excluded,
           "importance": importance}
    atomic_write_json(path, {**out, "importance": {k: v.to_json() for k, v in importance.items()}})
    log("traced", path=str(path), kept=len(kept), excluded=excluded)
    return out


def window_importance(per_fact: np.ndarray, wins: list[list[int]]) -> np.ndarray:
    """[n_facts, n_windows]: each fact's mean per-layer importance over each window's layers."""
    return np.stack([per_fact[:, w].mean(1) for w in wins], axis=1)


def bootstrap_peaks(per_fact: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot] layer where the mean importance of facts resampled with replacement peaks."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_fact.shape[0], size=(n_boot, per_fact.shape[0]))
    return per_fact[idx].mean(1).argmax(-1)


# ---------------------------------------------------------------- one edit
def edit_trajectory(original, tok, corpus, spec: EditorSpec, layers: list[int], seed: int, forget_ex, retain_ex,
                    baseline: dict, model_dir: Path, depth_of=None, retain_budget: float = 0.1) -> dict:
    """Unlearn `corpus.forget` at `layers` on a copy of `original`; the forget recall of each fact and the retain
    recall every `spec.eval_every` steps and after the last step, after `baseline` (the unedited model's).

    depth_of(model, layers) -> dict: also measure the depth of the weights at the budget's operating point
    (`efficacy_of` with `retain_budget`). The operating point is the best point so far whenever a measured point
    becomes it, so its weights are kept then (on the CPU) and measured after the edit ("depth", with its "point")."""
    from .editors import unlearn
    from .evaluation.attacks.recall import score

    model = copy.deepcopy(original)
    points = [baseline]
    kept = {"point": 0, "state": None}   # the operating point so far; state None: the original's weights

    def measure(step: int) -> None:
        points.append({"step": step, "forget": score(model, tok, forget_ex).exact.int().tolist(),
                       "retain": score(model, tok, retain_ex).recall})
        if depth_of is not None:
            now = efficacy_of(np.array([p["forget"] for p in points]), np.array([p["retain"] for p in points]),
                              retain_budget, 1.0)["operating_point"]
            if now == len(points) - 1:
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                kept.update(point=now, state=state)

    t0 = time.perf_counter()
    for stale in (model_dir, model_dir.parent / f".{model_dir.name}.work"):  # a killed edit is redone from its start,
        shutil.rmtree(stale, ignore_errors=True)                             # so its trajectory is whole
    unlearn(model, tok, corpus, spec.method, layers, {**spec.config, **RUN_SETTINGS, "seed": seed}, model_dir,
            preset=spec.preset, on_step=lambda s: measure(s) if s % spec.eval_every == 0 else None)
    steps = json.loads((model_dir / "unlearn.json").read_text())["summary"]["steps"]
    if points[-1]["step"] != steps:
        measure(steps)
    shutil.rmtree(model_dir, ignore_errors=True)
    out = {"points": points, "seconds": round(time.perf_counter() - t0, 2)}
    if depth_of is not None:
        t1 = time.perf_counter()
        model.load_state_dict(original.state_dict() if kept["state"] is None else kept["state"])
        out["depth"] = {"point": kept["point"], **depth_of(model.eval(), layers),
                        "seconds": round(time.perf_counter() - t1, 2)}
    return out


class EditDepth:
    """The depth of an edited model (module doc, 4), against `original` and its retain-only `twin`, on the forget
    facts of `corpus` (the facts the edits unlearn).

    uds: stage 1 (twin -> original) is patched once here (and cached across runs by workbench.evaluation.attacks.
    depth); each call patches the edited model in (stage 2) and scores every fact. relearn: each call runs the grid
    on the edited model; the twin's curves are run once per trainable set (once for scope "all", per window for
    "edited") and judge which settings are admissible."""

    def __init__(self, original, twin, tok, corpus, cfg: LocalizeConfig, progress: bool = False):
        from .evaluation.attacks import depth as uds
        from .evaluation.attacks.recall import MAX_LEN, encode_qa, score
        from .evaluation.attacks.relearn import split_halves

        self.original, self.twin, self.tok, self.corpus = original, twin, tok, corpus
        self.measures = tuple(cfg.depth)
        self.admissible = cfg.admissible
        self.uds_config = DepthConfig(tau=cfg.uds_tau)
        self.relearn_config = cfg.relearn_config()
        self._twin_curves: dict = {}
        if "uds" in self.measures:
            self.facts = uds.facts_of(original, tok, corpus, None)
            self.stage1 = uds.stage1(original, twin, tok, self.facts, self.uds_config, progress)
        if "relearn" in self.measures:
            measured = split_halves(corpus.forget, self.relearn_config.seed)[1]
            self.original_recall = score(original, tok, encode_qa(tok, measured, MAX_LEN)).recall

    def key(self) -> dict:
        """What the depth of an edit depends on besides the edit: part of each edit's content key."""
        return {"measures": list(self.measures), "uds_tau": self.uds_config.tau,
                "relearn": asdict(self.relearn_config), "admissible": self.admissible}

    def __call__(self, model, layers: list[int]) -> dict:
        from .evaluation.attacks import depth as uds
        from .evaluation.attacks import grid, relearn

        out = {}
        if "uds" in self.measures:
            d2 = uds.drops(model, self.original, self.tok, self.facts, self.stage1["own"], self.uds_config.batch_size)
            s = uds.score(self.stage1["d1"], d2, self.uds_config.tau)
            out["uds"] = {"per_fact": s["per_fact"], "mean": s["uds"], "all_positions": s["uds_all_positions"],
                          "n_facts_scored": s["n_facts_scored"]}
        if "relearn" in self.measures:
            cfg = self.relearn_config
            edited = relearn.run_model(model, self.tok, self.corpus, cfg, layers)
            which = tuple(layers) if "edited" in cfg.scopes else None
            if which not in self._twin_curves:
                twin = relearn.run_model(self.twin, self.tok, self.corpus, cfg, layers)
                self._twin_curves[which] = {**twin, "by_setting": relearn.settings(twin, cfg.steps)}
            judged = grid.judge({"per_model": {"edited": {**edited, "by_setting": relearn.settings(edited, cfg.steps)},
                                               "twin": self._twin_curves[which]}}, self.admissible)
            e = judged["per_model"]["edited"]
            # the attacker may also not attack: a grid that only lowers recall leaves the edited model's own
            after = None if e["recovery"] is None else edited["before"] + max(0.0, e["recovery"])
            twin_at = self._twin_curves[which]["by_setting"]
            out["relearn"] = {"setting": e["setting"], "before": edited["before"], "recovery": e["recovery"],
                              "after": after, "original": self.original_recall,
                              "surviving": None if after is None else self.original_recall - after,
                              "twin": None if e["setting"] is None else twin_at[e["setting"]],
                              "admissible": int(sum(judged["admissible"])), "settings": len(judged["admissible"]),
                              "n_measured": edited["n_measured"]}
        return out


# ---------------------------------------------------------------- the run
def localize(model, tok, corpus, cfg: LocalizeConfig | None = None, out_dir: str | Path | None = None, *,
             progress: bool = True, model_key: str | None = None, twin=None, twin_key: str | None = None,
             planted: list[int] | None = None) -> dict:
    """Trace, edit every window with every editor and seed, correlate; writes out_dir (see the module doc).

    model_key: the content key of `model` (models.weights_key of its directory); default: a hash of its parameters.
    Saved traces and edits are reused only when their content keys match (the module doc, 6).
    twin: the retain-only twin fine-tuned from the model's base, which `cfg.depth` needs (twin_key its content key,
    as model_key). planted: the layers the facts were planted in, where known (a planted organism's), which the
    depth summary, the table and the figure mark."""
    from .harness import Study

    cfg = checked(cfg or LocalizeConfig())
    if cfg.depth and twin is None:
        raise ConfigError(f"depth {list(cfg.depth)} is measured against the retain-only twin: give twin= (from the "
                          "command line: an organism model, whose twin is built, or the twin field)")
    out = Path(out_dir if out_dir is not None else cfg.out)
    with Study(out, "localize output", log="localize.jsonl", figures=cfg.figures) as study:
        return _localize(model, tok, corpus, cfg, out, study, progress, model_key, twin, twin_key,
                         None if planted is None else [int(l) for l in planted])


def _localize(model, tok, corpus, cfg: LocalizeConfig, out: Path, study, progress: bool, model_key: str | None,
              twin, twin_key: str | None, planted: list[int] | None) -> dict:
    t_start = time.perf_counter()
    log = study.log
    log("start", config=asdict(cfg))
    specs = cfg.editor_specs()
    n_layers, wins = _windows(model, cfg, specs)
    original = copy.deepcopy(model).eval()  # every edit starts from these weights; the caller's model is untouched
    content = model_key or state_hash(original)

    # 1-2. facts and trace ----------------------------------------------------------------------------
    t0 = time.perf_counter()
    main = trace_set(original, tok, _facts_of(corpus, cfg.task, cfg), cfg, cfg.kinds, out / "trace" / "main.json",
                     progress, log, content)
    trace_seconds = time.perf_counter() - t0
    by_id = {r.id: r for r in corpus.forget}
    facts = [by_id[i] for i in main["facts"]]

    # 3-4. every window x editor x seed --------------------------------------------------------------
    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    jobs = [(label, spec, w, s) for label, spec in specs.items() for w in wins for s in seeds]
    edits = _prepare_edits(original, tok, corpus, facts, cfg, twin if cfg.depth and jobs else None, twin_key,
                           progress)
    t0 = time.perf_counter()
    runs = _run_edits(edits, specs, jobs, cfg, content, out, log, progress)
    edit_seconds = time.perf_counter() - t0

    # 5. statistics, and the trace-only studies -------------------------------------------------------
    analysis = _analyse(main, wins, specs, runs, cfg, planted, bool(jobs), edits.depth_key is not None)
    agreement = _agreement(main["importance"][cfg.kind].per_fact, cfg, log) if cfg.agreement_sizes else None
    tasks = {task: (main if task == cfg.task else trace_set(
        original, tok, _facts_of(corpus, task, cfg), cfg, (cfg.kind,), out / "trace" / f"task-{task}.json", progress,
        log, content))["importance"][cfg.kind] for task in cfg.tasks}

    result = {
        "question": "Does tracing predict where unlearning works?",
        "config": asdict(cfg), "n_layers": n_layers, "windows": wins,
        "facts": {"kept": main["facts"], "excluded": main["excluded"]},
        "baseline": {"forget_recall": float(np.mean(edits.baseline["forget"])),
                     "retain_recall": edits.baseline["retain"]},
        **analysis,
        "agreement": agreement,
        "tasks": {t: _peak_summary(imp, cfg) for t, imp in tasks.items()},
        "seconds": {"trace": round(trace_seconds, 1), "edits": round(edit_seconds, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "provenance": provenance(model=original, data=getattr(corpus, "source", None), config=asdict(cfg),
                                 seed=cfg.seed),
    }
    # 6. outputs -----------------------------------------------------------------------------------------
    atomic_write_text(out / "table.md", table(result))
    warnings = _figures(result, main["importance"], tasks, cfg, study)
    if warnings:
        result["figure_warnings"] = warnings
    result["seconds"]["total"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(out / "localize.json", result)
    log("done", headline=result["headline"], seconds=result["seconds"])
    return result


def _windows(model, cfg: LocalizeConfig, specs: dict) -> tuple[int, list[list[int]]]:
    """The model's number of layers and the windows edited: enough of them to correlate over when any are."""
    from .models import decoder_layers
    from .sweep import windows

    n_layers = len(decoder_layers(model))
    wins = windows(n_layers, cfg.window, cfg.stride)
    if specs and len(wins) < 3:
        raise ConfigError(f"{len(wins)} window(s) of {cfg.window} layers in a {n_layers}-layer model; a correlation "
                          "over windows needs at least 3: use a smaller window or stride, or a deeper model")
    return n_layers, wins


def _facts_of(corpus, task: str, cfg: LocalizeConfig) -> list:
    """The first `cfg.n_facts` (all when 0) traceable forget facts of `task`; at least 3."""
    facts = corpus.facts("forget", task)
    facts = facts[: cfg.n_facts] if cfg.n_facts else facts
    if len(facts) < 3:
        raise ConfigError(f"task {task!r} has {len(facts)} traceable forget facts in {corpus.source}; "
                          "localize needs at least 3 (QA records that name their subject)")
    return facts


@dataclass
class _Edits:
    """What every edit of a run shares (module doc, 3-4): the original weights, the edit corpus (its forget set the
    kept facts), their encodings, the original's recall of them (each trajectory's point 0), and the depth measure
    with its part of each edit's content key (both None when no depth is measured)."""
    original: object
    tok: object
    corpus: object
    forget_ex: object
    retain_ex: object
    baseline: dict
    depth_of: EditDepth | None = None
    depth_key: dict | None = None


def _prepare_edits(original, tok, corpus, facts: list, cfg: LocalizeConfig, twin, twin_key: str | None,
                   progress: bool) -> _Edits:
    """The shared inputs of the edits of `facts`; the depth measure against `twin` unless it is None."""
    from .data.records import questions
    from .evaluation.attacks.recall import encode_qa, score

    forget_ex, retain_ex = encode_qa(tok, facts), encode_qa(tok, questions(corpus.retain))
    edit_corpus = dataclasses.replace(corpus, forget=facts)
    baseline = {"step": 0, "forget": score(original, tok, forget_ex).exact.int().tolist(),
                "retain": score(original, tok, retain_ex).recall}
    edits = _Edits(original, tok, edit_corpus, forget_ex, retain_ex, baseline)
    if twin is not None:
        twin = copy.deepcopy(twin).eval()
        edits.depth_of = EditDepth(original, twin, tok, edit_corpus, cfg, progress)
        # the depth is measured at the budget's operating point, so the budget decides it too
        edits.depth_key = {**edits.depth_of.key(), "twin": twin_key or state_hash(twin),
                           "retain_budget": cfg.retain_budget}
    return edits


def _run_edits(edits: _Edits, specs: dict, jobs: list, cfg: LocalizeConfig, content: str, out: Path, log,
               progress: bool) -> dict:
    """Run (or reuse) the edit of every (label, spec, layers, seed) job; {label: {str(layers): [row per seed]}}."""
    from .editors import resolve_config

    data = records_hash([*edits.corpus.forget, *edits.corpus.retain])
    runs: dict[str, dict] = {label: {} for label in specs}
    for label, spec, layers, s in tqdm(jobs, desc="localize edits", disable=not progress or not jobs):
        resolved = resolve_config(spec.method, preset=spec.preset,
                                  overrides={**spec.config, **RUN_SETTINGS, "seed": s})
        edit_config = {"method": spec.method, "config": asdict(resolved), "eval_every": spec.eval_every}
        key = key_parts(model=content, data=data, layers=layers,
                        config=edit_config if edits.depth_key is None else {**edit_config, "depth": edits.depth_key})
        path = out / "runs" / label / f"layers-{layers[0]}-{layers[-1]}" / f"seed-{s}.json"
        traj, reused = _trajectory(edits, label, spec, layers, s, key, path, cfg.retain_budget, log)
        row, eff = _edit_row(traj, cfg, edits.depth_key is not None, layers, s, path)
        runs[label].setdefault(str(layers), []).append(row)
        log("edit", editor=label, reused=reused, **{k: v for k, v in row.items() if k != "curve"},
            forget_drop=float(eff["budget"].mean()))
    return runs


def _trajectory(edits: _Edits, label: str, spec: EditorSpec, layers: list[int], seed: int, key: dict, path: Path,
                retain_budget: float, log) -> tuple[dict, bool]:
    """One edit's trajectory and whether it was reused: the one saved at `path` when its content key is `key`;
    otherwise the edit is run and saved there."""
    saved = json.loads(path.read_text()) if path.is_file() else None
    reason = None if saved is None else key_change(saved.get("key"), key)
    if saved is not None and reason is None:
        return saved, True
    if saved is not None:
        log("edit_rerun", editor=label, layers=layers, seed=seed, reason=reason)
    traj = {"key": key, **edit_trajectory(edits.original, edits.tok, edits.corpus, spec, layers, seed, edits.forget_ex,
                                          edits.retain_ex, edits.baseline, path.parent / f"model-seed-{seed}",
                                          edits.depth_of, retain_budget)}
    atomic_write_json(path, traj)
    return traj, False


def _edit_row(traj: dict, cfg: LocalizeConfig, with_depth: bool, layers: list[int], seed: int,
              path: Path) -> tuple[dict, dict]:
    """One edit's row of the result (its efficacy, operating point and curve; its depth when measured) and its
    `efficacy_of`."""
    forget = np.array([p["forget"] for p in traj["points"]])   # [P, F]
    retain = np.array([p["retain"] for p in traj["points"]])   # [P]
    eff = efficacy_of(forget, retain, cfg.retain_budget, cfg.area_damage)
    point = traj["points"][eff["operating_point"]]
    row = {"layers": layers, "seed": seed, "seconds": traj["seconds"], "operating_step": point["step"],
           "operating_retain": point["retain"], "budget": eff["budget"].tolist(), "area": eff["area"].tolist(),
           "curve": [[p["step"], float(np.mean(p["forget"])), p["retain"]] for p in traj["points"]]}
    if with_depth:
        d = traj["depth"]
        if d["point"] != eff["operating_point"]:
            raise ConfigError(f"{path}: its depth was measured at point {d['point']}, but the budget's operating "
                              f"point is {eff['operating_point']}; delete the file to redo the edit")
        if "uds" in d:
            row["uds"] = [np.nan if v is None else v for v in d["uds"]["per_fact"]]
        if "relearn" in d:
            row["relearn"] = d["relearn"]
        row["depth_seconds"] = d["seconds"]
    return row, eff


def _analyse(main: dict, wins: list[list[int]], specs: dict, runs: dict, cfg: LocalizeConfig, planted,
             edited: bool, with_depth: bool) -> dict:
    """Step 5: the result's importance, editors, statistics, headline, planted_layers and depth entries, in that
    order. edited: whether any edit ran (else every efficacy definition gets its, empty, statistics)."""
    from .correlation import correlate

    imp_fw = {k: window_importance(v.per_fact, wins) for k, v in main["importance"].items()}  # kind -> [F, W]
    efficacies = cfg.efficacies() if edited else EFFICACIES
    efficacy = {label: {e: np.array([[row[e] for row in runs[label][str(w)]] for w in wins], float).transpose(1, 2, 0)
                        for e in efficacies} for label in specs}            # label -> def -> [S, F, W]
    # UDS is undefined (NaN) for a fact whose stage-1 drop passes tau at no layer: the same facts in every edit
    scored = {label: np.isfinite(efficacy[label]["uds"]).all((0, 2)) if "uds" in efficacies else
              np.ones(len(main["facts"]), bool) for label in specs}
    statistics = {label: {k: {e: correlate(imp_fw[k][scored[label]] if e == "uds" else imp_fw[k],
                                           efficacy[label][e][:, scored[label]] if e == "uds" else efficacy[label][e],
                                           n_boot=cfg.n_boot, n_perm=cfg.n_perm, seed=cfg.seed).to_json()
                              for e in efficacies if e != "uds" or scored[label].any()} for k in cfg.kinds}
                  for label in specs}
    depth = {label: depth_summary({e: efficacy[label][e][:, scored[label]] if e == "uds" else efficacy[label][e]
                                   for e in efficacies}, [runs[label][str(w)] for w in wins],
                                  imp_fw[cfg.kind].mean(0), wins, planted, cfg)
             for label in specs} if with_depth else {}
    return {"importance": {k: {"per_layer": imp.summary(), "per_window": imp_fw[k].mean(0).tolist()}
                           for k, imp in main["importance"].items()},
            "editors": {label: {"method": spec.method, "preset": spec.preset, "config": spec.config,
                                "eval_every": spec.eval_every, "windows": [runs[label][str(w)] for w in wins]}
                        for label, spec in specs.items()},
            "statistics": statistics,
            "headline": {label: _headline(statistics[label][cfg.kind][cfg.efficacy], wins) for label in specs},
            "planted_layers": planted,
            "depth": depth}


def _agreement(per_fact: np.ndarray, cfg: LocalizeConfig, log) -> list[dict]:
    """The selection agreement study over the sizes of `cfg.agreement_sizes` that the kept facts allow."""
    from .selection import selection_agreement

    too_many = [n for n in cfg.agreement_sizes if n > len(per_fact)]
    if too_many:
        log("agreement_sizes_dropped", sizes=too_many, reason=f"only {len(per_fact)} facts were kept")
    return selection_agreement(per_fact, [n for n in cfg.agreement_sizes if n <= len(per_fact)],
                               window=cfg.window, reps=cfg.agreement_reps, seed=cfg.seed)


def planted_windows(wins: list[list[int]], planted) -> list[int]:
    """Indices of the windows that share the most layers with the planted set (none when no window shares one)."""
    overlap = [len(set(w) & set(planted or ())) for w in wins]
    return [i for i, o in enumerate(overlap) if o == max(overlap) and o > 0]


def depth_summary(efficacy: dict, rows: list[list[dict]], importance_w, wins: list[list[int]], planted,
                  cfg: LocalizeConfig) -> dict:
    """Is forgetting deepest at the planted layers, at the traced layers, or elsewhere? And at equal retain cost, is
    the window tracing selects deeper than the one a sweep selects? For one editor.

    efficacy: {definition: [n_seeds, n_facts, n_windows]} ("uds" over the facts it scores); rows: each window's
    edit rows (one per seed; their "relearn" and "operating_retain"); importance_w [n_windows]: the fact-mean traced
    importance of each window (cfg.kind).

    The named windows: traced (the largest importance: what a window selection picks), sweep (the largest output
    efficacy `cfg.efficacy`: what a sweep picks), deepest (the largest mean UDS), deepest_relearn (the most
    forgetting surviving relearning), planted (the windows sharing the most layers with the planted set). For each:
    its output efficacy and UDS with bootstrap intervals over facts and seeds (several windows: their mean), the
    relearn survival (mean over seeds) and the retain recall at the operating points. Contrasts: the UDS and output
    efficacy differences of planted - traced, planted - deepest, planted - sweep and traced - sweep, paired over
    facts and seeds. `deepest_is`: which named windows the deepest one is (empty: elsewhere)."""
    from .correlation import window_contrast

    out_eff, uds = efficacy[cfg.efficacy], efficacy.get("uds")
    if uds is not None and uds.shape[1] == 0:
        uds = None                                     # no fact scored: UDS undefined everywhere
    surviving = np.array([[np.nan if r.get("relearn") is None or r["relearn"]["surviving"] is None
                           else r["relearn"]["surviving"] for r in w] for w in rows], float)   # [W, S]
    retain = np.array([[r["operating_retain"] for r in w] for w in rows], float)               # [W, S]
    named = _named_windows(out_eff, uds, surviving, importance_w, wins, planted)
    boot = functools.partial(window_contrast, n_boot=cfg.n_boot, seed=cfg.seed)

    windows = {}
    for name, idx in named.items():
        o = boot(out_eff, idx)
        windows[name] = {"windows": [wins[i] for i in idx], "output": o["difference"], "output_ci": o["ci"],
                         "relearn_surviving": _mean_over(surviving, idx), "retain": _mean_over(retain, idx)}
        if uds is not None:
            u = boot(uds, idx)
            windows[name].update(uds=u["difference"], uds_ci=u["ci"])
    contrasts = {}
    for a, b in (("planted", "traced"), ("planted", "deepest"), ("planted", "sweep"), ("traced", "sweep")):
        if a in named and b in named:
            o = boot(out_eff, named[a], named[b])
            c = {"output": o["difference"], "output_ci": o["ci"]}
            if uds is not None:
                u = boot(uds, named[a], named[b])
                c.update(uds=u["difference"], uds_ci=u["ci"])
            s_a, s_b = _mean_over(surviving, named[a]), _mean_over(surviving, named[b])
            c["relearn_surviving"] = None if s_a is None or s_b is None else s_a - s_b
            contrasts[f"{a} - {b}"] = c

    per_window = [_mean_over(surviving, [i]) for i in range(len(wins))]
    return {"windows": windows, "contrasts": contrasts, "deepest_is": _named_as(named, "deepest"),
            "deepest_relearn_is": _named_as(named, "deepest_relearn"),
            "n_facts_uds": 0 if uds is None else int(uds.shape[1]), "planted_layers": planted,
            "relearn_surviving": per_window if any(v is not None for v in per_window) else None}


def _named_windows(out_eff, uds, surviving, importance_w, wins: list[list[int]], planted) -> dict[str, list[int]]:
    """The windows `depth_summary` names, as lists of window indices (a name absent: no such window)."""
    named = {"traced": [int(np.argmax(importance_w))], "sweep": [int(np.argmax(out_eff.mean((0, 1))))]}
    if uds is not None:
        named["deepest"] = [int(np.argmax(uds.mean((0, 1))))]
    if np.isfinite(surviving).any():
        named["deepest_relearn"] = [int(np.nanargmax(np.nanmean(surviving, 1)))]
    if planted_windows(wins, planted):
        named["planted"] = planted_windows(wins, planted)
    return named


def _mean_over(x: np.ndarray, idx: list[int]):
    """The mean of the finite values of x[idx]; None when there are none."""
    v = x[idx]
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


def _named_as(named: dict[str, list[int]], deepest: str) -> list[str]:
    """Which of planted, traced and sweep the window named `deepest` is (empty: none, or no such window)."""
    if deepest not in named:
        return []
    return [n for n in ("planted", "traced", "sweep") if n in named and named[deepest][0] in named[n]]


def _headline(stat: dict, wins: list[list[int]]) -> dict:
    """The correlations, and what following the trace costs: the efficacy of the window with the largest traced
    importance (the one a window selection picks) next to that of the most effective window."""
    pf = stat["per_fact"]
    traced, best = int(np.argmax(stat["importance"])), int(np.argmax(stat["efficacy"]))
    return {"spearman": stat["spearman"]["r"], "spearman_ci": stat["spearman"]["ci"], "spearman_p": stat["spearman"]["p"],
            "pearson": stat["pearson"]["r"], "pearson_ci": stat["pearson"]["ci"], "pearson_p": stat["pearson"]["p"],
            "per_fact_spearman": pf["spearman_mean"], "per_fact_spearman_ci": pf["spearman_ci"],
            "per_fact_p_own": pf["p_own"], "peak_hit": pf["peak_hit"], "peak_hit_chance": pf["peak_hit_chance"],
            "traced_window": wins[traced], "traced_window_efficacy": stat["efficacy"][traced],
            "traced_window_efficacy_ci": stat["efficacy_ci"][traced], "best_window": wins[best],
            "best_window_efficacy": stat["efficacy"][best], "best_window_efficacy_ci": stat["efficacy_ci"][best]}


def _peak_summary(imp, cfg: LocalizeConfig) -> dict:
    from .selection import select_layers

    peaks = bootstrap_peaks(imp.per_fact, cfg.n_boot, cfg.seed)
    share = np.bincount(peaks, minlength=imp.n_layers) / len(peaks)
    return {"n_facts": imp.n_facts, "peak": imp.peak, "peak_share": float(share[imp.peak["layer"]]),
            "peak_interval": [int(v) for v in np.quantile(peaks, [0.025, 0.975], method="nearest")],
            "peak_distribution": share.round(4).tolist(),
            "window": select_layers(imp, "window", window=cfg.window).layers, "mean": imp.mean.round(4).tolist()}


# ---------------------------------------------------------------- table and figures
def _fmt(v, ci=None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    s = f"{v:.{digits}f}"
    if ci is not None:
        lo, hi = ci
        s += " [" + ", ".join("n/a" if c is None else f"{c:.{digits}f}" for c in (lo, hi)) + "]"
    return s


def _p_fmt(p) -> str:
    return "n/a" if p is None else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")


def caption(result: dict) -> str:
    """Two lines per editor (Spearman, Pearson: value, 95% CI, p) and one on what was correlated."""
    cfg = result["config"]
    lines = []
    for label, h in result["headline"].items():
        lines += [f"{label}: Spearman {_fmt(h['spearman'], h['spearman_ci'])}, p = {_p_fmt(h['spearman_p'])}",
                  f"{label}: Pearson {_fmt(h['pearson'], h['pearson_ci'])}, p = {_p_fmt(h['pearson_p'])}"]
    lines += [f"{cfg['kind']} importance vs {cfg['efficacy']} efficacy, {len(result['windows'])} windows of "
              f"{cfg['window']} layers;", f"{len(result['facts']['kept'])} facts x {cfg['seeds']} seeds, "
              "95% bootstrap CIs over facts and seeds"]
    return "<br>".join(lines)


def depth_caption(result: dict) -> str:
    """One line per editor: where forgetting is deepest, and the traced window's depth against the sweep's."""
    lines = []
    for label, d in result["depth"].items():
        w = d["windows"]
        where = ", ".join(d["deepest_is"]) or "a window neither planted, traced nor swept"
        lines.append(f"{label}: deepest (UDS) at {where}")
        c = d["contrasts"].get("traced - sweep")
        if c and c.get("uds") is not None:
            lines.append(f"{label}: UDS of the traced window {w['traced']['windows'][0][0]}-"
                         f"{w['traced']['windows'][0][-1]} minus the sweep's {w['sweep']['windows'][0][0]}-"
                         f"{w['sweep']['windows'][0][-1]}: {_fmt(c['uds'], c['uds_ci'])}")
    cfg = result["config"]
    lines.append(f"at each edit's best point within a retain budget of {cfg['retain_budget']}; {cfg['seeds']} seeds")
    return "<br>".join(lines)


def table(result: dict) -> str:
    """The run as markdown: efficacy per window, the statistics, and the trace-only studies."""
    cfg = result["config"]
    stats = result["statistics"]
    edits = (f", windows of {cfg['window']} layers, editors {', '.join(stats)} x {cfg['seeds']} seeds; efficacy "
             f"`{cfg['efficacy']}` (retain budget {cfg['retain_budget']}, area up to damage {cfg['area_damage']})"
             if stats else "")
    out = ["# Does tracing predict where unlearning works?\n",
           f"model `{cfg['model']}` ({result['n_layers']} layers), {len(result['facts']['kept'])} {cfg['task']} facts "
           f"traced (excluded {len(result['facts']['excluded'])}){edits}; original forget recall "
           f"{result['baseline']['forget_recall']:.2f}, retain {result['baseline']['retain_recall']:.2f}\n"]
    if stats:
        out += _window_table(result) + _statistics_table(result) + [""]
        if result.get("depth"):
            out += depth_table(result)
    if result["agreement"]:
        out += _agreement_table(result)
    if result["tasks"]:
        out += _tasks_table(result)
    return "\n".join(out) + "\n"


def _window_table(result: dict) -> list[str]:
    """Markdown lines: per window, its planted layers, traced importance, and each editor's efficacy, UDS and
    surviving relearn."""
    cfg, stats = result["config"], result["statistics"]
    kind, eff = cfg["kind"], cfg["efficacy"]
    labels = list(stats)
    first = stats[labels[0]][kind][eff]
    depth = result.get("depth") or {}
    planted = result.get("planted_layers")
    uds = [l for l in labels if "uds" in stats[l][kind]]
    relearn = [l for l in labels if (depth.get(l) or {}).get("relearn_surviving")]
    heads = ([f"{l} efficacy" for l in labels] + [f"{l} UDS" for l in uds]
             + [f"{l} surviving relearn" for l in relearn])
    out = ["| window | " + ("planted layers | " if planted else "") + f"traced {kind} importance | "
           + " | ".join(heads) + " |", "|---" * (2 + bool(planted) + len(heads)) + "|"]
    for i, w in enumerate(result["windows"]):
        cells = ([", ".join(map(str, sorted(set(w) & set(planted)))) or "-"] if planted else [])
        cells += [_fmt(first["importance"][i], first["importance_ci"][i], 3)]
        cells += [_fmt(stats[l][kind][eff]["efficacy"][i], stats[l][kind][eff]["efficacy_ci"][i]) for l in labels]
        cells += [_fmt(stats[l][kind]["uds"]["efficacy"][i], stats[l][kind]["uds"]["efficacy_ci"][i]) for l in uds]
        cells += [_fmt(depth[l]["relearn_surviving"][i]) for l in relearn]
        out.append(f"| {w[0]}-{w[-1]} | " + " | ".join(cells) + " |")
    return out


def _statistics_table(result: dict) -> list[str]:
    """Markdown lines: the statistics of every editor, kind of importance and efficacy definition."""
    stats = result["statistics"]
    out = ["", "| editor | importance | efficacy | Spearman [95% CI] | p | Pearson [95% CI] | p | per-fact Spearman "
           "[95% CI] | p (own vs other facts' traces) | peak hit (chance / population peak / other facts) |",
           "|---" * 10 + "|"]
    for l in stats:
        for k in result["config"]["kinds"]:
            for e in stats[l][k]:
                s, pf = stats[l][k][e], stats[l][k][e]["per_fact"]
                out.append(f"| {l} | {k} | {e} | {_fmt(s['spearman']['r'], s['spearman']['ci'])} | "
                           f"{_p_fmt(s['spearman']['p'])} | {_fmt(s['pearson']['r'], s['pearson']['ci'])} | "
                           f"{_p_fmt(s['pearson']['p'])} | {_fmt(pf['spearman_mean'], pf['spearman_ci'])} | "
                           f"{_p_fmt(pf['p_own'])} | {pf['peak_hit']:.2f} ({pf['peak_hit_chance']:.2f} / "
                           f"{pf['peak_hit_population']:.2f} / {pf['peak_hit_shuffled']:.2f}) |")
    return out


def _agreement_table(result: dict) -> list[str]:
    """Markdown lines: the selection agreement study."""
    cfg = result["config"]
    out = [f"## Selection agreement vs number of traced facts ({cfg['kind']}, window {cfg['window']})\n",
           "| facts | two disjoint sets pick the same window | mean overlap (Jaccard) | same window as all "
           f"{len(result['facts']['kept'])} facts |", "|---|---|---|---|"]
    for r in result["agreement"]:
        out.append(f"| {r['n_facts']} | {_fmt(r['same_window'])} | {_fmt(r['jaccard'])} | {_fmt(r['same_as_all'])} |")
    return out + [""]


def _tasks_table(result: dict) -> list[str]:
    """Markdown lines: where each LUME task's importance peaks."""
    cfg = result["config"]
    out = [f"## Does the LUME task change the peak? ({cfg['kind']}, position {cfg['position']})\n",
           "| task | facts | peak layer | share of bootstrap peaks there | 95% interval of the peak layer | "
           "peak effect [95% CI] | selected window |", "|---|---|---|---|---|---|---|"]
    for t, s in result["tasks"].items():
        p = s["peak"]
        out.append(f"| {t} | {s['n_facts']} | {p['layer']} | {s['peak_share']:.2f} | {s['peak_interval'][0]}-"
                   f"{s['peak_interval'][1]} | {_fmt(p['mean'], (p['lo'], p['hi']), 3)} | "
                   f"{s['window'][0]}-{s['window'][-1]} |")
    return out + [""]


def depth_table(result: dict) -> list[str]:
    """Markdown lines: for each editor, the named windows' depth and the contrasts between them."""
    cfg, planted = result["config"], result.get("planted_layers")
    n = next(iter(result["depth"].values()))["n_facts_uds"]   # the facts UDS scores: the same for every editor
    out = ["## Where is forgetting deepest? (at each edit's budget operating point: equal retain cost)\n",
           f"UDS: mean over {n} facts and {cfg['seeds']} seeds, 95% bootstrap CI over facts and seeds; surviving "
           f"relearn: the original's recall of the measured half minus the recall the worst admissible relearning "
           f"setting brings back (mean over seeds); output efficacy `{cfg['efficacy']}`"
           + (f"; planted layers {planted}" if planted else "") + "\n"]
    rows = ["| editor | window | layers | output efficacy [95% CI] | UDS [95% CI] | surviving relearn | "
            "retain recall |", "|---" * 7 + "|"]
    for label, d in result["depth"].items():
        for name, w in d["windows"].items():
            layers = "; ".join(f"{x[0]}-{x[-1]}" for x in w["windows"])
            rows.append(f"| {label} | {name} | {layers} | {_fmt(w['output'], w['output_ci'])} | "
                        f"{_fmt(w.get('uds'), w.get('uds_ci'))} | {_fmt(w['relearn_surviving'])} | "
                        f"{_fmt(w['retain'])} |")
    rows += ["", "| editor | contrast | output efficacy [95% CI] | UDS [95% CI] | surviving relearn |",
             "|---" * 5 + "|"]
    for label, d in result["depth"].items():
        for name, c in d["contrasts"].items():
            rows.append(f"| {label} | {name} | {_fmt(c['output'], c['output_ci'])} | "
                        f"{_fmt(c.get('uds'), c.get('uds_ci'))} | {_fmt(c['relearn_surviving'])} |")
    rows.append("")
    for label, d in result["depth"].items():
        rows.append(f"- {label}: the deepest window by UDS is {', '.join(d['deepest_is']) or 'elsewhere'}"
                    + (f"; by relearning {', '.join(d['deepest_relearn_is']) or 'elsewhere'}"
                       if "deepest_relearn" in d["windows"] else ""))
    return out + rows + [""]


def _figures(result: dict, importance: dict, tasks: dict, cfg: LocalizeConfig, study) -> list[str]:
    from .figures import depth_figure, importance_curve, importance_efficacy_scatter, localization_figure, sweep_plot

    figs = {"localize_importance": importance_curve(list(importance.values()))}
    stats = {label: s[cfg.kind][cfg.efficacy] for label, s in result["statistics"].items()}
    if stats:
        figs["localize"] = localization_figure(result["windows"], importance[cfg.kind], stats, caption(result),
                                               efficacy=cfg.efficacy)
        figs["localize_scatter"] = importance_efficacy_scatter(result["windows"], stats, caption(result),
                                                               kind=cfg.kind, efficacy=cfg.efficacy)
    if result["depth"]:
        uds = {label: s[cfg.kind]["uds"] for label, s in result["statistics"].items() if "uds" in s[cfg.kind]}
        relearn = {label: d["relearn_surviving"] for label, d in result["depth"].items()}
        figs["localize_depth"] = depth_figure(result["windows"], importance[cfg.kind], stats, uds, relearn,
                                              result["planted_layers"], depth_caption(result), efficacy=cfg.efficacy)
    if result["agreement"]:
        figs["localize_agreement"] = sweep_plot(  # None (two disjoint sets do not fit) draws as a gap
            result["agreement"], x="n_facts", ys=["same_window", "jaccard", "same_as_all"],
            title=f"Window selection ({cfg.kind}, {cfg.window} layers) vs number of traced facts")
    if tasks:
        figs["localize_tasks"] = importance_curve(tasks, title=f"{cfg.kind} importance per LUME task")
    study.figures.write(figs)
    study.publish("localize*")
    return study.figures.warnings


# ---------------------------------------------------------------- from a config
def run(cfg: LocalizeConfig, progress: bool = True) -> dict:
    """Load cfg.model, cfg.data and (for depth) the twin through the harness, then `localize` into cfg.out."""
    from . import organism
    from .harness import ModelSpec, Study, load_corpus, load_model, load_twin, source_dirs
    from .models import weights_key

    cfg = checked(cfg)
    spec = ModelSpec.parse(cfg.model)
    if cfg.data == "organism" and spec.organism is None:
        raise ConfigError(f"data 'organism' needs an organism model, but model is {cfg.model!r}; "
                          "give a LUME directory as data")
    Study(cfg.out, "out", sources=source_dirs(cfg.model, cfg.twin), figures=cfg.figures)  # every output, before work
    if cfg.depth and cfg.twin is None and spec.organism is None:
        raise ConfigError(f"depth {list(cfg.depth)} needs the retain-only twin: give twin (a model fine-tuned from "
                          f"the same base without the forget set), or an organism model")
    path = spec.path(progress) if spec.organism is not None else None
    model, tok = load_model(path or spec)
    corpus = load_corpus(cfg.data, spec, tok)
    twin = twin_key = None
    if cfg.depth:
        loaded = load_twin(cfg.twin or "auto", spec, progress=progress)
        if loaded is None:
            raise ConfigError(f"depth {list(cfg.depth)} needs the retain-only twin, and organism {spec.organism!r} "
                              "has none: give twin (a model fine-tuned from the same base without the forget set)")
        twin, twin_tok, twin_spec = loaded
        if twin_tok.get_vocab() != tok.get_vocab():
            raise ConfigError(f"twin {twin_spec.text!r} has another tokenizer than {cfg.model!r}; UDS and relearning "
                              "compare them token for token")
        twin_key = weights_key(twin_spec.path(), twin)
    planted = (organism.info(path).get("planted_layers") or None) if path is not None else None
    return localize(model, tok, corpus, cfg, cfg.out, progress=progress,
                    model_key=weights_key(path or cfg.model, model), twin=twin, twin_key=twin_key, planted=planted)
