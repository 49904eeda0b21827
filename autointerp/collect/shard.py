"""Which part of a collect this process does, and how its results meet the other processes'.

`run_collect(config, store, shard=...)` is the one collect path; a shard only answers the questions
where one process and many differ. The default `Shard()` is the whole run in one process: it takes
every batch, merging and sharing are no-ops, and it writes. `distributed.TorchShard` is one rank of a
torchrun job: it takes the batches with index % world == rank (every rank streams the same
deterministic contexts, so each batch is computed exactly as one process would compute it), merges
pass 1's states exactly (sums, maxima, top-k over unique keys), and only rank 0 writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autointerp.collect.state import CollectState


@dataclass
class Shard:
    rank: int = 0
    world: int = 1

    @property
    def writes(self) -> bool:
        """Only the writing process opens the store and runs pass 2."""
        return self.rank == 0

    def share(self, value: Any) -> Any:
        """The writer's `value`, on every process (a decision, the spill folder)."""
        return value

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order."""
        return [value]

    def merge(self, state: CollectState) -> None:
        """In place: `state` becomes the merge of every process's pass-1 state."""

    def describe(self) -> str:
        return "" if self.world == 1 else f"({self.world} ranks)"
