"""Verification metrics: membership inference, MMLU-format utility, SemEval-2025 Task 4 score, one report.

METRICS maps a name to `fn(model, tok, corpus, **options)`, each returning a result with `.to_json()`
or a plain dict; `report.evaluate` runs them all on the original and edited model side by side.
"""
from __future__ import annotations


def _qa_recall(model, tok, corpus, max_new_tokens: int = 32, batch_size: int = 32) -> dict:
    from ..data.records import questions
    from .generation import qa_accuracy

    return {s: qa_accuracy(model, tok, questions(corpus.split(s)), max_new_tokens, batch_size)
            for s in ("forget", "retain") if corpus.split(s)}


def _mia(model, tok, corpus, **kw):
    from .mia import corpus_mia

    return corpus_mia(model, tok, corpus, **kw)


def _mmlu(model, tok, corpus, source=None, **kw):
    from .mmlu import evaluate_mmlu, load_mmlu

    return evaluate_mmlu(model, tok, load_mmlu(source, corpus), **kw)


def _semeval(model, tok, corpus, **kw):
    from .semeval import semeval_score

    return semeval_score(model, tok, corpus, **kw)


METRICS = {"qa_recall": _qa_recall, "mia": _mia, "mmlu": _mmlu, "semeval": _semeval}


def evaluate(*args, **kwargs):
    """See workbench.evaluation.report.evaluate."""
    from .report import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
