"""Bounded parsing: what a careless or hostile file or flag asks for is refused before it is built. A YAML alias
bomb, a billion-layer range, a 20 MB field, a layer of 1.7 or `true`, bad bytes or shapes in a selection or
importance JSON, a seed or sample count past what torch can take: each is one `error:` line (exit 2), quoting at
most a few hundred characters of the input, and no traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.errors import ConfigError, quote
from workbench.selection import parse_layers

REPO = Path(__file__).resolve().parents[1]


def _one_error_line(capsys, command: str, longest: int = 1200) -> str:
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert last.startswith(f"workbench {command}: error:"), err[-2000:]
    assert "Traceback" not in err and len(err) < longest, f"{len(err)} characters: {err[:300]}..."
    return last


@pytest.fixture
def no_models(monkeypatch):
    """Loading or building any model fails the test: the refusal must come first."""
    import workbench.harness
    import workbench.models
    import workbench.organism

    monkeypatch.setattr(workbench.models, "load_pretrained", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(workbench.harness, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    monkeypatch.setattr(workbench.organism, "build", lambda *a, **k: pytest.fail("built a model"))


def _bounded(*argv: str, memory_gb: int = 4, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m workbench *argv` with its address space capped: what expands an input without bound fails fast
    with a MemoryError there, instead of taking the machine's memory."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (memory_gb << 30, memory_gb << 30))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "workbench", *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=cap)


# ---------------------------------------------------------------- config files: D8
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    levels = ["&a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]"] + [
        f"&a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]   # 9**9 values once expanded
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("n_facts:\n" + "".join(f"  - {x}\n" for x in levels))
    t0 = time.perf_counter()
    proc = _bounded("run", "--config", str(bomb), "--out", str(tmp_path / "b"), timeout=60)
    assert proc.returncode == 2 and time.perf_counter() - t0 < 60, proc.stderr[-500:]
    assert len(proc.stderr) < 600 and "Traceback" not in proc.stderr, proc.stderr[:600]
    assert "YAML alias *a0 is not allowed" in proc.stderr and "line 3" in proc.stderr
    assert not (tmp_path / "b").exists()


def test_a_long_value_is_quoted_short(tmp_path, capsys, no_models):
    (tmp_path / "c.yaml").write_text("n_facts: '" + "x" * 100_000 + "'\n")
    assert main(["run", "--config", str(tmp_path / "c.yaml")]) == 2
    line = _one_error_line(capsys, "run", longest=800)
    assert "n_facts" in line and "(100000 characters)" in line


def test_quote_bounds_any_value():
    assert quote("abc") == "'abc'"
    long = quote(" " * 20_000_000)
    assert len(long) < 260 and long.endswith("(20000000 characters)")
    nested = [[["lol"] * 9] * 9] * 9
    assert len(quote(nested)) <= 203


# ---------------------------------------------------------------- layers: D7, D9, T1, T2
@pytest.mark.parametrize("layers, msg", [
    ([1.7], "1.7 is not a layer index; layers must be integers"),
    ([True], "True is not a layer index"),
    ([{}], r"\{\} is not a layer index"),
    (5, "layers must be a list of integers, got 5"),
    ("1", "layers must be a list of integers, got '1'"),
])
def test_a_selection_json_with_a_non_integer_layer_is_refused(layers, msg, tmp_path, capsys, no_models):
    sel = tmp_path / "s.json"
    sel.write_text(json.dumps({"type": "LayerSelection", "layers": layers}))
    assert main(["unlearn", "--method", "ga", "--layers", str(sel), "--steps", "1", "--quiet",
                 "--out", str(tmp_path / "u")]) == 2
    assert __import__("re").search(msg, _one_error_line(capsys, "unlearn"))
    assert not (tmp_path / "u").exists()


def test_a_billion_layer_range_is_refused_without_building_it(micro, tmp_path):
    """0-999999999 is checked against the model's depth (its config.json) before it is expanded or the model
    loaded (the list alone would take 8 GB); before an organism is built, against the depth no model reaches."""
    from test_content_keys import micro_copy

    model, data = micro_copy(tmp_path)
    for spec, msg in ((str(model), "layers 4-999999999 out of range; the model has layers 0..3"),
                      ("organism:micro", "layers 10000-999999999 out of range; a layer index is at most 9999")):
        proc = _bounded("unlearn", "--method", "ga", "--layers", "0-999999999", "--steps", "1", "--quiet",
                        "--model", spec, "--data", str(data), "--out", str(tmp_path / "u"))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-800:]
        assert msg in proc.stderr.strip().splitlines()[-1], proc.stderr[-800:]


def test_a_range_past_the_last_layer_names_its_bad_layers():
    with pytest.raises(ConfigError, match=r"layers 4-99 out of range; the model has layers 0\.\.3"):
        parse_layers("0-99", n_layers=4)
    with pytest.raises(ConfigError, match=r"layers \[4, 5\] out of range"):
        parse_layers("2-5", n_layers=4)


def test_non_utf8_and_wrong_shapes_in_importance_and_selection_json(tmp_path, capsys, no_models):
    cases = {"ib.json": (b'{"type": "LayerImportance", "kind": "mlp\xff"}', "select", "is not UTF-8 text"),
             "sb.json": (b'{"type": "LayerSelection", "layers": [1\xff]}', "unlearn", "is not UTF-8 text"),
             "i2.json": (b'{"type": "LayerImportance"}', "select", "LayerImportance JSON lacks"),
             "i3.json": (b'{"type": "LayerImportance", "kind": "mlp", "position": "max", "mean": [1, 2], '
                         b'"lo": [1], "hi": [1, 2], "per_fact": []}', "select", "one number per layer")}
    for name, (content, command, msg) in cases.items():
        (tmp_path / name).write_bytes(content)
        argv = ["select", str(tmp_path / name)] if command == "select" else [
            "unlearn", "--method", "ga", "--layers", str(tmp_path / name), "--out", str(tmp_path / "u")]
        assert main(argv) == 2, name
        assert msg in _one_error_line(capsys, command), name


# ---------------------------------------------------------------- data and numbers: D9, T6
def test_a_twenty_megabyte_field_makes_a_short_error(micro, tmp_path, capsys):
    row = {"id": "aqa0", "input": "Q?", "output": "A", "task": "Task2", "subject": " " * 20_000_000}
    for split in ("forget", "retain"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["evaluate", "--model", "organism:micro", "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    line = _one_error_line(capsys, "evaluate", longest=1000)
    assert "forget.jsonl:1" in line and "(20000000 characters)" in line


@pytest.mark.parametrize("argv, msg", [
    (["--seed", "99999999999999999999"], "--seed 99999999999999999999: expected a whole number from 0 to 4294967295"),
    (["--seed", "-1"], "--seed -1: expected a whole number from 0"),
    (["--samples", "1000000000000"], "--samples must be <= 10000 (it sizes memory), got 1000000000000"),
    (["--n-boot", "1000000000000"], "--n-boot must be <= 100000"),
])
def test_huge_numbers_are_refused_before_loading(argv, msg, tmp_path, capsys, no_models):
    assert main(["trace", "--model", "organism:micro", "--prompt", "Who is Ann?", "--subject", "Ann", "--answer", "x",
                 *argv, "--out", str(tmp_path / "t")]) == 2
    assert msg in _one_error_line(capsys, "trace")


def test_huge_seed_in_an_editor_or_pipeline_config(tmp_path, capsys, no_models):
    assert main(["unlearn", "--method", "ga", "--layers", "0", "--seed", "99999999999999999999",
                 "--out", str(tmp_path / "u")]) == 2
    assert "seed must be a whole number from 0 to 4294967295" in _one_error_line(capsys, "unlearn")
    (tmp_path / "p.yaml").write_text("seed: 99999999999999999999\nn_samples: 1000000000000\n")
    assert main(["run", "--config", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "n_samples must be <= 10000" in _one_error_line(capsys, "run")
