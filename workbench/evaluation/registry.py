"""The evaluation's metrics and attacks by name: the one table `evaluate`, the report's rows and the verdict read.

Adding a metric or an attack: a file with a `Metric` subclass (evaluation/metric.py: its name, what it computes on
each model or on the models together, its table rows, optionally its verdict lines) and one line in METRICS below
(or `register(entry)` at run time). Its numbers then land in each model's metrics (report.json), its rows in the
table (report.json, report.html) and its lines in the verdict.

The order of METRICS is the table's and the verdict's; compute runs in that order too, except that an entry runs
after the entries it `needs`.
"""
from __future__ import annotations

from ..errors import ConfigError
from .attacks import Attacks
from .metric import Metric
from .mia import Membership
from .mmlu import MMLU
from .semeval import Recall, Score

METRICS: dict[str, Metric] = {m.name: m for m in (
    Recall(),
    Membership(),
    MMLU(),
    Score(),
    Attacks(),
)}


def register(entry: Metric) -> Metric:
    """Add `entry` at the end of METRICS; its name must be new and every entry it needs registered."""
    if not isinstance(entry, Metric) or not entry.name:
        raise ConfigError(f"a registry entry is a named evaluation.metric.Metric, got {entry!r}")
    if entry.name in METRICS:
        raise ConfigError(f"an evaluation entry named {entry.name!r} is already registered")
    missing = [n for n in entry.needs if n not in METRICS]
    if missing:
        raise ConfigError(f"evaluation entry {entry.name!r} needs {missing}, which are not registered; expected some "
                          f"of {list(METRICS)}")
    METRICS[entry.name] = entry
    return entry


def compute_order() -> list[Metric]:
    """Every entry, in registry order except that the entries one needs come before it."""
    done: dict[str, Metric] = {}

    def visit(name: str, path: tuple) -> None:
        if name in done:
            return
        if name in path:
            raise ConfigError(f"evaluation entries need each other in a cycle: {' -> '.join(path + (name,))}")
        if name not in METRICS:
            raise ConfigError(f"evaluation entry {path[-1]!r} needs {name!r}, which is not registered")
        for need in METRICS[name].needs:
            visit(need, path + (name,))
        done[name] = METRICS[name]

    for name in METRICS:
        visit(name, ())
    return list(done.values())


def rows(metrics: dict) -> list[tuple[str, tuple]]:
    """(label, path into a model's metrics) of every table row, entry by entry; `metrics`: the original's."""
    return [row for entry in METRICS.values() for row in entry.rows(metrics)]
