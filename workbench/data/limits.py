"""A bound on how long one record may be, in tokens, applied where data is loaded and before any model work.

Generation, tracing and training all hold a record's tokens times the model width (and, generating, its
attention over them) at once: one 10 MB line asked a CPU run for 23.7 GB. A record longer than `max_tokens`
(input, a space and output, as the model reads it) is refused with a DataError naming it, or, with
on_long="truncate", cut with a warning naming it: the input keeps its last tokens (those next to the answer),
the output its first ones.

    corpus = bound_records(corpus, tok, max_tokens=2048)                       # DataError on a longer record
    corpus = bound_records(corpus, tok, max_tokens=2048, on_long="truncate")   # cut, with a warning
"""
from __future__ import annotations

import dataclasses
import warnings

from ..errors import DataError, quote
from .records import SPLITS, Corpus, Record

MAX_RECORD_TOKENS = 2048
ON_LONG = ("error", "truncate")
# characters tokenised to decide that a record is too long: no byte-level BPE token of ours spans more than this
# many characters per token on average, so a longer prefix is never needed to see `max_tokens` tokens
_CHARS_PER_TOKEN = 32


class LongRecordWarning(UserWarning):
    """A record was cut to the length bound."""


def _n_tokens(tok, text: str, max_tokens: int) -> int:
    """Token count of `text`, exact up to max_tokens + 1 (a huge text is only tokenised as far as needed)."""
    head = text[: (max_tokens + 1) * _CHARS_PER_TOKEN]
    n = len(tok(head, add_special_tokens=False)["input_ids"])
    if n > max_tokens or len(head) == len(text):
        return n
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _truncate(tok, r: Record, max_tokens: int) -> Record:
    inp = tok(r.input, add_special_tokens=False)["input_ids"]
    out = tok(" " + r.output, add_special_tokens=False)["input_ids"]
    keep_out = min(len(out), max(max_tokens // 4, max_tokens - len(inp)))
    keep_in = max(1, max_tokens - keep_out)
    new_in = tok.decode(inp[-keep_in:]).strip() or r.input[:1]
    new_out = tok.decode(out[:keep_out]).strip() or r.output[:1]
    subject = r.subject if r.subject is not None and r.subject in new_in else None
    return dataclasses.replace(r, input=new_in, output=new_out, subject=subject)


def check_bound(max_tokens, on_long: str) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
        raise DataError(f"the record length bound must be an integer >= 2 tokens, got {max_tokens!r}")
    if on_long not in ON_LONG:
        raise DataError(f"long records: {on_long!r} is not one of {ON_LONG}")


def bound_records(corpus: Corpus, tok, max_tokens: int = MAX_RECORD_TOKENS, on_long: str = "error") -> Corpus:
    """`corpus` with every record within `max_tokens` tokens (see the module docstring)."""
    check_bound(max_tokens, on_long)
    changes = {}
    for split in SPLITS:
        records = getattr(corpus, split, None) or []
        for i, r in enumerate(records):
            n = _n_tokens(tok, f"{r.input} {r.output}", max_tokens)
            if n <= max_tokens:
                continue
            if on_long == "error":
                raise DataError(f"record {quote(r.id)} ({split} of {corpus.source}) is over the bound of {max_tokens} "
                                f"tokens (at least {n}); raise the bound "
                                "(--max-record-tokens / max_record_tokens), cut it (--long-records truncate), or remove it")
            cut = _truncate(tok, r, max_tokens)
            warnings.warn(f"record {quote(r.id)} ({split}) is over {max_tokens} tokens; cut to the bound"
                          + ("" if cut.subject == r.subject else " (its subject was cut off: it is no longer traced)"),
                          LongRecordWarning, stacklevel=2)
            changes.setdefault(split, list(records))[i] = cut
    return dataclasses.replace(corpus, **changes) if changes else corpus
