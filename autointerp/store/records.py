"""Plain records read back from the store."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """One collect run: an SAE at a hook of a model, over one corpus."""

    run_id: str
    sae_name: str
    model: str
    hook: str
    sae_path: str
    sae_architecture: str
    d_in: int
    d_sae: int
    corpus_id: str
    config: dict[str, Any]
    config_hash: str
    status: str
    n_tokens: int | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunInfo:
        config = row["config"]
        if isinstance(config, str):
            config = json.loads(config)
        n_tokens = row.get("n_tokens")
        return cls(
            run_id=row["run_id"],
            sae_name=row["sae_name"],
            model=row["model"],
            hook=row["hook"],
            sae_path=row["sae_path"],
            sae_architecture=row["sae_architecture"],
            d_in=int(row["d_in"]),
            d_sae=int(row["d_sae"]),
            corpus_id=row["corpus_id"],
            config=config,
            config_hash=row["config_hash"],
            status=row["status"],
            n_tokens=None if n_tokens is None or n_tokens != n_tokens else int(n_tokens),
        )


@dataclass(frozen=True)
class ExampleRecord:
    """One stored example of a feature with its context, as every reader (explain, score, report) uses it.

    Read by `Store.example_records` straight from Arrow into plain tuples: per feature, building these
    costs microseconds where pandas row access cost milliseconds (profiled: selecting a feature's test
    contexts from a DataFrame was ~12 ms, a third of the score stage's CPU per item). Position 0 is the
    attention sink (activation 0), kept here; a reader that hides it drops it itself.
    """

    feature_id: int
    split: str  # 'explain' | 'test'
    kind: str  # 'top' | 'random' | 'nonactivating'
    rank: int
    context_id: int
    doc_id: int
    max_activation: float
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    activations: tuple[float, ...]
