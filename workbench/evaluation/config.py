"""What an evaluation runs and how strictly the verdict judges it: `EvalConfig`, checked when it is made."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .semeval import MAX_NEW_TOKENS


def _need(ok, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


@dataclass
class EvalConfig:
    mmlu_source: str | None = None   # None: the corpus's own MMLU-format set
    # which MMLU formulation enters the final score; both are reported. "auto": cloze on the corpus's own set (the
    # organism, too small to answer by letter), letter (as SemEval-2025 Task 4 scores OLMo) for a given source
    mmlu_formulation: str = "auto"
    # None: 0 on the corpus's own set (the organism learnt its questions 0- and 3-shot and loses accuracy at 5),
    # 5 for a given source (SemEval-2025 Task 4 scores MMLU 5-shot)
    mmlu_shots: int | None = None
    max_new_tokens: int = MAX_NEW_TOKENS
    limit: int | None = None         # at most this many items per group (split/task/kind, MMLU subject)
    k: float = 0.4                   # Min-K% fraction
    batch_size: int = 16
    trace: bool = True
    seed: int = 0
    # recovery attacks on the original, edited and retain-only models (evaluation/attacks: relearn, quantize, lens,
    # depth); attack_settings: {attack: {field: value}} overrides of each attack's settings
    attacks: tuple[str, ...] = ()
    attack_settings: dict = field(default_factory=dict)
    gradnorm: bool = True            # the gradient-norm MIA attack (one backward pass per document)
    # the verdict's tolerances (evaluation/verdict.py)
    recall_tol: float = 0.1          # forget recall and regurgitation at most the twin's + this
    auc_tol: float = 0.1             # every held-out MIA attack's AUC within this of the twin's
    utility_tol: float = 0.05        # every retain term and MMLU at most this below the lower of twin and original
    recovery_tol: float = 0.05       # an attack's worst admissible recovery on the edited model at most the twin's + this

    def formulation(self) -> str:
        if self.mmlu_formulation != "auto":
            return self.mmlu_formulation
        return "cloze" if self.mmlu_source in (None, "organism") else "letter"

    def shots(self) -> int:
        if self.mmlu_shots is not None:
            return self.mmlu_shots
        return 0 if self.mmlu_source in (None, "organism") else 5

    def tolerances(self):
        """The verdict's tolerances (evaluation/verdict.Tolerances) of this config."""
        from .verdict import Tolerances

        return Tolerances(self.recall_tol, self.auc_tol, self.utility_tol, self.recovery_tol)

    def __post_init__(self):
        _need(self.mmlu_shots is None or self.mmlu_shots >= 0,
              f"evaluation mmlu_shots must be >= 0, got {self.mmlu_shots}")
        _need(self.max_new_tokens >= 1, f"evaluation max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _need(self.limit is None or self.limit >= 1, f"evaluation limit must be >= 1 or None, got {self.limit}")
        _need(0 < self.k <= 1, f"evaluation k (the Min-K% fraction) must be in (0, 1], got {self.k}")
        _need(self.batch_size >= 1, f"evaluation batch_size must be >= 1, got {self.batch_size}")
        for name in ("recall_tol", "auc_tol", "utility_tol", "recovery_tol"):
            _need(getattr(self, name) >= 0, f"evaluation {name} must be >= 0, got {getattr(self, name)}")
        from .attacks import AttackConfig, parse_attacks

        self.attacks = parse_attacks(self.attacks)
        AttackConfig.from_dict(self.attack_settings)
