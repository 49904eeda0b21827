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
from autointerp.collect.encode import BatchCodes, encode_batch
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
class SparseEntries:
    """A batch's firing (row, position, feature, value) entries: what pass 1 spilled, or a recomputation."""

    row: np.ndarray  # [E] int64: row of the batch
    position: np.ndarray  # [E] int64
    feature: np.ndarray  # [E] int64
    value: np.ndarray  # [E] float32 (> 0)

    @classmethod
    def from_codes(cls, codes: BatchCodes, width: int) -> SparseEntries:
        assert codes.tokens is not None
        tokens = codes.tokens.cpu().numpy().astype(np.int64)
        return cls(
            tokens // width,
            tokens % width,
            codes.features.cpu().numpy().astype(np.int64),
            codes.values.to(torch.float32).cpu().numpy(),
        )


def _example_rows(
    run_id: str,
    selection: Selection,
    ids: np.ndarray,
    entries: SparseEntries,
    d_sae: int,
) -> pa.Table | None:
    """The example rows of the batch's contexts `ids` (any order), built from sparse entries alone:
    no dense [rows, width, d_sae] tensor, one vectorised gather for all examples of the batch."""
    lo = np.searchsorted(selection.context, ids, side="left")
    hi = np.searchsorted(selection.context, ids, side="right")
    counts = hi - lo
    total = int(counts.sum())
    if total == 0:
        return None
    starts = np.cumsum(counts) - counts
    index = np.repeat(lo - starts, counts) + np.arange(total)  # examples of these contexts
    row = np.repeat(np.arange(len(ids)), counts)
    # a (context, feature) pair can be several examples (top and random): gather each pair's entries once
    pair_keys, pair_of = np.unique(
        row * d_sae + selection.feature[index].astype(np.int64), return_inverse=True
    )
    entry_keys = entries.row * d_sae + entries.feature
    where = np.minimum(np.searchsorted(pair_keys, entry_keys), len(pair_keys) - 1)
    match = pair_keys[where] == entry_keys
    owner = where[match]
    order = np.argsort(owner, kind="stable")  # entries come by token within a row: positions stay ascending
    positions, values = entries.position[match][order], entries.value[match][order]
    pair_count = np.bincount(owner, minlength=len(pair_keys))
    pair_start = np.cumsum(pair_count) - pair_count
    pair_max = np.zeros(len(pair_keys), dtype=np.float32)
    np.maximum.at(pair_max, owner, entries.value[match])
    ex_count = pair_count[pair_of]
    ex_start = np.cumsum(ex_count) - ex_count
    gather = np.repeat(pair_start[pair_of] - ex_start, ex_count) + np.arange(int(ex_count.sum()))
    return example_table(
        run_id,
        selection.feature[index],
        selection.split[index],
        selection.kind[index],
        selection.rank[index],
        selection.context[index],
        pair_max[pair_of],
        positions[gather],
        values[gather],
        ex_count,
    )


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
    ctx_len: int | None = None,
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
        for batch in iter_batches(_needed(stream, needed), batch_size, pad_token_id(lm.tokenizer), ctx_len):
            width = batch.input_ids.shape[1]
            ids = batch.context_ids.numpy()
            if spill is not None:
                entry_row, spilled = spill.entries(ids)
                entries = SparseEntries(
                    entry_row,
                    spilled["position"].astype(np.int64),
                    spilled["feature"].astype(np.int64),
                    spilled["value"],
                )
            else:
                hidden = activations_at_hook(lm, point, batch.input_ids)[: batch.rows]  # pad rows dropped
                entries = SparseEntries.from_codes(
                    encode_batch(sae, hidden, batch.valid.to(hidden.device)), width
                )
            table = _example_rows(run_id, selection, ids, entries, sae.d_sae)
            if table is not None:
                sink.examples(table)
                n_examples += table.num_rows
            to_write = [c for c in batch.contexts if c.context_id in referenced]
            if to_write:
                sink.contexts(context_table(corpus_id, to_write, decode))
                n_written += len(to_write)
            for split, positions in enumerate(sample_position):
                sampled = np.array([positions.get(int(c), -1) for c in ids], dtype=np.int64)
                if not (sampled >= 0).any():
                    continue
                for row in np.nonzero(sampled >= 0)[0].tolist():
                    sample_contexts[int(ids[row])] = batch.contexts[row]
                hit = sampled[entries.row] >= 0
                fires[split][sampled[entries.row[hit]], entries.feature[hit]] = True
            bar.update(len(batch.contexts))
    bar.close()
    written = referenced
    nonactive_contexts: set[int] = set()
    for split, sample in enumerate(selection.samples):
        for table, used in _nonactivating_tables(
            run_id, split, sample, fires[split], nonactivating_k, sample_contexts
        ):
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
    silent = ~fires  # [n_sample, d]
    rank = np.cumsum(silent, axis=0, dtype=np.int32)  # int32: a quarter of int64's cumsum time
    rank -= 1
    # Rows past the first one where every feature has its k contexts can hold no choice: most features
    # fire on few sampled contexts, so this keeps ~k of the 4k sampled rows (same rows chosen).
    done = np.flatnonzero(rank.min(axis=1) >= k - 1)
    rows = int(done[0]) + 1 if done.size else len(sample)
    silent, rank = silent[:rows], rank[:rows]
    chosen = silent & (rank < k)
    d = fires.shape[1]
    per_chunk = max(1, _NONACTIVATING_CHUNK_ROWS // max(k, 1))
    for first in range(0, d, per_chunk):
        block = np.ascontiguousarray(chosen[:, first : first + per_chunk].T)
        features, positions = np.nonzero(block)  # ordered by feature, then sample position
        features = features + first
        if positions.size == 0:
            continue
        context = sample[positions]
        table = example_table(
            run_id,
            features,
            np.full(positions.size, split, dtype=np.int8),
            np.full(positions.size, NONACTIVATING, dtype=np.int8),
            rank[positions, features],
            context,
            np.zeros(positions.size),
            np.zeros(0, dtype=np.int32),
            np.zeros(0, dtype=np.float32),
            np.zeros(positions.size, dtype=np.int64),
        )
        yield table, set(np.unique(context).tolist())
