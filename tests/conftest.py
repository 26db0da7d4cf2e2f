"""Shared fixtures. The micro organism is built once (about 15 s on 2 cores) and cached."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def micro():
    """(model, tokenizer, corpus) of the micro organism: 4 layers, d_model 64, memorised facts."""
    from workbench import organism

    return organism.load("micro")


@pytest.fixture(scope="session")
def micro_retain():
    """(model, tokenizer, corpus) of micro's retain-only twin: micro's tokenizer, never trained on the forget set."""
    from workbench import organism

    return organism.load("micro-retain")


@pytest.fixture(scope="session")
def tiny_olmo():
    """A random-weight OLMo with the micro organism's tokenizer: for hook plumbing, not for facts."""
    from transformers import OlmoConfig, OlmoForCausalLM

    from workbench import organism

    _, tok, _ = organism.load("micro")
    torch.manual_seed(0)
    cfg = OlmoConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                     num_attention_heads=4, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    return OlmoForCausalLM(cfg).eval(), tok
