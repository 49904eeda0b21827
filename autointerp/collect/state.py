"""Everything pass 1 keeps: O(d_sae x k) tensors, whatever the corpus size.

Per split: the top-k contexts of every feature by max activation, a uniform random sample of each
feature's activating contexts, and a global random sample of contexts (the pool non-activating
examples are drawn from). Over all tokens: `FeatureStats`. Every part is a top-k over unique int64
keys or a sum/max, so two states merge exactly (`merge`), in any order.
"""

from __future__ import annotations

import torch

from autointerp.collect.encode import BatchCodes
from autointerp.collect.keys import feature_salts, random_keys, sample_keys, top_keys
from autointerp.collect.stats import FeatureStats
from autointerp.collect.topk import KeyTopK
from autointerp.corpus import SPLITS


class CollectState:
    def __init__(
        self, d_sae: int, top_k: int, random_k: int, sample_size: int, seed: int, device: str | torch.device = "cpu"
    ) -> None:
        self.d_sae = d_sae
        self.seed = seed
        self.stats = FeatureStats.empty(d_sae, device)
        self.top = [KeyTopK(d_sae, top_k, device) for _ in SPLITS]
        self.random = [KeyTopK(d_sae, random_k, device) for _ in SPLITS]
        self.sample = [KeyTopK(1, sample_size, device) for _ in SPLITS]
        self.salts = feature_salts(d_sae, seed, device)
        self.n_contexts = 0

    def update(self, codes: BatchCodes, context_ids: torch.Tensor, split_index: torch.Tensor) -> None:
        device = codes.context_max.device
        context_ids = context_ids.to(device)
        split_index = split_index.to(device)
        self.stats.update(codes.features, codes.values, codes.context_max, codes.n_tokens)
        self.n_contexts += int(context_ids.numel())
        for split, _ in enumerate(SPLITS):
            rows = (split_index == split).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            maxima = codes.context_max[rows]
            ids = context_ids[rows]
            self.top[split].update(top_keys(maxima, ids).T)
            self.random[split].update(random_keys(maxima > 0, ids, self.salts, self.seed).T)
            self.sample[split].update(sample_keys(ids, self.seed)[None, :])

    def merge(self, other: CollectState) -> None:
        self.stats.merge(other.stats)
        self.n_contexts += other.n_contexts
        for mine, theirs in zip(self.top + self.random + self.sample, other.top + other.random + other.sample, strict=True):
            mine.update(theirs.keys)

    # --- a flat form for torch.distributed -------------------------------------------------
    def key_tensors(self) -> list[torch.Tensor]:
        return [t.keys for t in self.top + self.random + self.sample]

    def set_key_tensors(self, tensors: list[torch.Tensor]) -> None:
        for holder, keys in zip(self.top + self.random + self.sample, tensors, strict=True):
            holder.keys = keys
