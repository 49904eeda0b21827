"""Grouping contexts into model inputs with little padding: length-bucketed batches over a bounded buffer.

Contexts are right-padded to the longest one in the batch. No attention mask is passed: in a causal
model a real token never attends to a later position, so padding cannot change real tokens'
activations, and skipping the mask keeps the fast fused attention path. Padded positions and
position 0 (the attention sink) are marked invalid and never counted.

Why buckets: most documents are shorter than `ctx_len` (wiki intros average ~108 tokens), so
consecutive contexts padded to the longest of their batch spend most of a ctx-256 forward on padding.
`iter_batches` reads `BUFFER_BATCHES` batches' worth of contexts, sorts them by length and cuts them into
batches of at most `batch_size x ctx_len` tokens (width x rows), so a batch of short contexts holds more
of them. Memory stays bounded by the buffer; each context is still one window of one document, and
every selection downstream is order independent, so results do not depend on how batches are formed.

Why a small set of shapes: the CPU kernels keep per-shape state (measured: ~2.3 MB of RSS for every new
[rows, width] the forward meets, never released), and free-form cuts gave a new shape almost every batch
(350 shapes in 365 batches of 1M wiki tokens at ctx 256): peak RSS grew with the corpus (1.4 -> 2.6 GB).
So widths are rounded up to a multiple of `WIDTH_STEP` and rows to a multiple of a quarter of the rows
that fit (`ROW_STEPS`; the extra rows are all padding and are dropped after the forward): at most 4 x ctx_len / 8
shapes (128 at ctx 256) whatever the corpus, padding 3-4 % on wiki, and the same real tokens/s as free-form cuts (the
kernels reuse their shapes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from autointerp.corpus import SPLITS, Context

BUFFER_BATCHES = 32  # contexts sorted per bucketing buffer, in units of batches (0: consecutive, unsorted)
BATCH_COST_SHARE = 64  # one more batch costs like budget / this many padded tokens (per-call overhead)
WIDTH_STEP = 8  # batch widths are multiples of this (capped at ctx_len)
ROW_STEPS = 4  # batch rows are multiples of (rows that fit the budget) // ROW_STEPS


@dataclass
class Batch:
    index: int  # position of the batch in the stream (used to shard across ranks)
    contexts: list[Context]
    input_ids: torch.Tensor  # [B + pad rows, T] int64: what the model runs (rows past B are all padding)
    valid: torch.Tensor  # [B, T] bool: real token and not position 0
    context_ids: torch.Tensor  # [B] int64
    split_index: torch.Tensor  # [B] int64: index into SPLITS

    @property
    def rows(self) -> int:
        """Rows holding a context (B): the model's output is cut to these after the forward."""
        return len(self.contexts)

    @property
    def n_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.contexts)

    @property
    def n_padded(self) -> int:
        """Positions in the forward pass, padding included."""
        return int(self.input_ids.numel())


def make_batch(index: int, contexts: list[Context], pad_id: int, shape: tuple[int, int] | None = None) -> Batch:
    """`shape` (rows, width), at least the contexts' own, pads the model input to it."""
    width = max(len(c.token_ids) for c in contexts)
    rows = len(contexts)
    if shape is not None:
        rows, width = max(rows, shape[0]), max(width, shape[1])
    input_ids = torch.full((rows, width), pad_id, dtype=torch.int64)
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


def _consecutive(contexts: Iterable[Context], batch_size: int) -> Iterator[list[Context]]:
    pending: list[Context] = []
    for context in contexts:
        pending.append(context)
        if len(pending) == batch_size:
            yield pending
            pending = []
    if pending:
        yield pending


def _bucketed(
    contexts: Iterable[Context], budget: int, buffer_tokens: int, ctx_len: int
) -> Iterator[tuple[list[Context], tuple[int, int]]]:
    """Groups of length-sorted contexts, each with its padded (rows, width) within `budget`."""
    buffer: list[Context] = []
    held = 0
    for context in contexts:
        buffer.append(context)
        held += len(context.token_ids)
        if held >= buffer_tokens:
            yield from _cut(buffer, budget, ctx_len)
            buffer, held = [], 0
    if buffer:
        yield from _cut(buffer, budget, ctx_len)


def _cut(buffer: list[Context], budget: int, ctx_len: int) -> Iterator[tuple[list[Context], tuple[int, int]]]:
    """Cuts the length-sorted buffer into batches minimising padded positions (the shape's, pad rows
    included) plus `budget / BATCH_COST_SHARE` per batch (so it does not shatter into many tiny
    batches), each within `budget`: a dynamic programme over cut points, vectorised per cut point."""
    # longest first (ties by id, so the grouping is deterministic): each group's first context sets its width
    ordered = sorted(buffer, key=lambda c: (-len(c.token_ids), c.context_id))
    lengths = np.array([len(c.token_ids) for c in ordered], dtype=np.int64)
    n = len(ordered)
    prefix = np.concatenate([[0], np.cumsum(lengths)])
    width = np.minimum(np.maximum(ctx_len, lengths), -(-lengths // WIDTH_STEP) * WIDTH_STEP)
    fits = np.maximum(1, budget // width)  # rows of this width within the budget
    step = np.maximum(1, fits // ROW_STEPS)
    most = np.maximum(1, fits // step * step)  # contexts a batch starting here may hold (padded rows fit too)
    per_batch = budget / BATCH_COST_SHARE
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    start_of = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(max(0, end - int(most.max())), end)
        starts = starts[end - starts <= most[starts]]
        rows = -(-(end - starts) // step[starts]) * step[starts]
        cost = best[starts] + rows * width[starts] - (prefix[end] - prefix[starts]) + per_batch
        pick = int(np.argmin(cost))
        best[end], start_of[end] = cost[pick], starts[pick]
    cuts = []
    end = n
    while end > 0:
        cuts.append((int(start_of[end]), end))
        end = int(start_of[end])
    for first, last in reversed(cuts):
        rows = -(-(last - first) // int(step[first])) * int(step[first])
        yield ordered[first:last], (rows, int(width[first]))


def iter_batches(
    contexts: Iterable[Context],
    batch_size: int,
    pad_id: int,
    ctx_len: int | None = None,
    buffer_batches: int | None = None,
) -> Iterator[Batch]:
    """Batches of at most `batch_size x ctx_len` padded tokens, length-bucketed over a buffer of
    `buffer_batches` (default `BUFFER_BATCHES`) batches' worth of tokens. Without `ctx_len`, or with
    `buffer_batches=0`: consecutive batches of `batch_size` contexts (the last may be smaller)."""
    buffer_batches = BUFFER_BATCHES if buffer_batches is None else buffer_batches
    if ctx_len is None or buffer_batches <= 0:
        for index, group in enumerate(_consecutive(contexts, batch_size)):
            yield make_batch(index, group, pad_id)
        return
    budget = batch_size * ctx_len
    for index, (group, shape) in enumerate(_bucketed(contexts, budget, budget * buffer_batches, ctx_len)):
        yield make_batch(index, group, pad_id, shape)


def pad_token_id(tokenizer: object) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0
