"""Recovery attacks (evaluation/attacks): each one's planted check, the worst-case grid, UDS, config errors and the
report."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from workbench.errors import ConfigError
from workbench.evaluation.attacks import AttackConfig, grid, parse_attacks, run_attacks
from workbench.evaluation.attacks import depth, lens, quantize, relearn
from workbench.evaluation.attacks.recall import encode_qa, score


def _noised(model, layer: int, sd: float, seed: int = 0):
    """A copy of `model` with Gaussian noise added to one layer's MLP weights."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.model.layers[layer].mlp.parameters():
            p.add_(torch.randn(p.shape, generator=g) * sd)
    return out


def _hidden(model, tok, corpus, layer: int = 3, steps: int = 80, lr: float = 1e-3, floor: float = 3.0):
    """A copy whose forget answers are hidden by gradient ascent on one late layer's MLP alone: the facts stay in
    the layers below, a shallow edit that relearning can undo."""
    from workbench.editors.gradient import answer_nll, mean_ce
    from workbench.editors.loop import collate

    out = copy.deepcopy(model)
    opt = torch.optim.Adam(out.model.layers[layer].mlp.parameters(), lr=lr)
    batch = collate(encode_qa(tok, corpus.forget), tok.pad_token_id)
    for _ in range(steps):
        opt.zero_grad()
        (-mean_ce(*answer_nll(out, batch), floor)).backward()
        opt.step()
    return out.eval()


def _mix(a, b, t: float):
    """A model whose every weight is (1 - t) * a's + t * b's."""
    out = copy.deepcopy(a)
    with torch.no_grad():
        for p, q in zip(out.parameters(), b.parameters()):
            p.mul_(1 - t).add_(q, alpha=t)
    return out.eval()


# --- scoring ----------------------------------------------------------------------------------------------
def test_teacher_forced_recall_equals_greedy_generation(micro, micro_retain):
    """The attacks' one-forward exact match is the report's greedy-generation exact match, record for record."""
    from workbench.data.records import questions
    from workbench.generation import exact_match, greedy_generate

    model, tok, corpus = micro
    half_broken = _noised(model, 1, 0.1)
    for m in (model, micro_retain[0], half_broken):
        for split in ("forget", "retain"):
            qa = questions(corpus.split(split))
            got = score(m, tok, encode_qa(tok, qa)).exact.tolist()
            want = [exact_match(p, r.output) for p, r in zip(greedy_generate(m, tok, [r.input for r in qa], 32), qa)]
            assert got == want, split
    assert 0.1 < score(half_broken, tok, encode_qa(tok, corpus.forget)).recall < 0.9  # a mixed case was checked


# --- the grid ------------------------------------------------------------------------------------------------
def test_grid_keeps_settings_the_twin_does_not_learn_from_and_reports_the_worst():
    """Hand-made recoveries: a setting where the twin recovers more than the bound is inadmissible, however much the
    edited model recovers there; the worst case is the largest edited-minus-twin gap among the rest."""
    result = {"per_model": {
        "original": {"by_setting": {"weak": 0.0, "mid": 0.0, "strong": 0.0}},
        "edited": {"by_setting": {"weak": 0.02, "mid": 0.30, "strong": 0.90}},
        "twin": {"by_setting": {"weak": 0.00, "mid": 0.05, "strong": 0.40}}}}
    out = grid.judge(copy.deepcopy(result), admissible=0.05)
    assert out["settings"] == ["weak", "mid", "strong"] and out["admissible"] == [True, True, False]
    assert out["per_model"]["edited"]["recovery"] == 0.30 and out["per_model"]["edited"]["setting"] == "mid"
    assert out["worst"]["setting"] == "mid" and out["worst"]["gap"] == pytest.approx(0.25)
    # a stricter bound leaves only the weak setting
    strict = grid.judge(copy.deepcopy(result), admissible=0.01)
    assert strict["admissible"] == [True, False, False] and strict["worst"]["gap"] == pytest.approx(0.02)
    # without a twin every setting counts, against the ideal 0
    no_twin = {"per_model": {k: v for k, v in copy.deepcopy(result)["per_model"].items() if k != "twin"}}
    assert grid.judge(no_twin)["worst"] == {"setting": "strong", "edited": 0.9, "reference": 0.0, "gap": 0.9,
                                             "against": "ideal"}


# --- quantize -----------------------------------------------------------------------------------------------
def test_quantize_weight_levels_and_error():
    w = torch.randn(5, 300)
    q = quantize.quantize_weight(w, bits=4, group=128)
    step = quantize.step_size(w, 4, 128)
    assert (q - w).abs().le(step / 2 + 1e-6).all()                     # nearest level
    for s in (0, 128, 256):                                             # groups 128, 128 and a last one of 44
        for row in q[:, s:s + 128]:
            assert len(row.unique()) <= 16
    assert torch.equal(quantize.quantize_weight(q, 4, 128), q)          # levels are fixed points
    with pytest.raises(ConfigError, match="bits"):
        quantize.quantize_weight(w, 0, 128)


def _grid_interior(w, group):
    """True for weights that are neither the min nor the max of their group (moving them keeps the grid)."""
    keep = torch.ones_like(w, dtype=torch.bool)
    for s in range(0, w.shape[1], group):
        g = w[:, s:s + group]
        keep[:, s:s + group] = (g != g.max(-1, keepdim=True).values) & (g != g.min(-1, keepdim=True).values)
    return keep


def _perturb_against_forget(model, tok, corpus, scale: float, group: int = 128, iters: int = 20):
    """model + a perturbation of every linear weight of at most `scale` x its 4-bit step, pushed up the forget
    answers' loss by projected sign-gradient steps; each group's min and max stay put."""
    from workbench.editors.gradient import answer_nll, mean_ce
    from workbench.editors.loop import collate

    out = copy.deepcopy(model)
    lin = quantize.linear_layers(out)
    base = {n: m.weight.detach().clone() for n, m in lin.items()}
    bound = {n: scale * quantize.step_size(w, 4, group) for n, w in base.items()}
    movable = {n: _grid_interior(w, group) for n, w in base.items()} if scale < 0.5 else None
    batch = collate(encode_qa(tok, corpus.forget), tok.pad_token_id)
    for _ in range(iters):
        out.zero_grad()
        mean_ce(*answer_nll(out, batch)).backward()
        with torch.no_grad():
            for n, m in lin.items():
                d = (m.weight + bound[n] / 4 * m.weight.grad.sign() - base[n]).clamp(-bound[n], bound[n])
                m.weight.copy_(base[n] + (d * movable[n] if movable else d))
    return out.eval()


def test_quantize_erases_a_small_edit_and_keeps_a_large_one(micro):
    """Planted: an 'unlearning' edit far below the 4-bit step (a quarter of it) that wipes the forget answers is
    rounded away, so the attack recovers the original's answers; one far above the step (2 steps) survives."""
    model, tok, corpus = micro
    original = quantize.quantized(model, 4)           # on the 4-bit grid: what rounding must return to
    forget = encode_qa(tok, corpus.forget)
    assert score(original, tok, forget).recall == 1.0
    cfg = quantize.QuantizeConfig(bits=(8, 4), groups=(128,))

    small = _perturb_against_forget(original, tok, corpus, 0.25)
    res = quantize.run_model(small, tok, corpus, cfg)
    assert res["before"]["forget"] <= 0.1             # the edit hid the answers ...
    assert res["after"]["4-bit, group 128"]["forget"] == 1.0   # ... and 4-bit rounding brings every one back
    assert res["by_setting"]["4-bit, group 128"] >= 0.9
    assert res["after"]["8-bit, group 128"]["forget"] <= 0.1   # 8 bits are fine enough to keep the edit
    for a, b in zip(quantize.linear_layers(quantize.quantized(small, 4)).values(),
                    quantize.linear_layers(original).values()):
        assert torch.allclose(a.weight, b.weight, atol=1e-6)

    large = _perturb_against_forget(original, tok, corpus, 2.0)
    res = quantize.run_model(large, tok, corpus, cfg)
    assert res["before"]["forget"] <= 0.1
    assert max(res["by_setting"].values()) <= 0.1


# --- lens ----------------------------------------------------------------------------------------------------
def _biased(model, tok, corpus):
    """A copy whose unembedding gets a large negative bias on every forget answer token: hidden at the output."""
    biased = copy.deepcopy(model)
    W = biased.lm_head.weight
    head = torch.nn.Linear(W.shape[1], W.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(W)
        head.bias.zero_()
        for e in encode_qa(tok, corpus.forget):
            head.bias[e.ids[e.n_prompt:-1]] = -1e4   # every answer token (not EOS)
    biased.lm_head = head
    return biased


def test_lens_reads_through_an_unembedding_bias(micro):
    """Planted: an edit that only adds a large negative bias on the answer tokens in the unembedding hides every
    answer at the output, but every layer's own and original-decoder lens and probe read exactly what the
    original's do."""
    model, tok, corpus = micro
    cfg = lens.LensConfig(tuned_steps=20)
    orig = lens.run_model(model, tok, corpus, cfg, model)
    hid = lens.run_model(_biased(model, tok, corpus), tok, corpus, cfg, model)
    assert orig["before"] == 1.0 and hid["before"] == 0.0
    for name in ("lens_recall", "lens_original_recall", "probe_recall", "lens_tokens"):
        assert hid["metrics"][name] == pytest.approx(orig["metrics"][name], abs=1e-6), name
    assert max(hid["by_setting"].values()) == 1.0 and max(orig["by_setting"].values()) == 0.0
    assert orig["metrics"]["lens_recall"][-1] == 1.0   # the last layer's lens is the model's own output


def test_original_decoder_sees_through_an_edited_decoder(micro):
    """Planted: permuting the rows of the edited model's unembedding hides the answers from its own lens at every
    layer, but the original's decoder still reads them from the untouched residual stream."""
    model, tok, corpus = micro
    scrambled = copy.deepcopy(model)
    with torch.no_grad():
        W = scrambled.lm_head.weight
        W.copy_(W[torch.randperm(W.shape[0], generator=torch.Generator().manual_seed(0))])
    res = lens.run_model(scrambled, tok, corpus, lens.LensConfig(tuned_steps=0), model)
    assert res["before"] <= 0.1 and max(res["metrics"]["lens_recall"]) <= 0.1
    assert res["metrics"]["lens_original_recall"][-1] == 1.0


def test_tuned_lens_fits_the_models_own_output(micro):
    """The tuned lens at the last layer starts at the model's own decoder and, trained, still reads what the model
    outputs; at an early layer it reads the retain answers better than the plain lens."""
    model, tok, corpus = micro
    retain = lens.positions(model, tok, corpus.retain)
    A, b = lens.fit_tuned(model, retain.resid[-1], retain.logits, steps=30, lr=1e-2)
    last = lens.unembed(model, retain.resid[-1] + retain.resid[-1] @ A + b)
    assert lens.read(retain, last) == pytest.approx(lens.read(retain, retain.logits), abs=0.02)
    A0, b0 = lens.fit_tuned(model, retain.resid[0], retain.logits, steps=150, lr=1e-2)
    plain = lens.read(retain, lens.unembed(model, retain.resid[0]))[1]
    tuned = lens.read(retain, lens.unembed(model, retain.resid[0] + retain.resid[0] @ A0 + b0))[1]
    assert tuned > plain + 0.1


def test_lens_twin_decodes_nothing_anywhere(micro, micro_retain):
    model, tok, corpus = micro
    res = lens.run_model(micro_retain[0], tok, corpus, lens.LensConfig(tuned_steps=50), model)
    assert max(max(v) for k, v in res["metrics"].items() if k.endswith("recall")) <= 0.1
    assert max(res["by_setting"].values()) <= 0.05


# --- relearn ---------------------------------------------------------------------------------------------------
def test_relearn_grid_twin_stays_at_chance_and_a_masked_model_comes_back(micro, micro_retain):
    """Planted: fine-tuning the twin on half the forget facts leaves the other half where it was (at chance) at
    every admissible setting; a model whose answers are hidden by its last layer's MLP gets the other half back."""
    model, tok, corpus = micro
    cfg = relearn.RelearnConfig(lrs=(1e-3,), steps=(10, 30), scopes=("all",))
    masked = _hidden(model, tok, corpus)
    fingerprint = [p.clone() for p in masked.parameters()]
    res = grid.judge(relearn.run({"edited": (masked, tok), "twin": (micro_retain[0], tok)}, corpus, cfg))
    twin, edited = res["per_model"]["twin"], res["per_model"]["edited"]
    assert twin["n_train"] + twin["n_measured"] == len(encode_qa(tok, corpus.forget))
    assert len(twin["curves"]["all lr 0.001"]) == 3 and res["steps"] == [0, 10, 30]
    assert twin["before"] <= 0.1 and all(res["admissible"])
    assert edited["before"] <= 0.1 and edited["recovery"] >= 0.15 and res["worst"]["gap"] >= 0.15
    # the attack fine-tuned a copy: the model under attack is untouched
    assert all(torch.equal(a, b) for a, b in zip(fingerprint, masked.parameters()))


def test_relearn_edited_scope_trains_only_those_layers(micro):
    model, tok, corpus = micro
    params = relearn.trainable(model, "edited", [1, 2])
    names = {n for n, p in model.named_parameters() if any(p is q for q in params)}
    assert names and all(n.startswith(("model.layers.1.", "model.layers.2.")) for n in names)
    assert len(relearn.trainable(model, "all", [1])) == len(list(model.parameters()))


def test_only_the_strongest_admissible_relearning_finds_a_deeply_hidden_fact(micro, micro_retain):
    """Planted: an edit that hides the answers in its last layer, deep enough that weak relearning (lr 1e-4, 5 steps;
    lr 1e-3, 5 steps) brings none back, while the strongest admissible setting of the grid does. The grid finds it
    and the verdict's relearn line fails; judged at the weak setting alone, the same edit would pass."""
    from workbench.evaluation.verdict import attack_criteria

    model, tok, corpus = micro
    hidden = _hidden(model, tok, corpus)
    cfg = relearn.RelearnConfig(lrs=(1e-4, 1e-3), steps=(5, 30), scopes=("all",))
    res = grid.judge(relearn.run({"original": (model, tok), "edited": (hidden, tok),
                                  "twin": (micro_retain[0], tok)}, corpus, cfg))
    by = res["per_model"]["edited"]["by_setting"]
    assert by["all lr 0.0001, 5 steps"] <= 0.05 and by["all lr 0.001, 5 steps"] <= 0.05, "weak settings recover nothing"
    assert res["worst"]["setting"] == "all lr 0.001, 30 steps" and res["worst"]["gap"] > 0.15
    line = attack_criteria({"attacks": ["relearn"], "relearn": res}, tol=0.05)[0]
    assert line.passed is False
    weak_only = grid.judge(relearn.run({"edited": (hidden, tok), "twin": (micro_retain[0], tok)}, corpus,
                                       relearn.RelearnConfig(lrs=(1e-4,), steps=(5,), scopes=("all",))))
    assert attack_criteria({"attacks": ["relearn"], "relearn": weak_only}, tol=0.05)[0].passed is True


def test_relearn_split_is_seeded_and_disjoint(micro):
    _, _, corpus = micro
    a, b = relearn.split_halves(corpus.forget, 0)
    assert not {r.id for r in a} & {r.id for r in b}
    assert [r.id for r in a] == [r.id for r in relearn.split_halves(corpus.forget, 0)[0]]
    assert [r.id for r in a] != [r.id for r in relearn.split_halves(corpus.forget, 1)[0]]


# --- depth: the Unlearning Depth Score ------------------------------------------------------------------------
def test_uds_formula_on_hand_made_drops():
    d1 = np.array([[1.0, 0.5, 0.01], [0.02, 0.0, 0.04]])     # fact 2: no layer above tau
    d2 = np.array([[0.5, 1.0, 5.0], [0.02, 0.0, 0.04]])
    per = depth.uds_per_fact(d1, d2, tau=0.05)
    assert per[0] == pytest.approx((1.0 * 0.5 + 0.5 * 1.0) / 1.5)   # clip(2, 0, 1) = 1; layer 3 under tau
    assert np.isnan(per[1])
    assert depth.uds_per_fact(d1, -d2, 0.05)[0] == 0.0           # a negative drop clips to 0


def test_uds_twin_scores_one_original_zero_and_a_mix_in_between(micro, micro_retain, tmp_path, monkeypatch):
    """The twin as the stage-2 source gives UDS 1, the original 0, and a model half-way between their weights a
    value in between; stage 1 is cached and a second run reads it."""
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    model, tok, corpus = micro
    twin = micro_retain[0]
    models = {"original": (model, tok), "edited": (_mix(model, twin, 0.5), tok), "twin": (twin, tok)}
    cfg = depth.DepthConfig(n_facts=10)
    res = depth.run(models, corpus, cfg)
    per = res["per_model"]
    assert per["twin"]["uds"] == pytest.approx(1.0) and per["original"]["uds"] == pytest.approx(0.0)
    assert 0.05 < per["edited"]["uds"] < 0.95
    assert per["edited"]["n_facts_scored"] >= 5 and max(res["stage1"]["answer"]) > cfg.tau
    assert res["stage1"]["cached"] is False
    again = depth.run(models, corpus, cfg)
    assert again["stage1"]["cached"] is True and again["per_model"]["edited"]["uds"] == per["edited"]["uds"]
    mixes = [depth.run({"original": (model, tok), "edited": (_mix(model, twin, t), tok), "twin": (twin, tok)},
                       corpus, cfg)["per_model"]["edited"]["uds"] for t in (0.25, 0.75)]
    assert mixes[0] < per["edited"]["uds"] < mixes[1]


def test_uds_needs_the_twin_and_one_shape(micro, tiny_olmo):
    model, tok, corpus = micro
    with pytest.raises(ConfigError, match="twin"):
        depth.run({"original": (model, tok), "edited": (model, tok)}, corpus, depth.DepthConfig(n_facts=2))
    with pytest.raises(ConfigError, match="one shape"):
        depth.run({"original": (model, tok), "twin": (tiny_olmo[0], tok)}, corpus, depth.DepthConfig(n_facts=2))


# --- config, registry, report ------------------------------------------------------------------------------------
def test_attack_names_and_settings_are_checked():
    from workbench.evaluation.config import EvalConfig

    assert parse_attacks("relearn, lens") == ("relearn", "lens")
    assert parse_attacks("all") == ("relearn", "quantize", "lens", "depth")
    assert parse_attacks("none") == () and parse_attacks("") == ()
    with pytest.raises(ConfigError, match="unknown attack.*'relarn'"):
        parse_attacks("relarn,lens")
    with pytest.raises(ConfigError, match="unknown attack"):
        EvalConfig(attacks=("quantise",))
    with pytest.raises(ConfigError, match="between 1 and 16"):
        EvalConfig(attacks="quantize", attack_settings={"quantize": {"bits": [8, 0]}})
    with pytest.raises(ConfigError, match="relearn attack settings.*steps"):
        AttackConfig.from_dict({"relearn": {"steps": "ten"}})
    with pytest.raises(ConfigError, match="relearn scopes"):
        AttackConfig.from_dict({"relearn": {"scopes": ["everything"]}})
    with pytest.raises(ConfigError, match="unknown attack"):
        AttackConfig.from_dict({"lense": {}})
    with pytest.raises(ConfigError, match="admissible"):
        AttackConfig.from_dict({"admissible": 2})
    with pytest.raises(ConfigError, match="depth threshold"):
        AttackConfig.from_dict({"depth": {"threshold": 1.5}})
    cfg = AttackConfig.from_dict({"quantize": {"bits": [4], "groups": [64]}, "admissible": 0.1})
    assert cfg.quantize.bits == (4,) and cfg.quantize.groups == (64,) and cfg.admissible == 0.1


def test_default_grids_reach_the_worst_case_strengths():
    """The grids the verdict runs by default: relearning at least as strong as lr 1e-3 for 10 steps on every
    parameter (up to 3e-3 and 50 steps, also on the edited layers alone), 8/4/3-bit rounding at two group sizes,
    and four readouts of every layer."""
    cfg = AttackConfig()
    assert max(cfg.relearn.lrs) >= 3e-3 and min(cfg.relearn.lrs) <= 1e-4 and max(cfg.relearn.steps) >= 50
    assert 1e-3 in cfg.relearn.lrs and 10 in cfg.relearn.steps and set(cfg.relearn.scopes) == {"all", "edited"}
    assert set(cfg.quantize.bits) == {8, 4, 3} and len(cfg.quantize.groups) >= 2
    assert set(lens.READOUTS) == {"lens", "lens_original", "probe", "tuned"}
    assert cfg.admissible == 0.05 and cfg.depth.tau == 0.05


def test_pipeline_runs_the_attacks_by_default():
    from workbench.pipeline import PipelineConfig, _eval_config

    assert _eval_config(PipelineConfig()).attacks == ("relearn", "quantize", "lens", "depth")
    assert _eval_config(PipelineConfig(evaluation={"attacks": "none"})).attacks == ()


def test_cli_names_a_bad_attack(capsys, tmp_path):
    from workbench.cli import main

    rc = main(["evaluate", "--model", "organism:micro", "--out", str(tmp_path / "e"), "--attacks", "relearn,bogus"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown attack(s) ['bogus']" in err and "Traceback" not in err


def test_models_must_share_a_tokenizer(micro):
    model, tok, corpus = micro
    other = copy.deepcopy(tok)
    other.add_tokens(["<extra>"])
    with pytest.raises(ConfigError, match="tokenizer"):
        run_attacks("lens", {"original": (model, tok), "edited": (model, other)}, corpus)


def test_report_has_the_attacks_section_and_verdict_lines(micro, micro_retain, tmp_path, monkeypatch):
    """evaluate(..., attacks): every attack on the three models, a 'Does it come back?' section with one figure per
    attack, and one verdict line per attack. An 'edit' that hides the answers in its last layer is shallow:
    relearning brings them back beyond the twin's, and its hidden states carry them: those lines fail."""
    from workbench.evaluation.config import EvalConfig
    from workbench.report import evaluate
    from workbench.evaluation.retrace import TraceConfig

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    model, tok, corpus = micro
    masked = _hidden(model, tok, corpus)
    cfg = EvalConfig(max_new_tokens=24, limit=3, attacks=("relearn", "quantize", "lens", "depth"),
                     attack_settings={"relearn": {"lrs": [1e-3], "steps": [10, 30]}, "lens": {"tuned_steps": 20},
                                      "quantize": {"bits": [4], "groups": [128]}, "depth": {"n_facts": 8}})
    rep = evaluate(model, tok, corpus, edited=(masked, tok), retain_baseline=(micro_retain[0], tok), config=cfg,
                   trace_config=TraceConfig(kinds=("mlp",), n_facts=2, n_samples=2, n_boot=20), out_dir=tmp_path,
                   layers=[3])
    js = json.loads((tmp_path / "report.json").read_text())
    assert js["attacks"]["models"] == ["original", "edited", "twin"]
    assert js["provenance"]["model"]["fingerprint"] and js["config"]["eval"]["attacks"] == list(cfg.attacks)
    lines = {c["name"]: c for c in js["verdict"]["criteria"]}
    for a in cfg.attacks:
        assert a in lines and set(js["attacks"][a]["per_model"]) == {"original", "edited", "twin"}
        assert f"attack_{a}" in rep.figures
    assert lines["relearn"]["passed"] is False and "vs the twin" in lines["relearn"]["detail"]
    assert "edited lr" in json.dumps(js["attacks"]["relearn"]["settings"])   # the edited-layers scope ran
    assert lines["depth"]["passed"] is False and js["attacks"]["depth"]["per_model"]["edited"]["uds"] < 0.9
    assert js["verdict"]["passed"] is False
    assert js["attacks"]["importance"]["mlp"] == pytest.approx(js["trace"]["kinds"]["mlp"]["ie_before"])
    page = (tmp_path / "report.html").read_text()
    assert "Does it come back?" in page and page.count("plotly-graph-div") >= 5
    assert "held-out (decide privacy)" in page
