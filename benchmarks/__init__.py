"""Benchmarks of the workbench engine against peers: ratios measured in one run, outputs checked equal first.

    python -m benchmarks            # everything, regenerates benchmarks/RESULTS.md (about 6 min on 2 quiet cores)
    python -m benchmarks --quick    # tiny sizes (the smoke test); writes nowhere unless --out is given

Every section returns a `Section`: markdown (tables, notes) plus `goals` (name, ratio, target, met). A timing only
counts after the outputs of the two sides were compared (max abs difference <= TOL); a mismatch is reported as such
and the ratio is not claimed.

Peak memory: a background thread samples this process's resident set size (/proc/self/statm) every 50 ms while the
timed call runs; we report peak RSS minus RSS at the start of the call (MiB). torch's CPU allocator is invisible to
tracemalloc, and ru_maxrss only ever grows, so neither gives per-call peaks; the sampler can miss a spike shorter
than 50 ms (a faster sampler competes for the GIL and slows Python-heavy loops, i.e. the peers).
"""
from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

TOL = 1e-4  # max abs difference of outputs before a timing counts


@dataclass
class Section:
    title: str
    markdown: str
    goals: list[dict] = field(default_factory=list)   # {name, ratio, target, met, equal, note}
    data: dict = field(default_factory=dict)


def goal(name: str, ratio: float, target: float, equal: bool, note: str = "") -> dict:
    return {"name": name, "ratio": ratio, "target": target, "equal": bool(equal),
            "met": bool(equal and ratio >= target), "note": note}


# --- measurement -----------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager: .peak_mib = max sampled RSS during the block minus RSS at entry."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_mib = interval, 0.0

    def __enter__(self):
        self._start = self._peak = _rss_bytes()
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, _rss_bytes())
                time.sleep(self.interval)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss_bytes())
        self.peak_mib = (self._peak - self._start) / 2 ** 20
        return False


def measure(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float, float]:
    """(result, wall seconds, peak RSS delta MiB) of a call; with `repeats` > 1 the fastest of that many calls
    (for calls of milliseconds, where one call's time is mostly scheduling noise) and the largest peak."""
    best, peak = float("inf"), 0.0
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        peak = max(peak, mem.peak_mib)
    return out, best, peak


def profile_top(fn: Callable[[], Any], n: int = 12) -> str:
    """torch.profiler table (CPU self time) of one call, top `n` ops, as a fenced block."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=n, max_name_column_width=40)
    return "```\n" + table.strip() + "\n```\n"


# --- machine and formatting ------------------------------------------------------------------------------
def machine_info() -> dict:
    import importlib.metadata as md

    import torch

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "transformers", "transformer-lens", "nnsight", "lm-eval"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform(), **versions,
            "load_average_start": tuple(round(x, 2) for x in os.getloadavg())}


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
        return str(v)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out) + "\n"
