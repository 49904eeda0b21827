"""The collect stage (design notes: docs/collect.md): base LM + SAE over a corpus -> per-feature examples and statistics in the store.

Public API: `CollectConfig`, `collect(config, store, lm=None, sae=None) -> RunInfo`,
`run_collect(...) -> CollectOutcome` (run + summary + timings). Internals, each its own module:
`keys` (int64 selection keys), `topk` (streaming per-row top-k), `stats` (running statistics),
`state` (all of pass 1's state, mergeable), `pass1` / `pass2` (the two passes), `spill` (pass 1's
sparse codes on disk so pass 2 need not rerun the model), `rows` (Arrow rows),
`distributed` (torchrun), `bench` (`autointerp bench collect`).
"""

from __future__ import annotations

from autointerp.collect.config import CollectConfig
from autointerp.collect.run import CollectOutcome, collect, run_collect
from autointerp.collect.summary import CollectSummary

__all__ = ["CollectConfig", "CollectOutcome", "CollectSummary", "collect", "run_collect"]
