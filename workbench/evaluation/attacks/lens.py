"""The reading attack (Patil, Hase and Bansal, arXiv 2309.17410, recovered 38% of ROME-deleted facts from
intermediate layers): are the forget answers still decodable from the residual stream, layer by layer?

Four readouts of resid_post.l at every answer position of the teacher-forced forget QA records:

  lens           the logit lens through the model's own final norm and unembedding matrix (W_U; an unembedding
                 *bias* is left out, so an edit that only biases the output against the answer is read straight
                 through)
  lens_original  the logit lens through the original model's final norm and W_U, one fixed decoder for every model
                 (UDS's logit-lens baseline, arXiv 2605.24614): an edit of the model's own decoder cannot hide from it
  probe          a linear probe fitted on retain QA only and tested on forget QA: ridge regression from resid_post.l
                 to the model's own final normed residual at the same positions, read through W_U
  tuned          the tuned lens (Belrose et al., arXiv 2303.08112): per layer an affine translator h -> h + hA + b,
                 trained on retain QA to match the model's own output distribution (KL), read through the final
                 norm and W_U

The attacker needs nothing but the model, the original's decoder and retain data. Each readout gives per layer the
exact-match recall (every answer token and EOS the arg-max, as recall.py) and the token accuracy. Every
(readout, layer) is a setting of the attack's grid (attacks.grid): its recovery is that readout's recall minus the
model's own output recall.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...hooks import capture
from ...sites import n_layers
from ...sites import name as site_name
from .recall import answer_mask, batches, encode_qa

READOUTS = ("lens", "lens_original", "probe", "tuned")


@dataclass
class LensConfig:
    ridge: float = 1e-2      # probe ridge penalty, relative to the mean squared residual norm
    tuned_steps: int = 150   # full-batch Adam steps of each layer's tuned-lens translator
    tuned_lr: float = 1e-2
    batch_size: int = 32

    def __post_init__(self):
        if not self.ridge >= 0:
            raise ConfigError(f"lens ridge must be >= 0, got {self.ridge}")
        if self.tuned_steps < 0 or not self.tuned_lr > 0:
            raise ConfigError(f"lens tuned_steps must be >= 0 and tuned_lr > 0, got {self.tuned_steps}, "
                              f"{self.tuned_lr}")
        if self.batch_size < 1:
            raise ConfigError(f"lens batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Positions:
    """Every answer position of a set of records, flattened."""
    resid: torch.Tensor      # [n_layers, n_pos, d_model] resid_post.l at the position before each answer token
    target: torch.Tensor     # [n_pos] the answer token (or EOS) it should predict
    example: torch.Tensor    # [n_pos] which record the position belongs to
    content: torch.Tensor    # [n_pos] bool: an answer token, not EOS
    logits: torch.Tensor     # [n_pos, vocab] the model's own output there
    n_examples: int


@torch.no_grad()
def positions(model, tok, records, batch_size: int = 32) -> Positions:
    """One teacher-forced forward per batch, capturing resid_post of every layer at the answer positions."""
    was_training = model.training
    model.eval()
    L = n_layers(model)
    sites = [site_name("resid_post", l) for l in range(L)]
    device = next(model.parameters()).device
    examples = encode_qa(tok, records)
    resid, target, example, logits = [], [], [], []
    try:
        for b in batches(examples, tok.pad_token_id, device, batch_size):
            with capture(model, sites) as acts:
                out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
            tgt, mask = answer_mask(b)                                          # [batch, pos-1]
            rows, cols = mask.nonzero(as_tuple=True)
            resid.append(torch.stack([acts[s][:, :-1][rows, cols] for s in sites]).float().cpu())  # [L, n, d_model]
            target.append(tgt[rows, cols].cpu())
            example.append(torch.tensor(b.index)[rows.cpu()])
            logits.append(out[:, :-1][rows, cols].float().cpu())               # [n, vocab]
    finally:
        model.train(was_training)
    target_t = torch.cat(target)
    return Positions(torch.cat(resid, 1), target_t, torch.cat(example), target_t != tok.eos_token_id,
                     torch.cat(logits), len(examples))


def read(pos: Positions, logits: torch.Tensor) -> tuple[float, float]:
    """(exact-match recall, token accuracy) of logits [n_pos, vocab] at `pos`."""
    right = (logits.argmax(-1) == pos.target).float()                           # [n_pos]
    n = pos.n_examples
    wrong = torch.zeros(n).index_add_(0, pos.example, 1 - right)
    hit = torch.zeros(n).index_add_(0, pos.example, right * pos.content)
    count = torch.zeros(n).index_add_(0, pos.example, pos.content.float())
    return float((wrong == 0).float().mean()), float((hit / count.clamp(min=1)).mean())


def unembed(decoder, h: torch.Tensor) -> torch.Tensor:
    """The final norm and the unembedding matrix of `decoder` (a model), no bias: h [n, d_model] -> logits [n, vocab]."""
    W = decoder.get_output_embeddings().weight
    with torch.no_grad():
        return F.linear(decoder.model.norm(h.to(W.dtype)), W).float()


def fit_probe(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """Ridge regression with an intercept: W [d_model + 1, d_out] minimising |[x, 1] W - y|^2 + lam |W|^2, with lam
    `ridge` x the mean squared norm of x's rows."""
    X = torch.cat([x, torch.ones(len(x), 1)], 1).double()                     # [n, d_model + 1]
    lam = ridge * float((x.double() ** 2).sum(1).mean())
    gram = X.T @ X + lam * torch.eye(X.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, X.T @ y.double()).float()


def fit_tuned(model, x: torch.Tensor, target_logits: torch.Tensor, steps: int, lr: float) -> tuple:
    """A tuned-lens translator (A [d_model, d_model], b [d_model]), both starting at 0, minimising
    KL(p_model || p_lens) over the rows of x [n, d_model], with p_model from target_logits [n, vocab]."""
    d = x.shape[1]
    A = torch.zeros(d, d, requires_grad=True)
    b = torch.zeros(d, requires_grad=True)
    W = model.get_output_embeddings().weight.detach().float()
    norm = model.model.norm
    target = F.log_softmax(target_logits, -1)                                   # [n, vocab]
    opt = torch.optim.Adam([A, b], lr=lr)
    for _ in range(steps):
        logits = F.linear(norm((x + x @ A + b).to(W.dtype)).float(), W)       # [n, vocab]
        loss = F.kl_div(F.log_softmax(logits, -1), target, log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return A.detach(), b.detach()


def run_model(model, tok, corpus, cfg: LensConfig, original) -> dict:
    """Per readout and layer, the recall and token accuracy on the forget QA records."""
    forget = positions(model, tok, corpus.forget, cfg.batch_size)
    retain = positions(model, tok, corpus.retain, cfg.batch_size)
    L = forget.resid.shape[0]
    final_normed = unembed_norm(model, retain.resid[-1])                       # [n_retain, d_model]
    W_U = model.get_output_embeddings().weight
    metrics: dict[str, list[float]] = {f"{r}_{m}": [] for r in READOUTS for m in ("recall", "tokens")}
    for l in range(L):
        x = forget.resid[l]                                                     # [n_forget, d_model]
        W = fit_probe(retain.resid[l], final_normed, cfg.ridge)               # [d_model + 1, d_model]
        probe = torch.cat([x, torch.ones(len(x), 1)], 1) @ W                  # [n_forget, d_model]
        with torch.enable_grad():
            A, b = fit_tuned(model, retain.resid[l], retain.logits, cfg.tuned_steps, cfg.tuned_lr)
        readouts = {"lens": unembed(model, x), "lens_original": unembed(original, x),
                    "probe": F.linear(probe.to(W_U.dtype), W_U).float().detach(),
                    "tuned": unembed(model, x + x @ A + b)}
        for r, logits in readouts.items():
            recall, tokens = read(forget, logits)
            metrics[f"{r}_recall"].append(recall)
            metrics[f"{r}_tokens"].append(tokens)
    before, before_tokens = read(forget, forget.logits)
    by_setting = {f"{r}, layer {l}": metrics[f"{r}_recall"][l] - before for r in READOUTS for l in range(L)}
    return {"layers": L, "metrics": metrics, "before": before, "before_tokens": before_tokens,
            "by_setting": by_setting, "n_forget": forget.n_examples, "n_retain": retain.n_examples}


def unembed_norm(model, h: torch.Tensor) -> torch.Tensor:
    """The model's final norm of h [n, d_model] (float32)."""
    with torch.no_grad():
        return model.model.norm(h.to(next(model.parameters()).dtype)).float()


def run(models: dict, corpus, cfg: LensConfig, layers=None, progress: bool = False) -> dict:
    """Every model read through its own decoder, the original's, a probe and a tuned lens."""
    original = models["original"][0]
    return {"per_model": {n: run_model(m, tok, corpus, cfg, original) for n, (m, tok) in models.items()}}
