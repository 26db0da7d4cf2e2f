"""Shared fixtures. The micro organism is built once (about 15 s on 2 cores) and cached."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)
# no test reads weights or data from a hub: every model is a built organism or a directory made here, and a hub
# request fails at once instead of waiting on a network that CI does not have
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# the real LUME benchmark files, beside the repository: <parent of the repo>/shared/data/lume
LUME = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lume"


@pytest.fixture(scope="session")
def lume() -> Path:
    """Directory of the real LUME files. Where it is missing the test is skipped, except in CI (CI=true), where a
    skip would hide that the real-data checks never ran: there the test fails."""
    if not LUME.is_dir():
        msg = f"real LUME data not found at {LUME} (expected ../shared/data/lume beside the repository)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{msg}; CI must provide it", pytrace=False)
        pytest.skip(msg)
    return LUME


@pytest.fixture(scope="session")
def micro():
    """(model, tokenizer, corpus) of the micro organism: 4 layers, d_model 64, memorised facts."""
    from workbench import harness

    return harness.load_organism("micro")


@pytest.fixture(scope="session")
def micro_retain():
    """(model, tokenizer, corpus) of micro's retain-only twin: micro's tokenizer, never trained on the forget set."""
    from workbench import harness

    return harness.load_organism("micro-retain")


@pytest.fixture(scope="session")
def zeroed_micro(micro):
    """The micro organism with every MLP write (down-projection) zeroed: a crude 'edit' that destroys recall, about
    a fifth of its weights 0."""
    import copy

    model = copy.deepcopy(micro[0])
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.zero_()
    return model


@pytest.fixture(scope="session")
def tiny_olmo():
    """A random-weight OLMo with the micro organism's tokenizer: for hook plumbing, not for facts."""
    from transformers import OlmoConfig, OlmoForCausalLM

    from workbench import harness

    _, tok, _ = harness.load_organism("micro")
    torch.manual_seed(0)
    cfg = OlmoConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                     num_attention_heads=4, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    return OlmoForCausalLM(cfg).eval(), tok
