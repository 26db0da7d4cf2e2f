"""The shared loop: resume after a kill gives the same weights, NaN stops with the last good checkpoint kept,
the reference cache equals a frozen copy, outputs are written atomically with their resolved config."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from workbench.editors import unlearn
from workbench.editors.checkpoint import load_checkpoint, save_checkpoint
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
    assert (tmp_path / ".b.work" / "checkpoint.safetensors").is_file()
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


def test_resume_refuses_a_checkpoint_of_another_model(micro, tmp_path):
    """Killed on model A, rerun on model B with the same --out: refused, not A's weights continued."""
    model0, tok, corpus = micro
    with pytest.raises(Killed):
        unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], JOINT, tmp_path / "m", on_step=_kill_at(3))
    other = copy.deepcopy(model0)
    with torch.no_grad():
        other.model.layers[3].mlp.up_proj.weight.mul_(1.01)   # a layer the edit does not even train
    ckpt = tmp_path / ".m.work" / "checkpoint.safetensors"
    with pytest.raises(EditError, match="different run: the model") as e:
        unlearn(other, tok, corpus, "joint", [0, 1], JOINT, tmp_path / "m")
    assert str(ckpt) in str(e.value) and "data" not in str(e.value).split("different run:")[1].split("(")[0]
    assert not (tmp_path / "m").exists()


def test_resume_refuses_a_checkpoint_of_other_data(micro, tmp_path):
    from dataclasses import replace

    model0, tok, corpus = micro
    with pytest.raises(Killed):
        unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], JOINT, tmp_path / "n", on_step=_kill_at(3))
    changed = replace(corpus, forget=[replace(corpus.forget[0], output=corpus.forget[0].output + "x")]
                      + corpus.forget[1:])
    with pytest.raises(EditError, match="different run: the data"):
        unlearn(copy.deepcopy(model0), tok, changed, "joint", [0, 1], JOINT, tmp_path / "n")


class _Planted:
    """Unpickling this writes a marker file: the code a hostile checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["checkpoint.pt", "checkpoint.safetensors"])
def test_planted_pickle_checkpoint_never_runs(micro, tmp_path, capsys, name):
    from workbench.cli import main

    marker = tmp_path / "pwned"
    work = tmp_path / ".p.work"
    work.mkdir()
    torch.save({"config_hash": "x", "payload": _Planted(marker)}, work / name)
    model0, tok, corpus = micro
    with pytest.raises(EditError, match="pickle") as e:
        unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], JOINT, tmp_path / "p")
    assert str(work / name) in str(e.value)
    assert not marker.exists()
    rc = main(["unlearn", "--method", "joint", "--layers", "0,1", "--model", "organism:micro", "--data", "organism",
               "--out", str(tmp_path / "p"), "--steps", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "pickle" in err and "Traceback" not in err
    assert not marker.exists()


def test_checkpoint_round_trip_is_exact(tmp_path):
    import random

    state = {"step": 3, "best_score": float("-inf"), "params": {"a.b": torch.randn(3, 4, dtype=torch.bfloat16)},
             "optimizer": {"state": {0: {"step": torch.tensor(2.0)}}, "param_groups": [{"betas": (0.9, 0.99)}]},
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}, "best": None, "evals": [{"s": 0.5}]}
    back = load_checkpoint(save_checkpoint(tmp_path / "c.safetensors", state))
    assert back["step"] == 3 and back["best_score"] == float("-inf") and back["best"] is None
    assert torch.equal(back["params"]["a.b"], state["params"]["a.b"]) and back["params"]["a.b"].dtype == torch.bfloat16
    assert back["optimizer"]["state"][0]["step"].item() == 2.0 and back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(back["rng"]["torch"], state["rng"]["torch"]) and back["rng"]["python"] == state["rng"]["python"]
    assert back["evals"] == [{"s": 0.5}]
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_nan_stops_with_clear_error_and_checkpoint_kept(micro, tmp_path):
    model0, tok, corpus = micro
    with pytest.raises(EditError, match="non-finite") as e:
        unlearn(copy.deepcopy(model0), tok, corpus, "ga", [0, 1, 2],
                {"lr": 1e30, "max_grad_norm": None, "forget_floor": None, "epochs": 3}, tmp_path / "d")
    assert "checkpoint" in str(e.value)
    assert (tmp_path / ".d.work" / "checkpoint.safetensors").is_file()
    assert not (tmp_path / "d").exists()
    ck = load_checkpoint(tmp_path / ".d.work" / "checkpoint.safetensors")
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
    from workbench.harness import load_model

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
