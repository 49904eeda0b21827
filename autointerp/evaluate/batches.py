"""Token batches for the evaluation passes, and the mask of positions that count.

The metric functions take an iterator of `TokenBatch` rather than a corpus, so they can be tested on
hand-made tokens and fed by any source (the test split of a collect run, a file, a benchmark).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class TokenBatch:
    """Right-padded token ids [batch, seq]; `attention_mask` is None when every row is full length."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None

    def valid_mask(self) -> torch.Tensor:
        """Bool [batch, seq]: real tokens at position >= 1.

        Position 0 of every context is an attention sink with a norm far above every other token's;
        the SAE never saw it in training and collect treats it as activation 0, so no metric counts it.
        """
        batch, seq = self.input_ids.shape
        mask = torch.ones(batch, seq, dtype=torch.bool) if self.attention_mask is None else self.attention_mask.bool()
        mask = mask.cpu().clone()
        mask[:, 0] = False
        return mask

    @property
    def n_valid(self) -> int:
        return int(self.valid_mask().sum())


def batches_from_token_lists(
    contexts: Iterable[Sequence[int]], batch_size: int, pad_token_id: int = 0
) -> Iterator[TokenBatch]:
    """Group contexts (lists of token ids, possibly of different lengths) into right-padded batches.

    Right padding keeps every real token at the position it has alone: with causal attention the
    pads (masked, and after the real tokens) change nothing that comes before them.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pending: list[list[int]] = []
    for context in contexts:
        ids = [int(t) for t in context]
        if len(ids) < 2:  # nothing left once position 0 is excluded
            continue
        pending.append(ids)
        if len(pending) == batch_size:
            yield _pad(pending, pad_token_id)
            pending = []
    if pending:
        yield _pad(pending, pad_token_id)


def _pad(rows: list[list[int]], pad_token_id: int) -> TokenBatch:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return TokenBatch(ids, None if bool(mask.all()) else mask)


def limit_tokens(batches: Iterable[TokenBatch], max_tokens: int) -> Iterator[TokenBatch]:
    """Yield batches until `max_tokens` counted tokens (position >= 1, not padding) have been yielded.

    The last batch is cut to whole contexts, so the total is at least `max_tokens` and exceeds it by
    less than one context; a context is never cut in the middle (its positions would change meaning).
    """
    if max_tokens <= 0:
        return
    seen = 0
    for batch in batches:
        per_row = batch.valid_mask().sum(dim=1)
        keep = 0
        for count in per_row.tolist():
            keep += 1
            seen += int(count)
            if seen >= max_tokens:
                break
        if keep < batch.input_ids.shape[0]:
            batch = TokenBatch(
                batch.input_ids[:keep], None if batch.attention_mask is None else batch.attention_mask[:keep]
            )
        yield batch
        if seen >= max_tokens:
            return
