"""Does the knowledge come back? Attacks that try to recover forgotten answers, run on the original, the edited model
and the retain-only twin (the control: what a model that never learned the facts "recovers").

    relearn    fine-tune a copy on half the forget facts, measure recall of the other half (relearn.py)
    quantize   round every linear layer to a few bits, measure forget and retain recall (quantize.py)
    lens       decode the forget answers from each layer: own and original decoder, probe, tuned lens (lens.py)
    depth      the Unlearning Depth Score: patch the twin's and the edited model's hidden states into the original
               layer by layer (depth.py)

relearn, quantize and lens run a grid of strengths, the same for every model, and give each model its recovery
(forget recall after the attack minus before) at every setting; grid.judge keeps the settings under which the twin
recovers at most `admissible` and reports each model's worst case there. The verdict's line for such an attack passes
when the edited model's largest gap over the twin at one admissible setting is at most recovery_tol; the depth line
passes at UDS >= its threshold (evaluation/verdict.py).

    results = run_attacks(("relearn", "lens"), {"original": (m, tok), "edited": (e, tok), "twin": (t, tok)}, corpus)
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

from tqdm.auto import tqdm

from ...configfile import build
from ...errors import ConfigError
from ..metric import Metric
from . import depth, grid, lens, quantize, relearn

ATTACKS = ("relearn", "quantize", "lens", "depth")
DEFAULT_ATTACKS = ATTACKS          # what the pipeline runs
MODELS = ("original", "edited", "twin")


@dataclass
class AttackConfig:
    relearn: relearn.RelearnConfig = field(default_factory=relearn.RelearnConfig)
    quantize: quantize.QuantizeConfig = field(default_factory=quantize.QuantizeConfig)
    lens: lens.LensConfig = field(default_factory=lens.LensConfig)
    depth: depth.DepthConfig = field(default_factory=depth.DepthConfig)
    admissible: float = grid.ADMISSIBLE   # a setting counts when the twin recovers at most this under it

    @classmethod
    def from_dict(cls, d: dict | None) -> "AttackConfig":
        """{attack: {field: value}, "admissible": x} overrides of each attack's settings; unknown names are
        ConfigErrors."""
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"attack settings must be a mapping {{attack: {{field: value}}}}, got {d!r}")
        d = dict(d or {})
        admissible = d.pop("admissible", grid.ADMISSIBLE)
        unknown = sorted(set(d) - set(ATTACKS))
        if unknown:
            raise ConfigError(f"attack settings for unknown attack(s) {unknown}; expected some of {list(ATTACKS)} "
                              f"or 'admissible'")
        if isinstance(admissible, bool) or not isinstance(admissible, (int, float)) or not 0 <= admissible <= 1:
            raise ConfigError(f"attack settings: admissible must be a recall between 0 and 1, got {admissible!r}")
        kinds = {f.name: f.default_factory for f in fields(cls) if f.name in ATTACKS}
        return cls(**{name: build(kinds[name], d.get(name, {}), f"{name} attack settings") for name in ATTACKS},
                   admissible=float(admissible))


def parse_attacks(spec) -> tuple[str, ...]:
    """'relearn,quantize' / a list / 'all' / 'none' (or empty) -> the attack names, in the order given, checked."""
    if spec is None:
        return ()
    items = spec.split(",") if isinstance(spec, str) else [x for s in spec for x in str(s).split(",")]
    names = [s.strip() for s in items if s.strip()]
    if names in (["all"], ["default"]):
        return DEFAULT_ATTACKS
    if names == ["none"]:
        return ()
    bad = [n for n in names if n not in ATTACKS]
    if bad:
        raise ConfigError(f"unknown attack(s) {bad}; expected a comma-separated list of {list(ATTACKS)}, 'all' or "
                          f"'none'")
    return tuple(dict.fromkeys(names))


def _same_vocab(models: dict) -> None:
    vocab = {n: tok.get_vocab() for n, (_, tok) in models.items()}
    first = vocab["original"]
    other = [n for n, v in vocab.items() if v != first]
    if other:
        raise ConfigError(f"the attacks compare models token for token, but the {other} model's tokenizer differs from "
                          f"the original's; give models that share one tokenizer")


def run_attacks(names, models: dict, corpus, config: AttackConfig | None = None, importance: dict | None = None,
                layers=None, progress: bool = False) -> dict:
    """Run `names` on every model of `models` ({"original", "edited"?, "twin"?}: (model, tokenizer)).

    Returns {"attacks": names, "models": [...], "config": ..., name: {"per_model": {model: {..., "recovery"}}, ...},
    "seconds": {name: s}}. `layers`: the edited layers (relearn's "edited" scope); `importance`: {kind: per-layer
    traced importance} drawn beside the depth curves."""
    names = parse_attacks(names)
    cfg = config or AttackConfig()
    if "original" not in models:
        raise ConfigError("the attacks need the original model (models['original'])")
    models = {n: models[n] for n in MODELS if models.get(n) is not None}
    _same_vocab(models)
    out: dict = {"attacks": list(names), "models": list(models), "config": asdict(cfg), "seconds": {}}
    runners = {"relearn": relearn.run, "quantize": quantize.run, "lens": lens.run, "depth": depth.run}
    bar = tqdm(total=len(names), desc="attacks", disable=not progress)
    for name in names:
        t0 = time.perf_counter()
        bar.set_postfix(attack=name)
        result = runners[name](models, corpus, getattr(cfg, name), layers=layers, progress=progress)
        out[name] = result if name == "depth" else grid.judge(result, cfg.admissible)
        out["seconds"][name] = round(time.perf_counter() - t0, 3)
        bar.update(1)
    bar.close()
    if importance:
        out["importance"] = importance
    return out


def recoveries(results: dict) -> dict[str, dict[str, float | None]]:
    """{attack: {model: worst-case recovery (the depth attack: UDS)}} of run_attacks' results."""
    key = lambda a: "uds" if a == "depth" else "recovery"  # noqa: E731
    return {a: {n: results[a]["per_model"].get(n, {}).get(key(a)) for n in results["models"]}
            for a in results["attacks"]}


class Attacks(Metric):
    """Registry entry: the recovery attacks of EvalConfig.attacks on the original, edited and twin models together
    (after re-tracing, whose importance the depth figure draws); one verdict line per attack."""
    name = "attacks"
    joint = True

    def compute_models(self, models: dict, ctx) -> dict | None:
        cfg = ctx.config
        if not cfg.attacks:
            return None
        result = run_attacks(cfg.attacks, models, ctx.corpus, AttackConfig.from_dict(cfg.attack_settings),
                             importance=ctx.importance, layers=ctx.layers, progress=ctx.progress)
        if ctx.log:
            ctx.log("attacks", recovery=recoveries(result), seconds=result["seconds"])
        return result

    def criteria(self, original, edited, twin, result, cfg, trained=()) -> list:
        from ..verdict import attack_criteria

        return attack_criteria(result, cfg.recovery_tol) if result else []
