"""The shared loop: resume after a kill gives the same weights, NaN stops with the last good checkpoint kept,
the reference cache equals a frozen copy, outputs are written atomically with their resolved config."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from workbench.editors import unlearn
from workbench.editors.loop import Reference, collate, encode
from workbench.editors.rmu import layer_output
from workbench.errors import EditError

JOINT = {"epochs": 3, "batch_size": 16, "checkpoint_every": 2, "eval_every": 0, "keep_best": False}  # 2 steps/epoch


class Killed(Exception):
    pass


def _kill_at(step):
    def on_step(s):
        if s == step:
            raise Killed(f"killed at {s}")
    return on_step


def test_resume_continues_at_checkpoint_and_matches_uninterrupted(micro, tmp_path):
    model0, tok, corpus = micro
    straight = copy.deepcopy(model0)
    unlearn(straight, tok, corpus, "joint", [0, 1], JOINT, tmp_path / "a")

    killed = copy.deepcopy(model0)
    with pytest.raises(Killed):
        unlearn(killed, tok, corpus, "joint", [0, 1], JOINT, tmp_path / "b", on_step=_kill_at(5))
    assert not (tmp_path / "b").exists()
    assert (tmp_path / ".b.work" / "checkpoint.pt").is_file()
    resumed = copy.deepcopy(model0)  # a fresh process would reload the source model
    out = unlearn(resumed, tok, corpus, "joint", [0, 1], JOINT, tmp_path / "b")
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    resume = [r for r in log if r["event"] == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == 4
    steps = [r["step"] for r in log if r["event"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 5, 6]  # 1..5 before the kill, 5..6 again after resuming at 4
    for (n, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
    assert not (tmp_path / ".b.work").exists()


def test_resume_refuses_other_config(micro, tmp_path):
    model0, tok, corpus = micro
    with pytest.raises(Killed):
        unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], JOINT, tmp_path / "c", on_step=_kill_at(3))
    with pytest.raises(EditError, match="different run"):
        unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], {**JOINT, "lr": 1e-4}, tmp_path / "c")


def test_nan_stops_with_clear_error_and_checkpoint_kept(micro, tmp_path):
    model0, tok, corpus = micro
    with pytest.raises(EditError, match="non-finite") as e:
        unlearn(copy.deepcopy(model0), tok, corpus, "ga", [0, 1, 2],
                {"lr": 1e30, "max_grad_norm": None, "forget_floor": None, "epochs": 3}, tmp_path / "d")
    assert "checkpoint" in str(e.value)
    assert (tmp_path / ".d.work" / "checkpoint.pt").is_file()
    assert not (tmp_path / "d").exists()
    ck = torch.load(tmp_path / ".d.work" / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(t).all() for t in ck["params"].values())


def test_reference_cache_equals_frozen_copy(micro):
    model, tok, corpus = micro
    data = {"retain": encode(tok, corpus.retain[:6], 256)}
    fns = {"retain": lambda m, b: layer_output(m, b, 2)}
    cached = Reference(model, fns, data, tok.pad_token_id, cache=True)
    live = Reference(model, fns, data, tok.pad_token_id, cache=False)
    batch = collate([data["retain"][i] for i in (4, 1, 3)], tok.pad_token_id)
    mask = batch.attention_mask.bool()
    a, b = cached.get("retain", batch), live.get("retain", batch)
    assert a.shape == b.shape
    torch.testing.assert_close(a[mask], b[mask], rtol=1e-5, atol=1e-5)
    assert (a[~mask] == 0).all()


def test_output_dir_contents_and_resolved_config(micro, tmp_path):
    model0, tok, corpus = micro
    out = unlearn(copy.deepcopy(model0), tok, corpus, "npo", "1,2", {"max_steps": 2}, tmp_path / "e")
    meta = json.loads((out / "unlearn.json").read_text())
    assert meta["method"] == "npo" and meta["layers"] == [1, 2] and meta["config"]["max_steps"] == 2
    assert meta["summary"]["steps"] == 2 and meta["provenance"]["seed"] == 0
    assert meta["summary"]["reference_cache_bytes"] > 0
    from workbench.models import load_model

    reloaded, _ = load_model(out)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model0.parameters())


def test_cli_unlearn_writes_resolved_config(tmp_path, capsys):
    from workbench.cli import main

    rc = main(["unlearn", "--method", "rmu", "--layers", "0,1,2", "--model", "organism:micro", "--data", "organism",
               "--out", str(tmp_path / "cli"), "--steps", "2", "--set", "alpha=5", "--quiet"])
    assert rc == 0
    meta = json.loads((tmp_path / "cli" / "unlearn.json").read_text())
    assert meta["config"]["max_steps"] == 2 and meta["config"]["alpha"] == 5
    assert main(["unlearn", "--method", "rmu", "--layers", "0,1,2", "--out", str(tmp_path / "x"),
                 "--preset", "nope", "--quiet"]) == 2
    assert "unknown preset" in capsys.readouterr().err
