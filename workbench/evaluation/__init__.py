"""Verification metrics: membership inference, MMLU-format utility, SemEval-2025 Task 4 score, recovery attacks,
re-tracing and the verdict against the retain-only twin.

Each is a registry entry (registry.py, metric.py); run.evaluate runs them all on the original, edited and twin
models and returns the numbers (config.EvalConfig: what runs, the verdict's tolerances); workbench.report renders them.
"""
