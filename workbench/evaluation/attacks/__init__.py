"""Does the knowledge come back? Attacks that try to recover forgotten answers, run on the original, the edited model
and the retain-only twin (the control: what a model that never learned the facts "recovers").

    relearn    fine-tune a copy on half the forget facts, measure recall of the other half (relearn.py)
    quantize   round every linear layer to 8 and 4 bits, measure forget and retain recall (quantize.py)
    lens       decode the forget answers from each layer: logit lens and a retain-trained probe (lens.py)
    depth      patch activations between the models layer by layer (depth.py)

Each gives every model a `recovery`: forget recall after the attack minus before. The verdict's line for an attack
passes when the edited model's recovery is at most the twin's + recovery_tol (evaluation/verdict.py).

    results = run_attacks(("relearn", "lens"), {"original": (m, tok), "edited": (e, tok), "twin": (t, tok)}, corpus)
"""
from __future__ import annotations

import html
import time
from dataclasses import asdict, dataclass, field, fields

from tqdm.auto import tqdm

from ...configfile import build
from ...errors import ConfigError
from . import depth, lens, quantize, relearn

ATTACKS = ("relearn", "quantize", "lens", "depth")
DEFAULT_ATTACKS = ATTACKS          # what the pipeline runs
MODELS = ("original", "edited", "twin")
LABELS = {"original": "original", "edited": "edited", "twin": "retain-only twin"}
COLORS = {"original": "#1f77b4", "edited": "#d62728", "twin": "#2ca02c"}


@dataclass
class AttackConfig:
    relearn: relearn.RelearnConfig = field(default_factory=relearn.RelearnConfig)
    quantize: quantize.QuantizeConfig = field(default_factory=quantize.QuantizeConfig)
    lens: lens.LensConfig = field(default_factory=lens.LensConfig)
    depth: depth.DepthConfig = field(default_factory=depth.DepthConfig)

    @classmethod
    def from_dict(cls, d: dict | None) -> "AttackConfig":
        """{attack: {field: value}} overrides of each attack's settings; unknown names are ConfigErrors."""
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"attack settings must be a mapping {{attack: {{field: value}}}}, got {d!r}")
        d = dict(d or {})
        unknown = sorted(set(d) - set(ATTACKS))
        if unknown:
            raise ConfigError(f"attack settings for unknown attack(s) {unknown}; expected some of {list(ATTACKS)}")
        kinds = {f.name: f.default_factory for f in fields(cls)}
        return cls(**{name: build(kinds[name], d.get(name, {}), f"{name} attack settings") for name in ATTACKS})


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
                progress: bool = False) -> dict:
    """Run `names` on every model of `models` ({"original", "edited"?, "twin"?}: (model, tokenizer)).

    Returns {"attacks": names, "models": [...], "config": ..., name: {"per_model": {model: {..., "recovery"}}, ...},
    "seconds": {name: s}}. `importance`: {kind: per-layer traced importance} drawn beside the depth curves."""
    names = parse_attacks(names)
    cfg = config or AttackConfig()
    if "original" not in models:
        raise ConfigError("the attacks need the original model (models['original'])")
    models = {n: models[n] for n in MODELS if models.get(n) is not None}
    _same_vocab(models)
    out: dict = {"attacks": list(names), "models": list(models), "config": asdict(cfg), "seconds": {}}
    runners = {"relearn": relearn.run, "quantize": quantize.run, "lens": lens.run}
    bar = tqdm(total=len(names), desc="attacks", disable=not progress)
    for name in names:
        t0 = time.perf_counter()
        bar.set_postfix(attack=name)
        if name == "depth":
            out[name] = depth.run({n: m for n, (m, _) in models.items()}, models["original"][1], corpus, cfg.depth,
                                  progress)
        else:
            out[name] = {"per_model": {n: runners[name](m, tok, corpus, getattr(cfg, name), progress=progress)
                                       for n, (m, tok) in models.items()}}
        out["seconds"][name] = round(time.perf_counter() - t0, 3)
        bar.update(1)
    bar.close()
    if importance:
        out["importance"] = importance
    return out


def recoveries(results: dict) -> dict[str, dict[str, float | None]]:
    """{attack: {model: recovery}} of run_attacks' results."""
    return {a: {n: results[a]["per_model"].get(n, {}).get("recovery") for n in results["models"]}
            for a in results["attacks"]}


def figures(results: dict) -> dict:
    """One plotly figure per attack, keyed 'attack_<name>'."""
    makers = {"relearn": relearn.figure, "quantize": quantize.figure, "lens": lens.figure, "depth": depth.figure}
    return {f"attack_{a}": makers[a](results[a], results.get("importance")) for a in results["attacks"]}


def html_table(results: dict) -> str:
    """The recovery of each model under each attack, as an HTML table."""
    models = results["models"]
    rec = recoveries(results)
    fmt = lambda v: "&ndash;" if v is None else f"{v:+.3f}"  # noqa: E731
    head = "<tr><th>attack</th>" + "".join(f"<th>{html.escape(LABELS[m])}</th>" for m in models) + "<th>s</th></tr>"
    rows = "".join(f"<tr><td>{a}</td>" + "".join(f"<td>{fmt(rec[a][m])}</td>" for m in models)
                   + f"<td>{results['seconds'][a]:.1f}</td></tr>" for a in results["attacks"])
    return (f"<p>Recovery: forget recall after the attack minus before (exact match; see each figure). The twin never "
            f"learned the facts: its recovery is what an attack finds in a model that truly does not know.</p>"
            f"<table>{head}{rows}</table>")
