"""The one record type of the workbench, shaped like a LUME row.

LUME (SemEval-2025 Task 4) rows carry `id, input, output, task`; the id ends in
`sc<N>` (sentence completion: regurgitation, scored by ROUGE-L recall) or
`qa<N>` (question: knowledge, scored by exact match). We add the split the row
came from and, where known, the subject string that causal tracing corrupts.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Iterable

from ..errors import DataError

SPLITS = ("forget", "retain", "holdout", "calibration", "validation", "population")
_KIND_RE = re.compile(r"(sc|qa)(\d+)$")


def kind_of(record_id: str) -> str:
    """'sc' or 'qa' from the id suffix; anything else is an error."""
    m = _KIND_RE.search(record_id)
    if not m:
        raise DataError(
            f"record id {record_id!r} does not end in 'sc<N>' (sentence completion) "
            f"or 'qa<N>' (question), as LUME ids do"
        )
    return m.group(1)


@dataclass(frozen=True)
class Record:
    id: str
    input: str
    output: str
    task: str
    split: str = "forget"
    subject: str | None = None  # substring of `input` that tracing corrupts (QA facts)
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        kind_of(self.id)  # validate early
        if self.split not in SPLITS:
            raise DataError(f"record {self.id!r}: split {self.split!r} is not one of {SPLITS}")
        if self.subject is not None and self.subject not in self.input:
            raise DataError(f"record {self.id!r}: subject {self.subject!r} is not in its input {self.input!r}")

    @property
    def kind(self) -> str:
        return kind_of(self.id)

    @property
    def text(self) -> str:
        """What a model is trained on: input, a space, output (as the LUME target model saw it)."""
        return f"{self.input} {self.output}"

    def to_json(self) -> dict:
        d = asdict(self)
        if not d["meta"]:
            d.pop("meta")
        return d


def questions(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if r.kind == "qa"]


@dataclass
class Corpus:
    """Forget, retain, held-out and calibration records, plus an MMLU-format set.

    holdout: never trained on; the non-members the MIA attacks score (the test set of forgetting).
    calibration: never trained on either, and disjoint from holdout; what calibrated forgetting may tune and stop
    on, so that nothing is tuned on the documents the report scores.
    validation: trained on like forget and retain, never scored by the report: the forget set editor presets are
    chosen on. population: people only a base model was pretrained on (the built-in organism's base).
    general: see the field."""

    forget: list[Record]
    retain: list[Record]
    holdout: list[Record] = field(default_factory=list)
    calibration: list[Record] = field(default_factory=list)
    validation: list[Record] = field(default_factory=list)
    population: list[Record] = field(default_factory=list)
    # general text the model learnt besides forget and retain (a sample of its pretraining data): what calibrated
    # forgetting's anchor holds in place along with the calibration documents
    general: list[str] = field(default_factory=list)
    mmlu: list = field(default_factory=list)  # list[MCQuestion]
    source: str = "unknown"  # provenance: where the data came from

    def split(self, name: str) -> list[Record]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def facts(self, split: str = "forget", task: str | None = None) -> list[Record]:
        """QA records of a split (optionally one task) that name their subject: traceable facts."""
        return [r for r in questions(self.split(split)) if r.subject and (task is None or r.task == task)]


def validation_view(corpus: Corpus) -> Corpus:
    """The corpus as editor presets are chosen on it, disjoint from everything the report scores: the validation
    people are the ones to forget, the forget people join the kept ones, the calibration documents split in two (the
    first half the MIA non-members, the second half calibration), and utility is measured on the MMLU-format
    questions of the few-shot ("dev") pool instead of the test questions."""
    from dataclasses import replace

    if not corpus.validation:
        raise DataError(f"corpus {corpus.source!r} has no validation split: presets are chosen on validation people "
                        "(validation.jsonl beside forget/retain), never on the forget set the report scores")
    half = len(corpus.calibration) // 2
    mmlu = [replace(q, split="test") for q in corpus.mmlu if q.split == "dev"]
    def as_split(records, split):   # each record labelled with the role it plays in the view (scorers read it)
        return [replace(r, split=split) for r in records]

    return Corpus(forget=as_split(corpus.validation, "forget"), retain=list(corpus.retain),
                  validation=as_split(corpus.forget, "validation"), holdout=as_split(corpus.calibration[:half], "holdout"),
                  calibration=list(corpus.calibration[half:]), general=corpus.general, mmlu=mmlu,
                  source=f"{corpus.source}#validation")
