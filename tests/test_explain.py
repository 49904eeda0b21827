"""The explain stage against a real OpenAI-protocol HTTP server on 127.0.0.1 (scripted faults), resume and
kill -9 safety, prompt rendering snapshots, `--features` parsing, and the embedded SmolLM2 backend (slow).

Invariant checked everywhere: a label exists only on an 'ok' row; every failure keeps its status and raw text.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autointerp.cli import main as cli_main
from autointerp.errors import UserError
from autointerp.explain import ExplainConfig, explain
from autointerp.explain.formatting import Example, build_messages, render_example
from autointerp.label_quality import ACCEPTED_PREFIX, set_label_quality
from autointerp.llm import make_client
from autointerp.prompting import load_prompt
from autointerp.selection import parse_feature_spec
from autointerp.store import Store
from autointerp.testing.synthetic import build_synthetic_store
from autointerp.testing.testserver import FakeOpenAIServer, Fault

SNAPSHOTS = Path(__file__).parent / "snapshots"
N_FEATURES, N_DEAD = 12, 2
N_LIVE = N_FEATURES - N_DEAD
FAST_CLIENT = {"timeout_s": 2.0, "max_retries": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.05,
               "replica_down_s": 0.01}


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("explain") / "template.duckdb"
    build_synthetic_store(path, n_features=N_FEATURES, n_dead=N_DEAD, n_contexts=240, n_top=6, n_random=10)
    return path


@pytest.fixture
def db(template_db: Path, tmp_path: Path) -> Path:
    path = tmp_path / "run.duckdb"
    shutil.copyfile(template_db, path)
    return path


def run_explain(db: Path, url: str, config: ExplainConfig | None = None, features=None, retry_failed=False,
                concurrency: int = 4, **client_options):
    options = {**FAST_CLIENT, **client_options}

    async def go():
        client = make_client(url, None, concurrency=concurrency, **options)
        try:
            await client.check()
            with Store(db) as store:
                run = store.resolve_run(None)
                return await explain(store, run, client, config or ExplainConfig(), features, retry_failed,
                                     progress=False)
        finally:
            await client.aclose()

    return asyncio.run(go())


def rows(db: Path):
    with Store(db) as store:
        return store.explanations(store.resolve_run(None).run_id)


def assert_no_label_without_ok(frame) -> None:
    ok = frame["status"] == "ok"
    assert frame.loc[ok, "explanation"].notna().all()
    assert (frame.loc[ok, "explanation"].str.strip().str.len() > 0).all()
    assert frame.loc[~ok, "explanation"].isna().all(), frame.loc[~ok, ["status", "explanation"]]
    assert frame.loc[~ok, "error"].notna().all()


def chat_requests(server: FakeOpenAIServer) -> int:
    return sum(1 for r in server.requests if r.path == "/v1/chat/completions")


# ---------------------------------------------------------------------- happy path, resume, selection

def test_labels_every_live_feature_and_rerun_does_nothing(db: Path) -> None:
    with FakeOpenAIServer(latency_s=0.01, capacity=8) as server:
        first = run_explain(db, server.base_url)
        assert (first.n_attempted, first.n_ok, first.n_failed) == (N_LIVE, N_LIVE, 0)
        served = chat_requests(server)
        second = run_explain(db, server.base_url)
        assert second.n_attempted == 0 and second.n_done_before == N_LIVE
        assert chat_requests(server) == served  # nothing was asked again
    frame = rows(db)
    assert len(frame) == N_LIVE and frame["feature_id"].is_unique
    assert set(frame["feature_id"]) == set(range(N_LIVE))  # the dead features are never explained
    assert (frame["status"] == "ok").all()
    assert_no_label_without_ok(frame)
    assert (frame["explainer_model"] == "fake-model").all() and (frame["prompt_name"] == ExplainConfig().prompt).all()
    assert frame["prompt_tokens"].gt(0).all()
    # The request carried the schema for guided decoding and both prompt parts.
    body = next(r.body for r in server.requests if r.path == "/v1/chat/completions")
    assert body["response_format"]["type"] == "json_schema"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "<<" in body["messages"][1]["content"]


def test_changed_settings_make_a_new_key(db: Path) -> None:
    with FakeOpenAIServer() as server:
        run_explain(db, server.base_url, features=[0, 1])
        again = run_explain(db, server.base_url, ExplainConfig(n_top=3), features=[0, 1])
        assert again.n_attempted == 2  # other settings: labelled again, stored beside the first
        more_retries = run_explain(db, server.base_url, ExplainConfig(retries=5), features=[0, 1])
        assert more_retries.n_attempted == 0  # retries do not change what a label means
    assert len(rows(db)) == 4


def test_feature_selection(db: Path) -> None:
    with Store(db) as store:
        run = store.resolve_run(None)
        features, live = store.features(run.run_id), store.explainable_feature_ids(run.run_id)
    assert live == list(range(N_LIVE))
    assert parse_feature_spec(None, features, live) == live
    assert parse_feature_spec("1,5, 3-4", features, live) == [1, 3, 4, 5]
    densest = features[features["feature_id"].isin(live)].sort_values("density", ascending=False)
    assert parse_feature_spec("top:3", features, live) == sorted(densest["feature_id"].head(3))
    picked = parse_feature_spec("random:4", features, live, seed=7)
    assert len(picked) == 4 and set(picked) <= set(live)
    assert picked == parse_feature_spec("random:4", features, live, seed=7)
    middle = parse_feature_spec("middle:3", features, live, seed=3)
    firing = features[features["density"] > 0]["density"]
    low, high = firing.quantile([0.25, 0.75])
    by_id = features.set_index("feature_id")["density"]
    assert len(middle) == 3 and all(low <= by_id[f] <= high for f in middle)
    assert not set(middle) & set(densest["feature_id"].head(1))
    # the score stage passes only labelled features: the same seed picks the same ones among them
    assert parse_feature_spec("middle:3", features, middle + [densest["feature_id"].iloc[0]], seed=3) == middle
    for bad in ("5-2", "abc", f"0-{N_FEATURES}", "top:0", "middle:0"):
        with pytest.raises(UserError):
            parse_feature_spec(bad, features, live)
    with FakeOpenAIServer() as server:
        summary = run_explain(db, server.base_url, features=[0, N_FEATURES - 1])  # the last one is dead
    assert (summary.n_selected, summary.n_not_live, summary.n_ok) == (2, 1, 1)


# ---------------------------------------------------------------------- faults: none may produce a label

@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("500", "server_error"),
        (Fault("429", retry_after_s=0.01), "rate_limited"),
        (Fault("hang", hang_s=5.0), "timeout"),
        ("drop", "connection_error"),
        ("bad_body", "server_error"),
        ("malformed_json", "parse_error"),
        ("schema_break", "schema_error"),
        ("empty", "empty"),
        ("truncated", "truncated"),
    ],
    ids=lambda v: v.kind if isinstance(v, Fault) else str(v),
)
def test_every_reply_faulty_gives_failures_not_labels(db: Path, fault, status: str) -> None:
    config = ExplainConfig(retries=1)
    with FakeOpenAIServer(faults={i: fault for i in range(200)}) as server:
        summary = run_explain(db, server.base_url, config, features=[0, 1, 2], timeout_s=0.3)
    assert summary.n_ok == 0 and summary.failures == {status: 3}
    frame = rows(db)
    assert len(frame) == 3 and (frame["status"] == status).all()
    assert_no_label_without_ok(frame)
    if status in ("parse_error", "schema_error", "truncated"):
        assert frame["raw_text"].notna().all()  # the raw reply is kept for inspection
        assert (frame["attempts"] == config.retries + 1).all()  # content failures are re-asked, bounded


def test_transient_faults_are_retried_to_a_label(db: Path) -> None:
    faults = {0: "500", 1: Fault("429", retry_after_s=0.3), 2: "drop", 3: "malformed_json", 4: "empty",
              5: Fault("hang", hang_s=5.0)}
    with FakeOpenAIServer(faults=faults) as server:
        summary = run_explain(db, server.base_url, ExplainConfig(retries=2), concurrency=1,
                              max_retries=3, timeout_s=0.5)
        requests = list(server.requests)
    assert summary.n_ok == N_LIVE and summary.n_failed == 0
    frame = rows(db)
    assert_no_label_without_ok(frame)
    assert frame["attempts"].sum() == N_LIVE + len(faults)  # every faulty reply cost exactly one extra try
    # Retry-After was honoured: the same prompt came back at least 0.3 s after the 429 went out.
    chats = [r for r in requests if r.path == "/v1/chat/completions"]
    retry = next(r for r in chats[2:] if r.body["messages"] == chats[1].body["messages"])
    assert retry.arrived - chats[1].finished >= 0.29


def test_server_down_at_start_is_a_clear_error_and_starts_nothing(db: Path, capsys) -> None:
    with FakeOpenAIServer() as server:
        url = server.base_url
    code = cli_main(["explain", "--db", str(db), "--llm", url, "--no-progress", "--timeout", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no OpenAI-compatible server" in err and "fix:" in err
    assert rows(db).empty


def test_server_dying_mid_run_then_rerun_completes(db: Path) -> None:
    with FakeOpenAIServer(latency_s=0.02, faults={4: "die"}) as server:
        summary = run_explain(db, server.base_url, concurrency=2)
    assert summary.n_ok >= 3 and summary.n_failed >= 1
    assert set(summary.failures) <= {"connection_error", "server_error", "timeout"}
    frame = rows(db)
    assert len(frame) == N_LIVE
    assert_no_label_without_ok(frame)
    with FakeOpenAIServer() as revived:  # a plain rerun (no --retry-failed) redoes infrastructure failures
        rerun = run_explain(db, revived.base_url)
        assert chat_requests(revived) == summary.n_failed
    assert rerun.n_attempted == summary.n_failed and rerun.n_ok == summary.n_failed
    frame = rows(db)
    assert len(frame) == N_LIVE and frame["feature_id"].is_unique and (frame["status"] == "ok").all()


def test_content_failures_wait_for_retry_failed(db: Path) -> None:
    with FakeOpenAIServer(faults={i: "malformed_json" for i in range(3)}) as server:
        first = run_explain(db, server.base_url, ExplainConfig(retries=0), features=[0, 1, 2], concurrency=1)
        assert first.failures == {"parse_error": 3}
        again = run_explain(db, server.base_url, ExplainConfig(retries=0), features=[0, 1, 2])
        assert again.n_attempted == 0 and again.n_failed_skipped == 3
        fixed = run_explain(db, server.base_url, ExplainConfig(retries=0), features=[0, 1, 2], retry_failed=True)
        assert fixed.n_ok == 3
    frame = rows(db)
    assert len(frame) == 3 and (frame["status"] == "ok").all() and frame["raw_text"].notna().all()


# ---------------------------------------------------------------------- replies that are not labels

ECHO = "The marked tokens have in common the words themselves, their context, or what follows."


def _label_reply(good_from_attempt: int | None):
    """A chat reply that echoes the prompt for the first attempts (seed = config seed + attempt) and writes
    a real label from `good_from_attempt` on (None: never)."""

    def reply(body: dict) -> str:
        attempt = int(body.get("seed") or 0)
        good = good_from_attempt is not None and attempt >= good_from_attempt
        return json.dumps({"explanation": "names of rivers in Europe" if good else ECHO})

    return reply


def test_an_echoed_prompt_is_retried_to_a_real_label(db: Path) -> None:
    with FakeOpenAIServer(chat_reply=_label_reply(good_from_attempt=1)) as server:
        summary = run_explain(db, server.base_url, ExplainConfig(retries=2), features=[0, 1, 2])
        first_temperatures = [r.body["temperature"] for r in server.requests if r.body.get("seed") == 0]
        retry_temperatures = [r.body["temperature"] for r in server.requests if r.body.get("seed") == 1]
    assert summary.n_ok == 3 and summary.n_failed == 0
    assert set(first_temperatures) == {0.0} and min(retry_temperatures) > 0  # the retry samples
    frame = rows(db)
    assert (frame["explanation"] == "names of rivers in Europe").all() and (frame["attempts"] == 2).all()
    assert frame["error"].str.startswith(ACCEPTED_PREFIX).all()  # what was rejected stays on record
    quality = set_label_quality(zip(frame["status"], frame["explanation"], frame["error"], strict=True))
    assert (quality.final.n_bad, quality.first.n_bad, quality.n_retried_to_usable) == (0, 3, 3)
    assert quality.first.problems == {"echo": 3}


def test_a_feature_without_a_usable_label_is_a_failure_not_a_label(db: Path) -> None:
    config = ExplainConfig(retries=2)
    with FakeOpenAIServer(chat_reply=_label_reply(good_from_attempt=None)) as server:
        summary = run_explain(db, server.base_url, config, features=[0, 1])
        again = run_explain(db, server.base_url, config, features=[0, 1])
    assert summary.n_ok == 0 and summary.failures == {"unusable_label": 2}
    assert again.n_attempted == 0 and again.n_failed_skipped == 2  # like any content failure: --retry-failed
    frame = rows(db)
    assert (frame["status"] == "unusable_label").all() and (frame["attempts"] == config.retries + 1).all()
    assert_no_label_without_ok(frame)
    assert frame["error"].str.startswith("echo: no usable label in 3 replies").all()
    assert frame["raw_text"].str.contains("marked tokens").all()
    quality = set_label_quality(zip(frame["status"], frame["explanation"], frame["error"], strict=True))
    assert quality.final.problems == {"echo": 2} and quality.first.problems == {"echo": 2}


def test_a_label_with_copied_markers_is_stored_unmarked_without_a_retry(db: Path) -> None:
    marked = "names of <<rivers>> in Europe"
    with FakeOpenAIServer(chat_reply=lambda body: json.dumps({"explanation": marked})) as server:
        summary = run_explain(db, server.base_url, ExplainConfig(retries=2), features=[0, 1])
        assert chat_requests(server) == 2  # one request per feature: nothing was rejected
    assert summary.n_ok == 2
    frame = rows(db)
    assert (frame["explanation"] == "names of rivers in Europe").all() and frame["error"].isna().all()
    assert frame["raw_text"].str.contains("<<rivers>>").all()  # the reply itself stays on record
    with FakeOpenAIServer(chat_reply=lambda body: json.dumps({"explanation": marked})) as server:
        kept = run_explain(db, server.base_url, ExplainConfig(retries=1, unmark_labels=False), features=[0])
    assert kept.failures == {"unusable_label": 1}  # judged as replied: a marker is not a label
    assert ExplainConfig(unmark_labels=False).hash != ExplainConfig().hash


def test_reject_unusable_off_keeps_what_parses(db: Path) -> None:
    with FakeOpenAIServer(chat_reply=_label_reply(good_from_attempt=None)) as server:
        summary = run_explain(db, server.base_url, ExplainConfig(reject_unusable=False), features=[0, 1])
        assert chat_requests(server) == 2
    assert summary.n_ok == 2
    frame = rows(db)
    assert (frame["explanation"] == ECHO).all()
    quality = set_label_quality(zip(frame["status"], frame["explanation"], frame["error"], strict=True))
    assert quality.final.problems == {"echo": 2}  # the report still says these are not labels
    assert ExplainConfig(reject_unusable=False).hash != ExplainConfig().hash


# ---------------------------------------------------------------------- kill -9 mid-run

def test_kill_9_mid_run_loses_only_items_in_flight(db: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with FakeOpenAIServer(latency_s=0.3, capacity=2) as server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "autointerp", "explain", "--db", str(db), "--llm", server.base_url,
             "--concurrency", "2", "--no-progress"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while server.completed < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed_after = server.completed
        before = rows(db)
        assert 1 <= len(before) <= killed_after < N_LIVE
        assert (before["status"] == "ok").all()  # nothing half-written
        served = chat_requests(server)
        rerun = run_explain(db, server.base_url)
        assert rerun.n_done_before == len(before) and rerun.n_ok == N_LIVE - len(before)
        assert chat_requests(server) - served == N_LIVE - len(before)
    after = rows(db)
    assert len(after) == N_LIVE and after["feature_id"].is_unique and (after["status"] == "ok").all()


# ---------------------------------------------------------------------- prompt rendering

def _snapshot_examples() -> list[Example]:
    tokens = ["<s>", " The", " cat", " sat", " on", " the", " mat", ".", "\n", "A", " cat", "fish", " swam", " by"]
    acts = [9.0, 0, 4.0, 0, 0, 0, 0, 0, 0, 0, 2.0, 1.0, 0, 0]
    return [
        Example(context_id=1, kind="top", tokens=tokens, activations=acts, max_activation=4.0),
        Example(context_id=2, kind="random", tokens=[" x", " dog", " y", " cat"], activations=[0, 0, 0, 1.0],
                max_activation=1.0),
    ]


@pytest.mark.parametrize("show_activations", [False, True], ids=["plain", "activations"])
def test_prompt_rendering_matches_snapshot(show_activations: bool) -> None:
    config = ExplainConfig(window=12, show_activations=show_activations)
    messages = build_messages(load_prompt("explain_v1"), _snapshot_examples(), config)
    rendered = "".join(f"=== {m['role']} ===\n{m['content']}\n" for m in messages)
    path = SNAPSHOTS / f"explain_v1_{'activations' if show_activations else 'plain'}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        path.write_text(rendered, encoding="utf-8")
    assert rendered == path.read_text(encoding="utf-8")


def test_marking_merges_spans_and_never_marks_the_sink() -> None:
    example = _snapshot_examples()[0]
    text = render_example(example, window=0, scale_max=None)
    assert text.startswith("<s> The <<cat>>")  # position 0 (activation 9) is the attention sink: unmarked
    assert "A <<catfish>> swam" in text  # adjacent activating tokens form one span
    assert "\\n" in text and "\n" not in text
    trimmed = render_example(example, window=4, scale_max=4.0)
    assert trimmed == "<s> The <<cat>>(10) sat"  # 4 tokens around the peak, 3/4 of them before it


# ---------------------------------------------------------------------- the embedded backend (real model)

@pytest.mark.slow
def test_local_smollm2_labels_a_handful_of_features(db: Path) -> None:
    """The embedded backend end to end, with guided JSON decoding (xgrammar): SmolLM2-135M then writes
    schema-valid labels; whatever it writes still ends as an honest status (a label only on 'ok')."""

    async def go():
        client = make_client("local:smollm2")
        try:
            await client.check()
            with Store(db) as store:
                run = store.resolve_run(None)
                config = ExplainConfig(n_top=4, n_quantile=2, max_tokens=48, retries=0)
                return await explain(store, run, client, config, [0, 1], progress=False)
        finally:
            await client.aclose()

    summary = asyncio.run(go())
    frame = rows(db)
    assert summary.n_attempted == 2 and len(frame) == 2
    assert summary.n_ok + summary.n_failed == 2
    # guided decoding makes replies parse: a label, or a parsed reply the label-quality check rejected
    # (SmolLM2 often copies explain_v2's first worked example; that must never be stored as a label)
    parsed = frame["status"].isin(["ok", "unusable_label"])
    assert parsed.sum() >= 1, frame[["status", "error", "raw_text"]].to_dict("records")
    assert set(frame["status"]) <= {"ok", "parse_error", "schema_error", "empty", "truncated", "unusable_label"}
    assert_no_label_without_ok(frame)
    assert frame.loc[frame["status"] != "empty", "raw_text"].notna().all()
    assert frame["prompt_tokens"].gt(0).all() and frame["completion_tokens"].gt(0).all()
    assert (frame["explainer_model"] == "local:smollm2").all()


# ---------------------------------------------------------------------- the work runner


def test_an_exception_in_one_item_is_its_recorded_failure_and_the_rest_finish(db: Path, monkeypatch) -> None:
    import autointerp.explain.run as run_module

    real = run_module.build_messages
    calls = {"n": 0}

    def planted_bug(template, examples, config):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("planted bug in one item")
        return real(template, examples, config)

    monkeypatch.setattr(run_module, "build_messages", planted_bug)
    with FakeOpenAIServer() as server:
        summary = run_explain(db, server.base_url)
        assert summary.n_ok == N_LIVE - 1 and summary.failures == {"exception": 1}
        assert (
            summary.run is not None and summary.run.n_exceptions == 1 and summary.run.first_item_s is not None
        )
        frame = rows(db)
        assert len(frame) == N_LIVE
        assert_no_label_without_ok(frame)
        failed = frame[frame["status"] == "exception"].iloc[0]
        assert "RuntimeError: planted bug in one item" in failed["error"]
        again = run_explain(db, server.base_url)  # a bug is not transient: a plain rerun leaves it
        assert again.n_attempted == 0 and again.n_failed_skipped == 1
        fixed = run_explain(db, server.base_url, retry_failed=True)
        assert fixed.n_attempted == 1 and fixed.n_ok == 1
    frame = rows(db)
    assert len(frame) == N_LIVE and frame["feature_id"].is_unique and (frame["status"] == "ok").all()


def test_chunks_stream_with_a_small_chunk_and_window(db: Path, monkeypatch) -> None:
    import autointerp.explain.run as run_module

    monkeypatch.setattr(run_module, "CHUNK_FEATURES", 3)  # four store queries for ten features
    with FakeOpenAIServer(latency_s=0.01, capacity=2) as server:
        summary = run_explain(db, server.base_url, concurrency=1)
        assert summary.n_ok == N_LIVE and chat_requests(server) == N_LIVE
        assert 1 <= summary.run.commits <= N_LIVE and summary.run.requests == N_LIVE
    frame = rows(db)
    assert len(frame) == N_LIVE and frame["feature_id"].is_unique


def test_the_sync_wrapper_refuses_inside_a_running_loop(db: Path) -> None:
    from autointerp.explain import explain_sync

    async def inside() -> None:
        with Store(db) as store:
            explain_sync(store, store.resolve_run(None), None)

    with pytest.raises(RuntimeError, match="await the async function"):
        asyncio.run(inside())


def test_summary_counts_agree_with_collects_alive_and_say_why_features_were_left_out(db: Path) -> None:
    """A feature that fires only on test-split documents is alive for collect but has nothing to show the
    explainer; explain's default selection is collect's alive set and names that feature's reason."""
    with Store(db) as store:
        run = store.resolve_run(None)
        store.con.execute(
            "DELETE FROM examples WHERE run_id = ? AND feature_id = 3 AND split = 'explain'", [run.run_id]
        )
        alive = store.alive_feature_ids(run.run_id)
    assert len(alive) == N_LIVE
    with FakeOpenAIServer() as server:
        summary = run_explain(db, server.base_url)
    assert (summary.n_selected, summary.n_not_live, summary.n_test_only, summary.n_dead) == (N_LIVE, 1, 1, 0)
    assert summary.n_ok == N_LIVE - 1 and 3 not in set(rows(db)["feature_id"])
    assert "1 not explainable (0 dead, 1 alive but firing only in the test split" in summary.format()
    with FakeOpenAIServer() as server:
        named = run_explain(db, server.base_url, features=[3, N_FEATURES - 1])
    assert (named.n_not_live, named.n_test_only, named.n_dead) == (2, 1, 1)
