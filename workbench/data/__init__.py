"""Data layer: LUME-format records, the LUME loader, the synthetic generator, MMLU-format questions."""
from .lume import guess_subject, load_lume, load_lume_hub, read_jsonl
from .multiple_choice import LETTERS, MCQuestion, format_question, general_knowledge, subject_header
from .records import SPLITS, Corpus, DataError, Record, completions, kind_of, questions
from .synthetic import SyntheticSpec, generate

__all__ = ["Corpus", "DataError", "LETTERS", "MCQuestion", "Record", "SPLITS", "SyntheticSpec", "completions",
           "format_question", "general_knowledge", "generate", "guess_subject", "kind_of", "load_lume",
           "load_lume_hub", "questions", "read_jsonl", "subject_header"]
