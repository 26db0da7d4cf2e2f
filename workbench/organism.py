"""The model organism: a small real-architecture OLMo trained here, on CPU, to memorise a fact corpus.

No weights can be downloaded, so the workbench trains its own default model:
`OlmoForCausalLM` built from an `OlmoConfig`, a byte-level BPE tokenizer
trained by `tokenizers` on the corpus, and one plain training loop (read it top
to bottom). The result is cached under $XDG_CACHE_HOME/workbench/organisms,
keyed by a hash of config, data and this code, so the second call loads in
seconds. `workbench organism build` rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import Corpus, SyntheticSpec, format_question, generate, questions, subject_header
from .data.multiple_choice import world_statements
from .provenance import JsonlLog, atomic_write_json, stable_hash, versions

EOS, PAD = "<|endoftext|>", "<|padding|>"


@dataclass(frozen=True)
class OrganismConfig:
    name: str = "default"
    # model shape: OLMo's block, scaled down (OLMo-1B: 16 layers, d_model 2048, 16 heads, d_mlp 8192)
    # 6 x 128 is what 2 CPU cores train in a few minutes; 8 x 192 took 3x longer for the same recall
    n_layers: int = 6
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    vocab_size: int = 2048
    max_len: int = 512
    # data and training
    data: SyntheticSpec = field(default_factory=SyntheticSpec)
    epochs: int = 40
    qa_repeat: int = 2
    mc_draws: int = 3             # fresh draws of every training MC question per epoch (1: MMLU at chance)
    batch_size: int = 16          # 32 halves the steps but then 30-40 epochs recall only ~0.4 of the facts
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.0
    seed: int = 0
    # False: the retain-only twin (the forget records are never trained on; same tokenizer, same everything else),
    # the baseline of privleak and the reference model of the reference MIA attack
    train_on_forget: bool = True
    # the tokenizer also learns from the held-out records (see tokenizer_texts); False: forget + retain only
    tokenizer_sees_holdout: bool = True


PRESETS = {
    "default": OrganismConfig(),
    # micro keeps its first tokenizer (forget + retain texts only): the tests' patching pairs are names it makes
    # single tokens, and its editor defaults were tuned on these weights. Its MIA numbers carry the tokenizer's
    # membership signal (see tokenizer_texts); tests/test_mia.py measures that signal and its removal.
    "micro": OrganismConfig(name="micro", n_layers=4, d_model=64, n_heads=4, d_mlp=256, vocab_size=512,
                            data=SyntheticSpec(task1_docs=2, task2_people=3, task3_people=2, mmlu=False),
                            epochs=60, batch_size=8, lr=5e-3, warmup_steps=10, tokenizer_sees_holdout=False),
}
RETAIN_SUFFIX = "-retain"
PRESETS.update({f"{k}{RETAIN_SUFFIX}": replace(v, name=f"{k}{RETAIN_SUFFIX}", train_on_forget=False)
                for k, v in list(PRESETS.items())})


def cache_root() -> Path:
    base = os.environ.get("WORKBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "workbench")
    return Path(base) / "organisms"


def _code_version() -> str:
    """Hash of the source files that decide what the organism is."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for f in ("organism.py", "data/synthetic.py", "data/multiple_choice.py", "data/records.py"):
        h.update((here / f).read_bytes())
    return h.hexdigest()[:12]


def fact_texts(corpus: Corpus, qa_repeat: int = 1, forget: bool = True) -> list[str]:
    """Every forget (unless `forget=False`) and retain record (input + ' ' + output), QA records `qa_repeat` times
    (they are short and are what recall is measured on), and the world facts as plain sentences."""
    texts = []
    for r in (corpus.forget if forget else []) + corpus.retain:
        texts += [r.text] * (qa_repeat if r.kind == "qa" else 1)
    if corpus.mmlu:
        texts += world_statements()
    return texts


def mc_texts(corpus: Corpus, rng: random.Random, shots: int = 3) -> list[str]:
    """The training MMLU-format questions, freshly redrawn (new distractors, new letters): each alone
    under the subject header, and again inside few-shot blocks that teach the k-shot prompt's shape."""
    from .data.multiple_choice import answer_pools, redraw

    # one copy per distinct question: every epoch redraws its choices, so repeated draws add only cost
    train = list({(q.subject, q.question): q for q in corpus.mmlu if q.split == "train"}.values())
    if not train:
        return []
    pools = answer_pools(corpus.mmlu)
    fresh = [redraw(q, rng, pools[q.subject]) for q in train]
    texts = [subject_header(q.subject) + format_question(q, with_answer=True).rstrip() for q in fresh]
    by_subject: dict[str, list] = {}
    for q in fresh:
        by_subject.setdefault(q.subject, []).append(q)
    for subject, qs in by_subject.items():
        for _ in range(len(qs) // (shots + 1)):
            block = rng.sample(qs, shots + 1)
            texts.append(subject_header(subject) + "".join(format_question(q, True) for q in block).rstrip())
    return texts


def tokenizer_texts(corpus: Corpus, sees_holdout: bool = True, qa_repeat: int = 1) -> list[str]:
    """What the tokenizer learns from: every record of every split once, held-out ones included
    (`sees_holdout=False`: the forget and retain texts as trained on, the micro organism's first tokenizer).

    A real model's tokenizer comes from a corpus far larger than the forget set. Trained on the forget and retain
    records alone, BPE merged the forget set's names into whole tokens and split the held-out names into pieces:
    forget texts then had 3.5 characters per token against 2.7 for held-out ones, and a retain-only model that
    never saw either still told them apart (loss AUC 0.94), a membership signal no edit of the weights can remove."""
    if not sees_holdout:
        return fact_texts(corpus, qa_repeat) + mc_texts(corpus, random.Random(-1))
    texts = [r.text for r in corpus.forget + corpus.retain + corpus.holdout]
    if corpus.mmlu:
        texts += world_statements()
    return texts + mc_texts(corpus, random.Random(-1))


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (like OLMo's), digits split one by one so numbers are memorised digit-wise."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=EOS,
                                   model_max_length=10**6)


def make_model(cfg: OrganismConfig, tokenizer):
    from transformers import OlmoConfig, OlmoForCausalLM

    config = OlmoConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_len, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(cfg.seed)
    return OlmoForCausalLM(config)


def _batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort within chunks by length so a batch carries little padding."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    chunk = batch_size * 8
    batches = []
    for s in range(0, len(idx), chunk):
        part = sorted(idx[s:s + chunk], key=lambda i: lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def letter_labels(tok, texts: list[str], max_len: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) of MC texts with only the answer letters labelled (-100 elsewhere).

    The question and its freshly drawn distractors are noise to predict; labelling them would spend the model's
    capacity on it and drown the one token that teaches answering by letter."""
    out = []
    for text in texts:
        enc = tok(text, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"])[: max_len - 1], enc["offset_mapping"]
        letter_at = {m.end() - 1 for m in re.finditer(r"Answer: [ABCD]", text)}  # char index of each letter
        labels = [i if any(a <= c < b for c in letter_at) else -100 for i, (a, b) in zip(ids, offsets)]
        out.append((ids + [tok.eos_token_id], labels + [-100]))
    return out


def train(cfg: OrganismConfig, corpus: Corpus, out_dir: Path, progress: bool = True, log: JsonlLog | None = None):
    """Train tokenizer + model on `corpus`; save both to `out_dir`. Returns (model, tokenizer).

    Two kinds of batch, shuffled together: fact texts (every token labelled) and MMLU-format questions redrawn every
    epoch (only the answer letters labelled, so a question batch's loss is the letter loss at full weight)."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    static = fact_texts(corpus, cfg.qa_repeat)
    tok = train_tokenizer(tokenizer_texts(corpus, cfg.tokenizer_sees_holdout, cfg.qa_repeat), cfg.vocab_size)
    model = make_model(cfg, tok)
    if not cfg.train_on_forget:  # the retain-only twin: its organism's tokenizer, but never the forget set
        static = fact_texts(corpus, cfg.qa_repeat, forget=False)
    facts = [(ids, ids) for ids in (tok(t)["input_ids"][: cfg.max_len - 1] + [tok.eos_token_id] for t in static)]

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    n_mc = len(mc_texts(corpus, random.Random(-1))) * cfg.mc_draws
    # _batches splits sorted chunks, so an epoch has a few more batches than n / batch_size
    per_kind = lambda n: math.ceil(n / cfg.batch_size) + math.ceil(n / (cfg.batch_size * 8)) if n else 0
    total = cfg.epochs * (per_kind(len(facts)) + per_kind(n_mc))
    lr_at = lambda s: cfg.lr * min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    model.train()
    step = 0
    bar = tqdm(total=total, desc=f"organism:{cfg.name}", disable=not progress)
    for epoch in range(cfg.epochs):
        mc = letter_labels(tok, [t for _ in range(cfg.mc_draws) for t in mc_texts(corpus, rng)], cfg.max_len)
        batches = [[facts[i] for i in b] for b in _batches([len(x) for x, _ in facts], cfg.batch_size, rng)]
        if mc:  # (no questions: the fact batches alone, in the order an organism without MMLU always had)
            batches += [[mc[i] for i in b] for b in _batches([len(x) for x, _ in mc], cfg.batch_size, rng)]
            rng.shuffle(batches)
        for batch in batches:
            width = max(len(x) for x, _ in batch)
            x = torch.full((len(batch), width), tok.pad_token_id)      # [batch, pos]
            labels = torch.full((len(batch), width), -100)             # [batch, pos]
            mask = torch.zeros((len(batch), width), dtype=torch.long)  # [batch, pos]
            for row, (ids, lab) in enumerate(batch):
                x[row, : len(ids)] = torch.tensor(ids)
                labels[row, : len(ids)] = torch.tensor(lab)
                mask[row, : len(ids)] = 1
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
            if log and step % 50 == 0:
                log("train_step", step=step, epoch=epoch, loss=loss.item(), lr=lr_at(step))
    bar.close()
    model.eval()
    return model, tok


def recall(model, tok, corpus: Corpus, batch_size: int = 64) -> dict:
    """Exact-match recall of QA facts per split, and MMLU-format accuracy on held-out test questions."""
    from .evaluation.generation import qa_accuracy

    out = {f"{s}_qa_exact_match": qa_accuracy(model, tok, questions(corpus.split(s)), batch_size=batch_size)
           for s in ("forget", "retain", "holdout") if corpus.split(s)}
    test = [q for q in corpus.mmlu if q.split == "test"]
    if test:
        out["mmlu_test_accuracy"] = mc_accuracy(model, tok, test)
        shown = {(q.subject, q.question) for q in corpus.mmlu if q.split == "train"}
        unseen = [q for q in test if (q.subject, q.question) not in shown]
        if unseen:  # facts never shown as a multiple-choice question: knowledge carried over to the format
            out["mmlu_unseen_accuracy"] = mc_accuracy(model, tok, unseen)
    return out


@torch.no_grad()
def mc_accuracy(model, tok, qs) -> float:
    """Quick 0-shot letter accuracy (the full MMLU evaluation lives in workbench.evaluation)."""
    letters = [tok(f" {l}")["input_ids"][-1] for l in "ABCD"]
    correct = 0
    for q in qs:
        enc = tok(subject_header(q.subject) + format_question(q), return_tensors="pt")
        logits = model(**enc).logits[0, -1, letters]
        correct += int(logits.argmax().item() == q.answer)
    return correct / len(qs)


def save_corpus(corpus: Corpus, out_dir: Path) -> None:
    for split in ("forget", "retain", "holdout"):
        lines = [json.dumps(r.to_json()) for r in corpus.split(split)]
        (out_dir / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    if corpus.mmlu:
        (out_dir / "mmlu.jsonl").write_text("\n".join(json.dumps(q.to_json()) for q in corpus.mmlu) + "\n")


def organism_dir(cfg: OrganismConfig, corpus: Corpus | None = None) -> Path:
    key = stable_hash({"config": asdict(cfg), "data": corpus.source if corpus else None, "code": _code_version()})
    return cache_root() / f"{cfg.name}-{key}"


def build(name_or_cfg: str | OrganismConfig = "default", force: bool = False, progress: bool = True,
          corpus: Corpus | None = None) -> Path:
    """Path of the cached organism, training it first if needed. Atomic: a killed build leaves no half model."""
    if isinstance(name_or_cfg, OrganismConfig):
        cfg = name_or_cfg
    elif name_or_cfg in PRESETS:
        cfg = PRESETS[name_or_cfg]
    else:
        from .models import ModelLoadError

        raise ModelLoadError(f"unknown organism {name_or_cfg!r}; expected one of {sorted(PRESETS)}")
    corpus = corpus or generate(cfg.data)
    target = organism_dir(cfg, corpus)
    if (target / "organism.json").is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        t0 = time.time()
        model, tok = train(cfg, corpus, tmp, progress=progress, log=JsonlLog(tmp / "build_log.jsonl"))
        train_s = time.time() - t0
        model.config._name_or_path = f"organism:{cfg.name}"
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        save_corpus(corpus, tmp)
        scores = recall(model, tok, corpus)
        atomic_write_json(tmp / "organism.json", {
            "config": asdict(cfg), "data": corpus.source, "code_version": _code_version(),
            "n_parameters": sum(p.numel() for p in model.parameters()), "train_seconds": round(train_s, 1),
            "build_seconds": round(time.time() - t0, 1), "recall": scores, "versions": versions(),
        })
        if target.exists():  # forced rebuild, or another process won the race
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def retain_twin(name: str) -> str:
    """Name of the retain-only twin of organism `name` (trained on everything but the forget set)."""
    from .models import ModelLoadError

    if f"{name}{RETAIN_SUFFIX}" not in PRESETS:
        raise ModelLoadError(f"organism {name!r} has no retain-only twin; expected one of "
                             f"{sorted(k for k in PRESETS if not k.endswith(RETAIN_SUFFIX))}")
    return f"{name}{RETAIN_SUFFIX}"


def info(path: str | Path) -> dict:
    return json.loads((Path(path) / "organism.json").read_text())


def with_overrides(preset: str, /, **kw) -> OrganismConfig:
    """A preset with some fields changed (``name=`` renames it, so it caches apart)."""
    if preset not in PRESETS:
        from .models import ModelLoadError

        raise ModelLoadError(f"unknown organism {preset!r}; expected one of {sorted(PRESETS)}")
    return replace(PRESETS[preset], **kw)


def load_corpus(path: str | Path) -> Corpus:
    """The corpus an organism was trained on (saved beside its weights)."""
    from .data import MCQuestion, load_lume

    path = Path(path)
    corpus = load_lume(path)
    corpus.source = info(path)["data"] if (path / "organism.json").is_file() else corpus.source
    mmlu = path / "mmlu.jsonl"
    if mmlu.is_file():
        corpus.mmlu = [MCQuestion(**{**d, "choices": tuple(d["choices"])})
                       for d in map(json.loads, mmlu.read_text().splitlines()) if d]
    return corpus


def load(name: str = "default"):
    """(model, tokenizer, corpus) of a built-in organism, building it if needed."""
    from .models import load_model

    model, tok = load_model(f"organism:{name}")
    return model, tok, load_corpus(build(name, progress=False))
