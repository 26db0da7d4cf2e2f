"""Exact-match recall of QA answers from one teacher-forced forward per batch.

Greedy decoding writes a record's answer exactly when, with the true answer as the prefix, the arg-max at every answer
position is the next answer token and, after the last one, EOS. So checking those arg-maxes on the teacher-forced
sequence `input + ' ' + output + EOS` (the editors' encoding, editors.loop.encode) gives the exact match that
`workbench.generation.qa_accuracy` computes by generating, except for a model that spells the answer with other
tokens. It costs one forward instead of one per generated token, which matters when the attacks score a model after
every relearning step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...data.records import questions
from ...editors.loop import Batch, Example, collate, encode

MAX_LEN = 256


@dataclass
class Scores:
    exact: torch.Tensor      # [n_records] bool: the whole answer and EOS are the arg-max

    @property
    def recall(self) -> float:
        return float(self.exact.float().mean()) if len(self.exact) else float("nan")


def encode_qa(tok, records, max_len: int = MAX_LEN) -> list[Example]:
    """The QA records among `records`, encoded as the editors train on them."""
    return encode(tok, questions(records), max_len)


def answer_mask(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(target [batch, pos-1], mask [batch, pos-1]): the next token at each position and where it is an answer token
    (EOS included)."""
    target = batch.labels[:, 1:]
    return target.clamp(min=0), target != -100


def batches(examples: Sequence[Example], pad_id: int, device, batch_size: int = 32):
    for s in range(0, len(examples), batch_size):
        yield collate(examples[s:s + batch_size], pad_id, device)


def hits(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[batch] bool: every answer token and EOS is the arg-max of next-token logits [batch, pos-1, vocab]."""
    target, mask = answer_mask(batch)
    return ((logits.argmax(-1) == target) | ~mask).all(-1)          # [batch, pos-1] -> [batch]


@torch.no_grad()
def score(model, tok, examples: Sequence[Example], batch_size: int = 32) -> Scores:
    """Exact match of each example (eval mode; the model's training flag is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    exact = []
    try:
        for b in batches(examples, tok.pad_token_id, device, batch_size):
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
            exact.append(hits(logits[:, :-1], b).cpu())
    finally:
        model.train(was_training)
    return Scores(torch.cat(exact) if exact else torch.zeros(0, dtype=torch.bool))
