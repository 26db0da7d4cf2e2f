"""UNDO (Lee et al., arXiv 2506.06278): unlearn, then damage the weights, then distil into the damaged copy. The
damage removes what output-level unlearning only hides; the distillation restores what is kept.

Here the damage is shrink-and-perturb towards the pretrained base the model was fine-tuned from (LUME's targets are
OLMo fine-tuned from a public base; the organism records its base beside it):

    theta <- theta_base + (1 - alpha) * (theta - theta_base) + sigma * std(theta) * N(0, 1)    per tensor

alpha = 1 resets every fine-tuned weight to the base (the forget facts live in the fine-tune's difference), alpha = 0
keeps the model. Then the damaged copy trains on data without the forget set, step after step one batch of each:

    kept      the retain (and validation) records, every token, cross-entropy on their own tokens (`kept_loss="ce"`)
              or KL to the teacher's distribution (`"kl"`)
    general   the general text the model learnt besides its records (corpus.general), KL(p_teacher || p) on every
              token (`general_loss="kl"`) or its own tokens ("ce"), weighted by `general_weight`

The teacher is the model as it came in (its outputs cached before the damage). UNDO's teacher is an unlearned model:
a teacher that still knows the forget set puts probability on its names and numbers in retain and general contexts,
and a distribution carries that "dark knowledge" over (the kept records' own tokens do not, which is why "ce" is the
organism preset's choice; run another editor first and pass its output here to distil an unlearned teacher).

Training only on data the forget set is not part of, from a point that no longer holds its facts, is what makes the
result deep: nothing in it steers the weights back towards the forget answers. With alpha = 1 and "ce" on the kept
records it is close to retraining from the base; the cost is its steps, reported beside the verdict.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError, EditError
from .config import LoopConfig
from .joint import answer_kl
from .loop import Editor, Example


@dataclass
class UndoConfig(LoopConfig):
    """Shrink-and-perturb towards the base, then train on the kept records and distil the general text."""
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    epochs: int = 30                 # passes over the kept records
    batch_size: int = 16
    base: str = "auto"               # the pretrained base: a directory or hub id; "auto": the one recorded beside
                                     # the model (a built-in organism's organism.json)
    alpha: float = 1.0               # shrink towards the base: 1 = reset, 0 = keep
    sigma: float = 0.0               # Gaussian noise, relative to each tensor's std
    kept_loss: str = "ce"            # "ce": the kept records' own tokens; "kl": the teacher's distribution
    general_weight: float = 1.0      # weight of the general-text term (0: none)
    general_loss: str = "kl"         # "kl": the teacher's distribution on general text; "ce": its own tokens
    qa_repeat: int = 2               # QA records appear this many times per pass (they are short)
    keep_best: bool = False          # the end of the schedule is the result (no early stop on the forget set)
    params: tuple[str, ...] = ("*",)

    def check(self, need) -> None:
        super().check(need)
        need(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}")
        need(self.sigma >= 0.0, f"sigma must be >= 0, got {self.sigma}")
        need(self.kept_loss in ("ce", "kl"), f"kept_loss must be 'ce' or 'kl', got {self.kept_loss!r}")
        need(self.general_loss in ("ce", "kl"), f"general_loss must be 'ce' or 'kl', got {self.general_loss!r}")
        need(self.general_weight >= 0.0, f"general_weight must be >= 0, got {self.general_weight}")
        need(self.qa_repeat >= 1, f"qa_repeat must be >= 1, got {self.qa_repeat}")
        need(bool(str(self.base).strip()), "base must name the pretrained base (a directory, a hub id or 'auto')")


def documents(tok, texts: list[str], max_len: int) -> list[Example]:
    """Whole texts, every token labelled (n_prompt 0)."""
    return [Example(tok(t)["input_ids"][: max_len - 1] + [tok.eos_token_id], 0, "general", i)
            for i, t in enumerate(texts)]


def base_path(model, spec: str) -> str:
    """The base the model was fine-tuned from: `spec`, or with "auto" the entry organism.json records beside it."""
    if spec != "auto":
        return spec
    src = Path(str(getattr(model, "name_or_path", "") or ""))
    meta = src / "organism.json"
    if not meta.is_file():
        raise ConfigError(f"undo needs the pretrained base the model was fine-tuned from; base 'auto' reads it from "
                          f"organism.json beside the model, and {src or 'the model'} has none: pass base=<directory "
                          f"or hub id>")
    entry = json.loads(meta.read_text()).get("base") or {}
    path = src.parent / str(entry.get("path", ""))
    if not entry.get("path") or not path.is_dir():
        raise ConfigError(f"undo: the base recorded in {meta} ({entry.get('path')!r}) is not in the cache at "
                          f"{src.parent}; build it (workbench organism build) or pass base=<directory>")
    return str(path)


class Undo(Editor):
    name = "undo"
    Config = UndoConfig
    defaults = {}
    # organism: chosen on the validation people, whom the report never scores (python -m benchmarks.editors_table
    # --split validation --rows 0, each candidate's fields given with --set): a reset to the base, then the twin's
    # organism: the twin's fine-tune, as far as an editor can follow it. The twin takes the original's number of steps
    # (28 passes over every fine-tuned record, 31 batches each) with the forget records left out, so it makes 46
    # passes over the kept records (19 batches each) at lr 2e-3; the editor trains them by their own tokens for as
    # many, and the general text (the world's sentences and training questions, which the twin replays) by its own
    # tokens at weight 0.3 (the twin replays 0.3 of a pass per epoch). Chosen on the validation people
    # (benchmarks/editors_table.py --split validation) by the most verdict lines passed, then the higher SemEval
    # final: it passes all 7, final 0.830 against the validation twin's 0.844. The others: 46 passes with the general
    # text at weight 1, 6 of 7 (relearn), 0.840; 28 passes at weight 1, 6 of 7 (lens), 0.831; 28 passes at weight 0.3,
    # 5 of 7 (relearn, lens), 0.817. On that split two retrained twins of other seeds, judged as edits, fail one line
    # each (benchmarks/null_edit.py): its 43 QA records and 20 MMLU questions move a line by one answer.
    presets = {"organism": dict(lr=2e-3, epochs=46, alpha=1.0, kept_loss="ce", general_loss="ce", general_weight=0.3),
               # the paper's recipe on an unlearned teacher: partial shrink, noise, full distillation
               "paper": dict(alpha=0.6, sigma=0.5, kept_loss="kl", general_weight=1.0, epochs=20, lr=1e-3)}
    uses = ("kept", "general")
    primary = "kept"

    @classmethod
    def extra_data(cls, model, tok, corpus, cfg) -> dict[str, list[Example]]:
        kept = [r.text for s in ("retain", "validation") for r in getattr(corpus, s, [])
                for _ in range(cfg.qa_repeat if r.kind == "qa" else 1)]
        if not kept:
            raise EditError("undo re-learns the kept records (retain and validation), and the corpus has none")
        general = list(getattr(corpus, "general", []) or [])
        return {"kept": documents(tok, kept, cfg.max_len), "general": documents(tok, general, cfg.max_len)}

    def setup_data(self, data) -> None:
        """Without general text in the corpus (a LUME directory, micro) the general term is dropped."""
        self.general = self.cfg.general_weight > 0 and bool(data.get("general"))
        self.uses = ("kept", "general") if self.general else ("kept",)

    def reference_fns(self):
        logp = lambda m, b: F.log_softmax(  # noqa: E731
            m(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits.float(), -1)
        fns = {"general": logp} if self.cfg.general_weight > 0 and self.cfg.general_loss == "kl" else {}
        if self.cfg.kept_loss == "kl":
            fns["kept"] = logp
        return fns

    def setup(self, ref, data):
        """The teacher's outputs are cached (the loop's Reference, before this call); now the damage."""
        super().setup(ref, data)
        self.setup_data(data)
        from ..models import load_pretrained

        base, _ = load_pretrained(base_path(self.model, self.cfg.base), dtype=next(self.model.parameters()).dtype)
        mine, theirs = dict(self.model.named_parameters()), dict(base.named_parameters())
        bad = [n for n, p in mine.items() if n not in theirs or theirs[n].shape != p.shape]
        if bad:
            raise EditError(f"undo: the base {self.cfg.base!r} does not match the model's parameters (e.g. {bad[0]}); "
                            "give the base this model was fine-tuned from")
        g = torch.Generator().manual_seed(self.cfg.seed)
        with torch.no_grad():
            for n, p in mine.items():
                b = theirs[n].to(p.device)
                noise = torch.randn(p.shape, generator=g).to(p.device) * (p.float().std() if p.numel() > 1 else 0)
                p.copy_(b + (1 - self.cfg.alpha) * (p - b) + self.cfg.sigma * noise.to(p.dtype))

    def _term(self, split: str, batch, how: str):
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        if how == "kl":
            return answer_kl(logits, self.ref.get(split, batch), batch.labels)
        target, mask = batch.labels[:, 1:], batch.labels[:, 1:] != -100
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.clamp(min=0).flatten(),
                              reduction="none").view_as(target)
        return (nll * mask).sum() / mask.sum().clamp(min=1)

    def loss(self, batch):
        kept = self._term("kept", batch["kept"], self.cfg.kept_loss)
        stats, total = {"kept_loss": kept.item()}, kept
        if self.general:
            general = self._term("general", batch["general"], self.cfg.general_loss)
            stats["general_loss"] = general.item()
            total = total + self.cfg.general_weight * general
        return total, stats

    def describe(self):
        return {"alpha": self.cfg.alpha, "sigma": self.cfg.sigma, "kept_loss": self.cfg.kept_loss,
                "general_loss": self.cfg.general_loss if getattr(self, "general", True) else "none in the corpus",
                "general_weight": self.cfg.general_weight, "base": self.cfg.base}
