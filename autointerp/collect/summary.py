"""The numbers a user wants after a collect: how many features are alive, dead and dense."""

from __future__ import annotations

from dataclasses import dataclass

from autointerp.collect.stats import FeatureStats


@dataclass
class CollectSummary:
    sae_name: str
    n_features: int
    alive: int                 # fired at least once
    dead: int                  # never fired on the collected tokens
    dense: int                 # fired on more than `dense_threshold` of the counted tokens
    dense_threshold: float
    n_tokens: int              # corpus tokens in contexts
    n_counted_tokens: int      # tokens in the statistics (position 0 of each context excluded)
    n_contexts: int
    n_documents: int
    n_examples: int
    seconds: float
    pass1_seconds: float
    pass2_seconds: float
    skipped: bool = False      # an identical run was already in the store

    @classmethod
    def from_stats(cls, stats: FeatureStats, dense_threshold: float, **fields: object) -> CollectSummary:
        firing = stats.firing_count
        density = firing.double() / max(stats.n_tokens, 1)
        return cls(
            n_features=stats.d_sae,
            alive=int((firing > 0).sum()),
            dead=int((firing == 0).sum()),
            dense=int((density > dense_threshold).sum()),
            dense_threshold=dense_threshold,
            n_counted_tokens=stats.n_tokens,
            **fields,  # type: ignore[arg-type]
        )

    def lines(self) -> list[str]:
        if self.skipped:
            return [f"{self.sae_name}: already collected with this config; nothing to do (--overwrite to redo)"]
        rate = self.n_tokens / self.seconds if self.seconds else 0.0
        return [
            f"{self.sae_name}: {self.n_tokens:,} tokens in {self.n_contexts:,} contexts from "
            f"{self.n_documents:,} documents; {self.seconds:.1f} s ({rate:,.0f} tokens/s; "
            f"pass 1 {self.pass1_seconds:.1f} s, pass 2 {self.pass2_seconds:.1f} s)",
            f"features: {self.n_features:,} = {self.alive:,} alive + {self.dead:,} dead; "
            f"{self.dense:,} dense (firing on > {self.dense_threshold:.0%} of tokens)",
            f"examples written: {self.n_examples:,}",
        ]
