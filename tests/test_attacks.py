"""Recovery attacks (evaluation/attacks): each one's planted check, their scoring, config errors and the report."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from workbench.errors import ConfigError
from workbench.evaluation.attacks import AttackConfig, parse_attacks, run_attacks
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


# --- scoring ----------------------------------------------------------------------------------------------
def test_teacher_forced_recall_equals_greedy_generation(micro, micro_retain):
    """The attacks' one-forward exact match is the report's greedy-generation exact match, record for record."""
    from workbench.data.records import questions
    from workbench.generation import exact_match, greedy_generate

    model, tok, corpus = micro
    half_broken = _noised(model, 2, 0.2)
    for m in (model, micro_retain[0], half_broken):
        for split in ("forget", "retain"):
            qa = questions(corpus.split(split))
            got = score(m, tok, encode_qa(tok, qa)).exact.tolist()
            want = [exact_match(p, r.output) for p, r in zip(greedy_generate(m, tok, [r.input for r in qa], 32), qa)]
            assert got == want, split
    assert 0.1 < score(half_broken, tok, encode_qa(tok, corpus.forget)).recall < 0.9  # a mixed case was checked


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
    cfg = quantize.QuantizeConfig(bits=(8, 4))

    small = _perturb_against_forget(original, tok, corpus, 0.25)
    res = quantize.run(small, tok, corpus, cfg)
    assert res["before"]["forget"] <= 0.1             # the edit hid the answers ...
    assert res["after"]["4"]["forget"] == 1.0         # ... and 4-bit rounding brings every one back
    assert res["recovery"] >= 0.9 and res["worst_bits"] == 4
    assert res["after"]["8"]["forget"] <= 0.1         # 8 bits are fine enough to keep the edit
    for a, b in zip(quantize.linear_layers(quantize.quantized(small, 4)).values(),
                    quantize.linear_layers(original).values()):
        assert torch.allclose(a.weight, b.weight, atol=1e-6)

    large = _perturb_against_forget(original, tok, corpus, 2.0)
    res = quantize.run(large, tok, corpus, cfg)
    assert res["before"]["forget"] <= 0.1
    assert res["after"]["4"]["forget"] <= 0.1 and res["recovery"] <= 0.1


# --- lens ----------------------------------------------------------------------------------------------------
def test_lens_reads_through_an_unembedding_bias(micro):
    """Planted: an edit that only adds a large negative bias on the answer tokens in the unembedding hides every
    answer at the output, but every layer's lens and probe read exactly what the original's do."""
    model, tok, corpus = micro
    biased = copy.deepcopy(model)
    W = biased.lm_head.weight
    head = torch.nn.Linear(W.shape[1], W.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(W)
        head.bias.zero_()
        for e in encode_qa(tok, corpus.forget):
            head.bias[e.ids[e.n_prompt:-1]] = -1e4   # every answer token (not EOS)
    biased.lm_head = head
    cfg = lens.LensConfig()
    orig, hid = lens.run(model, tok, corpus, cfg), lens.run(biased, tok, corpus, cfg)
    assert orig["before"] == 1.0 and hid["before"] == 0.0
    for name, values in orig["metrics"].items():
        assert hid["metrics"][name] == pytest.approx(values, abs=1e-6), name   # full recovery at every layer
    assert hid["after"] == 1.0 and hid["recovery"] == 1.0 and orig["recovery"] == 0.0
    assert orig["metrics"]["lens_recall"][-1] == 1.0   # the last layer's lens is the model's own output


def test_lens_twin_decodes_nothing_anywhere(micro, micro_retain):
    model, tok, corpus = micro
    res = lens.run(micro_retain[0], tok, corpus, lens.LensConfig())
    assert max(max(v) for k, v in res["metrics"].items() if k.endswith("recall")) <= 0.1
    assert res["recovery"] <= 0.05


# --- relearn ---------------------------------------------------------------------------------------------------
def test_relearn_twin_stays_at_chance_and_a_masked_model_comes_back(micro, micro_retain):
    """Planted: fine-tuning the twin on half the forget facts leaves the other half where it was (at chance); a
    model whose answers are masked by noise in one layer gets the other half back."""
    model, tok, corpus = micro
    cfg = relearn.RelearnConfig(lr=1e-3)   # micro's scale (the default, 3e-4, is the default organism's)
    twin = relearn.run(micro_retain[0], tok, corpus, cfg)
    assert twin["n_train"] + twin["n_measured"] == len(encode_qa(tok, corpus.forget))
    assert len(twin["forget_half"]) == cfg.steps + 1
    assert twin["before"] <= 0.1 and max(twin["forget_half"]) <= twin["before"] + 0.05
    assert twin["recovery"] <= 0.05 and twin["recovery_retain_only"] <= 0.05

    masked = _noised(model, 3, 0.25)            # noise in the last layer's MLP hides every answer
    fingerprint = [p.clone() for p in masked.parameters()]
    res = relearn.run(masked, tok, corpus, cfg)
    assert res["before"] <= 0.1
    assert res["after"] >= res["before"] + 0.3 and res["recovery"] >= 0.3
    # the editors' loop fine-tuned a copy: the model under attack is untouched
    assert all(torch.equal(a, b) for a, b in zip(fingerprint, masked.parameters()))


def test_relearn_split_is_seeded_and_disjoint(micro):
    _, _, corpus = micro
    a, b = relearn.split_halves(corpus.forget, 0)
    assert not {r.id for r in a} & {r.id for r in b}
    assert [r.id for r in a] == [r.id for r in relearn.split_halves(corpus.forget, 0)[0]]
    assert [r.id for r in a] != [r.id for r in relearn.split_halves(corpus.forget, 1)[0]]


# --- depth -----------------------------------------------------------------------------------------------------
def test_depth_self_patch_recovers_everything_random_target_nothing(micro):
    """Planted: the original patched into itself keeps every answer at every site; patched into a random model of
    the same shape, no answer comes back at any site."""
    from transformers import OlmoForCausalLM

    model, tok, corpus = micro
    facts = depth.facts_of(model, tok, corpus, 12)
    kinds = ("resid", "mlp", "attn")
    own = depth.own_score(model, tok, facts)
    assert own == 1.0
    self_patch = depth.curves(model, model, tok, facts, kinds)
    assert all(v == 1.0 for k in kinds for v in self_patch[k])
    torch.manual_seed(1)
    random_model = OlmoForCausalLM(model.config).eval()
    into_random = depth.curves(model, random_model, tok, facts, kinds)
    assert all(v == 0.0 for k in kinds for v in into_random[k])


def test_depth_locates_the_edited_layer(micro, micro_retain):
    """Zeroing layer 0's MLP output removes the answers; patching the original's layer-0 MLP output back restores
    them all, patching another MLP output far fewer; the edited model's residual carries nothing into the original."""
    model, tok, corpus = micro
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.model.layers[0].mlp.down_proj.weight.zero_()
    res = depth.run({"original": model, "edited": edited, "twin": micro_retain[0]}, tok, corpus,
                    depth.DepthConfig(n_facts=12))
    assert res["unpatched"]["edited"] <= 0.1
    mlp = res["curves"]["original->edited"]["mlp"]
    assert mlp[0] == 1.0 and max(mlp[1:]) <= 0.5
    assert max(res["curves"]["twin->edited"]["mlp"]) <= 0.1
    assert res["per_model"]["original"]["recovery"] == 0.0
    assert res["per_model"]["edited"]["recovery"] <= 0.1


# --- config, registry, report ------------------------------------------------------------------------------------
def test_attack_names_and_settings_are_checked():
    from workbench.report import EvalConfig

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
    with pytest.raises(ConfigError, match="unknown attack"):
        AttackConfig.from_dict({"lense": {}})
    with pytest.raises(ConfigError, match="depth kinds"):
        AttackConfig.from_dict({"depth": {"kinds": ["mlps"]}})
    assert AttackConfig.from_dict({"quantize": {"bits": [4], "group": 64}}).quantize.bits == (4,)


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


def test_report_has_the_attacks_section_and_verdict_lines(micro, micro_retain, tmp_path):
    """evaluate(..., attacks): every attack on the three models, a 'Does it come back?' section with one figure per
    attack, and one verdict line per attack. A noise-masked 'edit' is shallow: relearning and reading the layers
    brings its answers back, more than the twin's + 0.1, so that line fails."""
    from workbench.report import EvalConfig, evaluate
    from workbench.evaluation.retrace import TraceConfig

    model, tok, corpus = micro
    masked = _noised(model, 3, 0.25)
    cfg = EvalConfig(max_new_tokens=24, limit=3, attacks=("relearn", "quantize", "lens", "depth"),
                     attack_settings={"relearn": {"lr": 1e-3}, "depth": {"n_facts": 8}})
    rep = evaluate(model, tok, corpus, edited=(masked, tok), retain_baseline=(micro_retain[0], tok), config=cfg,
                   trace_config=TraceConfig(kinds=("mlp",), n_facts=2, n_samples=2, n_boot=20), out_dir=tmp_path)
    js = json.loads((tmp_path / "report.json").read_text())
    assert js["attacks"]["models"] == ["original", "edited", "twin"]
    assert js["provenance"]["model"]["fingerprint"] and js["config"]["eval"]["attacks"] == list(cfg.attacks)
    lines = {c["name"]: c for c in js["verdict"]["criteria"]}
    for a in cfg.attacks:
        assert a in lines and set(js["attacks"][a]["per_model"]) == {"original", "edited", "twin"}
        assert f"attack_{a}" in rep.figures
    assert lines["relearn"]["passed"] is False and "vs the twin" in lines["relearn"]["detail"]
    assert js["verdict"]["passed"] is False
    # the depth curves sit next to the re-traced importance of the original
    assert js["attacks"]["importance"]["mlp"] == pytest.approx(js["trace"]["kinds"]["mlp"]["ie_before"])
    assert any(t.name == "traced importance (original)" for t in rep.figures["attack_depth"].data)
    page = (tmp_path / "report.html").read_text()
    assert "Does it come back?" in page and page.count("plotly-graph-div") >= 5
