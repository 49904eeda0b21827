"""Pass 1: one streaming pass over the corpus into a `CollectState`.

Per batch: forward to the hook (the model stops there), SAE pre-activations, then a handful of
vectorised updates on [batch, d_sae] tensors; no Python loop over features or tokens. With
`shard=(rank, world)` only batches with index % world == rank are processed, so ranks of a
distributed run see exactly the batches a single process would, and their states merge exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from autointerp.collect.batches import Batch, iter_batches, pad_token_id
from autointerp.collect.encode import encode_batch
from autointerp.collect.malloc import keep_freed_buffers
from autointerp.collect.spill import CodeSpill
from autointerp.collect.state import CollectState
from autointerp.corpus import ContextStream
from autointerp.models import HookPoint, LoadedModel, activations_at_hook
from autointerp.sae.base import SAE


@dataclass
class Pass1Timing:
    """Seconds spent in the collect step, and (when measured) in a bare forward on the same batches."""

    step_seconds: float = 0.0
    baseline_seconds: float = 0.0
    batches: int = 0
    tokens: int = 0              # real tokens
    padded_tokens: int = 0       # positions run through the model, padding included

    @property
    def padding_fraction(self) -> float:
        return 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_pass1(
    lm: LoadedModel,
    point: HookPoint,
    sae: SAE,
    stream: ContextStream,
    state: CollectState,
    batch_size: int,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    measure_baseline: bool = False,
    on_batch: Callable[[Batch], None] | None = None,
    spill: CodeSpill | None = None,
) -> Pass1Timing:
    """Fill `state` from the stream. `measure_baseline` also times a bare forward on every batch."""
    from tqdm.auto import tqdm

    rank, world = shard
    timing = Pass1Timing()
    total = stream.spec.max_tokens
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="collect", disable=not progress, smoothing=0.1)
    keep_freed_buffers()  # reuse each batch's buffers for the next: no page faults per batch
    pad_id = pad_token_id(lm.tokenizer)
    with torch.inference_mode():
        for batch in iter_batches(stream, batch_size, pad_id, stream.spec.ctx_len):
            if batch.index % world != rank:
                continue
            if measure_baseline:
                _sync(lm.device)
                start = time.perf_counter()
                activations_at_hook(lm, point, batch.input_ids)
                _sync(lm.device)
                timing.baseline_seconds += time.perf_counter() - start
            _sync(lm.device)
            start = time.perf_counter()
            hidden = activations_at_hook(lm, point, batch.input_ids)[: batch.rows]  # pad rows dropped
            codes = encode_batch(sae, hidden, batch.valid.to(hidden.device))
            state.update(codes, batch.context_ids, batch.split_index)
            if spill is not None:
                spill.add(batch.context_ids, batch.input_ids.shape[1], codes)
            _sync(lm.device)
            timing.step_seconds += time.perf_counter() - start
            timing.batches += 1
            timing.tokens += batch.n_tokens
            timing.padded_tokens += batch.n_padded
            bar.update(batch.n_tokens)
            if on_batch is not None:
                on_batch(batch)
    bar.close()
    return timing
