"""Model loading: organism, local directories with OLMo-1B's real shape, clear errors for bad specs."""
from __future__ import annotations

import pytest
import torch

from workbench.models import ModelLoadError, load_model


def _save_random(tmp_path, config, tok):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("family", ["olmo", "olmo2"])
def test_local_dir_with_olmo_1b_shape(tmp_path, micro, family):
    """OLMo-1B's real width (d_model 2048, 16 heads, d_mlp 8192, vocab 50304), cut to 1 layer for time and memory."""
    from transformers import Olmo2Config, OlmoConfig

    _, tok, _ = micro
    cls = OlmoConfig if family == "olmo" else Olmo2Config
    config = cls(vocab_size=50304, hidden_size=2048, num_attention_heads=16, intermediate_size=8192,
                 num_hidden_layers=1, max_position_embeddings=4096, dtype="bfloat16")
    saved = _save_random(tmp_path, config, tok)
    model, tok2 = load_model(tmp_path, dtype="bfloat16")
    assert model.config.model_type == family and model.config.hidden_size == 2048
    ids = tok2("What is the birth date of Ann Lee?", return_tensors="pt")["input_ids"]
    ref = {k: v.to(torch.bfloat16) for k, v in saved.state_dict().items()}
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, ref[name]), f"{name} must round-trip through save/load exactly"
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 50304) and torch.isfinite(logits).all()


def test_organism_spec(micro):
    model, tok = load_model("organism:micro")
    assert model.config.model_type == "olmo" and not model.training
    assert tok.eos_token == "<|endoftext|>"


def test_unknown_organism():
    with pytest.raises(ModelLoadError, match="unknown organism 'nope'"):
        load_model("organism:nope")


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "no" / "such" / "model"))


def test_not_a_spec():
    with pytest.raises(ModelLoadError, match="neither 'organism"):
        load_model("not a model")


def test_hub_id_offline_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(ModelLoadError, match="allenai/OLMo-1B-0724-hf"):
        load_model("allenai/OLMo-1B-0724-hf")


def test_dir_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="could not read a model config"):
        load_model(tmp_path)


def test_file_instead_of_dir(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_model(f)


def test_bad_dtype():
    with pytest.raises(ModelLoadError, match="unknown dtype 'float7'"):
        load_model("organism:micro", dtype="float7")


def test_non_olmo_architectures(tmp_path, micro):
    from transformers import GPT2Config, LlamaConfig

    _, tok, _ = micro
    gpt2 = tmp_path / "gpt2"
    _save_random(gpt2, GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2), tok)
    with pytest.raises(ModelLoadError, match="no `model.layers`"):
        load_model(gpt2)
    llama = tmp_path / "llama"
    _save_random(llama, LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=2), tok)
    with pytest.warns(UserWarning, match="is not OLMo"):
        load_model(llama)
