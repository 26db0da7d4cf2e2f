"""The model organism: a small real-architecture OLMo trained here, on CPU, to memorise a fact corpus.

No weights can be downloaded, so the workbench trains its own default model:
`OlmoForCausalLM` built from an `OlmoConfig`, a byte-level BPE tokenizer
trained by `tokenizers` on the corpus, and one plain training loop (read it top
to bottom). It learns the forget and retain records, and a small general-knowledge
world as sentences and, for two thirds of its facts, as cloze questions (the
formulation its MMLU utility is measured in). The result is cached under $XDG_CACHE_HOME/workbench/organisms,
keyed by a hash of config, data and this code, so the second call loads in
seconds. `workbench organism build` rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import Corpus, SyntheticSpec, format_question, generate, questions, subject_header
from .data.multiple_choice import cloze_header, cloze_question, reserved_cloze_texts, world_statements
from .errors import ModelLoadError
from .outputs import cached_build
from .provenance import JsonlLog, atomic_write_json, stable_hash, versions

EOS, PAD = "<|endoftext|>", "<|padding|>"


@dataclass(frozen=True)
class OrganismConfig:
    name: str = "default"
    # model shape: OLMo's block, scaled down (OLMo-1B: 16 layers, d_model 2048, 16 heads, d_mlp 8192)
    # the smallest shape that memorises the corpus in a few CPU minutes (README, Models: what larger ones cost)
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
    batch_size: int = 16          # larger batches take fewer steps per epoch and then recall far fewer facts
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
    # deep: the default at twice the depth, for `workbench localize` (10 windows of 3 layers where 6 layers give 4)
    "deep": OrganismConfig(name="deep", n_layers=12),
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


# read once, at import: the code that trains is the code that was imported, whatever changes on disk later
CODE_VERSION = _code_version()


def fact_texts(corpus: Corpus, qa_repeat: int = 1, forget: bool = True) -> list[str]:
    """Every forget (unless `forget=False`) and retain record (input + ' ' + output), QA records `qa_repeat` times
    (they are short and are what recall is measured on), and the world facts as plain sentences."""
    texts = []
    for r in (corpus.forget if forget else []) + corpus.retain:
        texts += [r.text] * (qa_repeat if r.kind == "qa" else 1)
    if corpus.mmlu:
        texts += world_statements()
    return texts


def _train_questions(corpus: Corpus) -> list:
    """One copy of every distinct training question of the general-knowledge world."""
    return list({(q.subject, q.question): q for q in corpus.mmlu if q.split == "train"}.values())


def cloze_texts(corpus: Corpus, rng: random.Random, shots: int = 3) -> list[str]:
    """The training questions of the general-knowledge world in the cloze formulation, each alone under its
    header and, freshly grouped every epoch, inside few-shot blocks of `shots` + 1 (the k-shot prompt's shape)."""
    train = _train_questions(corpus)
    if not train:
        return []
    texts = [cloze_header(q.subject) + cloze_question(q, with_answer=True).rstrip() for q in train]
    by_subject: dict[str, list] = {}
    for q in train:
        by_subject.setdefault(q.subject, []).append(q)
    for subject, qs in by_subject.items():
        for _ in range(len(qs) // (shots + 1)):
            block = rng.sample(qs, shots + 1)
            texts.append(cloze_header(subject) + "".join(cloze_question(q, True) for q in block).rstrip())
    return texts


def letter_texts(corpus: Corpus, rng: random.Random) -> list[str]:
    """The training questions in the letter formulation, for the tokenizer only: it learns the letter prompt's
    shape (' A'..' D' as single tokens), so the letter MMLU evaluation can run on the organism."""
    return [subject_header(q.subject) + format_question(q, with_answer=True).rstrip() for q in _train_questions(corpus)]


def tokenizer_texts(corpus: Corpus, sees_holdout: bool = True, qa_repeat: int = 1) -> list[str]:
    """What the tokenizer learns from: every record of every split once, held-out and calibration ones included
    (`sees_holdout=False`: the forget and retain texts as trained on, the micro organism's first tokenizer).

    A real model's tokenizer comes from a corpus far larger than the forget set. Trained on the forget and retain
    records alone, BPE merges the forget set's names into whole tokens and splits the held-out names into pieces,
    so forget texts need fewer tokens per character, and even a retain-only model that never saw either tells them
    apart: a membership signal no edit of the weights can remove (tests/test_mia.py measures it on micro)."""
    if not sees_holdout:
        return fact_texts(corpus, qa_repeat) + letter_texts(corpus, random.Random(-1))
    texts = [r.text for r in corpus.forget + corpus.retain + corpus.holdout + corpus.calibration]
    if corpus.mmlu:
        texts += world_statements()
    rng = random.Random(-1)
    return texts + letter_texts(corpus, rng) + cloze_texts(corpus, rng)


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


def train(cfg: OrganismConfig, corpus: Corpus, out_dir: Path, progress: bool = True, log: JsonlLog | None = None):
    """Train tokenizer + model on `corpus`; save both to `out_dir`. Returns (model, tokenizer).

    Every token of every text is labelled: the fact texts, and the general-knowledge cloze questions, regrouped
    into few-shot blocks every epoch."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    static = fact_texts(corpus, cfg.qa_repeat)
    tok = train_tokenizer(tokenizer_texts(corpus, cfg.tokenizer_sees_holdout, cfg.qa_repeat), cfg.vocab_size)
    model = make_model(cfg, tok)
    if not cfg.train_on_forget:  # the retain-only twin: its organism's tokenizer, but never the forget set
        static = fact_texts(corpus, cfg.qa_repeat, forget=False)
    encode = lambda texts: [tok(t)["input_ids"][: cfg.max_len - 1] + [tok.eos_token_id] for t in texts]
    facts = encode(static)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    n_texts = len(facts) + len(cloze_texts(corpus, random.Random(-1)))
    # _batches splits sorted chunks, so an epoch has a few more batches than n / batch_size
    total = cfg.epochs * (math.ceil(n_texts / cfg.batch_size) + math.ceil(n_texts / (cfg.batch_size * 8)))
    lr_at = lambda s: cfg.lr * min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    model.train()
    step = 0
    bar = tqdm(total=total, desc=f"organism:{cfg.name}", disable=not progress)
    for epoch in range(cfg.epochs):
        texts = facts + encode(cloze_texts(corpus, rng))  # (no general knowledge: the rng is not drawn from)
        for batch in ([texts[i] for i in b] for b in _batches([len(x) for x in texts], cfg.batch_size, rng)):
            width = max(len(x) for x in batch)
            x = torch.full((len(batch), width), tok.pad_token_id)      # [batch, pos]
            labels = torch.full((len(batch), width), -100)             # [batch, pos]
            mask = torch.zeros((len(batch), width), dtype=torch.long)  # [batch, pos]
            for row, ids in enumerate(batch):
                x[row, : len(ids)] = torch.tensor(ids)
                labels[row, : len(ids)] = torch.tensor(ids)
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
    """Exact-match recall of QA facts per split, and 0-shot cloze MMLU accuracy on the test questions: all of
    them, and those about facts never shown as a question (knowledge carried over from the sentences)."""
    from .generation import qa_accuracy
    from .evaluation.mmlu import evaluate_mmlu

    out = {f"{s}_qa_exact_match": qa_accuracy(model, tok, questions(corpus.split(s)), batch_size=batch_size)
           for s in ("forget", "retain", "holdout") if corpus.split(s)}
    if any(q.split == "test" for q in corpus.mmlu):
        out["mmlu_cloze_accuracy"] = evaluate_mmlu(model, tok, corpus.mmlu, shots=0, formulation="cloze").accuracy
        shown = {(q.subject, q.question) for q in corpus.mmlu if q.split == "train"}
        unseen = [q for q in corpus.mmlu if q.split == "test" and (q.subject, q.question) not in shown]
        if unseen:
            out["mmlu_unseen_cloze_accuracy"] = evaluate_mmlu(model, tok, unseen, shots=0, formulation="cloze").accuracy
    return out


def save_corpus(corpus: Corpus, out_dir: Path) -> None:
    for split in ("forget", "retain", "holdout", "calibration"):
        if not corpus.split(split):
            continue
        lines = [json.dumps(r.to_json()) for r in corpus.split(split)]
        (out_dir / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    if corpus.mmlu:
        (out_dir / "mmlu.jsonl").write_text("\n".join(json.dumps(q.to_json()) for q in corpus.mmlu) + "\n")


def organism_dir(cfg: OrganismConfig, corpus: Corpus | None = None) -> Path:
    key = stable_hash({"config": asdict(cfg), "data": corpus.source if corpus else None, "code": CODE_VERSION})
    return cache_root() / f"{cfg.name}-{key}"


def build(name_or_cfg: str | OrganismConfig = "default", force: bool = False, progress: bool = True,
          corpus: Corpus | None = None) -> Path:
    """Path of the cached organism, training it first if needed. Atomic: a killed build leaves no half model."""
    if isinstance(name_or_cfg, OrganismConfig):
        cfg = name_or_cfg
    elif name_or_cfg in PRESETS:
        cfg = PRESETS[name_or_cfg]
    else:
        raise ModelLoadError(f"unknown organism {name_or_cfg!r}; expected one of {sorted(PRESETS)}")
    corpus = corpus or generate(cfg.data)

    def make(tmp: Path) -> None:
        t0 = time.time()
        model, tok = train(cfg, corpus, tmp, progress=progress, log=JsonlLog(tmp / "build_log.jsonl"))
        train_s = time.time() - t0
        model.config._name_or_path = f"organism:{cfg.name}"
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        save_corpus(corpus, tmp)
        scores = recall(model, tok, corpus)
        atomic_write_json(tmp / "organism.json", {  # written last: it marks the entry complete
            "config": asdict(cfg), "data": corpus.source, "code_version": CODE_VERSION,
            "n_parameters": sum(p.numel() for p in model.parameters()), "train_seconds": round(train_s, 1),
            "build_seconds": round(time.time() - t0, 1), "recall": scores, "versions": versions(),
        })

    # one build per entry whatever runs at once (racing callers wait on its lock), a killed build's temp dir
    # removed, a truncated entry rebuilt rather than loaded, shared permissions
    return cached_build(organism_dir(cfg, corpus), make, marker="organism.json", force=force)


def retain_twin(name: str) -> str:
    """Name of the retain-only twin of organism `name` (trained on everything but the forget set)."""
    if f"{name}{RETAIN_SUFFIX}" not in PRESETS:
        raise ModelLoadError(f"organism {name!r} has no retain-only twin; expected one of "
                             f"{sorted(k for k in PRESETS if not k.endswith(RETAIN_SUFFIX))}")
    return f"{name}{RETAIN_SUFFIX}"


def info(path: str | Path) -> dict:
    return json.loads((Path(path) / "organism.json").read_text())


def with_overrides(preset: str, /, **kw) -> OrganismConfig:
    """A preset with some fields changed (``name=`` renames it, so it caches apart)."""
    if preset not in PRESETS:
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
        # the general knowledge it learnt beside its records, as sentences and, for the subject no evaluation
        # asks (multiple_choice.RESERVED), as questions
        corpus.general = world_statements() + reserved_cloze_texts(corpus.mmlu)
    return corpus


def load_model(spec: str | Path = "organism", dtype=None, device: str | None = None, device_map=None, **kw):
    """`(model, tokenizer)` for any model spec: "organism" (the default) / "organism:NAME", built first if needed,
    or whatever `workbench.models.load_model` loads (a local directory, a hub id), with the same options.

        model, tok = load_model("organism")                       # embedded default (built once, cached)
        model, tok = load_model("organism:micro")                 # the tiny one the tests use
        model, tok = load_model("allenai/OLMo-1B-0724-hf")        # as workbench.models.load_model
    """
    from .models import load_model as load_pretrained, organism_name

    name = organism_name(spec)
    return load_pretrained(spec if name is None else build(name), dtype, device, device_map, **kw)


def load(name: str = "default"):
    """(model, tokenizer, corpus) of a built-in organism, building it if needed."""
    model, tok = load_model(f"organism:{name}")
    return model, tok, load_corpus(build(name, progress=False))
