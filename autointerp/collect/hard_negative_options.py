"""Settings of `autointerp hard-negatives`, apart from the step itself so that building the CLI (which reads
their defaults) does not import torch and the model code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HardNegativeOptions:
    n_neighbours: int = 8  # nearest features by decoder cosine whose top contexts are candidates
    per_feature: int = 20  # hard negatives kept per feature and split
    neighbour_top: int = 10  # top contexts read per neighbour
    batch_size: int = 32  # contexts per forward pass
    chunk_features: int = 256  # features whose candidates are read and encoded together
