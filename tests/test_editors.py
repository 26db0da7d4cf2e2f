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
from workbench.editors.simnpo import SimNPO, simnpo_loss
from workbench.editors.undial import adjusted_logits, answer_positions, undial_loss
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


def test_simnpo_loss_by_hand():
    beta, gamma = 2.5, 0.5
    logp, length = torch.tensor([-2.0, -6.0]), torch.tensor([4.0, 3.0])

    def log_sigmoid(x):
        return -math.log(1 + math.exp(-x))

    want = -(2 / beta) * (log_sigmoid(beta * 2 / 4 - gamma) + log_sigmoid(beta * 6 / 3 - gamma)) / 2
    assert simnpo_loss(logp, length, beta, gamma).item() == pytest.approx(want, rel=1e-6)
    # a certain answer (log p = 0) without margin: (2/beta) log 2, as NPO at its reference
    assert simnpo_loss(torch.tensor([0.0]), torch.tensor([5.0]), beta).item() == pytest.approx(2 / beta * math.log(2))
    # the reward is per token: twice the answer at the same mean log-prob gives the same loss (NPO's would change)
    assert simnpo_loss(2 * logp, 2 * length, beta, gamma).item() == pytest.approx(want, rel=1e-6)
    # d loss / d log p = (2/|y|) sigmoid((beta/|y|) log p + gamma) / batch: positive, so descent lowers log p
    x = logp.clone().requires_grad_(True)
    simnpo_loss(x, length, beta, gamma).backward()
    for i in range(2):
        s = 1 / (1 + math.exp(-(beta / length[i].item() * logp[i].item() + gamma)))
        assert x.grad[i].item() == pytest.approx(2 / length[i].item() * s / 2, rel=1e-5)


def test_simnpo_counts_only_answer_tokens():
    """SimNPO's |y| is the number of answer tokens in the mask, not the padded width."""
    cfg = resolve_config("simnpo", overrides={"beta": 3.0, "gamma": 0.2, "forget_weight": 0.5})
    editor = SimNPO(None, cfg, [0])
    nll = torch.tensor([[0.5, 1.5, 0.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    stats = {}
    got = editor.forget_term(None, nll, mask, stats).item()
    want = 0.5 * simnpo_loss(torch.tensor([-2.0, -2.0]), torch.tensor([2.0, 1.0]), 3.0, 0.2).item()
    assert got == pytest.approx(want, rel=1e-6)
    assert stats["mean_token_logp"] == pytest.approx((-1.0 - 2.0) / 2)


def test_sam_npo_applies_the_npo_gradient_of_the_perturbed_weights(tiny_olmo, micro):
    """sam-npo's loss: value NPO(theta + delta) + w * CE(retain; theta), gradient the NPO gradient at theta + delta
    (delta = rho * g / |g|, g the NPO gradient at theta) plus the retain gradient at theta; the weights are the
    same after the loss as before it. Checked against the same sums done by hand on a perturbed copy."""
    from workbench.editors.gradient import answer_nll
    from workbench.editors.loop import collate, encode
    from workbench.editors.sam_npo import SamNPO, sharpness_direction

    model, tok = copy.deepcopy(tiny_olmo[0]).train(), tiny_olmo[1]
    corpus = micro[2]
    cfg = resolve_config("sam-npo", overrides={"sam_rho": 0.5, "retain_weight": 2.0})
    batch = {"forget": collate(encode(tok, corpus.forget[:3], 64), tok.pad_token_id),
             "retain": collate(encode(tok, corpus.retain[:3], 64), tok.pad_token_id)}
    ref_logp = torch.tensor([-5.0, -6.0, -7.0])

    class FixedReference:
        def get(self, split, b):
            return ref_logp

    editor = SamNPO(model, cfg, [0])
    editor.ref = FixedReference()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    loss, stats = editor.loss(batch)
    got = torch.autograd.grad(loss, params)
    assert all(torch.equal(p, b) for p, b in zip(params, before))

    def npo_at(m):
        return npo_loss(sequence_logprob(*answer_nll(m, batch["forget"])), ref_logp, cfg.npo_beta)

    delta = sharpness_direction(list(torch.autograd.grad(npo_at(model), params)), 0.5)
    assert torch.sqrt(sum((d ** 2).sum() for d in delta)).item() == pytest.approx(0.5, rel=1e-5)
    far = copy.deepcopy(model)
    far_params = [p for p in far.parameters() if p.requires_grad]
    with torch.no_grad():
        for p, d in zip(far_params, delta):
            p.add_(d)
    far_loss = npo_at(far)
    far_grad = torch.autograd.grad(far_loss, far_params)
    retain = mean_ce(*answer_nll(model, batch["retain"]))
    retain_grad = torch.autograd.grad(retain, params)
    assert loss.item() == pytest.approx(far_loss.item() + 2.0 * retain.item(), rel=1e-5)
    assert stats["sharpness"] > 0   # the perturbation climbs the forget term
    for g, fg, rg in zip(got, far_grad, retain_grad):
        torch.testing.assert_close(g, fg + 2.0 * rg, rtol=1e-4, atol=1e-6)


def test_answer_positions_packs_the_answer_predictions():
    vocab = 3
    logits = torch.arange(2 * 5 * vocab, dtype=torch.float).reshape(2, 5, vocab)
    # row 0: answer tokens at positions 2..4 (predicted from positions 1..3); row 1: answer at 4 (from 3), padding
    labels = torch.tensor([[-100, -100, 2, 0, 1], [-100, -100, -100, -100, 2]])
    picked, target, mask = answer_positions(logits, labels)
    assert picked.shape == (2, 3, vocab)
    assert torch.equal(picked[0], logits[0, 1:4]) and torch.equal(picked[1, 0], logits[1, 3])
    assert target.tolist() == [[2, 0, 1], [2, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def test_undial_target_and_loss_by_hand():
    gamma = 4.0
    ref = torch.tensor([[[1.0, 2.0, -1.0], [0.5, 0.0, 3.0]]])       # [1, 2, vocab 3]
    target = torch.tensor([[1, 2]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    adj = adjusted_logits(ref, target, gamma)
    assert torch.equal(ref - adj, torch.tensor([[[0.0, gamma, 0.0], [0.0, 0.0, gamma]]]))  # exactly gamma, target only
    # zero exactly at the adjusted teacher (softmax ignores a shift of all logits), positive at the teacher itself
    assert undial_loss(adj + 7.0, ref, target, mask, gamma).item() == pytest.approx(0.0, abs=1e-6)
    assert undial_loss(ref, ref, target, mask, gamma).item() > 0.1
    assert undial_loss(ref, ref, target, mask, 0.0).item() == pytest.approx(0.0, abs=1e-6)
    # vocab 2, teacher uniform, target 0 lowered by log 3: q = (1/4, 3/4); student uniform: KL(q || (1/2, 1/2))
    want = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    zero = torch.zeros(1, 1, 2)
    got = undial_loss(zero, zero, torch.tensor([[0]]), torch.ones(1, 1, dtype=torch.bool), math.log(3.0))
    assert got.item() == pytest.approx(want, rel=1e-5)
    # masked positions do not count
    assert undial_loss(ref, ref, target, torch.tensor([[False, False]]), gamma).item() == 0.0


@pytest.mark.parametrize("gamma", [0.0, 5.0])
def test_undial_descent_lowers_only_the_target(gamma):
    """Gradient descent on UNDIAL's loss, from the teacher: with gamma = 0 there is no gradient (nothing to unlearn);
    with gamma > 0 the target token's probability falls to the adjusted teacher's and the other tokens keep their
    relative odds."""
    ref = torch.tensor([[[6.0, 1.0, 0.0, -1.0]]])          # the teacher is sure of token 0
    target, mask = torch.tensor([[0]]), torch.ones(1, 1, dtype=torch.bool)
    student = ref.clone().requires_grad_(True)
    opt = torch.optim.SGD([student], lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        undial_loss(student, ref, target, mask, gamma).backward()
        opt.step()
    p, p_ref = torch.softmax(student.detach(), -1)[0, 0], torch.softmax(ref, -1)[0, 0]
    if gamma == 0:
        assert torch.allclose(student.detach(), ref, atol=1e-6)
        return
    assert p[0] < 0.5 * p_ref[0]
    assert torch.allclose(p[1:] / p[1:].sum(), p_ref[1:] / p_ref[1:].sum(), atol=1e-4)
    assert torch.allclose(p, torch.softmax(adjusted_logits(ref, target, gamma), -1)[0, 0], atol=1e-4)

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
    assert list(EDITORS) == ["rmu", "adaptive-rmu", "joint", "ga", "gd", "graddiff", "npo", "simnpo", "undial",
                             "sequential", "undo", "repnoise", "sam-npo"]
    for method, cls in EDITORS.items():  # every method's defaults and every preset resolve to its own config
        assert cls.name == method
        for preset in (None, *cls.presets):
            assert isinstance(resolve_config(method, preset=preset), cls.Config), (method, preset)
    assert resolve_config("rmu", preset="wmdp").steering_coef == 20.0
    assert resolve_config("adaptive-rmu", preset="snuffleupagus-7b").beta == 5.0
    assert resolve_config("joint", preset="sha256").grad_accum == 10
    simnpo = resolve_config("simnpo", preset="open-unlearning")   # the authors' TOFU forget10 settings
    assert (simnpo.beta, simnpo.gamma, simnpo.forget_weight, simnpo.retain_weight) == (4.5, 0.0, 0.125, 1.0)
    undial = resolve_config("undial", preset="open-unlearning")
    assert (undial.gamma, undial.retain_weight, undial.lr, undial.params) == (10.0, 0.0, 1e-4, ("*",))
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
    ("npo", None), ("simnpo", None), ("undial", None), ("sequential", None), ("repnoise", None),
    ("sam-npo", None),
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


@pytest.mark.parametrize("cache", [True, False])
def test_undial_reference_is_aligned_with_the_student(micro, tmp_path, cache):
    """At the first step the student is the frozen model, so with gamma = 0 UNDIAL's loss is 0 (nothing to unlearn)
    and with gamma > 0 it is the same whether the frozen logits come from the cache or from a frozen copy: a cache
    misaligned with the answer positions would give neither."""
    import json

    model0, tok, corpus = micro
    first = {}
    for gamma in (0.0, 10.0):
        config = {"gamma": gamma, "max_steps": 1, "cache_reference": cache}
        out = unlearn(copy.deepcopy(model0), tok, corpus, "undial", [0, 1, 2], config, tmp_path / f"g{gamma}")
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        first[gamma] = next(r for r in log if r["event"] == "step")["undial_loss"]
    assert first[0.0] == pytest.approx(0.0, abs=1e-5)
    # the micro organism is sure of its answers: lowering the answer logit by 10 moves most of the mass away
    assert first[10.0] > 1.0
