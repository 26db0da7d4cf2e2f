"""Verification metrics: membership inference, MMLU-format utility, SemEval-2025 Task 4 score, one report.

`report.evaluate` runs them all on the original and edited model side by side.
"""
