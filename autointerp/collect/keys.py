"""Packing (score, context id) into one int64 so that per-feature selection is a plain `topk`.

Why int64 keys: a single `torch.topk` over keys that are unique per (feature, context) gives a result
that does not depend on the order contexts arrive in. That makes the selection mergeable (top-k of
top-k's equals top-k of everything), hence exact across batches and across distributed ranks.

- Top keys: the float32 bit pattern of a non-negative activation is monotone in its value, so
  `bits(value) << 32 | (2^32 - 1 - context_id)` orders by activation, ties to the lower context id.
- Random keys: `hash31(seed, context, feature) << 32 | context_id`, a reproducible pseudo-random
  priority. The k largest priorities among a feature's activating contexts are a uniform sample of
  them without replacement (the "bottom-k"/priority-sampling trick), with no reservoir state.
Empty slots and non-activating candidates hold -1, below every real key.
"""

from __future__ import annotations

import torch

EMPTY = -1
LOW32 = (1 << 32) - 1
LOW31 = (1 << 31) - 1
MIN_TOP_KEY = 1 << 32  # the smallest key of a strictly positive activation
MAX_CONTEXT_ID = LOW32

_C1 = 0xFF51AFD7ED558CCD - (1 << 64)  # murmur3 fmix64 constants, as signed int64
_C2 = 0xC4CEB9FE1A85EC53 - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 64-bit finaliser on int64 tensors (wrapping multiplication)."""
    x = x ^ _shr(x, 33)
    x = x * _C1
    x = x ^ _shr(x, 33)
    x = x * _C2
    return x ^ _shr(x, 33)


def context_hashes(context_ids: torch.Tensor, seed: int) -> torch.Tensor:
    return mix64(context_ids.to(torch.int64) * _GOLDEN + seed)


def feature_salts(d_sae: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return mix64(torch.arange(d_sae, dtype=torch.int64, device=device) * _C2 + (seed ^ 0x5EED))


def top_keys(max_acts: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
    """[B, d] keys for per-context max activations [B, d] (>= 0); -1 where the feature did not fire."""
    values = max_acts.to(torch.float32).contiguous()
    bits = values.view(torch.int32).to(torch.int64)
    keys = (bits << 32) | (LOW32 - context_ids.to(torch.int64))[:, None]
    return torch.where(values > 0, keys, torch.full_like(keys, EMPTY))


def random_keys(
    fired: torch.Tensor, context_ids: torch.Tensor, salts: torch.Tensor, seed: int
) -> torch.Tensor:
    """[B, d] priorities for contexts [B] x features [d]; -1 where `fired` [B, d] is False."""
    ctx = context_ids.to(torch.int64)
    priority = _shr(mix64(context_hashes(ctx, seed)[:, None] ^ salts[None, :]), 33)
    keys = (priority << 32) | ctx[:, None]
    return torch.where(fired, keys, torch.full_like(keys, EMPTY))


def sample_keys(context_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """[B] priorities for the global (feature-independent) sample of contexts."""
    ctx = context_ids.to(torch.int64)
    return (_shr(context_hashes(ctx, seed ^ 0xC0FFEE), 33) << 32) | ctx


def top_key_values(keys: torch.Tensor) -> torch.Tensor:
    """The float32 activation packed into top keys (0 for empty slots)."""
    bits = (_shr(keys, 32) & LOW31).to(torch.int32)
    return torch.where(keys >= MIN_TOP_KEY, bits.view(torch.float32), torch.zeros_like(bits, dtype=torch.float32))


def top_key_contexts(keys: torch.Tensor) -> torch.Tensor:
    return LOW32 - (keys & LOW32)


def random_key_contexts(keys: torch.Tensor) -> torch.Tensor:
    return keys & LOW32
