"""Mechanistic-interpretability workbench for LLM unlearning on OLMo.

Data flow: models -> data -> hooks -> tracing -> selection -> editors -> evaluation -> figures.
"""
__version__ = "0.1.0"
