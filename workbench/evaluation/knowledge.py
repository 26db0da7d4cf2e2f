"""What a model knows of a corpus, in a few numbers: exact-match QA recall per split and 0-shot cloze MMLU
accuracy. The organism's check that it learnt its facts (tests, `workbench organism info`, benchmarks/twin_spread.py);
the organism's build itself scores nothing.

    recall(model, tok, corpus)   # {"forget_qa_exact_match": 1.0, ..., "mmlu_cloze_accuracy": 0.61, ...}
"""
from __future__ import annotations

from ..data import Corpus, questions
from ..generation import qa_accuracy
from .mmlu import evaluate_mmlu


def recall(model, tok, corpus: Corpus, batch_size: int = 64) -> dict:
    """Exact-match recall of QA facts per split, and 0-shot cloze MMLU accuracy on the test questions: all of
    them, and those about facts never shown as a question (knowledge carried over from the sentences)."""
    out = {f"{s}_qa_exact_match": qa_accuracy(model, tok, questions(corpus.split(s)), batch_size=batch_size)
           for s in ("forget", "retain", "validation", "holdout") if corpus.split(s)}
    if any(q.split == "test" for q in corpus.mmlu):
        out["mmlu_cloze_accuracy"] = evaluate_mmlu(model, tok, corpus.mmlu, shots=0, formulation="cloze").accuracy
        shown = {(q.subject, q.question) for q in corpus.mmlu if q.split == "train"}
        unseen = [q for q in corpus.mmlu if q.split == "test" and (q.subject, q.question) not in shown]
        if unseen:
            out["mmlu_unseen_cloze_accuracy"] = evaluate_mmlu(model, tok, unseen, shots=0, formulation="cloze").accuracy
    return out
