"""SAE latents for a batch, in the forms collect needs.

Pass 1 never materialises the dense [tokens, d_sae] activation tensor for TopK SAEs: it takes the
top-k of the pre-activations (exactly what `SAE.activation` does) and works on the k entries per
token; ReLU/JumpReLU SAEs go through the dense activation and keep its nonzeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autointerp.sae.base import SAE


@dataclass
class BatchCodes:
    context_max: torch.Tensor    # [B, d_sae] float32: max over valid positions (0 when not firing)
    features: torch.Tensor       # [E] int64: feature of every firing (token, feature) entry
    values: torch.Tensor         # [E] float32: its activation (> 0)
    n_tokens: int                # valid tokens in the batch
    tokens: torch.Tensor | None = None  # [E] int64: flat token index (row * width + position) of each entry


def encode_batch(sae: SAE, hidden: torch.Tensor, valid: torch.Tensor) -> BatchCodes:
    """Latent statistics of hook activations [B, T, d_in] with validity mask [B, T]."""
    batch, width, _ = hidden.shape
    d_sae = sae.d_sae
    pre = sae.pre_acts(hidden.reshape(batch * width, -1))
    mask = valid.reshape(batch * width, 1).to(pre.device)
    if sae.cfg.architecture == "topk":
        values, indices = pre.topk(int(sae.cfg.k), dim=-1)  # type: ignore[arg-type]
        values = (torch.relu(values) * mask).to(torch.float32)
        context_max = torch.zeros(batch, d_sae, dtype=torch.float32, device=pre.device)
        context_max.scatter_reduce_(
            1, indices.view(batch, -1), values.view(batch, -1), reduce="amax", include_self=True
        )
        fired = values > 0
        tokens = torch.arange(batch * width, device=pre.device)[:, None].expand_as(indices)[fired]
        return BatchCodes(context_max, indices[fired], values[fired], int(valid.sum()), tokens)
    acts = (sae.activation(pre) * mask).to(torch.float32)
    context_max = acts.view(batch, width, d_sae).amax(dim=1)
    rows, features = acts.nonzero(as_tuple=True)
    return BatchCodes(context_max, features, acts[rows, features], int(valid.sum()), rows)


def token_activations(sae: SAE, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Dense per-token activations [B, T, d_sae] (float32), zero at invalid positions."""
    acts = sae.encode(hidden).to(torch.float32)
    return acts * valid.to(acts.device)[..., None]
