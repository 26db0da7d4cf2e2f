"""The hook layer: every site holds the tensor its name promises, edits take effect, hooks never leak."""
from __future__ import annotations

import pytest
import torch

from workbench.errors import TraceError
from workbench.hooks import capture, hooks
from workbench.sites import KINDS, locate, module, name, valid_sites

PROMPT = "What did Nahound dream of becoming?"


@pytest.fixture(scope="module")
def tiny_olmo2(micro):
    """A random 2-layer OLMo-2 (post-norm blocks) with the micro tokenizer."""
    from transformers import Olmo2Config, Olmo2ForCausalLM

    _, tok, _ = micro
    torch.manual_seed(1)
    cfg = Olmo2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    return Olmo2ForCausalLM(cfg).eval(), tok


def _all_acts(model, tok):
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.no_grad(), capture(model, valid_sites(model)) as acts:
        logits = model(ids).logits
    return ids, acts, logits


@pytest.mark.parametrize("which", ["micro", "tiny_olmo2"])
def test_sites_decompose_the_residual_stream(which, request):
    """resid_post = resid_pre + attn_out + mlp_out: attn_out/mlp_out are exactly what each block adds
    (for OLMo-2 that is the post-norm output, not the raw attention/MLP output)."""
    fx = request.getfixturevalue(which)
    model, tok = fx[0], fx[1]
    ids, acts, _ = _all_acts(model, tok)
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    assert torch.equal(acts["resid_pre.0"], acts["embed"])
    for l in range(L):
        pre, post = acts[f"resid_pre.{l}"], acts[f"resid_post.{l}"]
        assert pre.shape == (1, ids.shape[1], model.config.hidden_size)
        torch.testing.assert_close(pre + acts[f"attn_out.{l}"] + acts[f"mlp_out.{l}"], post, atol=1e-5, rtol=0)
        if l + 1 < L:
            assert torch.equal(acts[f"resid_pre.{l + 1}"], post)
        head = acts[f"head.{l}"]
        assert head.shape == (1, ids.shape[1], H, model.config.hidden_size // H)
        # the per-head tensor is o_proj's input: projecting it (and post-norming for OLMo-2) gives attn_out
        block = model.model.layers[l]
        out = block.self_attn.o_proj(head.flatten(-2))
        if hasattr(block, "post_feedforward_layernorm"):
            out = block.post_attention_layernorm(out)
        torch.testing.assert_close(out, acts[f"attn_out.{l}"], atol=1e-5, rtol=0)


def test_edit_replaces_activation(micro):
    """Replacing the last block's output v gives logits = lm_head(norm(v)), computed by hand."""
    model, tok, _ = micro
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    L = model.config.num_hidden_layers
    v = torch.randn(1, ids.shape[1], model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with hooks(model, {f"resid_post.{L - 1}": lambda x: v}):
            got = model(ids).logits
        want = model.lm_head(model.model.norm(v))
        plain = model(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert not torch.allclose(got, plain)


def test_head_edit_only_touches_that_head(micro):
    """Zeroing one head == zeroing its slice of o_proj's input by hand (checked through attn_out)."""
    model, tok, _ = micro
    ids = torch.tensor([tok(PROMPT)["input_ids"]])

    def zero_head(x):  # [batch, pos, n_heads, d_head]
        x = x.clone()
        x[:, :, 2] = 0
        return x
    with torch.no_grad():
        with capture(model, ["head.1"]) as before:
            model(ids)
        with hooks(model, {"head.1": zero_head}), capture(model, ["attn_out.1"]) as after:
            model(ids)
    z = before["head.1"].clone()
    z[:, :, 2] = 0
    want = model.model.layers[1].self_attn.o_proj(z.flatten(-2))
    torch.testing.assert_close(after["attn_out.1"], want, atol=1e-6, rtol=0)


def _n_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_on_error(micro):
    model, tok, _ = micro
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    n0 = _n_hooks(model)

    def boom(x):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with hooks(model, {"mlp_out.1": boom, "head.0": lambda x: None, "embed": lambda x: None}):
            assert _n_hooks(model) == n0 + 3
            model(ids)
    assert _n_hooks(model) == n0


@pytest.mark.parametrize("bad", ["mlp_out.4", "mlp_out.-1", "mlp.1", "resid_mid.0", "embed.0"])
def test_unknown_site_is_a_trace_error(micro, bad):
    model, _, _ = micro
    n0 = _n_hooks(model)
    with pytest.raises(TraceError) as e:
        with hooks(model, {"mlp_out.0": lambda x: None, bad: lambda x: None}):
            pass
    assert repr(bad) in str(e.value) and "resid_pre" in str(e.value) and "0..3" in str(e.value)
    assert _n_hooks(model) == n0  # validated before anything was attached


def test_shape_changing_edit_is_rejected(micro):
    model, tok, _ = micro
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with pytest.raises(TraceError, match="shape"):
        with torch.no_grad(), hooks(model, {"mlp_out.0": lambda x: x[:, :1]}):
            model(ids)


def test_one_site_table(micro, tiny_olmo2):
    """`name` takes site kinds and trace kinds alike; `locate` gives the module, what of it is read and the
    TransformerLens hook, for pre-norm (OLMo) and post-norm (OLMo-2) blocks."""
    assert name("mlp", 3) == name("mlp_out", 3) == "mlp_out.3" and name("embed") == "embed"
    assert [name(k, 0) for k in KINDS] == ["resid_post.0", "mlp_out.0", "attn_out.0"]
    for bad in (("mlp_in", 0), ("resid", None), ("embed", 0)):
        with pytest.raises(TraceError, match="no site"):
            name(*bad)
    model = micro[0]
    block = model.model.layers[2]
    assert module(model, "mlp", 2) is block.mlp and module(model, "attn_out.2") is block.self_attn
    assert module(model, "resid_post.2") is block and locate(model, "resid_pre.2").reads == "input"
    head = locate(model, "head.2")
    assert head.module is block.self_attn.o_proj and head.reads == "input" and head.split_heads
    assert locate(model, "embed").module is model.get_input_embeddings()
    assert [locate(model, s).tl_hook for s in ("embed", "resid_pre.1", "head.1", "mlp_out.3")] == [
        "hook_embed", "blocks.1.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.3.hook_mlp_out"]
    post = tiny_olmo2[0].model.layers[1]
    assert module(tiny_olmo2[0], "mlp_out.1") is post.post_feedforward_layernorm
    assert module(tiny_olmo2[0], "attn", 1) is post.post_attention_layernorm
