"""Which (feature, split, kind, rank, context) examples pass 1 selected, as flat numpy arrays.

Top examples are ranked by activation (descending, ties to the lower context id); random examples
by their sampling priority (a random order); the global sample of each split in priority order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from autointerp.collect.keys import MIN_TOP_KEY, random_key_contexts, top_key_contexts
from autointerp.collect.state import CollectState

KINDS: tuple[str, ...] = ("top", "random", "nonactivating")
TOP, RANDOM, NONACTIVATING = range(3)


@dataclass
class Selection:
    feature: np.ndarray      # [P] int32
    split: np.ndarray        # [P] int8 (index into SPLITS)
    kind: np.ndarray         # [P] int8 (index into KINDS)
    rank: np.ndarray         # [P] int32
    context: np.ndarray      # [P] int64, pairs sorted by context
    samples: list[np.ndarray]  # per split: global-sample context ids, in priority order

    def __len__(self) -> int:
        return int(self.context.shape[0])

    def needed_contexts(self) -> np.ndarray:
        return np.unique(np.concatenate([self.context, *self.samples]))


def _pairs(keys: torch.Tensor, valid: torch.Tensor, contexts: torch.Tensor, split: int, kind: int) -> list[np.ndarray]:
    rows, ranks = valid.nonzero(as_tuple=True)
    n = rows.numel()
    return [
        rows.numpy().astype(np.int32),
        np.full(n, split, dtype=np.int8),
        np.full(n, kind, dtype=np.int8),
        ranks.numpy().astype(np.int32),
        contexts[rows, ranks].numpy().astype(np.int64),
    ]


def select(state: CollectState) -> Selection:
    parts: list[list[np.ndarray]] = []
    samples = []
    for split in range(len(state.top)):
        keys = state.top[split].sorted_keys().cpu()
        parts.append(_pairs(keys, keys >= MIN_TOP_KEY, top_key_contexts(keys), split, TOP))
        keys = state.random[split].sorted_keys().cpu()
        parts.append(_pairs(keys, keys >= 0, random_key_contexts(keys), split, RANDOM))
        sample = state.sample[split].sorted_keys().cpu()[0]
        samples.append(random_key_contexts(sample[sample >= 0]).numpy().astype(np.int64))
    columns = [np.concatenate([p[i] for p in parts]) for i in range(5)]
    order = np.argsort(columns[4], kind="stable")
    feature, split, kind, rank, context = (c[order] for c in columns)
    return Selection(feature, split, kind, rank, context, samples)
