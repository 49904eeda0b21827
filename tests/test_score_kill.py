"""kill -9 in the middle of `autointerp score` on a few hundred features: the rerun completes, no duplicates.

A real `autointerp score` process, a real DuckDB file (the chunked synthetic dictionary store) and the
bundled OpenAI-protocol test server; the process is killed with SIGKILL while the work runner has a full
window in flight and several group commits behind it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autointerp.explain import explain
from autointerp.llm import make_client
from autointerp.store import Store
from autointerp.testing.synthetic import build_dictionary_store
from autointerp.testing.testserver import FakeOpenAIServer

N_FEATURES = 300
SCORERS = ["detection", "fuzzing"]


def _label_everything(db: Path, url: str) -> None:
    async def go() -> None:
        client = make_client(url, None, concurrency=32)
        try:
            await client.check()
            with Store(db) as store:
                summary = await explain(store, store.resolve_run(None), client, progress=False)
                assert summary.n_ok == N_FEATURES
        finally:
            await client.aclose()

    asyncio.run(go())


def _score_argv(db: Path, url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autointerp",
        "score",
        "--db",
        str(db),
        "--llm",
        url,
        "--concurrency",
        "16",
        "--scorers",
        ",".join(SCORERS),
        "--null-sample",
        "0",
        "--no-progress",
    ]


@pytest.mark.slow
def test_kill_9_mid_score_at_scale_then_rerun_completes_without_duplicates(tmp_path: Path) -> None:
    db = tmp_path / "dictionary.duckdb"
    run = build_dictionary_store(db, N_FEATURES, sae_name="dictionary")
    with FakeOpenAIServer(latency_s=0.0) as fast:
        _label_everything(db, fast.base_url)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with FakeOpenAIServer(latency_s=0.05, capacity=16) as server:
        proc = subprocess.Popen(
            _score_argv(db, server.base_url), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while server.completed < 300 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        with Store(db) as store:
            before = store.scores(run.run_id)
        total = N_FEATURES * len(SCORERS)
        assert 0 < len(before) < total  # some committed, some lost in flight
        assert before["score_id"].is_unique and before["status"].isin(["ok", "undefined"]).all()
        rerun = subprocess.run(
            _score_argv(db, server.base_url), env=env, capture_output=True, text=True, timeout=300
        )
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    with Store(db) as store:
        after = store.scores(run.run_id)
    assert len(after) == total and after["score_id"].is_unique
    assert not after.duplicated(["explanation_id", "scorer"]).any()
    assert after["status"].eq("ok").all()
    kept = after.set_index("score_id").loc[before["score_id"], "score"]  # rows written before the kill stay
    assert (kept.to_numpy() == before["score"].to_numpy()).all()
