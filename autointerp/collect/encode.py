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
    """Latent statistics of hook activations [B, T, d_in] with validity mask [B, T].

    Only valid tokens go through the encoder (padding and position 0 are never counted, so encoding
    them was ~3-6 % of the encoder's work thrown away)."""
    batch, width, _ = hidden.shape
    d_sae = sae.d_sae
    token = valid.reshape(-1).to(hidden.device).nonzero().squeeze(1)  # flat index of every counted token
    row = token // width
    pre = sae.pre_acts(hidden.reshape(batch * width, -1).index_select(0, token))
    context_max = torch.zeros(batch * d_sae, dtype=torch.float32, device=pre.device)
    if sae.cfg.architecture == "topk":
        values, indices = pre.topk(int(sae.cfg.k), dim=-1)  # type: ignore[arg-type]
        values = torch.relu(values).to(torch.float32)
        slots = (row[:, None] * d_sae + indices).reshape(-1)
        context_max.scatter_reduce_(0, slots, values.reshape(-1), reduce="amax", include_self=True)
        fired = values > 0
        tokens = token[:, None].expand_as(indices)[fired]
        return BatchCodes(context_max.view(batch, d_sae), indices[fired], values[fired], int(token.numel()), tokens)
    acts = sae.activation(pre).to(torch.float32)
    rows, features = acts.nonzero(as_tuple=True)
    values = acts[rows, features]
    context_max.scatter_reduce_(0, row[rows] * d_sae + features, values, reduce="amax", include_self=True)
    return BatchCodes(context_max.view(batch, d_sae), features, values, int(token.numel()), token[rows])


def token_activations(sae: SAE, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Dense per-token activations [B, T, d_sae] (float32), zero at invalid positions."""
    acts = sae.encode(hidden).to(torch.float32)
    return acts * valid.to(acts.device)[..., None]
