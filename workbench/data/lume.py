"""Load LUME-format jsonl (SemEval-2025 Task 4) from a local path or, when online, a hub dataset."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import DataError, quote
from .records import SPLITS, Corpus, Record

REQUIRED = ("id", "input", "output", "task")
# Capitalised word runs: "Tiffi Magenta", "West River"; used to guess a QA subject.
_NAME_RUN = re.compile(r"[A-Z][a-zA-Z\-]+(?:\s+[A-Z][a-zA-Z\-]+)+")


def guess_subject(question: str) -> str | None:
    """LUME rows name no subject; guess the first multi-word capitalised run (a person or place),
    preferring one in the possessive ("Tiffi Magenta's phone number")."""
    runs = [m for m in _NAME_RUN.finditer(question)
            if m.group().split()[0] not in {"What", "Who", "Where", "When", "Which", "In", "How", "The"}]
    possessive = [m for m in runs if question[m.end():m.end() + 2] == "'s"]
    pick = (possessive or runs or [None])[0]
    return pick.group() if pick else None


def with_guessed_subject(rec: Record) -> Record:
    if rec.subject is not None or rec.kind != "qa":
        return rec
    g = guess_subject(rec.input)
    return Record(**{**rec.__dict__, "subject": g}) if g else rec


def read_jsonl(path: str | Path, split: str, guess_subjects: bool = True) -> list[Record]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"LUME file {path} does not exist (expected a jsonl file with fields {REQUIRED})")
    records, first_line = [], {}
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                "LUME files are UTF-8 JSON lines") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in REQUIRED if k not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: missing field(s) {missing}; LUME rows need {list(REQUIRED)}")
            bad = [k for k in REQUIRED if not isinstance(row[k], str)]
            if bad:
                raise DataError(f"{path}:{lineno}: field(s) {bad} must be strings")
            subject = row.get("subject")
            if subject is not None and not (isinstance(subject, str) and subject.strip()):
                raise DataError(f"{path}:{lineno}: subject must be a non-empty string (or absent), got "
                                f"{quote(subject)}")
            empty = [k for k in REQUIRED if not row[k].strip()]
            if empty:
                raise DataError(f"{path}:{lineno}: field(s) {empty} are empty; LUME rows need non-empty {list(REQUIRED)}")
            unencodable = [k for k in (*REQUIRED, "subject") if isinstance(row.get(k), str) and not _encodable(row[k])]
            if unencodable:
                raise DataError(f"{path}:{lineno}: field(s) {unencodable} hold an unpaired UTF-16 surrogate escape")
            if subject is not None and subject not in row["input"]:  # Record says so too, quoting all of both
                raise DataError(f"{path}:{lineno}: subject {quote(subject)} is not in its input {quote(row['input'])}")
            if row["id"] in first_line:
                raise DataError(f"{path}:{lineno}: duplicate record id {quote(row['id'])} (first on line "
                                f"{first_line[row['id']]}); record ids must be unique")
            first_line[row["id"]] = lineno
            try:
                rec = Record(id=row["id"], input=row["input"], output=row["output"], task=row["task"],
                             split=split, subject=row.get("subject"))
                if guess_subjects:
                    rec = with_guessed_subject(rec)
            except DataError as e:
                raise DataError(f"{path}:{lineno}: {e}") from None
            records.append(rec)
    if not records:
        raise DataError(f"LUME file {path} has no records")
    return records


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_unique_ids(corpus: Corpus, where) -> None:
    """A record id names one record: the same id in two splits (forget and retain) is a DataError."""
    split_of: dict[str, str] = {}
    for split in SPLITS:
        for r in getattr(corpus, split):
            if r.id in split_of:
                raise DataError(f"record id {quote(r.id)} is in both {split_of[r.id]} and {split} of {where}; "
                                "record ids must be unique across splits")
            split_of[r.id] = split


def load_lume(path: str | Path, holdout: str | Path | None = None) -> Corpus:
    """A directory holding forget.jsonl and retain.jsonl (optionally holdout.jsonl: MIA non-members,
    calibration.jsonl: never-trained-on documents for calibrated forgetting, validation.jsonl and population.jsonl:
    see Corpus), or a single jsonl file."""
    path = Path(path)
    if path.is_dir():
        files = {s: path / f"{s}.jsonl" for s in SPLITS}
        for s in ("forget", "retain"):
            if not files[s].is_file():
                raise DataError(f"LUME directory {path} has no {s}.jsonl (expected forget.jsonl and retain.jsonl)")
        corpus = Corpus(**{s: read_jsonl(f, s) if s in ("forget", "retain") or f.is_file() else []
                           for s, f in files.items()}, source=str(path.resolve()))
    elif path.is_file():
        corpus = Corpus(forget=read_jsonl(path, "forget"), retain=[], source=str(path.resolve()))
    else:
        raise DataError(f"LUME data path {path} does not exist (expected a directory with forget.jsonl/retain.jsonl or a jsonl file)")
    if holdout is not None:
        corpus.holdout = read_jsonl(holdout, "holdout")
    check_unique_ids(corpus, path)
    return corpus


def load_lume_hub(repo_id: str, **kwargs) -> Corpus:
    """The LUME release on a hub, through `datasets` (needs network or a local HF cache)."""
    try:
        import datasets

        ds = datasets.load_dataset(repo_id, **kwargs)
    except Exception as e:  # network, auth, missing cache: all mean "not available here"
        raise DataError(f"could not load dataset {repo_id!r} through `datasets` ({type(e).__name__}: {e}); "
                        f"offline, pass a local directory with forget.jsonl/retain.jsonl instead") from None
    parts = {}
    for split in ("forget", "retain"):
        name = next((k for k in ds.keys() if k.startswith(split)), None)
        if name is None:
            raise DataError(f"dataset {repo_id!r} has no split starting with {split!r} (found {list(ds.keys())})")
        parts[split] = [with_guessed_subject(Record(id=r["id"], input=r["input"], output=r["output"],
                                                    task=r["task"], split=split)) for r in ds[name]]
    return Corpus(forget=parts["forget"], retain=parts["retain"], source=f"hub:{repo_id}")
