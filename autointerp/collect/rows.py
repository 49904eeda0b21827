"""Arrow tables in the store's column layout (built from numpy buffers: no per-row Python objects
for the millions of example activations a 16k-feature SAE produces)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from autointerp.collect.selection import KINDS
from autointerp.collect.stats import FeatureStats, histogram_edges
from autointerp.corpus import SPLITS, Context, TokenDecoder
from autointerp.store.sparse import sparse_lists


def _list_array(flat: np.ndarray, lengths: np.ndarray, value_type: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, type=value_type))


def _dictionary(codes: np.ndarray, names: Sequence[str]) -> pa.Array:
    """A string column as codes + names. DuckDB reads it straight into its VARCHAR column: casting to
    plain strings first cost ~7 % of pass 2 (millions of example rows, three such columns) for nothing."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(list(names)))


def example_table(
    run_id: str,
    feature: np.ndarray,
    split: np.ndarray,
    kind: np.ndarray,
    rank: np.ndarray,
    context: np.ndarray,
    max_activation: np.ndarray,
    positions: np.ndarray,
    values: np.ndarray,
    counts: np.ndarray,
) -> pa.Table:
    """Example rows with sparse activations: `counts[i]` (position, value) entries per example, flat."""
    n = len(feature)
    act_positions, act_values = sparse_lists(positions, values, counts)
    return pa.table(
        {
            "run_id": _dictionary(np.zeros(n, dtype=np.int32), [run_id]),
            "feature_id": pa.array(feature.astype(np.int32)),
            "split": _dictionary(split, SPLITS),
            "kind": _dictionary(kind, KINDS),
            "rank": pa.array(rank.astype(np.int32)),
            "context_id": pa.array(context.astype(np.int64)),
            "max_activation": pa.array(max_activation.astype(np.float64)),
            "act_positions": act_positions,
            "act_values": act_values,
        }
    )


def context_table(corpus_id: str, contexts: Sequence[Context], decode: TokenDecoder) -> pa.Table:
    lengths = np.array([len(c.token_ids) for c in contexts], dtype=np.int64)
    flat_ids = np.fromiter((t for c in contexts for t in c.token_ids), dtype=np.int32, count=int(lengths.sum()))
    flat_tokens = [s for c in contexts for s in decode(c.token_ids)]
    offsets = np.zeros(len(contexts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.table(
        {
            "corpus_id": pa.repeat(corpus_id, len(contexts)),
            "context_id": pa.array([c.context_id for c in contexts], type=pa.int64()),
            "doc_id": pa.array([c.doc_id for c in contexts], type=pa.int64()),
            "split": pa.array([c.split for c in contexts], type=pa.string()),
            "token_ids": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat_ids)),
            "tokens": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat_tokens, type=pa.string())),
        }
    )


def feature_table(run_id: str, stats: FeatureStats) -> pa.Table:
    d = stats.d_sae
    firing = stats.firing_count.cpu().numpy()
    total = stats.total.cpu().numpy()
    maxima = stats.max.cpu().numpy().astype(np.float64)
    n_tokens = max(stats.n_tokens, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(firing > 0, total / np.maximum(firing, 1), np.nan)
    edges = histogram_edges()
    per_feature_edges = np.tile(edges, (d, 1))
    per_feature_edges[:, -1] = np.maximum(edges[-1], maxima)
    hist = stats.hist.cpu().numpy()
    bins = hist.shape[1]
    return pa.table(
        {
            "run_id": pa.repeat(run_id, d),
            "feature_id": pa.array(np.arange(d, dtype=np.int32)),
            "firing_count": pa.array(firing.astype(np.int64)),
            "density": pa.array(firing / n_tokens),
            "max_activation": pa.array(maxima),
            "mean_activation": pa.array(mean, mask=firing == 0),
            "hist_counts": _list_array(hist.reshape(-1).astype(np.int64), np.full(d, bins), pa.int64()),
            "hist_edges": _list_array(per_feature_edges.reshape(-1), np.full(d, bins + 1), pa.float64()),
        }
    )
