"""Editors: each loss on hand-computed toy cases, bad configs fail before training, frozen params untouched,
hooks removed, and one end-to-end run per editor on the micro organism (forget EM <= 0.2, retain >= 0.8 x start)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from workbench.data.records import questions
from workbench.editors import EDITORS, Stage, resolve_config, unlearn
from workbench.editors.gradient import mean_ce, sequence_logprob, token_nll
from workbench.editors.joint import adaptive_m, answer_kl
from workbench.editors.npo import npo_loss
from workbench.editors.params import select_parameters
from workbench.editors.rmu import control_vector, masked_mse
from workbench.errors import ConfigError, EditError
from workbench.generation import qa_accuracy

# ------------------------------------------------------------------ toy losses, computed by hand

def test_masked_mse_ignores_padding():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # [1, 3, 2], last token is padding
    b = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: (1 + 4)/2 = 2.5 ; token 1: (4 + 9)/2 = 6.5 ; mean = 4.5
    assert masked_mse(a, b, mask).item() == pytest.approx(4.5)


def test_control_vector_is_fixed_unit_and_per_task():
    u1, u1b, u2 = control_vector("Task1", 16, 0), control_vector("Task1", 16, 0), control_vector("Task2", 16, 0)
    assert torch.equal(u1, u1b)
    assert u1.norm().item() == pytest.approx(1.0)
    assert (u1 >= 0).all()  # uniform[0,1) before normalising
    assert not torch.allclose(u1, u2)


def test_token_nll_and_mean_ce_by_hand():
    # vocab 2, positions 3; logits at position 0 predict token 1 (answer), position 1 predicts token 0 (answer)
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, 0]])
    nll, mask = token_nll(logits, labels)
    assert mask.tolist() == [[True, True]]
    # p(1 | pos0) = 1/2 ; p(0 | pos1) = 3/4
    assert nll[0, 0].item() == pytest.approx(math.log(2))
    assert nll[0, 1].item() == pytest.approx(-math.log(0.75))
    assert mean_ce(nll, mask).item() == pytest.approx((math.log(2) - math.log(0.75)) / 2)
    assert mean_ce(nll, mask, floor=0.5).item() == pytest.approx((0.5 - math.log(0.75)) / 2)
    assert sequence_logprob(nll, mask).item() == pytest.approx(math.log(0.5) + math.log(0.75))


def test_npo_loss_by_hand():
    beta = 0.1
    # equal to reference: (2/beta) log 2
    assert npo_loss(torch.tensor([-3.0]), torch.tensor([-3.0]), beta).item() == pytest.approx(2 / beta * math.log(2))
    # logp - ref = -10: -(2/b) log sigmoid(1) = (2/b) log(1 + e^-1)
    assert npo_loss(torch.tensor([-13.0]), torch.tensor([-3.0]), beta).item() == pytest.approx(
        2 / beta * math.log(1 + math.exp(-1)), rel=1e-5)


def test_adaptive_m_rule():
    assert adaptive_m(5.0, None) == 1.2                # epoch 0: no baseline yet
    assert adaptive_m(0.9, 1.0) == 1.2                 # retain loss below baseline
    assert adaptive_m(1.5, 1.0) == round(0.3 * 6 ** 0.5 + 0.8, 1) == 1.5
    assert adaptive_m(2.0, 1.0) == 2.3                 # 0.3*6 + 0.8 = 2.6 -> clipped to m_max
    assert adaptive_m(2.0, 1.0, m_max=2.8) == 2.6
    assert adaptive_m(1.1, 1.0) == 1.2                 # 0.3*6^0.1+0.8 = 1.16 -> 1.2 (floor)


def test_answer_kl_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])              # model: uniform
    ref = torch.log(torch.tensor([[[0.75, 0.25], [0.5, 0.5]]]))      # reference at position 0
    labels = torch.tensor([[-100, 1]])
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert answer_kl(logits, ref, labels).item() == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ configs and bad inputs

def test_presets_resolve_and_registry_complete():
    assert list(EDITORS) == ["rmu", "adaptive-rmu", "joint", "ga", "gd", "graddiff", "npo", "sequential"]
    for method, cls in EDITORS.items():  # every method's defaults and every preset resolve to its own config
        assert cls.name == method
        for preset in (None, *cls.presets):
            assert isinstance(resolve_config(method, preset=preset), cls.Config), (method, preset)
    assert resolve_config("rmu", preset="wmdp").steering_coef == 20.0
    assert resolve_config("adaptive-rmu", preset="snuffleupagus-7b").beta == 5.0
    assert resolve_config("joint", preset="sha256").grad_accum == 10
    seq = resolve_config("sequential", preset="cyber-7b")
    assert [s.method for s in seq.stages] == ["ga", "gd", "ga"] and seq.stages[1].lr == 2e-6
    cfg = resolve_config("sequential", overrides={"stages": [{"method": "npo", "epochs": 1, "lr": 1e-3}]})
    assert cfg.stages == (Stage("npo", 1, 1e-3),)


def test_config_file_precedence_and_errors(tmp_path):
    good = tmp_path / "rmu.yaml"
    good.write_text("method: rmu\nconfig: {lr: 0.5, alpha: 7}\n")
    cfg = resolve_config("rmu", preset="wmdp", file=good, overrides={"alpha": 3.0})
    assert (cfg.lr, cfg.alpha, cfg.steering_coef) == (0.5, 3.0, 20.0)  # file over preset, overrides over file
    (tmp_path / "list.yaml").write_text("- lr\n- 0.1\n")
    (tmp_path / "broken.json").write_text("{lr: ")
    for name, words in (("missing.yaml", "does not exist"), ("list.yaml", "must be a mapping"),
                        ("broken.json", "could not be parsed")):
        with pytest.raises(ConfigError, match=f"editor config file .*{name}.* {words}"):
            resolve_config("rmu", file=tmp_path / name)


@pytest.mark.parametrize("kwargs, err, words", [
    (dict(method="nope"), ConfigError, "unknown unlearning method"),
    (dict(layers=[]), EditError, "empty"),
    (dict(layers=[0, 7]), ConfigError, "out of range"),
    (dict(config={"params": ["model.layers.{layer}.mlp.nonexistent"]}), EditError, "matches no parameter"),
    (dict(config={"alpah": 3}), ConfigError, "unknown config field"),
    (dict(config={"freeze_mode": "bogus"}, method="joint"), ConfigError, "freeze_mode"),
    (dict(config={"stages": [{"method": "rmu", "epochs": 1, "lr": 1e-3}]}, method="sequential"), ConfigError, "stage"),
    (dict(empty_forget=True), EditError, "non-empty forget"),
])
def test_bad_configs_fail_before_training(micro, tmp_path, kwargs, err, words):
    model, tok, corpus = micro
    model = copy.deepcopy(model)
    before = {n: p.clone() for n, p in model.named_parameters()}
    if kwargs.pop("empty_forget", False):
        corpus = copy.copy(corpus)
        corpus.forget = []
    args = dict(method="rmu", layers=[0, 1, 2], config=None) | kwargs
    with pytest.raises(err, match=words):
        unlearn(model, tok, corpus, args["method"], args["layers"], args["config"], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.work").exists()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_refuses_existing_or_source_dir(micro, tmp_path):
    model, tok, corpus = micro
    (tmp_path / "exists").mkdir()
    with pytest.raises(EditError, match="already exists"):
        unlearn(copy.deepcopy(model), tok, corpus, "rmu", [0, 1, 2], None, tmp_path / "exists")
    with pytest.raises(EditError, match="source model"):
        unlearn(copy.deepcopy(model), tok, corpus, "rmu", [0, 1, 2], None, tmp_path / "src" / "edited",
                source=tmp_path / "src")


def test_param_patterns_by_name(micro):
    model = micro[0]
    got = select_parameters(model, ["model.layers.{layer}.mlp.down_proj.weight"], [1, 3])
    assert list(got) == ["model.layers.1.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight"]
    attn = select_parameters(model, ["model.layers.{layer}.self_attn.*"], [0])
    assert sorted(attn) == [f"model.layers.0.self_attn.{x}_proj.weight" for x in "koqv"]


# ------------------------------------------------------------------ end to end on micro

def _all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("method, config", [
    pytest.param("rmu", None, marks=pytest.mark.slow), ("adaptive-rmu", None),
    pytest.param("joint", None, marks=pytest.mark.slow), ("gd", None), ("graddiff", None),
    ("npo", None), ("sequential", None),
])
def test_editor_meets_targets_on_micro(micro, tmp_path, method, config):
    model0, tok, corpus = micro
    model = copy.deepcopy(model0)
    hooks_before = _all_hooks(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    start_f = qa_accuracy(model, tok, questions(corpus.forget))
    start_r = qa_accuracy(model, tok, questions(corpus.retain))
    out = unlearn(model, tok, corpus, method, [0, 1, 2], config, tmp_path / "edited")
    assert _all_hooks(model) == hooks_before == 0
    import json

    meta = json.loads((out / "unlearn.json").read_text())
    trained = set(meta["trainable"])
    after = dict(model.named_parameters())
    for n, p in before.items():
        if n not in trained:
            assert torch.equal(p, after[n]), f"frozen parameter {n} changed"
    assert any(not torch.equal(before[n], after[n]) for n in trained)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    f = qa_accuracy(model, tok, questions(corpus.forget))
    r = qa_accuracy(model, tok, questions(corpus.retain))
    assert f <= 0.2, f"{method}: forget EM {f} (start {start_f})"
    assert r >= 0.8 * start_r, f"{method}: retain EM {r} (start {start_r})"


def test_plain_ga_takes_retain_down_with_forget(micro, tmp_path):
    """Plain gradient ascent, the one editor without a retain term, misses the targets on micro (README): ascent on
    the forget answers lowers the retain answers with them, so no model of the run (evaluated at every step, the best
    one kept) reaches forget EM <= 0.2 with retain >= 0.8 x start."""
    import json

    model0, tok, corpus = micro
    model = copy.deepcopy(model0)
    start_f = qa_accuracy(model, tok, questions(corpus.forget))
    start_r = qa_accuracy(model, tok, questions(corpus.retain))
    out = unlearn(model, tok, corpus, "ga", [0, 1, 2], None, tmp_path / "edited")
    evals = json.loads((out / "unlearn.json").read_text())["summary"]["evals"]
    assert len(evals) > 1, "ga's defaults evaluate at every step"
    assert not any(e["forget_qa_em"] <= 0.2 and e["retain_qa_em"] >= 0.8 * start_r for e in evals), evals
    f = qa_accuracy(model, tok, questions(corpus.forget))
    r = qa_accuracy(model, tok, questions(corpus.retain))
    assert f < start_f, f"ga: forget EM {f} (start {start_f}): the ascent unlearnt nothing"
    assert r < 0.8 * start_r, f"ga: retain EM {r} (start {start_r}) kept without a retain term"
