"""The dictionary-scale benchmark's parts at a tiny size: the chunked synthetic store is a valid, leak-free
store whose features are all live, and one stage child run through the real test server reports its items,
the server's request count and the kernel's peak RSS."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from autointerp.bench.dictionary import _rates, _run_stage, _server_requests
from autointerp.store import Store
from autointerp.testing.synthetic import build_dictionary_store
from autointerp.testing.testserver import FakeOpenAIServer


def test_chunked_dictionary_store_is_live_leak_free_and_chunk_independent(tmp_path: Path) -> None:
    one = build_dictionary_store(tmp_path / "one.duckdb", 300, chunk=4096, sae_name="d")
    many = build_dictionary_store(tmp_path / "many.duckdb", 300, chunk=64, sae_name="d")  # five chunks
    with Store(tmp_path / "one.duckdb") as a, Store(tmp_path / "many.duckdb") as b:
        assert a.explainable_feature_ids(one.run_id) == list(range(300))
        assert a.split_leaks(one.run_id).empty
        examples = b.examples(many.run_id, [0, 150, 299], "test")
        counts = examples.groupby(["feature_id", "kind"]).size()
        assert set(counts.index.get_level_values("kind")) == {"top", "random", "nonactivating"}
        assert (examples[examples["kind"] != "nonactivating"]["max_activation"] > 0).all()
        assert len(a.features(one.run_id)) == len(b.features(many.run_id)) == 300


def test_an_explain_stage_child_reports_items_requests_and_rss(tmp_path: Path) -> None:
    db = tmp_path / "d.duckdb"
    run = build_dictionary_store(db, 40, sae_name="d40")
    args = argparse.Namespace(stage_seconds=60.0, scorers="detection", tokenizer=None)
    with FakeOpenAIServer(latency_s=0.01, capacity=16) as server:
        before = _server_requests(server.base_url)
        figures = _run_stage("explain", db, run.sae_name, server.base_url, 16, args, tmp_path, 40)
        figures["requests"] = _server_requests(server.base_url) - before
    figures = _rates(figures, 16 / 0.01)
    assert figures["items"] == 40 and not figures["capped"] and figures["exit_code"] == 0
    assert figures["requests"] >= 40 and figures["peak_rss_mb"] > 50 and figures["first_reply_s"] is not None
    with Store(db) as store:
        assert (store.explanations(run.run_id)["status"] == "ok").sum() == 40


def test_the_server_process_cpu_is_measured_apart_from_the_stage() -> None:
    """The bench prints server CPU per request (the server shares the cores): it must be a real reading."""
    import urllib.request

    from autointerp.bench.llm import _test_server

    server = _test_server(argparse.Namespace(in_process_server=False, latency=0.0, capacity=4))
    with server as url:
        before = server.cpu_s()
        assert before > 0  # its start-up (imports) already cost CPU
        for _ in range(200):
            urllib.request.urlopen(url + "/models", timeout=10).read()
        assert server.cpu_s() > before
    assert _rates({"stage_wall_s": 1.0, "items": 2, "requests": 4, "cpu_s": 0.5, "server_cpu_s": 0.2}, 10.0)[
        "server_cpu_ms_per_request"
    ] == pytest.approx(50.0)
