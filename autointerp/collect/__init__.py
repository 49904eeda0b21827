"""The collect stage (design notes: docs/collect.md): base LM + SAE over a corpus -> per-feature examples and statistics in the store.

Public API: `CollectConfig`, `collect(config, store, lm=None, sae=None) -> RunInfo`,
`run_collect(config, store, shard=...) -> CollectOutcome` (run + summary + timings; one process or one
rank of many). Internals, each its own module:
`keys` (int64 selection keys), `topk` (streaming per-row top-k), `stats` (running statistics),
`state` (all of pass 1's state, mergeable), `pass1` / `pass2` (the two passes), `spill` (pass 1's
sparse codes on disk so pass 2 need not rerun the model), `rows` (Arrow rows), `shard` (which batches
a process takes and how ranks meet), `distributed` (torchrun).

`collect`, `run_collect` and `CollectOutcome` load on first use (they pull in torch), so that reading
`CollectConfig` (every `autointerp ... --help`) stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autointerp.collect.config import CollectConfig

if TYPE_CHECKING:
    from autointerp.collect.run import CollectOutcome, collect, run_collect
    from autointerp.collect.summary import CollectSummary

__all__ = ["CollectConfig", "CollectOutcome", "CollectSummary", "collect", "run_collect"]

_LAZY = {"CollectOutcome": "run", "collect": "run", "run_collect": "run", "CollectSummary": "summary"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"autointerp.collect.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'autointerp.collect' has no attribute {name!r}")
