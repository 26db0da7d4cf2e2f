"""Faults a long run meets: SIGKILL at any step, a write that fails at a checkpoint or at the final save, a second
run on the same output, killed and racing cache builds, a truncated cache entry, a read-only output.

Writes are made to fail for real: RLIMIT_FSIZE makes the kernel refuse a write past a size (EFBIG), the same path
through safetensors and Python as a full disk (ENOSPC), without needing a small file system."""
from __future__ import annotations

import copy
import json
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from workbench.editors import unlearn
from workbench.errors import OutputError, failure_reason
from workbench.outputs import cached_build, entry_complete, remove_stale_temps

REPO = Path(__file__).resolve().parents[1]
JOINT = {"epochs": 3, "batch_size": 16, "checkpoint_every": 2, "eval_every": 0, "keep_best": False}  # 6 steps


def _python(code: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def straight(micro, tmp_path_factory):
    """The uninterrupted run every faulty run must end up equal to."""
    model0, tok, corpus = micro
    model = copy.deepcopy(model0)
    unlearn(model, tok, corpus, "joint", [0, 1], JOINT, tmp_path_factory.mktemp("straight") / "out")
    return model


def _same_weights(a, b) -> None:
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def _events(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- SIGKILL at a random step
def test_sigkill_at_a_random_step_resumes_bit_identical(micro, straight, tmp_path):
    step = random.Random(13).randint(1, 5)
    out = tmp_path / "killed"
    proc = _python("""
        import os, signal, sys
        from workbench import harness, organism
        from workbench.editors import unlearn
        model, tok, corpus = harness.load_organism("micro")
        kill = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == int(sys.argv[2]) else None
        unlearn(model, tok, corpus, "joint", [0, 1], dict(epochs=3, batch_size=16, checkpoint_every=2, eval_every=0,
                keep_best=False), sys.argv[1], on_step=kill)
    """, str(out), str(step))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists() and (tmp_path / ".killed.work" / "checkpoint.safetensors").is_file()
    model0, tok, corpus = micro
    resumed = copy.deepcopy(model0)
    unlearn(resumed, tok, corpus, "joint", [0, 1], JOINT, out)
    resume = [e for e in _events(out) if e["event"] == "resume"]
    assert len(resume) == 1 and resume[0]["step"] == step - step % 2   # the last checkpoint before the kill
    _same_weights(straight, resumed)


# ---------------------------------------------------------------- writes that fail
class FileSizeLimit:
    """From `arm()` on, the kernel refuses writes past `limit` bytes in any file (EFBIG), until the block ends."""

    def __init__(self, limit: int):
        self.limit = limit

    def __enter__(self):
        self.old = resource.getrlimit(resource.RLIMIT_FSIZE)
        self.handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        return self

    def arm(self):
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.old[1]))

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_FSIZE, self.old)
        signal.signal(signal.SIGXFSZ, self.handler)


def test_failed_checkpoint_write_names_it_keeps_the_last_good_one_and_resumes(micro, straight, tmp_path):
    model0, tok, corpus = micro
    out, work = tmp_path / "ck", tmp_path / ".ck.work"
    with FileSizeLimit(64_000) as limit:
        with pytest.raises(OutputError) as e:
            unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], JOINT, out,
                    on_step=lambda s: limit.arm() if s == 3 else None)
    msg = str(e.value)
    assert f"could not write the checkpoint {work / 'checkpoint.safetensors'} (file too large)" in msg
    assert "last good checkpoint" in msg and "(step 2) is intact" in msg and "rerun the same command" in msg
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint.safetensors", "log.jsonl", "unlearn_config.json"]
    assert not out.exists()
    resumed = copy.deepcopy(model0)
    unlearn(resumed, tok, corpus, "joint", [0, 1], JOINT, out)
    assert [e["step"] for e in _events(out) if e["event"] == "resume"] == [2]
    _same_weights(straight, resumed)


def test_failed_final_save_leaves_no_partial_model_and_resumes(micro, straight, tmp_path, capsys):
    model0, tok, corpus = micro
    out = tmp_path / "final"
    with FileSizeLimit(64_000) as limit:
        with pytest.raises(OutputError) as e:
            unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], JOINT, out,
                    on_step=lambda s: limit.arm() if s == 6 else None)
    msg = str(e.value)
    assert f"could not write the edited model {out}" in msg and "holds all 6 steps" in msg
    assert not out.exists() and not list(tmp_path.glob(".final.tmp-*")), "no partial model"
    resumed = copy.deepcopy(model0)
    unlearn(resumed, tok, corpus, "joint", [0, 1], JOINT, out)
    assert [e["step"] for e in _events(out) if e["event"] == "resume"] == [6]
    _same_weights(straight, resumed)
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == oct((out / "config.json").stat().st_mode & 0o777)


def test_write_failures_are_classified():
    import errno

    from safetensors import SafetensorError

    assert failure_reason(OSError(errno.ENOSPC, "No space left on device")) == "disk full"
    assert failure_reason(OSError(errno.EROFS, "Read-only file system")) == "read-only file system"
    assert failure_reason(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
                          ) == "disk full"
    assert failure_reason(ValueError("bad value")) is None


def test_stale_temp_of_a_killed_final_save_is_removed(micro, tmp_path):
    dead = _python("import os; print(os.getpid())").stdout.strip()   # a PID that no longer runs
    stale = tmp_path / f".s.tmp-{dead}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    live = tmp_path / f".s.tmp-{os.getpid()}"
    live.mkdir()
    assert remove_stale_temps(tmp_path, "s") == [stale]
    assert not stale.exists() and live.exists()
    live.rmdir()
    model0, tok, corpus = micro
    stale.mkdir()
    unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], {**JOINT, "max_steps": 1}, tmp_path / "s")
    assert not stale.exists() and (tmp_path / "s" / "model.safetensors").is_file()


def _read_only_dir(tmp_path) -> Path:
    """A directory nothing can be written in: a read-only tmpfs (root), or mode 0555 (any other user)."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        return d
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("running as root without permission to mount a read-only file system")
    return d


@pytest.fixture
def read_only(tmp_path):
    d = _read_only_dir(tmp_path)
    yield d
    if os.geteuid() == 0:
        subprocess.run(["umount", str(d)], capture_output=True)
    else:
        d.chmod(0o755)


@pytest.mark.parametrize("command", [
    ["unlearn", "--method", "joint", "--layers", "0", "--steps", "1", "--quiet", "--out"],
    ["trace", "--model", "organism:micro", "--prompt", "Who is Ann?", "--subject", "Ann", "--answer", "x", "--out"],
    ["evaluate", "--model", "organism:micro", "--out"],
    ["run", "--out"],
])
def test_read_only_output_is_one_named_error(command, read_only, micro, capsys):
    from workbench.cli import main

    assert main([*command, str(read_only / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: could not write" in err and str(read_only) in err and "read-only" in err, err
    assert "Traceback" not in err


# ---------------------------------------------------------------- one writer per output
def test_second_run_on_the_same_output_is_refused_with_the_holders_pid(micro, tmp_path):
    model0, tok, corpus = micro
    out = tmp_path / "shared"
    holding, release = threading.Event(), threading.Event()

    def first():
        def hold(step):
            if step == 1:
                holding.set()
                release.wait(120)
        unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], {**JOINT, "max_steps": 2}, out, on_step=hold)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert holding.wait(120)
        with pytest.raises(OutputError, match=f"unlearn output {out} is in use by PID {os.getpid()}"):
            unlearn(copy.deepcopy(model0), tok, corpus, "joint", [0, 1], {**JOINT, "max_steps": 2}, out)
    finally:
        release.set()
        t.join()
    starts = [e for e in _events(out) if e["event"] == "start"]
    assert len(starts) == 1, "the refused run wrote nothing into the winner's log"


# ---------------------------------------------------------------- cache entries (the organism cache's builder)
MAKE = """
import json, os, sys, time
from pathlib import Path
import torch
from safetensors.torch import save_file
from workbench.outputs import cached_build

target, builds = Path(sys.argv[1]), Path(sys.argv[2])

def make(tmp):
    with builds.open("a") as fh:
        fh.write(f"{os.getpid()}\\n")
    save_file({"w": torch.arange(50_000, dtype=torch.float32)}, str(tmp / "model.safetensors"))
    if len(sys.argv) > 3:          # killed in the middle of a build
        os.kill(os.getpid(), 9)
    time.sleep(0.5)
    (tmp / "organism.json").write_text(json.dumps({"ok": True}))

path = cached_build(target, make, marker="organism.json")
from safetensors.torch import load_file
assert load_file(str(path / "model.safetensors"))["w"][-1].item() == 49_999
print("loaded", path)
"""


def _make_in_process(target: Path, builds: Path) -> Path:
    from safetensors.torch import save_file

    def make(tmp):
        builds.open("a").write("in-process\n")
        save_file({"w": torch.arange(50_000, dtype=torch.float32)}, str(tmp / "model.safetensors"))
        (tmp / "organism.json").write_text("{}")

    return cached_build(target, make, marker="organism.json")


def test_racing_builds_build_once_and_every_loader_sees_a_complete_entry(tmp_path):
    target, builds = tmp_path / "cache" / "micro-abc", tmp_path / "builds.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", MAKE, str(target), str(builds)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [(p.wait(120), p.stdout.read(), p.stderr.read()) for p in procs]
    assert all(rc == 0 and out.startswith("loaded") for rc, out, _ in results), [r[2][-500:] for r in results]
    assert len(builds.read_text().splitlines()) == 1, "built once"
    assert sorted(p.name for p in target.parent.iterdir() if p.is_dir()) == ["micro-abc"], "no temp dirs left"


def test_killed_build_leaves_nothing_that_is_loaded_and_its_temp_is_removed(tmp_path):
    target, builds = tmp_path / "cache" / "micro-abc", tmp_path / "builds.log"
    proc = _python(MAKE, str(target), str(builds), "kill")
    assert proc.returncode == -9 and not target.exists()
    temps = [p for p in target.parent.iterdir() if p.is_dir()]
    assert len(temps) == 1 and temps[0].name.startswith(".micro-abc.")
    _make_in_process(target, builds)
    assert entry_complete(target, "organism.json")
    assert [p.name for p in target.parent.iterdir() if p.is_dir()] == ["micro-abc"]


def test_truncated_entry_is_rebuilt_not_loaded(tmp_path):
    target, builds = tmp_path / "cache" / "micro-abc", tmp_path / "builds.log"
    _make_in_process(target, builds)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert not entry_complete(target, "organism.json")
    _make_in_process(target, builds)
    assert len(builds.read_text().splitlines()) == 2 and entry_complete(target, "organism.json")
    assert oct(target.stat().st_mode & 0o777) != "0o700", "the entry is shared like any other output"


# ---------------------------------------------------------------- the organism cache itself
LOAD_MICRO = """
from workbench.harness import load_model
model, tok = load_model("organism:micro")
print("loaded", sum(p.numel() for p in model.parameters()))
"""


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "organisms").iterdir() if p.is_dir())


@pytest.mark.slow
def test_racing_organism_loads_build_it_once_and_all_load(tmp_path):
    """Concurrent first loads of organism:micro from an empty cache (3 of 60 failed with misleading errors)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKBENCH_CACHE": str(tmp_path)}
    logs = [tmp_path / f"load{i}.txt" for i in range(4)]   # files, not pipes: a full pipe would block a builder
    procs = [subprocess.Popen([sys.executable, "-c", LOAD_MICRO], cwd=REPO, env=env, stdout=log.open("w"),
                              stderr=subprocess.STDOUT) for log in logs]
    codes = [p.wait(900) for p in procs]
    outputs = [log.read_text() for log in logs]
    assert codes == [0] * 4 and all("loaded" in out for out in outputs), [out[-800:] for out in outputs]
    entries = sorted(_entries(tmp_path))
    # one base and one organism fine-tuned from it, no temp dirs
    assert len(entries) == 2 and entries[0].startswith("base-") and entries[1].startswith("micro-"), entries
    assert oct((tmp_path / "organisms" / entries[1] / "model.safetensors").stat().st_mode & 0o777) == "0o644"


@pytest.mark.slow
def test_killed_organism_build_is_cleaned_up_and_a_truncated_one_rebuilt(tmp_path, monkeypatch):
    import time

    from workbench import organism
    from workbench.harness import load_model

    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKBENCH_CACHE": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", LOAD_MICRO], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any((tmp_path / "organisms").glob(".micro-*/build_log.jsonl")):
        time.sleep(0.2)
    proc.kill()                                          # SIGKILL in the middle of training
    proc.wait()
    assert [n for n in _entries(tmp_path) if n.startswith(".micro-")], "the killed build left its temp dir"
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    path = organism.build("micro", progress=False)
    assert sorted(_entries(tmp_path)) == sorted([path.name, organism.base_dir(organism.PRESETS["micro"]).name]), \
        "temp dir of the killed build removed"
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])   # a truncated cache entry
    model, _ = load_model("organism:micro")                                      # rebuilt, not loaded half
    assert weights.stat().st_size > 1_000_000 and sum(p.numel() for p in model.parameters()) > 0
