"""Settings of one explain pass. Everything that changes the prompt or the sampling is hashed into the key."""

from __future__ import annotations

from dataclasses import dataclass

from autointerp.hashing import short_hash
from autointerp.options import hashed_values, option


@dataclass(frozen=True)
class ExplainConfig:
    """What the explainer sees and how it samples.

    Defaults are chosen for token economy: 20 examples (10 top + 10 across the activation range),
    each trimmed to 16 tokens around its peak, already say most of what 40 full 32-token windows say.
    """

    n_top: int = option(10, "top-activating explain-split examples shown")
    n_quantile: int = option(
        10, "examples across the activation range (picked at evenly spaced ranks of their max)"
    )
    window: int = option(16, "tokens kept around each example's peak (3/4 before it); 0 = whole context")
    show_activations: bool = option(False, "write each marked span's activation on a 0-10 scale")
    max_tokens: int = option(96, "completion budget per label (a label is one short sentence)")
    temperature: float = option(0.0, "explainer sampling temperature")
    seed: int = option(0, "sampling seed and random:N seed")
    # how hard we try, not what a successful reply means: not keyed, so raising it does not redo finished work
    retries: int = option(2, "extra attempts after a reply that does not parse or validate", hashed=False)
    reject_unusable: bool = option(
        True,
        "treat a label the label-quality check rejects (echoed prompt, markers, a copied worked example, "
        "loops) as a failed attempt: retried hotter, then stored as status unusable_label, never as a label",
        off_help="store every label that parses, even ones the label-quality check rejects (to study them)",
    )
    unmark_labels: bool = option(
        True,
        "drop the << >> markers a reply copies from the excerpts into its label before it is judged and stored "
        "(the raw reply keeps them): 'the most famous <<work>> of ...' is a label once unmarked",
        off_help="judge and store labels exactly as replied (a copied marker makes the label unusable)",
    )
    prompt: str = option("explain_v2", "template name under prompts/ (v2: worked examples)")

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
        return hashed_values(self)

    @property
    def hash(self) -> str:
        return short_hash(self.keyed())
