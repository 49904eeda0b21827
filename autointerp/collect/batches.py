"""Grouping contexts into padded model inputs.

Contexts are right-padded to the longest one in the batch. No attention mask is passed: in a causal
model a real token never attends to a later position, so padding cannot change real tokens'
activations, and skipping the mask keeps the fast fused attention path. Padded positions and
position 0 (the attention sink) are marked invalid and never counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from autointerp.corpus import SPLITS, Context


@dataclass
class Batch:
    index: int                   # position of the batch in the stream (used to shard across ranks)
    contexts: list[Context]
    input_ids: torch.Tensor      # [B, T] int64
    valid: torch.Tensor          # [B, T] bool: real token and not position 0
    context_ids: torch.Tensor    # [B] int64
    split_index: torch.Tensor    # [B] int64: index into SPLITS

    @property
    def n_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.contexts)


def make_batch(index: int, contexts: list[Context], pad_id: int) -> Batch:
    width = max(len(c.token_ids) for c in contexts)
    input_ids = torch.full((len(contexts), width), pad_id, dtype=torch.int64)
    lengths = torch.tensor([len(c.token_ids) for c in contexts])
    for row, context in enumerate(contexts):
        input_ids[row, : len(context.token_ids)] = torch.tensor(context.token_ids, dtype=torch.int64)
    positions = torch.arange(width)[None, :]
    valid = (positions < lengths[:, None]) & (positions > 0)
    return Batch(
        index=index,
        contexts=contexts,
        input_ids=input_ids,
        valid=valid,
        context_ids=torch.tensor([c.context_id for c in contexts], dtype=torch.int64),
        split_index=torch.tensor([SPLITS.index(c.split) for c in contexts], dtype=torch.int64),
    )


def iter_batches(contexts: Iterable[Context], batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Consecutive batches of `batch_size` contexts (the last may be smaller)."""
    pending: list[Context] = []
    index = 0
    for context in contexts:
        pending.append(context)
        if len(pending) == batch_size:
            yield make_batch(index, pending, pad_id)
            pending, index = [], index + 1
    if pending:
        yield make_batch(index, pending, pad_id)


def pad_token_id(tokenizer: object) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0
