"""The parquet export written a chunk of features at a time is the same file as one written in one chunk:
every feature once, in feature order, same columns and values (chunk boundaries must not drop or repeat
a feature's top contexts)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

import autointerp.store as store_module
from autointerp.store import Store
from autointerp.testing.synthetic import build_dictionary_store


def test_chunked_export_equals_a_single_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "d.duckdb"
    run = build_dictionary_store(db, 300, sae_name="d300")
    with Store(db) as store:
        assert store.export_catalog(run.run_id, tmp_path / "one.parquet", None, []) == 300
        monkeypatch.setattr(store_module, "EXPORT_CHUNK_FEATURES", 64)  # five chunks, the last partial
        assert store.export_catalog(run.run_id, tmp_path / "many.parquet", None, []) == 300
    one, many = pq.read_table(tmp_path / "one.parquet"), pq.read_table(tmp_path / "many.parquet")
    assert many.column("feature_id").to_pylist() == list(range(300))
    assert one.equals(many)
    tops = many.column("top_contexts").to_pylist()
    assert all(1 <= len(t) <= 10 for t in tops) and not list(tmp_path.glob(".*.tmp"))
