"""Verification metrics: membership inference, MMLU-format utility, SemEval-2025 Task 4 score, recovery attacks,
re-tracing and the verdict against the retain-only twin.

`workbench.report.evaluate` runs them all on the original and edited model side by side and renders the report.
"""
