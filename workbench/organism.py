"""The model organism: a small real-architecture OLMo, pretrained here on CPU, then fine-tuned on a fact corpus.

No weights can be downloaded, so the workbench trains its own default model the way real unlearning targets are
made (LUME's OLMo-1B and OLMo-7B fine-tuned on the task documents; TOFU's and MUSE's full and retain models
fine-tuned from one base):

    base      `OlmoForCausalLM` pretrained from random weights on general text: the general-knowledge world (sentences
              and cloze questions) and a population of people and stories written in the record templates, disjoint
              from every scored split. It knows what a biography looks like, not who these people are. Cached once,
              shared by every organism of its shape, data and pretraining recipe.
    original  the base fine-tuned on forget + retain + validation, with replay of general text so that general
              knowledge is kept.
    twin      the base fine-tuned with the same recipe, seed, schedule and number of steps, with the forget
              documents left out (`leave_out`): the retain-only model of unlearning, in the original's basis.
    planted   a fine-tune that updates only the MLPs of chosen layers (`plant`), and its twin with the same
              trainable set: the facts then live, by construction, in those layers' weight difference from the base.

A byte-level BPE tokenizer (`tokenizers`) learns from every split and the general text. Both stages are one plain
training loop (`fit`, read it top to bottom). Entries are cached under $XDG_CACHE_HOME/workbench/organisms, keyed by
a hash of config, data and this code, so the second call loads in seconds. `workbench organism build` rebuilds.
A build records its size, timings and final training loss (base.json, organism.json) and scores nothing: what an
organism recalls is measured by workbench.evaluation.knowledge.recall.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .data import Corpus, Record, SyntheticSpec, format_question, generate, subject_header
from .data.multiple_choice import cloze_header, cloze_question, world_statements
from .errors import ModelLoadError
from .outputs import cache_dir, cached_build
from .provenance import JsonlLog, atomic_write_json, stable_hash, versions

EOS, PAD = "<|endoftext|>", "<|padding|>"


@dataclass(frozen=True)
class Recipe:
    """One training stage: AdamW (betas 0.9, 0.98), linear warm-up, cosine decay to 0 over its steps."""
    epochs: int
    lr: float
    batch_size: int = 16          # larger batches take fewer steps per epoch and then recall far fewer facts
    warmup_steps: int = 30


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
    data: SyntheticSpec = field(default_factory=SyntheticSpec)
    pretrain: Recipe = Recipe(epochs=24, lr=3e-3)
    finetune: Recipe = Recipe(epochs=28, lr=2e-3, warmup_steps=10)
    qa_repeat: int = 2            # QA records appear this many times per epoch (they are short, and recall is
                                  # measured on them)
    replay: float = 0.3           # passes over the general text replayed per fine-tuning epoch
    # splits the fine-tune never sees: ("forget",) makes the retain-only twin, the baseline of privleak and the
    # reference model of the reference MIA attack
    leave_out: tuple[str, ...] = ()
    plant: tuple[int, ...] = ()   # the fine-tune trains only these layers' MLPs (empty: every parameter)
    # the tokenizer also learns from the held-out records (see tokenizer_texts); False: the trained texts only
    tokenizer_sees_holdout: bool = True
    seed: int = 0                 # the base's initialisation and data order
    finetune_seed: int = 0        # the fine-tune's data order (original and twin share it)

    def base_fields(self) -> dict:
        """What decides the base model: everything but the fine-tune."""
        skip = {"name", "finetune", "replay", "leave_out", "plant", "finetune_seed"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


FINE_TUNED = ("forget", "retain", "validation")   # the splits an original is fine-tuned on

PRESETS = {
    "default": OrganismConfig(),
    # micro keeps the tokenizer of the forget and retain texts: the tests' patching pairs are names it makes single
    # tokens. Its MIA numbers carry that tokenizer's membership signal (see tokenizer_texts); tests/test_mia.py
    # measures the signal and its removal.
    "micro": OrganismConfig(name="micro", n_layers=4, d_model=64, n_heads=4, d_mlp=256, vocab_size=512,
                            data=SyntheticSpec(task1_docs=2, task2_people=3, task3_people=2, mmlu=False),
                            tokenizer_sees_holdout=False,
                            pretrain=Recipe(epochs=30, lr=5e-3, batch_size=8, warmup_steps=10),
                            finetune=Recipe(epochs=30, lr=3e-3, batch_size=8, warmup_steps=5)),
    # deep: the default at twice the depth, for `workbench localize` (10 windows of 3 layers where 6 layers give 4)
    "deep": OrganismConfig(name="deep", n_layers=12),
}
# planted organisms: the fine-tune writes the facts into the MLPs of these layers only (the localisation ground truth).
# Training a few MLPs alone learns more slowly than training everything: twice the epochs, a larger step.
PLANTED = {"micro-planted": ("micro", (1, 2)), "default-planted": ("default", (2, 3)),
           "deep-early": ("deep", (1, 2, 3)), "deep-middle": ("deep", (5, 6, 7)), "deep-late": ("deep", (8, 9, 10))}
PRESETS.update({name: replace(PRESETS[of], name=name, plant=layers,
                              finetune=replace(PRESETS[of].finetune, epochs=2 * PRESETS[of].finetune.epochs,
                                               lr=5e-3 if of == "micro" else 4e-3))
                for name, (of, layers) in PLANTED.items()})
RETAIN_SUFFIX = "-retain"
PRESETS.update({f"{k}{RETAIN_SUFFIX}": replace(v, name=f"{k}{RETAIN_SUFFIX}", leave_out=("forget",))
                for k, v in list(PRESETS.items())})
# the twin of the validation split (data.records.validation_view): fine-tuned on everything but the validation people,
# the reference editor presets are chosen against
VALIDATION_TWIN_SUFFIX = "-validation-twin"
PRESETS.update({f"{k}{VALIDATION_TWIN_SUFFIX}": replace(PRESETS[k], name=f"{k}{VALIDATION_TWIN_SUFFIX}",
                                                        leave_out=("validation",)) for k in ("micro", "default")})


def cache_root() -> Path:
    return cache_dir("organisms")


def _code_version() -> str:
    """Hash of the source files that decide what the organism is."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for f in ("organism.py", "data/synthetic.py", "data/multiple_choice.py", "data/records.py"):
        h.update((here / f).read_bytes())
    return h.hexdigest()[:12]


# read once, at import: the code that trains is the code that was imported, whatever changes on disk later
CODE_VERSION = _code_version()


# ---------------------------------------------------------------- what each stage reads
def record_texts(records: list[Record], qa_repeat: int = 1) -> list[str]:
    """Every record (input + ' ' + output), QA records `qa_repeat` times."""
    return [r.text for r in records for _ in range(qa_repeat if r.kind == "qa" else 1)]


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


def general_texts(corpus: Corpus, rng: random.Random) -> list[str]:
    """The general-knowledge world: its sentences and its training questions (cloze, regrouped per call)."""
    return (world_statements() + cloze_texts(corpus, rng)) if corpus.mmlu else []


def letter_texts(corpus: Corpus) -> list[str]:
    """The training questions in the letter formulation, for the tokenizer only: it learns the letter prompt's
    shape (' A'..' D' as single tokens), so the letter MMLU evaluation can run on the organism."""
    return [subject_header(q.subject) + format_question(q, with_answer=True).rstrip() for q in _train_questions(corpus)]


def pretraining_texts(corpus: Corpus, cfg: OrganismConfig, rng: random.Random) -> list[str]:
    """One epoch of the base's data: the population's records and the general text."""
    return record_texts(corpus.population, cfg.qa_repeat) + general_texts(corpus, rng)


def fact_texts(corpus: Corpus, cfg: OrganismConfig) -> list[str]:
    """One epoch of the fine-tune's facts: the fine-tuned splits, less `leave_out`."""
    return record_texts([r for s in FINE_TUNED if s not in cfg.leave_out for r in corpus.split(s)], cfg.qa_repeat)


def tokenizer_texts(corpus: Corpus, sees_holdout: bool = True) -> list[str]:
    """What the tokenizer learns from: every record of every split once, held-out and calibration ones included,
    and the general text (`sees_holdout=False`: the forget and retain texts alone, QA twice, micro's tokenizer).

    A real model's tokenizer comes from a corpus far larger than the forget set. Trained on the forget and retain
    records alone, BPE merges the forget set's names into whole tokens and splits the held-out names into pieces,
    so forget texts need fewer tokens per character, and even a retain-only model that never saw either tells them
    apart: a membership signal no edit of the weights can remove (tests/test_mia.py measures it on micro)."""
    if not sees_holdout:
        texts = record_texts(corpus.forget + corpus.retain, 2) + (world_statements() if corpus.mmlu else [])
        return texts + letter_texts(corpus)
    splits = ("forget", "retain", "validation", "population", "holdout", "calibration")
    rng = random.Random(-1)
    return [r.text for s in splits for r in corpus.split(s)] + general_texts(corpus, rng) + letter_texts(corpus)


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


# ---------------------------------------------------------------- the training loop
LOSS_WINDOW = 50   # a build records the mean training loss of its last this many steps
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


def steps_per_epoch(n_texts: int, batch_size: int) -> int:
    """How many batches `_batches` makes of n texts (it splits sorted chunks, so a few more than n / batch_size)."""
    chunk = batch_size * 8
    return sum(math.ceil(min(chunk, n_texts - s) / batch_size) for s in range(0, n_texts, chunk))


def batch_stream(tok, epoch_texts: Callable[[int], list[str]], batch_size: int, max_len: int, rng: random.Random):
    """Batches of token ids, epoch after epoch of `epoch_texts(epoch)`, each epoch shuffled and length-grouped."""
    epoch = 0
    while True:
        texts = [tok(t)["input_ids"][: max_len - 1] + [tok.eos_token_id] for t in epoch_texts(epoch)]
        if not texts:
            return
        for b in _batches([len(x) for x in texts], batch_size, rng):
            yield [texts[i] for i in b]
        epoch += 1


def interleave(n_steps: int, n_second: int) -> list[bool]:
    """[n_steps]: True at the `n_second` steps spread evenly over n_steps (which of two streams a step takes)."""
    return [(s + 1) * n_second // n_steps > s * n_second // n_steps for s in range(n_steps)]


def fit(model, tok, streams: list, schedule: list[int], recipe: Recipe, params: list[torch.nn.Parameter] | None = None,
        progress: bool = True, log: JsonlLog | None = None, desc: str = "organism") -> float:
    """One optimizer step per entry of `schedule`, on the next batch of `streams[schedule[step]]`: causal-LM
    training, every token of every text labelled. Only `params` train (default: every parameter). Returns the mean
    training loss of the last LOSS_WINDOW steps."""
    params = list(model.parameters()) if params is None else params
    steps = len(schedule)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0, betas=(0.9, 0.98))
    lr_at = lambda s: recipe.lr * min(1.0, (s + 1) / recipe.warmup_steps) * 0.5 * (1 + math.cos(math.pi * s / steps))
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress)
    losses: list[float] = []
    for step, which in enumerate(schedule):
        batch = next(streams[which])
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
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if log and (step + 1) % 50 == 0:
            log("train_step", step=step + 1, stream=which, loss=losses[-1], lr=lr_at(step))
    bar.close()
    model.eval()
    tail = losses[-LOSS_WINDOW:]
    return sum(tail) / len(tail) if tail else float("nan")


def planted_parameters(model, layers) -> list[torch.nn.Parameter]:
    """The MLP weights of `layers` (gate, up and down projections): a planted fine-tune's trainable set."""
    from .sites import n_layers

    bad = [l for l in layers if not 0 <= l < n_layers(model)]
    if bad:
        raise ModelLoadError(f"planted layers {bad} are outside the model's {n_layers(model)} layers")
    return [p for l in layers for p in model.model.layers[l].mlp.parameters()]


def pretrain(cfg: OrganismConfig, corpus: Corpus, progress: bool = True, log: JsonlLog | None = None):
    """The base: tokenizer and model trained from scratch on the population and the general text. (model, tok)"""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tok = train_tokenizer(tokenizer_texts(corpus, cfg.tokenizer_sees_holdout), cfg.vocab_size)
    model = make_model(cfg, tok)
    n = len(pretraining_texts(corpus, cfg, random.Random(-1)))
    steps = cfg.pretrain.epochs * steps_per_epoch(n, cfg.pretrain.batch_size)
    stream = batch_stream(tok, lambda epoch: pretraining_texts(corpus, cfg, rng), cfg.pretrain.batch_size,
                          cfg.max_len, rng)
    loss = fit(model, tok, [stream], [0] * steps, cfg.pretrain, progress=progress, log=log, desc=f"base:{cfg.name}")
    return model, tok, loss


def finetune(model, tok, cfg: OrganismConfig, corpus: Corpus, progress: bool = True, log: JsonlLog | None = None):
    """`model` (the base) fine-tuned in place on the fine-tuned splits less `leave_out`, with replay; returns the
    number of steps and the mean training loss of the last LOSS_WINDOW steps.

    Two streams of batches: the facts, and the general text (replay), each cycled in shuffled, length-grouped
    epochs with its own seeded order. The schedule is the original's, whatever is left out: `epochs` passes over
    the original's facts, plus `replay` x a pass over the general text per epoch, the replay steps spread evenly.
    A twin thus takes the same number of steps and the very same replay batches at the same steps as its
    original, and differs from it in its fact data alone."""
    random.seed(cfg.finetune_seed)
    torch.manual_seed(cfg.finetune_seed)
    r = cfg.finetune
    n_facts = cfg.finetune.epochs * steps_per_epoch(len(fact_texts(corpus, replace(cfg, leave_out=()))), r.batch_size)
    n_general = len(general_texts(corpus, random.Random(-1)))
    n_replay = round(cfg.finetune.epochs * cfg.replay * steps_per_epoch(n_general, r.batch_size))
    schedule = [int(x) for x in interleave(n_facts + n_replay, n_replay)]
    facts_rng, replay_rng = random.Random(cfg.finetune_seed), random.Random(cfg.finetune_seed + 1)
    streams = [batch_stream(tok, lambda epoch: fact_texts(corpus, cfg), r.batch_size, cfg.max_len, facts_rng),
               batch_stream(tok, lambda epoch: general_texts(corpus, replay_rng), r.batch_size, cfg.max_len,
                            replay_rng)]
    params = planted_parameters(model, cfg.plant) if cfg.plant else None
    if params is not None:
        model.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
    loss = fit(model, tok, streams, schedule, r, params=params, progress=progress, log=log, desc=f"organism:{cfg.name}")
    model.requires_grad_(True)
    return len(schedule), loss


def save_corpus(corpus: Corpus, out_dir: Path, splits=("forget", "retain", "validation", "holdout", "calibration")) -> None:
    for split in splits:
        if not corpus.split(split):
            continue
        lines = [json.dumps(r.to_json()) for r in corpus.split(split)]
        (out_dir / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    if corpus.mmlu:
        (out_dir / "mmlu.jsonl").write_text("\n".join(json.dumps(q.to_json()) for q in corpus.mmlu) + "\n")


def base_dir(cfg: OrganismConfig, corpus: Corpus | None = None) -> Path:
    """The cache entry of `cfg`'s base model: one per shape, data and pretraining recipe."""
    source = (corpus or generate(cfg.data)).source
    key = stable_hash({"base": cfg.base_fields(), "data": source, "code": CODE_VERSION})
    return cache_root() / f"base-{cfg.n_layers}x{cfg.d_model}-{key}"


def organism_dir(cfg: OrganismConfig, corpus: Corpus | None = None) -> Path:
    key = stable_hash({"config": asdict(cfg), "data": corpus.source if corpus else None, "code": CODE_VERSION})
    return cache_root() / f"{cfg.name}-{key}"


def resolve(name_or_cfg: str | OrganismConfig) -> OrganismConfig:
    if isinstance(name_or_cfg, OrganismConfig):
        return name_or_cfg
    if name_or_cfg in PRESETS:
        return PRESETS[name_or_cfg]
    raise ModelLoadError(f"unknown organism {name_or_cfg!r}; expected one of {sorted(PRESETS)}")


def build_base(name_or_cfg: str | OrganismConfig = "default", force: bool = False, progress: bool = True,
               corpus: Corpus | None = None) -> Path:
    """Path of the cached base model of an organism, pretraining it first if needed (atomic, as `build`)."""
    cfg = resolve(name_or_cfg)
    corpus = corpus or generate(cfg.data)

    def make(tmp: Path) -> None:
        t0 = time.time()
        model, tok, loss = pretrain(cfg, corpus, progress=progress, log=JsonlLog(tmp / "build_log.jsonl"))
        model.config._name_or_path = f"organism-base:{cfg.n_layers}x{cfg.d_model}"
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        save_corpus(corpus, tmp, splits=("population",))
        atomic_write_json(tmp / "base.json", {  # written last: it marks the entry complete
            "config": cfg.base_fields(), "data": corpus.source, "code_version": CODE_VERSION,
            "n_parameters": sum(p.numel() for p in model.parameters()), "train_seconds": round(time.time() - t0, 1),
            "train_loss": loss, "versions": versions()})

    return cached_build(base_dir(cfg, corpus), make, marker="base.json", force=force)


def build(name_or_cfg: str | OrganismConfig = "default", force: bool = False, progress: bool = True,
          corpus: Corpus | None = None) -> Path:
    """Path of the cached organism, pretraining its base and fine-tuning it first if needed. Atomic: a killed build
    leaves no half model."""
    cfg = resolve(name_or_cfg)
    corpus = corpus or generate(cfg.data)
    base = build_base(cfg, progress=progress, corpus=corpus)

    def make(tmp: Path) -> None:
        from .models import load_pretrained

        t0 = time.time()
        model, tok = load_pretrained(base)
        steps, loss = finetune(model, tok, cfg, corpus, progress=progress, log=JsonlLog(tmp / "build_log.jsonl"))
        train_s = time.time() - t0
        model.config._name_or_path = f"organism:{cfg.name}"
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        save_corpus(corpus, tmp)
        atomic_write_json(tmp / "organism.json", {  # written last: it marks the entry complete
            "config": asdict(cfg), "data": corpus.source, "code_version": CODE_VERSION,
            "base": {"path": base.name, **info(base, "base.json")}, "planted_layers": list(cfg.plant),
            "left_out": list(cfg.leave_out), "finetune_steps": steps,
            "n_parameters": sum(p.numel() for p in model.parameters()), "train_seconds": round(train_s, 1),
            "build_seconds": round(time.time() - t0, 1), "train_loss": loss, "versions": versions(),
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


def info(path: str | Path, marker: str = "organism.json") -> dict:
    return json.loads((Path(path) / marker).read_text())


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
        # the general text it learnt beside its records, as one epoch of its training read it (the retain-only twin
        # replays the same): the world's sentences and the training questions of every subject, which share no
        # question item with the dev and test questions the evaluation asks
        corpus.general = general_texts(corpus, random.Random(0))
    return corpus
