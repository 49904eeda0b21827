"""Matching features of two SAEs by the cosine similarity of their decoder directions.

Two SAEs trained on the same model and hook that learnt "the same" feature have (nearly) the same
decoder row, whatever index each gave it; so the best match of a feature is the row of the other
decoder with the highest cosine, and the share of features whose best match is above 0.7 / 0.9 says
how much of one dictionary the other has too. Used by `compare` (pair the scores of features that
exist in both) and by neighbour lookups within one SAE.

Memory: a 65k x 65k similarity matrix would be 16 GiB in float32, so it is never built. Rows of A
are taken `chunk` at a time against `chunk` rows of B; a running max/argmax per row of A and per
row of B is all that is kept, so the extra memory is `chunk**2` floats (64 MiB at the default)
beside the two normalised decoders themselves. Both directions come out of the same pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Cosine thresholds reported for every pair of SAEs (the 0.7 default marks "exists in both").
MATCH_THRESHOLDS = (0.7, 0.9)
DEFAULT_CHUNK = 4096


@dataclass(frozen=True)
class FeatureMatch:
    """Best match per feature in both directions (A -> B and B -> A)."""

    best_b: np.ndarray  # [d_sae_a] index of the B feature closest to each A feature
    cos_a: np.ndarray  # [d_sae_a] its cosine
    best_a: np.ndarray  # [d_sae_b] index of the A feature closest to each B feature
    cos_b: np.ndarray  # [d_sae_b] its cosine

    def share_a(self, threshold: float) -> float:
        """Fraction of A's features with a match in B at cosine >= threshold."""
        return float((self.cos_a >= threshold).mean()) if self.cos_a.size else float("nan")

    def share_b(self, threshold: float) -> float:
        return float((self.cos_b >= threshold).mean()) if self.cos_b.size else float("nan")

    def mutual(self, threshold: float) -> np.ndarray:
        """Boolean [d_sae_a]: A feature i and B feature best_b[i] are each other's best match above threshold."""
        back = self.best_a[self.best_b]
        return (back == np.arange(self.best_b.size)) & (self.cos_a >= threshold)


def unit_rows(w: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm in float32; an all-zero (dead) row stays zero, so its cosine is 0."""
    w = w.detach().to(torch.float32)
    norms = w.norm(dim=1, keepdim=True)
    return w / torch.where(norms > 0, norms, torch.ones_like(norms))


@torch.no_grad()
def match_decoders(dec_a: torch.Tensor, dec_b: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> FeatureMatch:
    """Best decoder-cosine match of every row of `dec_a` [n_a, d] in `dec_b` [n_b, d] and back.

    Ties go to the lowest index (torch.max's rule), so matching an SAE with itself maps every
    feature to itself unless two decoder rows are identical.
    """
    if dec_a.ndim != 2 or dec_b.ndim != 2 or dec_a.shape[1] != dec_b.shape[1]:
        raise ValueError(
            f"decoders must be [n, d] with the same d; got {tuple(dec_a.shape)} and {tuple(dec_b.shape)}"
        )
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    a, b = unit_rows(dec_a), unit_rows(dec_b)
    n_a, n_b = a.shape[0], b.shape[0]
    cos_a = torch.full((n_a,), -2.0)
    best_b = torch.zeros(n_a, dtype=torch.long)
    cos_b = torch.full((n_b,), -2.0)
    best_a = torch.zeros(n_b, dtype=torch.long)
    for i in range(0, n_a, chunk):
        a_blk = a[i : i + chunk]
        for j in range(0, n_b, chunk):
            sims = a_blk @ b[j : j + chunk].T  # [<=chunk, <=chunk], the only big temporary
            row_val, row_idx = sims.max(dim=1)
            better = row_val > cos_a[i : i + chunk]
            cos_a[i : i + chunk] = torch.where(better, row_val, cos_a[i : i + chunk])
            best_b[i : i + chunk] = torch.where(better, row_idx + j, best_b[i : i + chunk])
            col_val, col_idx = sims.max(dim=0)
            better = col_val > cos_b[j : j + chunk]
            cos_b[j : j + chunk] = torch.where(better, col_val, cos_b[j : j + chunk])
            best_a[j : j + chunk] = torch.where(better, col_idx + i, best_a[j : j + chunk])
    return FeatureMatch(
        best_b=best_b.numpy(), cos_a=cos_a.numpy(), best_a=best_a.numpy(), cos_b=cos_b.numpy()
    )


@torch.no_grad()
def decoder_neighbours(
    dec: torch.Tensor, feature_ids: np.ndarray | list[int], n_neighbours: int, chunk: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """The `n_neighbours` features of the same SAE whose decoder rows are closest in cosine to each of
    `feature_ids` (itself excluded): (ids [n, m], cosines [n, m]), nearest first. Chunked over the
    dictionary like `match_decoders`, so a 65k-wide SAE never builds the full similarity matrix."""
    rows = unit_rows(dec)
    ids = torch.as_tensor(np.asarray(feature_ids, dtype=np.int64))
    m = min(int(n_neighbours), rows.shape[0] - 1)
    if m < 1 or ids.numel() == 0:
        return np.zeros((ids.numel(), 0), dtype=np.int64), np.zeros((ids.numel(), 0), dtype=np.float32)
    best_val = torch.full((ids.numel(), m), -2.0)
    best_idx = torch.zeros((ids.numel(), m), dtype=torch.long)
    queries = rows[ids]
    for j in range(0, rows.shape[0], chunk):
        sims = queries @ rows[j : j + chunk].T
        inside = ((ids >= j) & (ids < j + sims.shape[1])).nonzero(as_tuple=True)[0]
        sims[inside, ids[inside] - j] = -3.0  # a feature is never its own neighbour
        values = torch.cat([best_val, sims], dim=1)
        indices = torch.cat([best_idx, torch.arange(j, j + sims.shape[1]).expand(ids.numel(), -1)], dim=1)
        best_val, order = values.topk(m, dim=1)
        best_idx = indices.gather(1, order)
    return best_idx.numpy(), best_val.numpy()
