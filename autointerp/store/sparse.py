"""Examples store a feature's per-token activations sparsely: the positions where it fires and the values.

Why: a feature fires on a few tokens of each of its example contexts (a TopK SAE with k = 32 of 16,384
latents: ~1 in 500 tokens), and non-activating examples on none. Dense FLOAT[] lists of every context
position made collect write ~100 floats per example, almost all zero (247 M floats for 2.2 M examples at
65k tokens), and DuckDB ingests lists at ~50 M floats/s, so writing them took longer than the whole SAE
encoding. Readers still get dense `activations` (one value per context token): the store densifies in SQL
against the context's length (`DENSE_ACTIVATIONS`), so no caller sees the storage format.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

#: SQL expression for the dense activations of example `e` over context `c` (aliases fixed by the queries).
DENSE_ACTIVATIONS = (
    "list_transform(range(len(c.token_ids)), "
    "lambda i: coalesce(e.act_values[list_position(e.act_positions, i::INTEGER)], 0)::FLOAT)"
)

#: Moves a schema-1 examples table (dense `activations`) to the sparse columns, inside one transaction.
MIGRATE_V1_SQL = """
ALTER TABLE examples RENAME TO examples_v1;
{create_examples};
INSERT INTO examples
SELECT run_id, feature_id, split, kind, rank, context_id, max_activation,
       list_filter(range(len(activations))::INTEGER[], lambda i: activations[i + 1] != 0),
       list_filter(activations, lambda a: a != 0)
FROM examples_v1;
DROP TABLE examples_v1;
UPDATE meta SET value = '2' WHERE key = 'schema_version';
"""


def sparse_columns(dense: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(act_positions, act_values) list arrays for a list array of dense per-token activations:
    the nonzero positions of each list, ascending, and their values (vectorised, no per-row Python)."""
    if isinstance(dense, pa.ChunkedArray):
        dense = pa.concat_arrays(dense.chunks) if dense.num_chunks else pa.array([], pa.list_(pa.float32()))
    dense = dense.cast(pa.large_list(pa.float32()))
    offsets = np.asarray(dense.offsets, dtype=np.int64)
    flat = np.asarray(dense.values.to_numpy(zero_copy_only=False), dtype=np.float32)[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(len(lengths)), lengths)
    nonzero = np.flatnonzero(flat != 0)
    positions = (nonzero - offsets[row[nonzero]]).astype(np.int32)
    counts = np.bincount(row[nonzero], minlength=len(lengths))
    return sparse_lists(positions, flat[nonzero], counts)


def sparse_lists(positions: np.ndarray, values: np.ndarray, counts: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """List arrays from flat positions/values and the number of entries of each row."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    offsets_array = pa.array(offsets)
    return (
        pa.ListArray.from_arrays(offsets_array, pa.array(positions.astype(np.int32))),
        pa.ListArray.from_arrays(offsets_array, pa.array(values.astype(np.float32))),
    )


def with_sparse_activations(rows: pa.Table) -> pa.Table:
    """An examples table with dense `activations` turned into the stored sparse columns (else unchanged)."""
    if "activations" not in rows.column_names:
        return rows
    positions, values = sparse_columns(rows.column("activations"))
    index = rows.column_names.index("activations")
    return (
        rows.remove_column(index)
        .append_column("act_positions", positions)
        .append_column("act_values", values)
    )
