"""Big models: layers spread over devices (models.load_pretrained's max_memory / offload folder, plan_device_map).

This machine has one device, the CPU; the second "device" is the disk: layers that do not fit the CPU budget are
offloaded, their parameters are meta tensors between forwards and accelerate's hooks load them at each forward.
Tracing (batched and suffix engines), patching, the hooks and the model fingerprint see the same numbers as the model
in one piece. The GPU plan (which layer on which GPU) is checked on an empty OLMo-1B-shaped model (meta tensors).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError
from workbench.models import ModelLoadError, layer_devices, plan_device_map
from workbench.harness import load_model

CLEAN, CORRUPT = "What did Nahound dream of becoming?", "What did Zaind dream of becoming?"
ANSWER, WRONG = "chemist", "botanist"


def _budget(model, fraction: float) -> int:
    return int(fraction * sum(p.numel() * p.element_size() for p in model.parameters()))


@pytest.fixture(scope="module")
def offloaded(micro, tmp_path_factory):
    """The micro organism with only its embeddings and layer 0 in the CPU budget: layers 1-3, the final norm and the
    unembedding offloaded to disk."""
    model, _, _ = micro
    m, tok = load_model("organism:micro", max_memory={"cpu": _budget(model, 0.6)},
                        offload_folder=tmp_path_factory.mktemp("offload"))
    return m, tok


def test_offloaded_layers_are_meta_tensors_between_forwards(offloaded):
    model, _ = offloaded
    assert layer_devices(model) == ["cpu", "disk", "disk", "disk"]
    assert all(p.is_meta for p in model.model.layers[3].parameters())
    assert not any(p.is_meta for p in model.model.layers[0].parameters())


def test_tracing_an_offloaded_model_equals_the_model_in_one_piece(micro, offloaded):
    from workbench.provenance import model_fingerprint
    from workbench.tracing import causal_trace

    model, tok, corpus = micro
    split, _ = offloaded
    assert model_fingerprint(split) == model_fingerprint(model)
    fact = corpus.facts("forget")[0]
    kw = dict(n_samples=3, kinds=("resid", "mlp"))
    whole = causal_trace(model, tok, fact.input, fact.output, fact.subject, suffix=False, **kw)
    for suffix in (False, True):   # every restoration as a full forward; and the suffix engine's per-layer calls
        res = causal_trace(split, tok, fact.input, fact.output, fact.subject, suffix=suffix, **kw)
        assert res.config["suffix"] is suffix
        assert res.clean == pytest.approx(whole.clean, abs=1e-6)
        for kind in whole.effects:
            np.testing.assert_allclose(res.effects[kind], whole.effects[kind], atol=1e-6, rtol=0)


def test_patching_and_hooks_on_an_offloaded_model(micro, offloaded):
    from workbench.hooks import capture
    from workbench.patching import activation_patching

    model, tok, _ = micro
    split, _ = offloaded
    ids = tok(CLEAN, return_tensors="pt")["input_ids"]
    sites = ["resid_post.0", "mlp_out.2", "head.3"]
    with torch.no_grad(), capture(model, sites) as a:
        model(ids)
    with torch.no_grad(), capture(split, sites) as b:
        split(ids)
    for s in sites:
        torch.testing.assert_close(a[s], b[s], atol=1e-6, rtol=0)
    kw = dict(wrong_answer=WRONG, sites=("resid_post", "mlp_out"))
    one, two = (activation_patching(m, tok, CLEAN, CORRUPT, ANSWER, **kw) for m in (model, split))
    for kind in one.effects:
        np.testing.assert_allclose(two.effects[kind], one.effects[kind], atol=1e-5, rtol=0)


def test_gpu_plan_keeps_layers_whole_and_in_order():
    """OLMo-1B's shape (16 layers, d_model 2048) in bfloat16 over two 1 GiB GPUs and the CPU, planned on meta tensors."""
    from transformers import OlmoConfig

    cfg = OlmoConfig(vocab_size=50304, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=16, max_position_embeddings=4096)
    plan = plan_device_map(cfg, {0: "1GiB", 1: "1GiB", "cpu": "8GiB"}, dtype=torch.bfloat16)
    layers = [plan[f"model.layers.{i}"] for i in range(16)]        # each layer one entry: never split
    assert plan["model.embed_tokens"] == 0 and "disk" not in plan.values()
    order = {0: 0, 1: 1, "cpu": 2}
    assert [order[d] for d in layers] == sorted(order[d] for d in layers)   # filled in device order
    assert {0, 1, "cpu"} <= set(layers)                               # 2.35 GB of weights: both GPUs full, rest on CPU
    assert not any(k.startswith("model.layers.0.") for k in plan)


def test_placement_errors_are_named_before_loading(micro, tmp_path):
    from workbench.commands import placement_options
    from argparse import Namespace

    model, _, _ = micro
    with pytest.raises(ModelLoadError, match=r"do not fit max_memory .*--offload-folder"):
        load_model("organism:micro", max_memory={"cpu": _budget(model, 0.6)})
    with pytest.raises(ModelLoadError, match="give one of them"):
        load_model("organism:micro", device="cpu", device_map="auto")
    ok = placement_options(Namespace(device=None, max_memory="0=20GiB, 1=20GiB,cpu=64GiB", offload_folder=None))
    assert ok == {"max_memory": {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}, "offload_folder": None}
    for bad, msg in [("gpu0=1G", "is not DEVICE=SIZE"), ("0=lots", "is not DEVICE=SIZE"), ("cpu", "is not DEVICE=SIZE")]:
        with pytest.raises(ConfigError, match=msg):
            placement_options(Namespace(device=None, max_memory=bad, offload_folder=None))
    with pytest.raises(ConfigError, match="--offload-folder needs --max-memory"):
        placement_options(Namespace(device=None, max_memory=None, offload_folder=str(tmp_path)))
    with pytest.raises(ConfigError, match="give one of them"):
        placement_options(Namespace(device="cpu", max_memory="cpu=1GiB", offload_folder=None))


def test_trace_command_spreads_the_model_and_logs_where_each_layer_runs(micro, tmp_path):
    import json

    from workbench.cli import main

    model, _, _ = micro
    out = tmp_path / "trace"
    rc = main(["trace", "--model", "organism:micro", "--facts", "forget", "--limit", "1", "--samples", "2",
               "--kinds", "mlp", "--formats", "none", "--n-boot", "20", "--max-memory", f"cpu={_budget(model, 0.6)}",
               "--offload-folder", str(tmp_path / "offload"), "--out", str(out)])
    assert rc == 0
    start = json.loads((out / "trace.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["layer_devices"] == ["cpu", "disk", "disk", "disk"]
