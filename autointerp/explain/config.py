"""Settings of one explain pass. Everything that changes the prompt or the sampling is hashed into the key."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from autointerp.hashing import short_hash

#: Fields that only change how hard we try, not what a successful reply means; left out of the key
#: so that raising --retries does not redo finished work.
_NOT_KEYED = ("retries",)


@dataclass(frozen=True)
class ExplainConfig:
    """What the explainer sees and how it samples.

    Defaults are chosen for token economy: 20 examples (10 top + 10 across the activation range),
    each trimmed to 16 tokens around its peak, already say most of what 40 full 32-token windows say.
    """

    n_top: int = 10                 # top-activating explain-split examples shown
    n_quantile: int = 10            # 'random' examples picked at evenly spaced ranks of their max activation
    window: int = 16                # tokens kept around each example's peak (3/4 before it); 0 = whole context
    show_activations: bool = False  # append each marked span's activation on a 0-10 scale
    max_tokens: int = 96            # completion budget; a label is one short sentence
    temperature: float = 0.0
    seed: int = 0
    retries: int = 2                # extra attempts after a reply that does not parse or validate
    prompt: str = "explain_v2"      # template name under prompts/ (v2: worked examples)

    def __post_init__(self) -> None:
        for name in ("n_top", "n_quantile", "window", "max_tokens", "retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"ExplainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.n_top + self.n_quantile == 0:
            raise ValueError("ExplainConfig needs n_top + n_quantile >= 1 examples")
        if self.max_tokens < 1:
            raise ValueError("ExplainConfig.max_tokens must be >= 1")

    def keyed(self) -> dict[str, object]:
        """The fields stored with each explanation and hashed into its key."""
        return {k: v for k, v in asdict(self).items() if k not in _NOT_KEYED}

    @property
    def hash(self) -> str:
        return short_hash(self.keyed())
