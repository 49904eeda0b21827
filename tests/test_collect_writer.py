"""Pass 2's writer commits chunks on a background thread: every row lands once, errors are not lost,
and nothing is written after `close` (the failed-run cleanup relies on that)."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from autointerp.collect.rows import example_table
from autointerp.collect.writer import ChunkedWriter
from autointerp.store import Store


def _rows(first_feature: int, n: int) -> pa.Table:
    feature = np.arange(first_feature, first_feature + n)
    counts = np.ones(n, dtype=np.int64)
    return example_table(
        "run-1", feature, np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int8), np.zeros(n, dtype=np.int32),
        np.arange(n), np.ones(n), np.zeros(n, dtype=np.int32), np.ones(n, dtype=np.float32), counts,
    )


def _count(store: Store) -> int:
    return int(store.query_df("SELECT count(*) AS n FROM examples")["n"][0])


def test_background_chunks_land_once_and_in_full(tmp_path) -> None:
    with Store(tmp_path / "w.duckdb") as store:
        writer = ChunkedWriter(store, chunk_rows=1_000)
        committed_on: set[str] = set()
        insert = writer._insert

        def spy(chunk):  # which thread committed each full chunk
            committed_on.add(threading.current_thread().name)
            insert(chunk)

        writer._insert = spy  # type: ignore[method-assign]
        for i in range(10):
            writer.add_examples(_rows(i * 700, 700))  # a chunk every ~2 tables
        with store.transaction(), pytest.raises(RuntimeError, match="drain"):
            writer.flush_into_open_transaction()  # the chunk in flight would wait for this transaction's lock
        writer.drain()
        with store.transaction():
            writer.flush_into_open_transaction()
        writer.close()
        assert _count(store) == 7_000
        frame = store.query_df("SELECT feature_id, split, kind, run_id FROM examples ORDER BY feature_id")
        assert frame["feature_id"].tolist() == list(range(7_000))
        assert set(frame["split"]) == {"explain"} and set(frame["kind"]) == {"top"} and set(frame["run_id"]) == {"run-1"}
        assert any(name.startswith("collect-writer") for name in committed_on)  # the overlap is real
        assert threading.current_thread().name in committed_on  # the rest: the caller's last transaction


def test_a_failed_background_commit_is_raised_and_rolled_back(tmp_path) -> None:
    with Store(tmp_path / "w.duckdb") as store:
        writer = ChunkedWriter(store, chunk_rows=10)
        bad = _rows(0, 10).drop_columns(["max_activation"])  # NOT NULL column missing: DuckDB refuses it
        writer.add_examples(_rows(100, 5))
        writer.add_examples(bad)  # 15 rows buffered: committed in the background, and fails there
        with pytest.raises(Exception, match="max_activation|NOT NULL"):
            writer.close()  # the error reaches the caller, it is not left in the thread
        assert _count(store) == 0  # the whole chunk rolled back, the 5 good rows with it


def test_close_waits_for_the_chunk_in_flight(tmp_path) -> None:
    with Store(tmp_path / "w.duckdb") as store:
        writer = ChunkedWriter(store, chunk_rows=100)
        writer.add_examples(_rows(0, 50_000))
        writer.close()
        assert _count(store) == 50_000  # landed before close returned: cleanup after it sees everything
        assert not any(t.name.startswith("collect-writer") for t in threading.enumerate())
