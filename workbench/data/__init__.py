"""Data layer: LUME-format records, the LUME loader, the synthetic generator, MMLU-format questions."""
from .lume import guess_subject, load_lume, load_lume_hub, read_jsonl
from .multiple_choice import LETTERS, MCQuestion, format_question, general_knowledge, subject_header
from ..errors import DataError
from .records import SPLITS, Corpus, Record, kind_of, questions
from .synthetic import SyntheticSpec, generate

__all__ = ["Corpus", "DataError", "LETTERS", "MCQuestion", "Record", "SPLITS", "SyntheticSpec",
           "format_question", "general_knowledge", "generate", "guess_subject", "kind_of", "load_lume",
           "load_lume_hub", "questions", "read_jsonl", "subject_header"]
