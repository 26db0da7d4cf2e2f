"""MMLU-format multiple choice in two formulations, each scored as lm-evaluation-harness scores it.

letter (SemEval-2025 Task 4 / Open-Instruct, lm-eval's `mmlu`): k-shot, shots = the first k dev questions of
the same subject:

    The following are multiple choice questions (with answers) about {subject}.\\n\\n
    {shot question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer: {letter}\\n\\n      (k times)
    {question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:

Prediction = argmax of the next-token logits over the tokens " A", " B", " C", " D"
(each must be one token). Accuracy is micro-averaged over questions, and per subject.
Open-Instruct's header has a double space ("about  abstract algebra", from its format_subject);
we write one space, as lm-eval does.

cloze (lm-eval's `mmlu_continuation`, the formulation AI2's OLMES uses for small models, which cannot yet
answer by letter):

    The following are questions (with answers) about {subject}.\n\n
    Question: {shot question}\nAnswer: {shot answer text}\n\n                            (k times)
    Question: {question}\nAnswer:

Each choice's text is scored as the continuation " {choice}" by its summed log-likelihood; `acc` takes the
argmax, `acc_norm` the argmax of the log-likelihood divided by the choice's length in characters. The
continuation's tokens are those of tokenize(prompt + continuation) past tokenize(prompt), as lm-eval's
HFLM splits a (context, continuation) pair.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..batching import right_pad
from ..data.multiple_choice import LETTERS, MCQuestion, cloze_header, cloze_question, format_question, subject_header
from ..errors import ConfigError, DataError
from .metric import Metric

SEMEVAL_MMLU_GATE = 0.371  # 7B submissions needed MMLU accuracy >= this to be ranked (the official script's test)
FORMULATIONS = ("letter", "cloze")


def passes_gate(accuracy: float) -> bool:
    """The SemEval-2025 Task 4 MMLU gate as the official scoring script applies it: accuracy >= 0.371."""
    return accuracy >= SEMEVAL_MMLU_GATE


# --- prompts ----------------------------------------------------------------------------------------

def letter_token_ids(tok) -> list[int]:
    """Token ids of " A".." D"; an error if the tokenizer splits a letter into several tokens."""
    ids = []
    for letter in LETTERS:
        enc = tok(f" {letter}", add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ConfigError(f"tokenizer encodes {' ' + letter!r} as {len(enc)} tokens {enc}; MMLU letter scoring "
                              f"needs each of ' A'..' D' to be a single token")
        ids.append(enc[0])
    return ids


def few_shot_pool(questions: Sequence[MCQuestion]) -> dict[str, list[MCQuestion]]:
    """Dev questions per subject, in their original order (shots are the first k)."""
    pool: dict[str, list[MCQuestion]] = {}
    for q in questions:
        if q.split == "dev":
            pool.setdefault(q.subject, []).append(q)
    return pool


def build_prompt(q: MCQuestion, shots: Sequence[MCQuestion] = ()) -> str:
    return subject_header(q.subject) + "".join(format_question(s, with_answer=True) for s in shots) \
        + format_question(q)


def build_cloze_prompt(q: MCQuestion, shots: Sequence[MCQuestion] = ()) -> str:
    """lm-eval's mmlu_continuation prompt: its description, shots as 'Question/Answer: text', then the question."""
    return cloze_header(q.subject) + "".join(cloze_question(s, with_answer=True) for s in shots) + cloze_question(q)


# --- scoring ----------------------------------------------------------------------------------------

@dataclass
class MMLUResult:
    accuracy: float                      # micro average over questions (lm-eval's acc)
    per_subject: dict[str, float]
    n: int
    shots: int
    formulation: str = "letter"
    accuracy_norm: float | None = None   # cloze: length-normalised accuracy (lm-eval's acc_norm)
    n_per_subject: dict[str, int] = field(default_factory=dict)
    shots_used: dict[str, int] = field(default_factory=dict)  # fewer than `shots` if a subject's dev set is short
    predictions: list[int] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)

    @property
    def macro_accuracy(self) -> float:
        return sum(self.per_subject.values()) / len(self.per_subject) if self.per_subject else float("nan")

    def to_json(self, with_predictions: bool = False) -> dict:
        d = dict(self.__dict__, macro_accuracy=self.macro_accuracy, gate=SEMEVAL_MMLU_GATE,
                 passes_gate=passes_gate(self.accuracy))
        if not with_predictions:
            d.pop("predictions"), d.pop("answers")
        return d


@torch.no_grad()
def letter_logits(model, tok, prompts: Sequence[str], batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """[n, 4] next-token logits of " A".." D" after each prompt (right padding; last real position read). Under
    `accelerate launch` each process scores its share of the batches and every process gets them all."""
    from .. import distributed

    letters = letter_token_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    ids = [tok(p)["input_ids"] for p in prompts]
    found: dict[int, torch.Tensor] = {}
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for start in tqdm(distributed.split(range(0, len(order), batch_size), model), desc="mmlu", disable=not progress):
        idx = order[start:start + batch_size]
        input_ids, mask = right_pad([ids[i] for i in idx], pad)  # [batch, pos] each
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits  # [batch, pos, vocab]
        last = torch.tensor([len(ids[i]) - 1 for i in idx], device=logits.device)
        final = logits[torch.arange(len(idx), device=logits.device), last]  # [batch, vocab]
        found.update(zip(idx, final[:, letters].float().cpu()))
    found = distributed.gather(found)
    return torch.stack([found[i] for i in range(len(prompts))]) if prompts else torch.empty(0, 4)


def continuation_ids(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split as lm-eval's HFLM splits a pair: trailing spaces of the context move
    to the continuation, then the continuation is what tokenize(context + continuation) adds past
    tokenize(context). No special tokens, as HFLM adds none for a causal model without add_bos_token."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return whole[:len(ctx)], whole[len(ctx):]


@torch.no_grad()
def continuation_logliks(model, tok, pairs: Sequence[tuple[str, str]], batch_size: int = 16,
                         progress: bool = False) -> list[float]:
    """Summed log-likelihood of each continuation given its context, batched with right padding. Under
    `accelerate launch` each process scores its share of the batches and every process gets them all."""
    from .. import distributed

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    max_len = getattr(model.config, "max_position_embeddings", None)
    seqs = []
    for i, (context, continuation) in enumerate(pairs):
        ctx, cont = continuation_ids(tok, context, continuation)
        if not cont:
            raise ConfigError(f"choice {continuation!r} of item {i} adds no token to its prompt")
        ids = (ctx + cont)[:-1]  # the input; its last len(cont) positions predict the continuation
        if max_len and len(ids) > max_len:  # lm-eval keeps the rightmost tokens
            ids = ids[-max_len:]
        seqs.append((ids, cont))
    found: dict[int, float] = {}
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    for start in tqdm(distributed.split(range(0, len(order), batch_size), model), desc="mmlu cloze",
                      disable=not progress):
        idx = order[start:start + batch_size]
        input_ids, mask = right_pad([seqs[i][0] for i in idx], pad)  # [batch, pos] each
        logp = torch.log_softmax(model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float(),
                                 dim=-1)  # [batch, pos, vocab]
        for b, i in enumerate(idx):
            ids, cont = seqs[i]
            pos = torch.arange(len(ids) - len(cont), len(ids), device=logp.device)
            found[i] = float(logp[b, pos, torch.tensor(cont, device=logp.device)].sum())
    found = distributed.gather(found)
    return [found[i] for i in range(len(seqs))]


def _prompts(test: Sequence[MCQuestion], pool: dict, shots: int, build, tok, max_length: int | None):
    """One prompt per question with up to `shots` shots, dropping shots while it is longer than max_length
    (as Open-Instruct does); also the fewest shots used per subject."""
    prompts, used = [], {}
    for q in test:
        k = min(shots, len(pool.get(q.subject, [])))
        prompt = build(q, pool.get(q.subject, [])[:k])
        while max_length and k > 0 and len(tok(prompt)["input_ids"]) > max_length:
            k -= 1
            prompt = build(q, pool[q.subject][:k])
        used[q.subject] = min(used.get(q.subject, k), k)
        prompts.append(prompt)
    return prompts, used


def evaluate_mmlu(model, tok, questions: Sequence[MCQuestion], shots: int = 5, split: str = "test",
                  batch_size: int = 16, limit: int | None = None, max_length: int | None = None,
                  formulation: str = "letter", progress: bool = False) -> MMLUResult:
    """Accuracy on the `split` questions, k-shot from the dev questions of each subject, in the `letter` or
    `cloze` formulation (module docstring).

    If a prompt is longer than `max_length` tokens (default: the model's max positions), shots are
    dropped one at a time, as Open-Instruct does."""
    if formulation not in FORMULATIONS:
        raise ConfigError(f"unknown MMLU formulation {formulation!r}; expected one of {FORMULATIONS}")
    if shots < 0:
        raise ConfigError(f"shots must be >= 0, got {shots}")
    test = [q for q in questions if q.split == split]
    if not test:
        raise DataError(f"no MMLU-format questions with split {split!r} (found splits "
                        f"{sorted({q.split for q in questions})})")
    if limit:
        test = test[:limit]
    pool = few_shot_pool(questions)
    if shots and not pool:
        raise DataError(f"{shots}-shot MMLU needs 'dev' questions for the few-shot examples; none found "
                        f"(use --mmlu-shots 0 or provide a dev split)")
    max_length = max_length or getattr(model.config, "max_position_embeddings", None)
    norm_preds = None
    if formulation == "letter":
        letter_token_ids(tok)  # fail on a bad tokenizer before any forward pass
        prompts, used = _prompts(test, pool, shots, build_prompt, tok, max_length)
        preds = letter_logits(model, tok, prompts, batch_size, progress).argmax(-1).tolist()
    else:
        prompts, used = _prompts(test, pool, shots, build_cloze_prompt, tok, max_length)
        pairs = [(p, f" {c}") for p, q in zip(prompts, test) for c in q.choices]
        ll = torch.tensor(continuation_logliks(model, tok, pairs, batch_size, progress)).view(len(test), 4)
        lengths = torch.tensor([[float(len(c)) for c in q.choices] for q in test])  # characters, as lm-eval
        preds, norm_preds = ll.argmax(-1).tolist(), (ll / lengths).argmax(-1).tolist()
    answers = [q.answer for q in test]
    per: dict[str, list[int]] = {}
    for q, p in zip(test, preds):
        per.setdefault(q.subject, []).append(int(p == q.answer))
    return MMLUResult(
        accuracy=sum(int(p == a) for p, a in zip(preds, answers)) / len(test),
        per_subject={s: sum(v) / len(v) for s, v in sorted(per.items())},
        n=len(test), shots=shots, formulation=formulation,
        accuracy_norm=None if norm_preds is None else sum(int(p == a) for p, a in zip(norm_preds, answers)) / len(test),
        n_per_subject={s: len(v) for s, v in sorted(per.items())},
        shots_used=used, predictions=preds, answers=answers,
    )


# --- data sources -----------------------------------------------------------------------------------

def _answer_index(value, where: str) -> int:
    if isinstance(value, str) and value.strip().upper() in LETTERS:
        return LETTERS.index(value.strip().upper())
    try:
        i = int(value)
    except (TypeError, ValueError):
        i = -1
    if not 0 <= i < 4:
        raise DataError(f"{where}: answer {value!r} is neither a letter A-D nor an index 0-3")
    return i


def _question(row: dict, where: str, split: str, subject: str | None = None) -> MCQuestion:
    for key in ("question", "choices", "answer"):
        if key not in row:
            raise DataError(f"{where}: missing field {key!r}; MMLU rows need question, choices, answer (and subject)")
    choices = list(row["choices"])
    if len(choices) != 4:
        raise DataError(f"{where}: expected 4 choices, got {len(choices)}")
    return MCQuestion(subject or row.get("subject") or "general", str(row["question"]).strip(),
                      tuple(str(c) for c in choices), _answer_index(row["answer"], where), row.get("split", split))


def load_hendrycks(directory: str | Path, subjects: Sequence[str] | None = None) -> list[MCQuestion]:
    """The original MMLU layout: dev/{subject}_dev.csv and test/{subject}_test.csv (no header;
    question, A, B, C, D, answer letter)."""
    directory = Path(directory)
    test_dir = directory / "test"
    if not test_dir.is_dir():
        raise DataError(f"MMLU directory {directory} has no test/ folder (expected dev/{{subject}}_dev.csv and "
                        f"test/{{subject}}_test.csv, the hendrycks layout)")
    found = sorted(p.name[:-len("_test.csv")] for p in test_dir.glob("*_test.csv"))
    subjects = list(subjects) if subjects else found
    missing = sorted(set(subjects) - set(found))
    if missing:
        raise DataError(f"MMLU directory {directory}: no test file for subject(s) {missing}")
    out = []
    for subject in subjects:
        for split, path in (("dev", directory / "dev" / f"{subject}_dev.csv"),
                            ("test", test_dir / f"{subject}_test.csv")):
            if not path.is_file():
                continue
            with path.open(encoding="utf-8", newline="") as fh:
                for lineno, row in enumerate(csv.reader(fh), 1):
                    if len(row) != 6:
                        raise DataError(f"{path}:{lineno}: expected 6 columns (question, A, B, C, D, answer), "
                                        f"got {len(row)}")
                    out.append(_question({"question": row[0], "choices": row[1:5], "answer": row[5]},
                                         f"{path}:{lineno}", split, subject))
    return out


def load_file(path: str | Path, split: str = "test") -> list[MCQuestion]:
    """jsonl / json-lines or parquet with question, choices, answer, subject (and optionally split) columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MMLU file {path} does not exist")
    if path.suffix == ".parquet":
        import pandas as pd

        rows = pd.read_parquet(path).to_dict("records")
    elif path.suffix in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    else:
        raise DataError(f"MMLU file {path}: expected .jsonl, .json or .parquet")
    return [_question(r, f"{path}:{i + 1}", split) for i, r in enumerate(rows)]


def load_hub(name: str = "cais/mmlu", config: str = "all") -> list[MCQuestion]:
    """cais/mmlu (test + dev) through `datasets`: needs network or a local HF cache."""
    try:
        import datasets

        ds = datasets.load_dataset(name, config)
    except Exception as e:  # offline, missing cache, auth: all mean "not available here"
        raise DataError(f"could not load {name!r} ({config}) through `datasets` ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}); offline, pass a local hendrycks "
                        f"directory or a jsonl/parquet file instead") from None
    out = []
    for split in ("dev", "test"):
        if split in ds:
            out += [_question(r, f"{name}[{split}][{i}]", split) for i, r in enumerate(ds[split])]
    return out


def load_mmlu(source: str | Path | None = None, corpus=None) -> list[MCQuestion]:
    """None/'organism' -> corpus.mmlu; a hendrycks directory; a .jsonl/.parquet file; 'hub:cais/mmlu[:config]'."""
    if source in (None, "organism"):
        if corpus is None or not corpus.mmlu:
            raise DataError("no MMLU-format questions: the corpus has none (the micro organism has no MMLU set); "
                            "pass a hendrycks directory, a jsonl/parquet file or hub:cais/mmlu")
        return list(corpus.mmlu)
    source = str(source)
    if source.startswith("hub:"):
        name, _, config = source[4:].partition(":")
        return load_hub(name, config or "all")
    path = Path(source)
    if path.is_dir():
        return load_hendrycks(path)
    if path.is_file():
        return load_file(path)
    raise DataError(f"MMLU source {source!r} is not a directory, a file, 'organism' or 'hub:<dataset>'")


# --- lm-evaluation-harness cross-check ----------------------------------------------------------------

def lm_eval_continuation_template() -> Path:
    """lm-eval's own mmlu_continuation template (the file its `mmlu_*_continuation` tasks include)."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "continuation" / "_continuation_template_yaml"
    if not path.is_file():
        raise ConfigError(f"this lm-eval ({lm_eval.__file__}) has no mmlu continuation template at {path}")
    return path


def export_lm_eval_tasks(questions: Sequence[MCQuestion], out_dir: str | Path, prefix: str = "wb_mmlu",
                         formulation: str = "letter") -> list[str]:
    """One lm-eval task per subject (local jsonl + YAML) scoring `formulation` as we do; returns the task names.

    letter: a task written out with our prompt. cloze: a task that includes lm-eval's own mmlu_continuation
    template and only points it at the local files, so the cross-check is against lm-eval's formulation itself.
    Per subject, because lm-eval takes the first n shots of the whole dev split."""
    if formulation not in FORMULATIONS:
        raise ConfigError(f"unknown MMLU formulation {formulation!r}; expected one of {FORMULATIONS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    by_subject: dict[str, dict[str, list]] = {}
    for q in questions:
        by_subject.setdefault(q.subject, {}).setdefault(q.split, []).append(q)
    for subject, splits in sorted(by_subject.items()):
        if "test" not in splits:
            continue
        name = f"{prefix}_{subject}"
        files = {}
        for split in ("test", "dev"):
            path = out_dir / f"{name}_{split}.jsonl"
            path.write_text("".join(json.dumps(q.to_json()) + "\n" for q in splits.get(split, [])), encoding="utf-8")
            files[split] = path
        data = (f"dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n"
                f"    test: {files['test']}\n    dev: {files['dev']}\n")
        if formulation == "cloze":
            header = cloze_header(subject).replace("\n", "\\n")
            text = (f"include: {lm_eval_continuation_template()}\ntask: {name}\n{data}"
                    f'description: "{header}"\n')
        else:
            header = subject_header(subject).replace("\n", "\\n")
            text = (f"task: {name}\n{data}"
                    "test_split: test\nfewshot_split: dev\nfewshot_config:\n  sampler: first_n\n"
                    "output_type: multiple_choice\n"
                    'doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}'
                    '\\nD. {{choices[3]}}\\nAnswer:"\n'
                    'doc_to_choice: ["A", "B", "C", "D"]\ndoc_to_target: answer\n'
                    f'description: "{header}"\n'
                    "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
        (out_dir / f"{name}.yaml").write_text(text, encoding="utf-8")
        names.append(name)
    return names


# --- registry entry -----------------------------------------------------------------------------------

def limit_questions(questions, limit):
    """At most `limit` test questions per (subject, split), and the whole dev split (the few-shot pool)."""
    if not limit:
        return list(questions)
    seen: dict[tuple, int] = {}
    out = []
    for q in questions:
        key = (q.subject, q.split)
        if q.split == "dev" or seen.get(key, 0) < limit:  # keep the whole few-shot pool
            seen[key] = seen.get(key, 0) + 1
            out.append(q)
    return out


class MMLU(Metric):
    """Registry entry: MMLU-format accuracy in both formulations (`mmlu`: the one the final score takes); the
    verdict's utility line (retain recall, every retain SemEval term and MMLU against the lower of twin and
    original)."""
    name = "mmlu"

    def prepare(self, tok, ctx) -> tuple[list | None, str | None]:
        """(questions, why none): resolved once, before any heavy work, so a bad source fails fast."""
        cfg = ctx.config
        questions, note = None, None
        try:
            questions = limit_questions(load_mmlu(cfg.mmlu_source, ctx.corpus), cfg.limit)
        except DataError as e:
            if cfg.mmlu_source is not None:
                raise
            note = str(e)
        if questions and cfg.mmlu_source is not None and cfg.formulation() == "letter":
            letter_token_ids(tok)  # an explicit MMLU source the tokenizer cannot score: fail now
        return questions, note

    def compute(self, model, tok, ctx, out: dict) -> None:
        cfg = ctx.config
        questions, note = ctx.prepared[self.name]
        t0 = time.perf_counter()
        out["mmlu"], out["mmlu_formulations"] = None, {}
        if questions:
            for formulation in FORMULATIONS:
                try:
                    out["mmlu_formulations"][formulation] = evaluate_mmlu(
                        model, tok, questions, shots=cfg.shots(), batch_size=cfg.batch_size, formulation=formulation,
                        progress=ctx.progress).to_json()
                except ConfigError as e:
                    if cfg.mmlu_source is not None and formulation == cfg.formulation():  # asked for: a real error
                        raise
                    out["notes"].append(f"MMLU ({formulation}) skipped: {e}")
            out["mmlu"] = out["mmlu_formulations"].get(cfg.formulation())
        elif note:
            out["notes"].append(f"MMLU skipped: {note}")
        out["seconds_mmlu"] = time.perf_counter() - t0

    def rows(self, metrics: dict) -> list[tuple[str, tuple]]:
        return [("MMLU letter accuracy", ("mmlu_formulations", "letter", "accuracy")),
                ("MMLU cloze accuracy", ("mmlu_formulations", "cloze", "accuracy")),
                ("MMLU cloze acc_norm", ("mmlu_formulations", "cloze", "accuracy_norm")),
                ("MMLU in the final score", ("mmlu", "accuracy"))]

    def criteria(self, original, edited, twin, result, cfg, trained=()) -> list:
        from .verdict import utility

        return [utility(original, edited, twin, cfg.tolerances())]
