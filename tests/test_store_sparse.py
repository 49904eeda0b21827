"""Examples are stored sparsely (schema 2) and read back dense; schema-1 workspaces are upgraded in place."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from autointerp.store import SCHEMA_VERSION, Store
from autointerp.store.sparse import DENSE_ACTIVATIONS, sparse_columns
from tests.report_helpers import build_store

# The schema-1 examples table: dense per-token activations.
V1_EXAMPLES = """CREATE TABLE examples (
    run_id VARCHAR NOT NULL, feature_id INTEGER NOT NULL, split VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    rank INTEGER NOT NULL, context_id BIGINT NOT NULL, max_activation DOUBLE NOT NULL,
    activations FLOAT[] NOT NULL, PRIMARY KEY (run_id, feature_id, split, kind, rank))"""


def test_sparse_columns_round_trip_keeps_positions_values_and_empty_rows() -> None:
    dense = pa.array([[0.0, 1.5, 0.0, 2.0], [], [0.0, 0.0], [3.0]], pa.list_(pa.float32()))
    positions, values = sparse_columns(dense.slice(0))
    assert positions.to_pylist() == [[1, 3], [], [], [0]]
    assert values.to_pylist() == [[1.5, 2.0], [], [], [3.0]]
    # a sliced array (non-zero first offset) gives the same rows
    positions, values = sparse_columns(dense.slice(1))
    assert positions.to_pylist() == [[], [], [0]] and values.to_pylist() == [[], [], [3.0]]


def _examples(path) -> list[tuple]:
    with Store(path, read_only=True) as store:
        run = store.run_by_name("sae-a")
        frame = store.examples(run.run_id)
    return [
        (r.feature_id, r.split, r.kind, r.rank, r.context_id, tuple(np.round(r.activations, 6)))
        for r in frame.itertuples()
    ]


def _downgrade_to_v1(path) -> None:
    """Rewrite a schema-2 workspace as schema 1 wrote it (dense lists), to test the upgrade."""
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE dense AS SELECT e.run_id, e.feature_id, e.split, e.kind, e.rank, e.context_id, "
        f"e.max_activation, {DENSE_ACTIVATIONS} AS activations FROM examples e JOIN runs r ON r.run_id = e.run_id "
        "JOIN contexts c ON c.corpus_id = r.corpus_id AND c.context_id = e.context_id"
    )
    con.execute("DROP TABLE examples")
    con.execute(V1_EXAMPLES)
    con.execute("INSERT INTO examples SELECT * FROM dense")
    con.execute("DROP TABLE dense")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()


@pytest.mark.parametrize("read_only", [False, True])
def test_schema_1_workspace_is_upgraded_with_the_same_examples(tmp_path, read_only: bool) -> None:
    path = tmp_path / "w.duckdb"
    build_store(path, with_traces=False)
    before = _examples(path)
    assert any(any(a != 0 for a in row[-1]) for row in before)  # activating examples exist
    assert any(row[2] == "nonactivating" and all(a == 0 for a in row[-1]) for row in before)
    with Store(path, read_only=True) as store:  # stored sparse: far fewer values than tokens
        stored, tokens = store.query_df(
            "SELECT sum(len(e.act_values)), sum(len(c.token_ids)) FROM examples e JOIN runs r USING (run_id) "
            "JOIN contexts c ON c.corpus_id = r.corpus_id AND c.context_id = e.context_id"
        ).iloc[0]
    assert stored < tokens / 4
    _downgrade_to_v1(path)
    with Store(path, read_only=read_only) as store:
        version = store.query_df("SELECT value FROM meta WHERE key = 'schema_version'").iloc[0, 0]
        columns = set(store.query_df("DESCRIBE examples")["column_name"])
    assert version == str(SCHEMA_VERSION)
    assert "activations" not in columns and {"act_positions", "act_values"} <= columns
    assert _examples(path) == before
