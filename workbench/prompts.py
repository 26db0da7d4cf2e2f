"""A prompt and its answer made ready for a forward pass, and the metric read from the logits of that pass.

Metrics (`metric_fn`), each a number per row:
  prob           probability of the first answer token after the prompt
  logprob_mean   mean log-probability of the answer's tokens, teacher-forced (the input is the prompt plus the answer
                 minus its last token); `logprob` is another name for it, kept because the patch CLI and saved results
                 use it
  logit_diff     logit of the answer's first token minus the wrong answer's (activation patching)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import TraceError

METRIC_ALIASES = {"logprob": "logprob_mean"}  # another name -> the metric it computes


@dataclass
class Prepared:
    """A tokenised prompt + answer, checked."""
    prompt: str
    answer: str
    prompt_ids: list[int]              # [n_prompt]
    answer_ids: list[int]              # [n_answer], the answer's tokens as they appear after the prompt
    tokens: list[str]                  # readable prompt tokens
    subject_range: tuple[int, int] | None = None  # [start, end) token positions

    @property
    def n_prompt(self) -> int:
        return len(self.prompt_ids)

    def input_ids(self, metric: str, device) -> torch.Tensor:
        """[1, pos]: the prompt, plus the answer minus its last token when the metric reads the whole answer."""
        ids = self.prompt_ids + (self.answer_ids[:-1] if METRIC_ALIASES.get(metric, metric) == "logprob_mean" else [])
        return torch.tensor([ids], device=device)


def continuation(prompt: str, answer: str) -> str:
    """The text after the prompt: `answer`, separated by one space (the corpus convention `input + ' ' + output`)."""
    return answer if answer[:1].isspace() or prompt[-1:].isspace() else " " + answer


def prepare(model, tok, prompt: str, answer: str, subject: str | None = None) -> Prepared:
    """Tokenise and check a prompt/answer(/subject); raises TraceError before any forward pass."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise TraceError(f"empty prompt {prompt!r}")
    if not isinstance(answer, str) or not answer.strip():
        raise TraceError(f"empty answer {answer!r} for prompt {prompt!r}")
    enc = tok(prompt, return_offsets_mapping=True)
    prompt_ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    full = list(tok(prompt + continuation(prompt, answer))["input_ids"])
    if full[:len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
        raise TraceError(f"answer {answer!r} tokenises differently in context: prompt {prompt!r} alone is "
                         f"{tok.convert_ids_to_tokens(prompt_ids)}, but prompt + answer starts "
                         f"{tok.convert_ids_to_tokens(full[:len(prompt_ids)])}; choose a prompt/answer split at a "
                         f"token boundary")
    answer_ids = full[len(prompt_ids):]
    # A whitespace-only first answer token (e.g. 'Ġ' before digits split one by one) says nothing about the
    # fact and is predicted with p ~ 1 even when corrupted: it joins the prompt, the metric reads the content.
    while len(answer_ids) > 1 and not tok.decode([answer_ids[0]]).strip():
        prompt_ids.append(answer_ids.pop(0))
    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len is not None and len(full) > max_len:
        raise TraceError(f"prompt {prompt[:80]!r}... + answer is {len(full)} tokens, longer than the model's context "
                         f"of {max_len}")
    sub = None
    if subject is not None:
        start = prompt.rfind(subject) if subject else -1
        if start < 0:
            raise TraceError(f"subject {subject!r} not found in prompt {prompt!r}")
        end = start + len(subject)
        # tokens whose character span overlaps the subject's (a leading-space token counts)
        pos = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
        if not pos:
            raise TraceError(f"subject {subject!r} covers no token of prompt {prompt!r}")
        sub = (pos[0], pos[-1] + 1)
    tokens = [tok.decode([i]) for i in prompt_ids]
    return Prepared(prompt, answer, prompt_ids, answer_ids, tokens, sub)


def metric_fn(name: str, answer_ids: list[int], wrong_ids: list[int] | None = None) -> tuple[Callable, int]:
    """(fn(logits [rows, keep, vocab]) -> [rows], keep): the metric and how many last-position logits it reads."""
    if name == "prob":
        return (lambda lg: lg[:, -1].float().softmax(-1)[:, answer_ids[0]]), 1
    if METRIC_ALIASES.get(name, name) == "logprob_mean":
        target = torch.tensor(answer_ids)  # [n_answer]; logits[:, j] predicts answer_ids[j]

        def mean_logprob(lg):
            lp = lg.float().log_softmax(-1)  # [rows, n_answer, vocab]
            return lp.gather(-1, target.to(lg.device)[None, :, None].expand(lg.shape[0], -1, 1))[..., 0].mean(-1)
        return mean_logprob, len(answer_ids)
    if name == "logit_diff":
        if not wrong_ids:
            raise TraceError("metric 'logit_diff' needs a wrong answer (wrong_answer=...)")
        return (lambda lg: lg[:, -1, answer_ids[0]].float() - lg[:, -1, wrong_ids[0]].float()), 1
    raise TraceError(f"unknown metric {name!r}; expected one of prob, logprob_mean, logit_diff")
