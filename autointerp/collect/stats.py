"""Running per-feature statistics over every counted token: firing count, sum, max, histogram.

All fields are sums or maxima, so two `FeatureStats` merge exactly (distributed ranks, batches).
The histogram uses fixed log-spaced edges shared by every feature (activation scales differ by orders
of magnitude between features and SAEs, and fixed edges are what makes streaming and merging exact):
bin 0 holds (0, 1e-3), then 63 log-spaced bins up to 1e4; larger values land in the last bin, whose
upper edge is written as the feature's max when that is above 1e4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

HIST_BINS = 64
HIST_MIN = 1e-3
HIST_MAX = 1e4


def histogram_edges() -> np.ndarray:
    """HIST_BINS + 1 edges: 0, then log-spaced from HIST_MIN to HIST_MAX."""
    return np.concatenate([[0.0], np.logspace(np.log10(HIST_MIN), np.log10(HIST_MAX), HIST_BINS)])


@dataclass
class FeatureStats:
    firing_count: torch.Tensor   # [d] int64: counted tokens with activation > 0
    total: torch.Tensor          # [d] float64: sum of activations
    max: torch.Tensor            # [d] float32
    hist: torch.Tensor           # [d, HIST_BINS] int64
    n_tokens: int = 0            # counted tokens (position 0 and padding excluded)

    @classmethod
    def empty(cls, d_sae: int, device: torch.device | str = "cpu") -> FeatureStats:
        return cls(
            firing_count=torch.zeros(d_sae, dtype=torch.int64, device=device),
            total=torch.zeros(d_sae, dtype=torch.float64, device=device),
            max=torch.zeros(d_sae, dtype=torch.float32, device=device),
            hist=torch.zeros(d_sae, HIST_BINS, dtype=torch.int64, device=device),
        )

    @property
    def d_sae(self) -> int:
        return int(self.firing_count.shape[0])

    def update(self, features: torch.Tensor, values: torch.Tensor, context_max: torch.Tensor, n_tokens: int) -> None:
        """Add firing entries (feature ids [E], activations [E] > 0) and per-context maxima [B, d]."""
        d = self.d_sae
        self.n_tokens += int(n_tokens)
        if features.numel() == 0:
            return
        self.firing_count += torch.bincount(features, minlength=d)
        self.total += torch.bincount(features, weights=values.to(torch.float64), minlength=d)
        self.max = torch.maximum(self.max, context_max.amax(dim=0).to(torch.float32))
        boundaries = torch.as_tensor(histogram_edges()[1:-1], dtype=torch.float32, device=values.device)
        bins = torch.bucketize(values.to(torch.float32), boundaries, right=True)
        self.hist += torch.bincount(features * HIST_BINS + bins, minlength=d * HIST_BINS).view(d, HIST_BINS)

    def merge(self, other: FeatureStats) -> None:
        self.firing_count += other.firing_count
        self.total += other.total
        self.max = torch.maximum(self.max, other.max)
        self.hist += other.hist
        self.n_tokens += other.n_tokens
