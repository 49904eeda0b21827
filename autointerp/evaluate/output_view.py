"""Per-feature output view: the tokens each feature's decoder direction promotes and suppresses.

This is the logit lens of the decoder direction: logits(d) = (d * g) @ W_U^T, where d is the
feature's W_dec row, g the elementwise weight of the model's final norm (RMSNorm / LayerNorm; Gemma's
RMSNorm scales by 1 + weight) and W_U the unembedding. It is an approximation in two ways, both
standard: (1) the final norm also divides by the residual's RMS (and LayerNorm subtracts its mean);
that scale depends on the whole residual, not on the feature, and is positive, so it changes values
but not the ranking, and is left out; LayerNorm's mean-centering is applied to the direction, since
it is linear. (2) It is the direct path only: later layers may transform what the feature writes.
Biases (LayerNorm's, an unembedding bias) add the same amount whatever the feature, so they are left
out too: the view ranks what the direction itself adds to each logit.

Memory: d_sae x vocab floats can be GBs (16k x 49k = 3 GB), so features are processed in chunks
sized to a fixed element budget and only the top/bottom k of each row are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from autointerp.models import LoadedModel

# Elements of one chunk's logits matrix (float32): 2**25 = 128 MB.
CHUNK_ELEMENTS = 2**25


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied to the residual stream right before the unembedding, if the model has one."""
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm",
                 "model.final_layernorm", "norm"):
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.Module):
            return module
    return None


def norm_gain(norm: nn.Module | None, d_model: int) -> tuple[torch.Tensor | None, bool]:
    """(elementwise gain of the final norm or None, whether it centres its input like LayerNorm)."""
    if norm is None:
        return None, False
    centres = isinstance(norm, nn.LayerNorm) or "LayerNorm" in type(norm).__name__
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != (d_model,):
        return None, centres
    gain = weight.detach().float()
    if "Gemma" in type(norm).__name__:  # Gemma's RMSNorm multiplies by (1 + weight)
        gain = 1.0 + gain
    return gain, centres


def direction_logits_transform(lm: LoadedModel) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(unembedding [vocab, d_model] float32, function mapping directions [n, d_model] to what W_U sees)."""
    unembed = lm.model.get_output_embeddings()
    if unembed is None or not isinstance(getattr(unembed, "weight", None), torch.Tensor):
        raise ValueError(f"{type(lm.model).__name__} has no output embedding to project onto")
    w_u = unembed.weight.detach().float()
    gain, centres = norm_gain(final_norm(lm.model), w_u.shape[1])

    def transform(directions: torch.Tensor) -> torch.Tensor:
        out = directions.float()
        if centres:
            out = out - out.mean(dim=-1, keepdim=True)
        if gain is not None:
            out = out * gain.to(out.device)
        return out

    return w_u, transform


def _token_strings(tokenizer: Any, token_ids: Sequence[int]) -> dict[int, str]:
    """Each token decoded alone, as contexts are stored (so the report shows the same strings)."""
    return {tid: tokenizer.decode([tid]) for tid in sorted(set(token_ids))}


@torch.inference_mode()
def feature_output_view(
    lm: LoadedModel,
    w_dec: torch.Tensor,
    top_k: int = 10,
    feature_ids: Sequence[int] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Top `top_k` promoted and suppressed tokens per feature.

    Columns: feature_id, direction ('promote' | 'suppress'), rank (0 = strongest), token_id, token,
    value (the direction's logit contribution: largest first for 'promote', most negative first for
    'suppress').
    """
    w_u, transform = direction_logits_transform(lm)
    vocab, d_model = w_u.shape
    if w_dec.shape[1] != d_model:
        raise ValueError(f"decoder width {w_dec.shape[1]} does not match the model's hidden size {d_model}")
    ids = torch.arange(w_dec.shape[0]) if feature_ids is None else torch.as_tensor(list(feature_ids), dtype=torch.long)
    k = min(top_k, vocab)
    device = w_u.device
    chunk = max(1, CHUNK_ELEMENTS // vocab)
    parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(ids), chunk):
        chunk_ids = ids[start : start + chunk]
        directions = transform(w_dec[chunk_ids.to(w_dec.device)].to(device))
        logits = directions @ w_u.T  # [chunk, vocab]
        top = torch.topk(logits, k, dim=-1)
        bottom = torch.topk(logits, k, dim=-1, largest=False)
        parts.append({"ids": chunk_ids, "top_v": top.values.cpu(), "top_i": top.indices.cpu(),
                      "bot_v": bottom.values.cpu(), "bot_i": bottom.indices.cpu()})
        del logits
        if on_chunk is not None:
            on_chunk(len(chunk_ids))
    return _frame(parts, k, lm.tokenizer)


def _frame(parts: list[dict[str, torch.Tensor]], k: int, tokenizer: Any) -> pd.DataFrame:
    columns: dict[str, list[Any]] = {"feature_id": [], "direction": [], "rank": [], "token_id": [], "value": []}
    for part in parts:
        n = len(part["ids"])
        for direction, values, indices in (("promote", part["top_v"], part["top_i"]),
                                           ("suppress", part["bot_v"], part["bot_i"])):
            columns["feature_id"] += part["ids"].repeat_interleave(k).tolist()
            columns["direction"] += [direction] * (n * k)
            columns["rank"] += list(range(k)) * n
            columns["token_id"] += indices.reshape(-1).tolist()
            columns["value"] += values.reshape(-1).double().tolist()
    strings = _token_strings(tokenizer, columns["token_id"])
    frame = pd.DataFrame(columns)
    frame.insert(4, "token", [strings[t] for t in columns["token_id"]])
    frame = frame.astype({"feature_id": "int32", "rank": "int32", "token_id": "int32", "value": "float64"})
    return frame.sort_values(["feature_id", "direction", "rank"], kind="stable").reset_index(drop=True)
