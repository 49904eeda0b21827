"""Per-row top-k of int64 keys, updated in place from a stream of candidate blocks.

Memory is rows x k whatever the stream length. Each update only touches the rows where some candidate
beats the row's current k-th key: after the first few batches that is a small fraction of the features,
which keeps the per-batch cost far below one full [rows, k + batch] top-k.
"""

from __future__ import annotations

import torch

from autointerp.collect.keys import EMPTY


class KeyTopK:
    def __init__(self, rows: int, k: int, device: torch.device | str = "cpu") -> None:
        self.k = k
        self.keys = torch.full((rows, k), EMPTY, dtype=torch.int64, device=device)

    def update(self, candidates: torch.Tensor) -> None:
        """Merge candidate keys [rows, n] (any layout; keys must be unique per row across all updates)."""
        if candidates.numel() == 0 or self.k == 0:
            return
        threshold = self.keys.min(dim=1).values
        best = candidates.max(dim=1).values
        rows = (best > threshold).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        if rows.numel() * 2 > self.keys.shape[0]:  # most rows change: one dense top-k is cheaper
            merged = torch.cat([self.keys, candidates.to(self.keys.device)], dim=1)
            self.keys = merged.topk(self.k, dim=1, sorted=False).values
            return
        merged = torch.cat([self.keys[rows], candidates[rows]], dim=1)
        self.keys[rows] = merged.topk(self.k, dim=1, sorted=False).values

    def sorted_keys(self) -> torch.Tensor:
        """Keys in descending order per row (empty slots, -1, last)."""
        return self.keys.sort(dim=1, descending=True).values
