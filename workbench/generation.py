"""Greedy generation in batches (left-padded), as SemEval-2025 Task 4 scores it, and exact-match QA recall.

Generation sits below every stage that measures a model by its answers: the organism's build check, the editors'
keep-best evaluation, the sweep and the SemEval scorer all use `qa_accuracy` / `greedy_generate` from here."""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 256, batch_size: int = 32,
                    progress: bool = False) -> list[str]:
    """Continuations (decoded, special tokens dropped) of each raw prompt; stops at EOS.

    Under `accelerate launch` each process generates its share of the batches and every process gets them all."""
    from . import distributed

    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # so every prompt ends where generation starts
    found: dict[int, str] = {}
    # longest first: fewer pad tokens per batch, and an OOM shows up at once
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    try:
        for start in tqdm(distributed.split(range(0, len(order), batch_size), model), desc="generate",
                          disable=not progress):
            idx = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]  # [batch, new_tokens]
            found.update(zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)))
    finally:
        tokenizer.padding_side = old_side
    found = distributed.gather(found)
    return [found[i] for i in range(len(prompts))]


def exact_match(prediction: str, reference: str) -> bool:
    """SemEval knowledge score: equal after strip + lower."""
    return prediction.strip().lower() == reference.strip().lower()


def qa_accuracy(model, tokenizer, records, max_new_tokens: int = 32, batch_size: int = 32) -> float:
    """Exact-match accuracy of greedy answers to QA records."""
    records = list(records)
    if not records:
        return float("nan")
    preds = greedy_generate(model, tokenizer, [r.input for r in records], max_new_tokens, batch_size)
    return sum(exact_match(p, r.output) for p, r in zip(preds, records)) / len(records)
