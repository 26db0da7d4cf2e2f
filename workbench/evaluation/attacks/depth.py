"""The depth attack: patch one model's activations into another, one layer and kind at a time, on the forget facts,
and see how much of the answer comes with them (as the Unlearning Depth Score does, arXiv 2605.24614).

Directions (source -> target):

  X -> original        the attack on model X (original, edited, twin): the original's own downstream layers read X's
                       activation at one site. If X still carries the fact there, the answer comes back, however
                       X's later layers hide it. original -> original is the identity (everything returns).
  original -> edited   where the edit acted: restoring the original's activation at one site brings the answer back
                       in the edited model at the layers the edit changed (drawn next to the traced importance)
  twin -> edited       the same with a model that never learned the facts: what restoring carries that is not the fact

Score of a patched run: exact match of the teacher-forced answer (every content token of the answer, as prompts.py's
`prepare` splits it, and EOS the arg-max), averaged over the facts. Each patch replaces the site's activation at every
position. The patched forwards are the restoration engine's (restoration.clean_run records the source,
restoration.run_jobs runs every (kind, layer) of one fact as rows of one batched forward of the target).

recovery of X: the best score of X -> original over the resid sites before the last layer (the original's later
layers reading X's whole residual stream there) minus X's own output score. The original scores 0 (it hides nothing);
an edit that only hides the answer in its last layers scores high. The twin was trained apart from the original, so
its activations sit in another basis and the original's layers cannot read them: its recovery is a floor, and the
resid sites are the summary because a single MLP or attention output of another model breaks the original whether or
not it carries the fact (the mlp/attn curves are for the original -> edited direction, where both share a basis).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ...backends import get_backend
from ...data.records import questions
from ...errors import ConfigError, TraceError
from ...prompts import prepare
from ...restoration import clean_run, rows_per_forward, run_jobs
from ...results import KINDS
from ...sites import n_layers
from ...sites import name as site_name


@dataclass
class DepthConfig:
    kinds: tuple[str, ...] = ("resid", "mlp", "attn")
    n_facts: int | None = None        # forget QA records patched (None: all)
    batch_size: int | None = None     # rows per forward (None: from the tracing engine's memory budget)

    def __post_init__(self):
        self.kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        bad = [k for k in self.kinds if k not in KINDS]
        if not self.kinds or bad:
            raise ConfigError(f"depth kinds {list(self.kinds)}: expected some of {list(KINDS)}")
        if self.n_facts is not None and self.n_facts < 1:
            raise ConfigError(f"depth n_facts must be >= 1 or None (every forget QA record), got {self.n_facts}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"depth batch_size must be >= 1 or None, got {self.batch_size}")


class Fact:
    """One forget QA record, tokenised once: ids [1, pos] of prompt + answer, the targets of the last `keep` logits."""

    def __init__(self, model, tok, record):
        p = prepare(model, tok, record.input, record.output)
        self.id = record.id
        self.ids = torch.tensor([p.prompt_ids + p.answer_ids])               # [1, pos]
        self.target = torch.tensor(p.answer_ids + [tok.eos_token_id])        # [keep]
        self.keep = len(self.target)

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [rows, keep, vocab] -> [rows]: 1.0 where every answer token and EOS is the arg-max."""
        return (logits.argmax(-1) == self.target.to(logits.device)).all(-1).float()


def facts_of(model, tok, corpus, n_facts: int | None) -> list[Fact]:
    records = questions(corpus.forget)[:n_facts] if n_facts else questions(corpus.forget)
    if not records:
        raise TraceError("the depth attack needs forget QA records; the corpus has none")
    return [Fact(model, tok, r) for r in records]


def sites(model, kinds) -> list[tuple[str, int, str]]:
    """(kind, layer, site name) of every patch, kinds in order, layers within a kind."""
    return [(k, l, site_name(k, l)) for k in kinds for l in range(n_layers(model))]


@torch.no_grad()
def curves(source, target, tok, facts: list[Fact], kinds, batch_size: int | None = None,
           recorded: list | None = None, progress: bool = False, desc: str = "depth") -> dict[str, list[float]]:
    """{kind: [n_layers]} mean score of `target` with `source`'s activation patched in at (kind, layer).
    `recorded`: the source's activations per fact (restoration.clean_run), when already taken."""
    if n_layers(source) != n_layers(target) or source.config.hidden_size != target.config.hidden_size:
        raise ConfigError(f"depth patching needs two models of one shape; got {n_layers(source)} x "
                          f"{source.config.hidden_size} and {n_layers(target)} x {target.config.hidden_size}")
    site_list = sites(target, kinds)
    run_src, run_tgt = get_backend(source, tok, "torch"), get_backend(target, tok, "torch")
    total = np.zeros(len(site_list))
    device = next(target.parameters()).device
    for i, f in enumerate(tqdm(facts, desc=desc, disable=not progress, leave=False)):
        ids = f.ids.to(device)
        acts = recorded[i] if recorded is not None else clean_run(run_src, ids, [s for *_, s in site_list], f.keep)[1]
        every = list(range(ids.shape[1]))
        jobs = [[(s, every)] for *_, s in site_list]
        rows = batch_size or rows_per_forward(target, ids.shape[1], f.keep)
        total += run_jobs(run_tgt, ids, jobs, acts, f.metric, f.keep, rows=rows)[:, 0].numpy()
    mean = total / len(facts)
    out: dict[str, list[float]] = {k: [] for k in kinds}
    for (k, _, _), v in zip(site_list, mean):
        out[k].append(float(v))
    return out


@torch.no_grad()
def own_score(model, tok, facts: list[Fact]) -> float:
    """The unpatched model's mean score on `facts`."""
    device = next(model.parameters()).device
    return float(np.mean([float(f.metric(model(f.ids.to(device)).logits[:, -f.keep:])[0]) for f in facts]))


def run(models: dict, tok, corpus, cfg: DepthConfig, progress: bool = False) -> dict:
    """models: {"original": m, "edited": m, "twin": m (optional)}, one tokenizer. Every direction of the module doc."""
    facts = facts_of(models["original"], tok, corpus, cfg.n_facts)
    names = [n for n in ("original", "edited", "twin") if models.get(n) is not None]
    site_names = [s for *_, s in sites(models["original"], cfg.kinds)]
    recorded = {}
    for n in names:
        run_n = get_backend(models[n], tok, "torch")
        dev = next(models[n].parameters()).device
        recorded[n] = [clean_run(run_n, f.ids.to(dev), site_names, f.keep)[1] for f in facts]
    pairs = [(n, "original") for n in names] + [(n, "edited") for n in ("original", "twin") if n in names
                                                   and "edited" in names]
    result = {"kinds": list(cfg.kinds), "n_facts": len(facts), "unpatched": {}, "curves": {}}
    for n in names:
        result["unpatched"][n] = own_score(models[n], tok, facts)
    for src, tgt in pairs:
        result["curves"][f"{src}->{tgt}"] = curves(models[src], models[tgt], tok, facts, cfg.kinds, cfg.batch_size,
                                                   recorded[src], progress, f"depth {src}->{tgt}")
    L = n_layers(models["original"])
    result["per_model"] = {}
    for n in names:
        before = result["unpatched"][n]
        resid = result["curves"][f"{n}->original"].get("resid")
        if resid is None or L < 2:
            result["per_model"][n] = {"before": before, "after": None, "recovery": None, "layer": None}
            continue
        best = max(range(L - 1), key=lambda l: resid[l])
        result["per_model"][n] = {"before": before, "after": resid[best], "recovery": resid[best] - before,
                                  "layer": best}
    return result


PAIR_STYLE = {"original->original": ("grey", "dot"), "edited->original": ("#d62728", "solid"),
              "twin->original": ("#2ca02c", "solid"), "original->edited": ("#1f77b4", "solid"),
              "twin->edited": ("#9467bd", "dash")}


def figure(result: dict, importance: dict | None = None):
    """Per kind, the patched score of every direction by layer; the traced importance of the original (scaled to
    its peak) beside them, where re-tracing ran."""
    from plotly.subplots import make_subplots

    kinds = result["kinds"]
    fig = make_subplots(rows=1, cols=len(kinds), subplot_titles=[f"patch {k}" for k in kinds], shared_yaxes=True)
    for i, k in enumerate(kinds):
        for pair, c in result["curves"].items():
            color, dash = PAIR_STYLE.get(pair, ("black", "solid"))
            fig.add_scatter(x=list(range(len(c[k]))), y=c[k], mode="lines+markers", name=pair, legendgroup=pair,
                            showlegend=i == 0, line=dict(color=color, dash=dash), row=1, col=i + 1)
        imp = (importance or {}).get(k)
        if imp:
            peak = max(max(imp), 1e-12)
            fig.add_bar(x=list(range(len(imp))), y=[v / peak for v in imp], name="traced importance (original)",
                        legendgroup="importance", showlegend=i == 0, marker_color="rgba(120,120,120,0.3)",
                        row=1, col=i + 1)
        fig.update_xaxes(title_text="layer", row=1, col=i + 1)
    fig.update_yaxes(range=[-0.02, 1.02])
    fig.update_layout(title="Depth: answer recall when one site's activation comes from another model (source->target)",
                      width=330 * len(kinds) + 200, height=400)
    return fig
