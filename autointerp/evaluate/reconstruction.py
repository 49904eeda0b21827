"""Sparsity and fidelity of an SAE on streamed activations: L0, fraction of variance explained, MSE.

Everything is accumulated in float64 over batches, so memory is O(d_in + d_sae) whatever the number
of tokens. The variance in the FVE denominator uses the per-dimension mean over the evaluated tokens,
merged batch by batch with Chan et al.'s pairwise update (a running sum of squares minus n * mean^2
loses most of its digits when the mean is large next to the spread, which residual streams often are).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from autointerp.evaluate.batches import TokenBatch
from autointerp.models import HookPoint, LoadedModel, activations_at_hook
from autointerp.sae.base import SAE


@dataclass
class ReconstructionStats:
    """Running sums over evaluated tokens; `update` with [n, d_in] activations, their reconstructions and latents."""

    d_in: int
    d_sae: int
    n_tokens: int = 0
    sum_l0: float = 0.0
    sum_squared_error: float = 0.0
    mean: torch.Tensor = field(init=False)            # [d_in] float64, mean of x so far
    sum_squared_dev: torch.Tensor = field(init=False)  # [d_in] float64, sum of (x - mean)^2 so far
    firing_counts: torch.Tensor = field(init=False)    # [d_sae] int64, tokens on which each latent is > 0

    def __post_init__(self) -> None:
        self.mean = torch.zeros(self.d_in, dtype=torch.float64)
        self.sum_squared_dev = torch.zeros(self.d_in, dtype=torch.float64)
        self.firing_counts = torch.zeros(self.d_sae, dtype=torch.int64)

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, latents: torch.Tensor) -> None:
        """Add the tokens of one batch (rows already restricted to counted positions)."""
        n_batch = int(x.shape[0])
        if n_batch == 0:
            return
        # per-batch reductions on the activations' own device (a GPU stays busy); only vectors come back
        x64 = x.detach().double()
        err = x64 - x_hat.detach().to(x64.device, torch.float64)
        active = latents.detach() > 0
        self.sum_squared_error += float((err * err).sum())
        self.sum_l0 += float(active.sum())
        self.firing_counts += active.sum(dim=0).to("cpu", torch.int64)
        batch_mean = x64.mean(dim=0)
        batch_m2 = ((x64 - batch_mean) ** 2).sum(dim=0).cpu()
        batch_mean = batch_mean.cpu()
        total = self.n_tokens + n_batch
        delta = batch_mean - self.mean
        self.mean += delta * (n_batch / total)
        self.sum_squared_dev += batch_m2 + delta * delta * (self.n_tokens * n_batch / total)
        self.n_tokens = total

    @property
    def l0(self) -> float:
        """Mean number of latents > 0 per token."""
        return self.sum_l0 / self.n_tokens

    @property
    def total_variance(self) -> float:
        """sum over tokens of ||x - mean(x)||^2 (mean per dimension over the evaluated tokens)."""
        return float(self.sum_squared_dev.sum())

    @property
    def fve(self) -> float | None:
        """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2; None when the activations do not vary."""
        variance = self.total_variance
        if variance <= 0.0:
            return None
        return 1.0 - self.sum_squared_error / variance

    @property
    def mse(self) -> float:
        """Mean squared error per element: sum ||x - x_hat||^2 / (n_tokens * d_in)."""
        return self.sum_squared_error / (self.n_tokens * self.d_in)

    def metrics(self) -> dict[str, float | None]:
        if self.n_tokens == 0:
            raise ValueError("no tokens were evaluated")
        return {"l0": self.l0, "fve": self.fve, "mse": self.mse, "n_eval_tokens": float(self.n_tokens)}


def sae_outputs(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, reconstruction) for raw hook activations, in the SAE's device and dtype."""
    x = x.to(sae.W_enc.device)
    latents = sae.encode(x)
    return latents, sae.decode(latents, x_for_norm=x)


@torch.inference_mode()
def reconstruction_stats(
    lm: LoadedModel,
    point: HookPoint,
    sae: SAE,
    batches: Iterable[TokenBatch],
    on_batch: Callable[[int], None] | None = None,
) -> ReconstructionStats:
    """Run the model to the hook on each batch, encode/decode with the SAE and accumulate the stats.

    `on_batch(n_tokens)` is called after each batch (a progress bar hook).
    """
    stats = ReconstructionStats(d_in=sae.d_in, d_sae=sae.d_sae)
    for batch in batches:
        acts = activations_at_hook(lm, point, batch.input_ids, batch.attention_mask)
        x = acts[batch.valid_mask().to(acts.device)]
        latents, x_hat = sae_outputs(sae, x)
        stats.update(x, x_hat, latents)
        if on_batch is not None:
            on_batch(int(x.shape[0]))
    return stats
