"""Pass 2: per-token activations for the selected contexts only, streamed into the store.

The corpus is streamed again (the same contexts, deterministically); only contexts some example
refers to go through the model. Example rows and context rows are handed to `sink` batch by batch,
so memory stays O(batch) here. Non-activating examples come from each split's global sample: for a
feature, the first `nonactivating_k` sampled contexts (in priority order) where it never fires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from autointerp.collect.batches import iter_batches, pad_token_id
from autointerp.collect.encode import token_activations
from autointerp.collect.rows import context_table, example_table
from autointerp.collect.selection import NONACTIVATING, Selection
from autointerp.collect.spill import SpillReader
from autointerp.corpus import Context, ContextStream, TokenDecoder
from autointerp.models import HookPoint, LoadedModel, activations_at_hook
from autointerp.sae.base import SAE

_NONACTIVATING_CHUNK_ROWS = 100_000


@dataclass
class Sink:
    """Where pass 2 puts its rows (the store, inside the run's transaction)."""

    examples: Callable[[pa.Table], None]
    contexts: Callable[[pa.Table], None]


@dataclass
class Pass2Result:
    n_examples: int
    n_contexts_written: int
    n_contexts_recomputed: int
    seconds: float


def _needed(stream: ContextStream, needed: np.ndarray) -> Iterator[Context]:
    wanted = set(needed.tolist())
    last = int(needed[-1]) if needed.size else -1
    for context in stream:
        if context.context_id in wanted:
            yield context
        if context.context_id >= last:
            return


def run_pass2(
    lm: LoadedModel,
    point: HookPoint,
    sae: SAE,
    stream: ContextStream,
    selection: Selection,
    run_id: str,
    corpus_id: str,
    batch_size: int,
    nonactivating_k: int,
    sink: Sink,
    progress: bool = True,
    spill: SpillReader | None = None,
) -> Pass2Result:
    """Writes the examples of `selection`; per-token activations come from `spill` when pass 1 kept
    one, else from running the model and SAE again on the selected contexts."""
    import time

    from tqdm.auto import tqdm

    start = time.perf_counter()
    decode = TokenDecoder(lm.tokenizer)
    needed = selection.needed_contexts()
    referenced = set(np.unique(selection.context).tolist())
    sample_position = [{int(c): i for i, c in enumerate(s)} for s in selection.samples]
    fires = [np.zeros((len(s), sae.d_sae), dtype=bool) for s in selection.samples]
    sample_contexts: dict[int, Context] = {}
    n_examples = n_written = 0
    bar = tqdm(total=len(needed), unit="ctx", desc="examples", disable=not progress)
    with torch.inference_mode():
        for batch in iter_batches(_needed(stream, needed), batch_size, pad_token_id(lm.tokenizer)):
            if spill is not None:
                acts = spill.activations(batch.context_ids, batch.input_ids.shape[1])  # [B, T, d]
            else:
                hidden = activations_at_hook(lm, point, batch.input_ids)
                acts = token_activations(sae, hidden, batch.valid)  # [B, T, d]
            ids = batch.context_ids.numpy()
            lo = np.searchsorted(selection.context, ids[0], side="left")
            hi = np.searchsorted(selection.context, ids[-1], side="right")
            if hi > lo:
                local = np.searchsorted(ids, selection.context[lo:hi])
                rows = acts[torch.from_numpy(local), :, torch.from_numpy(selection.feature[lo:hi]).long()]
                lengths = np.array([len(c.token_ids) for c in batch.contexts])[local]
                width = rows.shape[1]
                keep = (np.arange(width)[None, :] < lengths[:, None])
                rows_np = rows.cpu().numpy()
                sink.examples(
                    example_table(
                        run_id,
                        selection.feature[lo:hi],
                        selection.split[lo:hi],
                        selection.kind[lo:hi],
                        selection.rank[lo:hi],
                        selection.context[lo:hi],
                        rows_np.max(axis=1),
                        rows_np[keep],
                        lengths,
                    )
                )
                n_examples += int(hi - lo)
            to_write = [c for c in batch.contexts if c.context_id in referenced]
            if to_write:
                sink.contexts(context_table(corpus_id, to_write, decode))
                n_written += len(to_write)
            maxima = None
            for split, positions in enumerate(sample_position):
                for row, context in enumerate(batch.contexts):
                    position = positions.get(context.context_id)
                    if position is None:
                        continue
                    if maxima is None:
                        maxima = acts.amax(dim=1).cpu().numpy()
                    fires[split][position] = maxima[row] > 0
                    sample_contexts[context.context_id] = context
            bar.update(len(batch.contexts))
    bar.close()
    written = referenced
    nonactive_contexts: set[int] = set()
    for split, sample in enumerate(selection.samples):
        for table, used in _nonactivating_tables(run_id, split, sample, fires[split], nonactivating_k, sample_contexts):
            sink.examples(table)
            n_examples += table.num_rows
            nonactive_contexts |= used
    extra = sorted(nonactive_contexts - written)
    if extra:
        sink.contexts(context_table(corpus_id, [sample_contexts[c] for c in extra], decode))
        n_written += len(extra)
    return Pass2Result(n_examples, n_written, len(needed), time.perf_counter() - start)


def _nonactivating_tables(
    run_id: str, split: int, sample: np.ndarray, fires: np.ndarray, k: int, contexts: dict[int, Context]
) -> Iterator[tuple[pa.Table, set[int]]]:
    """Rows of (feature, rank, context) for the first k non-firing sampled contexts of every feature."""
    if k == 0 or sample.size == 0:
        return
    silent = ~fires                                   # [n_sample, d]
    rank = np.cumsum(silent, axis=0) - 1
    chosen = silent & (rank < k)
    d = fires.shape[1]
    per_chunk = max(1, _NONACTIVATING_CHUNK_ROWS // max(k, 1))
    lengths_of = np.array([len(contexts[int(c)].token_ids) for c in sample])
    for first in range(0, d, per_chunk):
        block = chosen[:, first : first + per_chunk]
        positions, features = np.nonzero(block.T)[::-1]  # ordered by feature, then sample position
        features = features + first
        if positions.size == 0:
            continue
        context = sample[positions]
        lengths = lengths_of[positions]
        table = example_table(
            run_id,
            features,
            np.full(positions.size, split, dtype=np.int8),
            np.full(positions.size, NONACTIVATING, dtype=np.int8),
            rank[positions, features],
            context,
            np.zeros(positions.size),
            np.zeros(int(lengths.sum()), dtype=np.float32),
            lengths,
        )
        yield table, set(np.unique(context).tolist())
