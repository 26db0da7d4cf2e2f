"""Model loading: organism, local directories with OLMo-1B's real shape, clear errors for bad specs."""
from __future__ import annotations

import pytest
import torch

from workbench.models import ModelLoadError
from workbench.harness import load_model


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


# ---------------------------------------------------------------- loading is safe by default
def _copy_micro(tmp_path, name="m"):
    import shutil

    from workbench import organism

    d = tmp_path / name
    shutil.copytree(organism.build("micro", progress=False), d)
    return d


def _custom_code_dir(tmp_path, model_type):
    """A model directory whose config names its own Python code (auto_map); importing that code writes a marker."""
    import json

    d = _copy_micro(tmp_path, f"remote-{model_type}")
    marker = tmp_path / f"ran-{model_type}"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                               "from transformers import OlmoConfig as EvilConfig, OlmoForCausalLM as EvilModel\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig",
                                                "AutoModelForCausalLM": "evil.EvilModel"})
    (d / "config.json").write_text(json.dumps(cfg))
    return d, marker


def test_custom_model_code_never_runs_even_when_stdin_says_yes(tmp_path, monkeypatch, micro, capsys):
    import io

    from workbench.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("y\n" * 10))   # `echo y | workbench trace --model DIR`
    unknown, marker = _custom_code_dir(tmp_path, "evil-olmo")
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_model(unknown)
    rc = main(["trace", "--model", str(unknown), "--prompt", "Who is Ann?", "--subject", "Ann", "--answer", "x",
               "--out", str(tmp_path / "t"), "--formats", "none"])
    assert rc == 2 and "--trust-remote-code" in capsys.readouterr().err
    known, marker2 = _custom_code_dir(tmp_path, "olmo")   # a built-in type with auto_map: the built-in class loads
    model, _ = load_model(known)
    assert type(model).__name__ == "OlmoForCausalLM"
    assert not marker.exists() and not marker2.exists()


def test_pickle_only_weights_need_an_explicit_opt_in(tmp_path, micro):
    model0, tok, _ = micro
    d = _copy_micro(tmp_path, "bin")
    (d / "model.safetensors").unlink()
    torch.save(model0.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only pickle weights") as e:
        load_model(d)
    assert "save_pretrained" in str(e.value) and "--allow-bin" in str(e.value)
    model, _ = load_model(d, allow_pickle_weights=True)
    for (n, p), q in zip(model0.named_parameters(), model.parameters()):
        assert torch.equal(p, q), n


def test_malicious_bin_is_refused_without_unpickling(tmp_path, capsys):
    from workbench.cli import main

    class Planted:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    d = _copy_micro(tmp_path)
    (d / "model.safetensors").unlink()
    torch.save({"x": Planted()}, d / "pytorch_model.bin")
    rc = main(["trace", "--model", str(d), "--prompt", "Who is Ann?", "--subject", "Ann", "--answer", "x",
               "--out", str(tmp_path / "t"), "--formats", "none"])
    err = capsys.readouterr().err
    assert rc == 2 and "only pickle weights" in err and "Traceback" not in err
    assert not (tmp_path / "ran").exists()


def test_truncated_safetensors_is_a_clear_error(tmp_path, micro):
    d = _copy_micro(tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(d)
    f.write_bytes(b"\x05\x00")
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(d)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only torch")
def test_cuda_device_on_cpu_torch(micro, capsys):
    with pytest.raises(ModelLoadError, match="no usable CUDA"):
        load_model("organism:micro", device="cuda")
    with pytest.raises(ModelLoadError, match="not a torch device"):
        load_model("organism:micro", device="gpu0")
