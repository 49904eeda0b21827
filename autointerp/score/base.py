"""The one interface every scorer implements, the records it works on, and the registry by name.

A scorer is a class in its own module under `autointerp/score/` decorated with
`@register_scorer`; its prompt is a template under `prompts/`. The runner (`runner.py`) finds it
by name, gives it one `FeatureToScore` at a time (as asyncio tasks, so a shared LLM client can keep
a server's batch full) and stores the `ScoreOutcome` it returns. Adding a scorer is one new file
plus a prompt and one line in `BUILTIN_SCORERS` (name -> module, imported on first lookup), or, for a
scorer outside this package, importing its module before the lookup.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from autointerp.errors import UserError
from autointerp.llm.base import LLMClient, Status
from autointerp.prompting import load_prompt
from autointerp.score.config import NEGATIVE_KINDS, ScoreConfig

#: Example kinds on which the feature does not fire (the negatives a scorer may be shown).
NEGATIVE_EXAMPLE_KINDS = frozenset(NEGATIVE_KINDS.values())


@dataclass(frozen=True)
class TestContext:
    """One held-out context of a feature, as the scorers see it.

    Position 0 of every stored context is an attention sink (activation forced to 0 by collect);
    it is dropped here, so `token_ids`, `tokens` and `activations` all start at position 1 and no
    scorer shows or counts it.
    """

    __test__ = False  # not a pytest test class, despite the name

    context_id: int
    doc_id: int
    kind: str  # 'top' | 'random' | 'nonactivating' | 'hard_negative' (the store's example kind)
    group: str  # 'top' | 'q1'..'qN' (quantile of the random sample, q1 lowest) | 'nonactivating' | 'hard_negative'
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    activations: tuple[float, ...]

    @property
    def activating(self) -> bool:
        return self.kind not in NEGATIVE_EXAMPLE_KINDS

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass(frozen=True)
class FeatureToScore:
    """One explanation of one feature plus the test contexts every scorer of this run uses."""

    explanation_id: str
    feature_id: int
    explanation: str
    max_activation: float  # over the whole collect run (both splits); scales true activations
    contexts: tuple[TestContext, ...]
    seed: int  # per-feature seed derived from the config seed (shuffles, fuzz marks)


@dataclass
class ScoreOutcome:
    """What a scorer returns for one feature. `score` is set only when status is 'ok'."""

    status: str
    score: float | None = None
    chance: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.status, Status):
            self.status = self.status.value
        if self.status != Status.OK.value and self.score is not None:
            raise ValueError(f"a score with status {self.status!r} must not carry a value")
        if self.status == Status.OK.value and self.score is None:
            raise ValueError("status 'ok' needs a score value")


class Scorer(ABC):
    """Base class: subclasses set `name` and `prompt_name` and implement `score`."""

    name: ClassVar[str]
    #: Template under prompts/ (its hash keys stored scores); None for scorers without a prompt.
    prompt_name: ClassVar[str | None] = None
    #: False for scorers that need no LLM (embedding).
    needs_client: ClassVar[bool] = True
    #: False for scorers that never read the label (intruder): scored once per feature, not per label.
    needs_explanation: ClassVar[bool] = True
    #: Bump when the scorer's own logic changes in a way that changes its numbers.
    method_version: ClassVar[int] = 1
    #: ScoreConfig fields (beyond the shared sampling fields) that change this scorer's numbers.
    config_keys: ClassVar[tuple[str, ...]] = ("temperature",)

    def __init__(self, client: LLMClient | None, config: ScoreConfig) -> None:
        if self.needs_client and client is None:
            raise UserError(
                f"scorer {self.name!r} needs an LLM", "pass --llm (e.g. local:smollm2 or a server URL)"
            )
        self.client = client
        self.config = config

    @property
    def model_name(self) -> str:
        """The model that produced the score (keys resumability)."""
        assert self.client is not None
        return self.client.model_name

    @property
    def prompt_hash(self) -> str:
        """Template hash plus method version: editing either re-scores instead of mixing versions."""
        template_hash = load_prompt(self.prompt_name).hash if self.prompt_name else "none"
        return f"{template_hash}-m{self.method_version}"

    def config_for_hash(self) -> dict[str, Any]:
        """The settings that change this scorer's numbers (part of the score key)."""
        return self.config.hashed_fields(self.config_keys)

    @abstractmethod
    async def score(self, item: FeatureToScore) -> ScoreOutcome:
        """Score one explanation; never raises for a model failure (returns a failure status)."""


_REGISTRY: dict[str, type[Scorer]] = {}
#: The built-in scorers by name -> the module defining them, imported only when that scorer is asked for
#: (the embedding scorer pulls in sentence-transformers; detection should not pay for it).
BUILTIN_SCORERS: dict[str, str] = {
    "simulation": "autointerp.score.simulation",
    "detection": "autointerp.score.detection",
    "detection_likelihood": "autointerp.score.detection_likelihood",
    "fuzzing": "autointerp.score.fuzzing",
    "embedding": "autointerp.score.embedding",
    "intruder": "autointerp.score.intruder",
    "intruder_likelihood": "autointerp.score.intruder_likelihood",
}


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a scorer available by its `name` (once its module is imported)."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two scorers are named {cls.name!r}: {_REGISTRY[cls.name]} and {cls}")
    _REGISTRY[cls.name] = cls
    return cls


def available_scorers() -> list[str]:
    """Names that `get_scorer_class` resolves: the built-in ones and any registered since."""
    return sorted(set(BUILTIN_SCORERS) | set(_REGISTRY))


def get_scorer_class(name: str) -> type[Scorer]:
    """The scorer class for `name`; a built-in scorer's module is imported here, on first use."""
    if name not in _REGISTRY and name in BUILTIN_SCORERS:
        importlib.import_module(BUILTIN_SCORERS[name])
    if name not in _REGISTRY:
        raise UserError(
            f"unknown scorer {name!r}",
            f"choose from: {', '.join(available_scorers())} (comma-separated in --scorers)",
        )
    return _REGISTRY[name]
