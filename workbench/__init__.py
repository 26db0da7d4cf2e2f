"""Mechanistic-interpretability workbench for LLM unlearning on OLMo.

Data flow: models -> data -> generation -> hooks -> tracing/patching -> selection -> editors -> evaluation -> organism -> report/figures -> pipeline/CLI.
"""
__version__ = "0.1.0"
