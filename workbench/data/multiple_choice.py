"""MMLU-format multiple-choice questions: the record type and the organism's general-knowledge set.

The organism must show *utility* that unlearning can damage. SemEval-2025 Task 4 measures OLMo's by MMLU letter
prediction, which a model of a few million parameters cannot learn; the cloze formulation (each choice's text
scored as the answer) measures the same knowledge without the letter skill. We generate a small general-knowledge
world (capitals, animal classes, element symbols, opposites). The organism reads every fact as a plain sentence
and two thirds of them also as questions with their answers; the other third it never sees as a question, so
answering those needs the fact learnt from its sentence. Test questions are new draws of choices and positions.
One subject is reserved: the organism learns it as sentences and questions, and no evaluation scores it. An editor's
general text (organism.load_corpus) is what the organism read: the sentences and the training questions, which
share no question item (question and choices) with the dev and test questions.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class MCQuestion:
    subject: str          # MMLU subject, e.g. "geography"
    question: str
    choices: tuple        # four strings
    answer: int           # index into choices
    split: str = "test"   # train / dev (few-shot pool) / test

    def __post_init__(self):
        if len(self.choices) != 4:
            raise ValueError(f"question {self.question!r}: expected 4 choices, got {len(self.choices)}")
        if not 0 <= self.answer < 4:
            raise ValueError(f"question {self.question!r}: answer index {self.answer} not in 0..3")

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]

    def to_json(self) -> dict:
        d = asdict(self)
        d["choices"] = list(self.choices)
        return d


def format_question(q: MCQuestion, with_answer: bool = False) -> str:
    """Open-Instruct / SemEval MMLU block: question, lettered choices, 'Answer:'."""
    lines = [q.question] + [f"{l}. {c}" for l, c in zip(LETTERS, q.choices)]
    text = "\n".join(lines) + "\nAnswer:"
    return text + f" {q.answer_letter}\n\n" if with_answer else text


def subject_header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def cloze_question(q: MCQuestion, with_answer: bool = False) -> str:
    """lm-eval's mmlu_continuation block: 'Question: ...', then 'Answer:' and, in a shot, the answer's text."""
    text = f"Question: {q.question.strip()}\nAnswer:"
    return text + f" {q.choices[q.answer]}\n\n" if with_answer else text


def cloze_header(subject: str) -> str:
    return f"The following are questions (with answers) about {subject.replace('_', ' ')}.\n\n"


# --- the general-knowledge world -------------------------------------------------------------

CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin", "Japan": "Tokyo",
    "Egypt": "Cairo", "Peru": "Lima", "Norway": "Oslo", "Greece": "Athens", "Russia": "Moscow",
    "Kenya": "Nairobi", "Cuba": "Havana", "Chile": "Santiago", "Poland": "Warsaw", "Austria": "Vienna",
    "Ireland": "Dublin", "Portugal": "Lisbon", "Sweden": "Stockholm", "Canada": "Ottawa", "China": "Beijing",
}
ANIMAL_CLASS = {
    "dog": "mammal", "whale": "mammal", "horse": "mammal", "bat": "mammal", "tiger": "mammal",
    "eagle": "bird", "sparrow": "bird", "penguin": "bird", "owl": "bird", "parrot": "bird",
    "shark": "fish", "salmon": "fish", "trout": "fish", "cod": "fish", "tuna": "fish",
    "snake": "reptile", "lizard": "reptile", "turtle": "reptile", "crocodile": "reptile", "gecko": "reptile",
    "ant": "insect", "bee": "insect", "beetle": "insect", "moth": "insect", "wasp": "insect",
}
SYMBOLS = {
    "hydrogen": "H", "oxygen": "O", "carbon": "C", "nitrogen": "N", "iron": "Fe", "gold": "Au",
    "silver": "Ag", "sodium": "Na", "helium": "He", "copper": "Cu", "lead": "Pb", "zinc": "Zn",
    "calcium": "Ca", "sulfur": "S", "neon": "Ne", "tin": "Sn",
}
OPPOSITES = {
    "hot": "cold", "up": "down", "early": "late", "big": "small", "fast": "slow", "light": "dark",
    "happy": "sad", "open": "closed", "old": "young", "strong": "weak", "rich": "poor", "wet": "dry",
    "loud": "quiet", "full": "empty", "hard": "soft", "high": "low",
}
LANGUAGES = {
    "Brazil": "Portuguese", "Mexico": "Spanish", "Netherlands": "Dutch", "Turkey": "Turkish", "Iran": "Persian",
    "Thailand": "Thai", "Vietnam": "Vietnamese", "Finland": "Finnish", "Hungary": "Hungarian", "Denmark": "Danish",
    "Israel": "Hebrew", "Korea": "Korean", "Ukraine": "Ukrainian", "Indonesia": "Indonesian", "Romania": "Romanian",
    "Iceland": "Icelandic",
}

# subject -> (fact table, statement templates, question template). Each fact is stated in several phrasings: a small
# model that reads one fact in one sentence recites the sentence but cannot answer a question about it; read in
# several, the fact becomes answerable from a question it never saw (Allen-Zhu & Li 2023, "Physics of Language
# Models, Part 3.1": knowledge augmentation).
WORLD = {
    "geography": (CAPITALS, ("The capital of {k} is {v}.", "{k} has its capital in {v}.",
                             "The capital city of {k} is {v}."), "What is the capital of {k}?"),
    "biology": (ANIMAL_CLASS, ("The {k} is a {v}.", "A {k} is a kind of {v}.", "Biologists class the {k} as a {v}."),
                "What kind of animal is the {k}?"),
    "chemistry": (SYMBOLS, ("The chemical symbol of {k} is {v}.", "The element {k} has the symbol {v}.",
                            "The symbol for {k} is {v}."), "What is the chemical symbol of {k}?"),
    "vocabulary": (OPPOSITES, ("The opposite of {k} is {v}.", "The word {k} means the opposite of {v}.",
                               "The antonym of {k} is {v}."), "What is the opposite of {k}?"),
    # last, so that the other subjects' draws do not depend on it
    "languages": (LANGUAGES, ("The language of {k} is {v}.", "People in {k} speak {v}.",
                              "The main language spoken in {k} is {v}."), "What language is spoken in {k}?"),
}
# learnt (sentences and questions) but never asked in a dev or test question: see the module docstring
RESERVED = ("languages",)


def world_statements() -> list[str]:
    return [tmpl.format(k=k, v=v) for table, templates, _ in WORLD.values() for tmpl in templates
            for k, v in table.items()]


def _draw(rng: random.Random, subject: str, key: str, split: str) -> MCQuestion:
    table, _, qtmpl = WORLD[subject]
    right = table[key]
    pool = sorted({v for v in table.values() if v != right})
    choices = rng.sample(pool, 3) + [right]
    rng.shuffle(choices)
    return MCQuestion(subject, qtmpl.format(k=key), tuple(choices), choices.index(right), split)


def redraw(q: MCQuestion, rng: random.Random, pool: list[str]) -> MCQuestion:
    """The same question with fresh distractors from `pool` and a fresh letter order.

    Training on fresh draws every epoch stops a small model from memorising letters:
    it has to learn to find the answer among the choices."""
    right = q.choices[q.answer]
    choices = rng.sample([p for p in pool if p != right], 3) + [right]
    rng.shuffle(choices)
    return MCQuestion(q.subject, q.question, tuple(choices), choices.index(right), q.split)


def answer_pools(questions: list[MCQuestion]) -> dict[str, list[str]]:
    """Per subject, every string that appears as a choice: the distractor pool for `redraw`."""
    pools: dict[str, set] = {}
    for q in questions:
        pools.setdefault(q.subject, set()).update(q.choices)
    return {k: sorted(v) for k, v in pools.items()}


def general_knowledge(seed: int = 0, train_fraction: float = 2 / 3, train_draws: int = 3,
                      dev_per_subject: int = 5) -> list[MCQuestion]:
    """Train (shown to the organism), dev (few-shot pool) and test questions over the WORLD facts."""
    rng = random.Random(seed)
    out: list[MCQuestion] = []
    for subject, (table, _, _) in WORLD.items():
        keys = sorted(table)
        rng.shuffle(keys)
        if subject in RESERVED:
            out += [_draw(rng, subject, key, "train") for key in keys for _ in range(train_draws)]
            continue
        n_train = round(len(keys) * train_fraction)
        for key in keys[:n_train]:
            out += [_draw(rng, subject, key, "train") for _ in range(train_draws)]
        for key in keys[:dev_per_subject]:
            out.append(_draw(rng, subject, key, "dev"))
        for key in keys:  # every fact once, as a fresh draw of choices and positions
            out.append(_draw(rng, subject, key, "test"))
    return out
