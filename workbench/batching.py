"""Right-padded batches of token ids, as every scorer feeds them to the model.

Right padding keeps each row's positions those of an unpadded run, so a batched score equals the one-by-one score;
the attention mask hides the padding from the real tokens.
"""
from __future__ import annotations

from typing import Sequence

import torch


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [batch, pos], attention_mask [batch, pos]) of token-id rows padded on the right to the longest."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [batch, pos]
    mask = torch.zeros((len(rows), width), dtype=torch.long)              # [batch, pos]
    for b, row in enumerate(rows):
        input_ids[b, :len(row)] = torch.tensor(row)
        mask[b, :len(row)] = 1
    return input_ids, mask
