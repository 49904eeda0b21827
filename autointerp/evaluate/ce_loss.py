"""CE loss recovered: how much of the model's next-token loss survives splicing the SAE in at the hook.

Per batch, three full forward passes: clean, with the hook's output replaced by the SAE's
reconstruction, and with it ablated (zeros, or the mean activation over evaluated tokens).
recovered = (L_ablated - L_sae) / (L_ablated - L_clean): 1 when the reconstruction is as good as the
real activations, 0 when it is no better than deleting them.

Only positions >= 1 are replaced, and only the losses of predictions made at positions >= 1 count.
Position 0 is an attention sink: a token whose activation norm is far above the rest and which every
later token attends to. SAEs are trained without it (it is excluded everywhere in autointerp), so
their reconstruction of it is meaningless; replacing it would wreck attention at every later position
and the CE loss would measure the SAE's failure on a token it never saw rather than its fidelity.
Zero- or mean-ablating it would likewise destroy the sink and inflate the ablated loss. Keeping
position 0's original activation in all three runs isolates the SAE's effect on ordinary tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from autointerp.evaluate.batches import TokenBatch
from autointerp.models import HookPoint, LoadedModel, logits_with_hook_replaced
from autointerp.sae.base import SAE

ABLATIONS = ("zero", "mean")

# Below this gap between ablated and clean loss (nats) the ratio is noise, so it is not reported.
MIN_LOSS_GAP = 1e-6


def splice_after_first(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A hook replacement that applies `fn` to positions >= 1 and keeps position 0 as it was (see module doc)."""

    def replace(hidden: torch.Tensor) -> torch.Tensor:
        out = hidden.clone()
        out[:, 1:] = fn(hidden[:, 1:]).to(device=hidden.device, dtype=hidden.dtype)
        return out

    return replace


def sae_replacement(sae: SAE) -> Callable[[torch.Tensor], torch.Tensor]:
    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        x_sae = x.to(sae.W_enc.device)
        return sae.decode(sae.encode(x_sae), x_for_norm=x_sae)

    return reconstruct


def ablation_replacement(ablation: str, mean: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    if ablation == "zero":
        return torch.zeros_like
    if ablation == "mean":
        if mean is None:
            raise ValueError("mean ablation needs the mean activation")
        return lambda x: mean.to(device=x.device, dtype=x.dtype).expand_as(x)
    raise ValueError(f"unknown ablation {ablation!r}; use one of {ABLATIONS}")


def next_token_losses(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """Losses (nats, float64 sum-ready) of the counted predictions: made at position t >= 1 for a real token t+1."""
    ids = batch.input_ids.to(logits.device)
    vocab = logits.shape[-1]
    losses = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, vocab), ids[:, 1:].reshape(-1), reduction="none"
    ).reshape(ids.shape[0], -1)
    target_valid = batch.valid_mask()[:, 1:]  # target t+1 is a real token at position >= 1 ...
    target_valid[:, 0] = False                # ... and the prediction is made at t >= 1
    return losses[target_valid.to(losses.device)].double()


@dataclass
class CELossStats:
    ablation: str
    n_tokens: int = 0
    sum_clean: float = 0.0
    sum_sae: float = 0.0
    sum_ablated: float = 0.0

    @property
    def ablated_metric(self) -> str:
        return f"ce_loss_{self.ablation}_ablation"

    def metrics(self) -> dict[str, float | None]:
        if self.n_tokens == 0:
            raise ValueError("no tokens were evaluated for CE loss")
        clean = self.sum_clean / self.n_tokens
        sae = self.sum_sae / self.n_tokens
        ablated = self.sum_ablated / self.n_tokens
        gap = ablated - clean
        recovered = (ablated - sae) / gap if abs(gap) > MIN_LOSS_GAP else None
        return {
            "ce_loss_clean": clean,
            "ce_loss_sae": sae,
            self.ablated_metric: ablated,
            "ce_loss_recovered": recovered,
        }


@torch.inference_mode()
def ce_loss_stats(
    lm: LoadedModel,
    point: HookPoint,
    sae: SAE,
    batches: Iterable[TokenBatch],
    ablation: str = "zero",
    mean_activation: torch.Tensor | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> CELossStats:
    """Accumulate clean / SAE-spliced / ablated next-token losses over the batches."""
    with_sae = splice_after_first(sae_replacement(sae))
    ablated = splice_after_first(ablation_replacement(ablation, mean_activation))
    stats = CELossStats(ablation=ablation)
    for batch in batches:
        sums = []
        for replace in (None, with_sae, ablated):
            logits = logits_with_hook_replaced(lm, point, batch.input_ids, replace, batch.attention_mask)
            losses = next_token_losses(logits, batch)
            sums.append(float(losses.sum()))
            del logits
        stats.sum_clean += sums[0]
        stats.sum_sae += sums[1]
        stats.sum_ablated += sums[2]
        stats.n_tokens += int(losses.numel())
        if on_batch is not None:
            on_batch(int(losses.numel()))
    return stats
