"""Layer sweep: every consecutive window is edited from the same start and scored."""
from __future__ import annotations

import json

import pytest
import torch

from workbench.errors import ConfigError
from workbench.sweep import sweep, windows


def test_windows():
    assert windows(4, 2) == [[0, 1], [1, 2], [2, 3]]
    assert windows(4, 4) == [[0, 1, 2, 3]]
    assert windows(5, 2, stride=2) == [[0, 1], [2, 3]]
    with pytest.raises(ConfigError, match="window"):
        windows(4, 5)


@pytest.mark.slow
def test_sweep_on_micro(micro, tmp_path):
    model, tok, corpus = micro
    calls = []
    res = sweep(model, tok, corpus, "rmu", window=3, out_dir=tmp_path / "s", config={"epochs": 12},
                extra_metrics=lambda m, t, c: calls.append(1) or {"extra": 1.0})
    assert [w["layers"] for w in res["windows"]] == [[0, 1, 2], [1, 2, 3]]
    assert res["baseline"]["forget_qa_em"] == 1.0 and res["baseline"]["retain_qa_em"] == 1.0
    assert len(calls) == 3  # baseline + 2 windows
    for w in res["windows"]:
        assert 0.0 <= w["forget_qa_em"] <= 1.0 and "mia_score" in w and w["extra"] == 1.0
    # the window the defaults were tuned on forgets; the sweep starts each window from the original weights
    assert res["windows"][0]["forget_qa_em"] <= 0.2 and res["windows"][0]["retain_qa_em"] >= 0.8
    saved = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert saved["windows"] == res["windows"] and "provenance" in saved
    lines = (tmp_path / "s" / "sweep.jsonl").read_text().splitlines()
    assert [json.loads(l)["event"] for l in lines] == ["baseline", "window", "window"]
    assert not (tmp_path / "s" / "models" / "layers-0-2").exists()


def test_sweep_bad_method_fails_first(micro, tmp_path):
    model, tok, corpus = micro
    with pytest.raises(ConfigError, match="unknown unlearning method"):
        sweep(model, tok, corpus, "nope", 2, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_sweep_fast_structure(micro, tmp_path):
    model, tok, corpus = micro
    before = {n: p.clone() for n, p in model.named_parameters()}
    res = sweep(model, tok, corpus, "npo", window=4, out_dir=tmp_path / "f", config={"max_steps": 1}, mia=False)
    assert [w["layers"] for w in res["windows"]] == [[0, 1, 2, 3]]
    assert set(res["windows"][0]) >= {"layers", "seconds", "forget_qa_em", "retain_qa_em"}
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # the caller's model is untouched
