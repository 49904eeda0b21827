"""Fast tests of the score stage: metric math, each scorer on planted features with a rule-following
fake LLM, failure statuses, resumability, leakage refusal, determinism, the CLI, and HTTP."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pandas as pd
import pytest

from autointerp.errors import UserError
from autointerp.score import ScoreConfig, available_scorers, check_no_leakage, score_features
from autointerp.score.base import FeatureToScore, TestContext
from autointerp.score.fuzzing import mark
from autointerp.score.metrics import auc, classification_metrics, pearson
from autointerp.score.simulation import SimulationScorer, expected_value
from autointerp.store import Store
from autointerp.testing.planted import RIGHT, WRONG, build_planted_store, planted_results
from tests.score_helpers import FakeClient, fake_documents, planted_test_features

CONFIG = ScoreConfig(n_activating=6, n_top=2, n_quantiles=2, classify_batch_size=4)


@pytest.fixture()
def planted(tmp_path):
    store = Store(tmp_path / "planted.duckdb")
    run_id = build_planted_store(store, fake_documents(), planted_test_features(), ctx_len=16, sae_name="planted",
                                 model="fake")
    yield store, run_id
    store.close()


def by_label(store: Store, run_id: str, scorer: str) -> dict[tuple[int, str], pd.Series]:
    frame = store.scores(run_id, scorer).merge(store.explanations(run_id)[["explanation_id", "explainer_model"]])
    return {(int(r["feature_id"]), r["explainer_model"]): r for _, r in frame.iterrows()}


# ---------------------------------------------------------------------- metrics

def test_pearson_matches_numpy_to_1e9():
    rng = np.random.default_rng(0)
    for n in (2, 3, 17, 500):
        x, y = rng.normal(size=n), rng.normal(size=n) * 3 + 1
        y2 = 0.5 * x + rng.normal(size=n) * 0.1
        for b in (y, y2):
            assert abs(pearson(x, b) - np.corrcoef(x, b)[0, 1]) < 1e-9
    # integer-valued, sparse data like real activations
    true = np.zeros(200)
    true[rng.choice(200, 12, replace=False)] = rng.integers(1, 11, 12)
    pred = true * 0.7 + rng.uniform(0, 2, 200)
    assert abs(pearson(true, pred) - np.corrcoef(true, pred)[0, 1]) < 1e-9


def test_pearson_undefined_cases_are_none_not_nan_or_zero():
    assert pearson([0.0] * 10, list(range(10))) is None          # all-zero true activations
    assert pearson(list(range(10)), [3.3] * 10) is None          # constant predictions
    assert pearson([1.0], [2.0]) is None                         # too short
    assert pearson([0.1] * 5, [0.1] * 5) is None
    assert pearson([1e-3, 1e-3 + 1e-9, 1e-3], [1.0, 2.0, 3.0]) is not None  # tiny but real variation
    with pytest.raises(ValueError):
        pearson([1, 2], [1, 2, 3])


def test_classification_metrics_and_auc():
    labels = [1, 1, 1, 0, 0, 0, 0, 0]
    preds = [1, 1, 0, 1, 0, 0, 0, 0]
    m = classification_metrics(labels, preds)
    assert (m.true_positive, m.false_positive, m.true_negative, m.false_negative) == (2, 1, 4, 1)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.balanced_accuracy == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m.f1 == pytest.approx(2 / 3)
    assert classification_metrics([1, 1], [1, 0]).balanced_accuracy is None  # one class only
    assert classification_metrics([0, 1], [0, 0]).precision is None           # nothing predicted positive
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labs = rng.integers(0, 2, 40)
    pos, neg = scores[labs == 1], scores[labs == 0]
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert auc(scores, labs) == pytest.approx(brute, abs=1e-12)
    assert auc([1, 2], [1, 1]) is None


def test_expected_value_renormalises_over_value_tokens():
    value_ids = [10 + d for d in range(10)]
    top = {3: np.log(0.9), 10: np.log(0.05), 19: np.log(0.05)}
    assert expected_value(top, value_ids) == pytest.approx(4.5)
    assert expected_value({3: 0.0}, value_ids) is None


def test_registry_lists_the_four_scorers():
    assert {"simulation", "detection", "fuzzing", "embedding"} <= set(available_scorers())


# ---------------------------------------------------------------------- scorers on planted features

def test_simulation_right_label_scores_one_wrong_label_lower(planted):
    store, run_id = planted
    client = FakeClient()
    summary = score_features(store, run_id, client, ["simulation"], CONFIG, progress=False)
    assert summary.scorers["simulation"].status_counts == {"ok": 4}
    rows = by_label(store, run_id, "simulation")
    for fid in (0, 1):
        right, wrong = rows[(fid, RIGHT)], rows[(fid, WRONG)]
        assert right["score"] == pytest.approx(1.0, abs=1e-9)  # perfect simulator, exact slot alignment
        assert wrong["score"] < 0.5
        details = json.loads(right["details"])
        assert details["method"] == "logprobs" and details["slot_coverage"] == 1.0
        assert "top" in details["by_group"] and details["n_tokens"] == sum(len(c["true"]) for c in details["contexts"])
        # one request per 4 contexts, the explanation prefix shared
        assert details["n_requests"] == -(-details["n_contexts"] // CONFIG.simulation_contexts_per_request)
        assert right["prompt_tokens"] > 0 and right["chance"] == 0.0
        # position 0 (attention sink) is never scored: 15 of 16 tokens per context
        assert all(len(c["true"]) == 15 for c in details["contexts"])


def test_simulation_all_zero_true_activations_is_undefined():
    scorer = SimulationScorer(FakeClient(), CONFIG)
    contexts = tuple(TestContext(i, i, "nonactivating", "nonactivating", (101, 102, 103), (" cat", " sat", " on"),
                                 (0.0, 0.0, 0.0)) for i in range(3))
    item = FeatureToScore("e", 0, "cats", 1.0, contexts, seed=0)
    outcome = asyncio.run(scorer.score(item))
    assert outcome.status == "undefined" and outcome.score is None
    assert "constant" in outcome.error


def test_simulation_json_fallback_is_labelled(planted):
    store, run_id = planted
    client = FakeClient(logprobs=False)
    score_features(store, run_id, client, ["simulation"], CONFIG, progress=False)
    rows = by_label(store, run_id, "simulation")
    right = rows[(0, RIGHT)]
    assert right["status"] == "ok" and right["score"] == pytest.approx(1.0)
    assert json.loads(right["details"])["method"] == "json_fallback"
    assert rows[(0, WRONG)]["score"] is None or rows[(0, WRONG)]["score"] < 0.5
    assert client.logprob_calls == 0 and client.chat_calls > 0


@pytest.mark.parametrize("scorer", ["detection", "fuzzing"])
def test_classification_scorers_separate_right_from_wrong(planted, scorer):
    store, run_id = planted
    summary = score_features(store, run_id, FakeClient(), [scorer], CONFIG, progress=False)
    assert summary.scorers[scorer].status_counts == {"ok": 4}
    rows = by_label(store, run_id, scorer)
    for fid in (0, 1):
        right = rows[(fid, RIGHT)]
        assert right["score"] == pytest.approx(1.0) and right["chance"] == 0.5
        assert rows[(fid, WRONG)]["score"] <= 0.6
        details = json.loads(right["details"])
        assert details["n_positive"] > 0 and details["n_negative"] > 0
        assert details["precision"] == 1.0 and details["recall"] == 1.0 and details["auc"] is None


def test_fuzzing_marks_and_mismarked_contexts(planted):
    assert mark((" a", " cat", " sat", " on"), {1, 2}) == " a<< cat sat>> on"
    assert mark((" a", " cat"), {0}) == "<< a>> cat"
    store, run_id = planted
    config = ScoreConfig(n_activating=6, n_top=2, n_quantiles=2, classify_batch_size=4, fuzz_mismarked_fraction=0.5)
    score_features(store, run_id, FakeClient(), ["fuzzing"], config, progress=False)
    details = json.loads(by_label(store, run_id, "fuzzing")[(0, RIGHT)]["details"])
    variants = {item["variant"] for item in details["items"]}
    assert variants == {"activating", "mismarked", "nonactivating"}
    assert details["balanced_accuracy"] == 1.0


@pytest.mark.parametrize("mode,status", [("garbage", "parse_error"), ("short", "schema_error"),
                                         ("server_error", "server_error")])
def test_unusable_replies_are_failures_never_zero(planted, mode, status):
    store, run_id = planted
    summary = score_features(store, run_id, FakeClient(mode=mode), ["detection"], CONFIG, progress=False)
    frame = store.scores(run_id, "detection")
    assert len(frame) == 4 and set(frame["status"]) == {status}
    assert frame["score"].isna().all() and frame["error"].notna().all()
    assert summary.scorers["detection"].mean_score is None


def test_simulation_server_failure_is_stored_as_failure(planted):
    store, run_id = planted
    score_features(store, run_id, FakeClient(mode="server_error"), ["simulation"], CONFIG, progress=False)
    frame = store.scores(run_id, "simulation")
    assert set(frame["status"]) == {"server_error"} and frame["score"].isna().all()


def test_resume_skips_done_and_retry_failed_redoes_failures(planted):
    store, run_id = planted
    score_features(store, run_id, FakeClient(mode="garbage"), ["detection"], CONFIG, progress=False)
    again = FakeClient()
    summary = score_features(store, run_id, again, ["detection"], CONFIG, progress=False)
    assert again.chat_calls == 0 and summary.scorers["detection"].n_skipped == 4  # failures kept by default
    summary = score_features(store, run_id, again, ["detection"], CONFIG, retry_failed=True, progress=False)
    assert again.chat_calls > 0 and summary.scorers["detection"].status_counts == {"ok": 4}
    calls = again.chat_calls
    score_features(store, run_id, again, ["detection"], CONFIG, retry_failed=True, progress=False)
    assert again.chat_calls == calls  # ok scores are never redone
    # another config is another key: scored again, stored beside
    score_features(store, run_id, again, ["detection"], ScoreConfig(n_activating=4, n_top=1), progress=False)
    assert len(store.scores(run_id, "detection")) == 8


def test_explainer_selection_option(planted):
    store, run_id = planted
    config = ScoreConfig(n_activating=6, n_top=2, n_quantiles=2, explainer_model=RIGHT)
    summary = score_features(store, run_id, FakeClient(), ["detection"], config, progress=False)
    assert summary.n_explanations == 2 and len(store.scores(run_id)) == 2


def test_scored_contexts_are_test_split_only(planted):
    store, run_id = planted
    score_features(store, run_id, FakeClient(), ["simulation"], CONFIG, progress=False)
    examples = store.examples(run_id)
    test_ids = set(examples[examples["split"] == "test"]["context_id"])
    for details in store.scores(run_id)["details"]:
        assert {c["context_id"] for c in json.loads(details)["contexts"]} <= test_ids


def test_leakage_refused(planted):
    store, run_id = planted
    check_no_leakage(store, run_id)  # the planted store is clean
    # Move one test context into a document that also has explain-split examples.
    examples = store.examples(run_id)
    explain_doc = int(examples[examples["split"] == "explain"]["doc_id"].iloc[0])
    test_ctx = int(examples[examples["split"] == "test"]["context_id"].iloc[0])
    store.con.execute("UPDATE contexts SET doc_id = ? WHERE context_id = ?", [explain_doc, test_ctx])
    leaks = store.split_leaks(run_id)
    assert (leaks["problem"] == "document in both splits").any()
    with pytest.raises(UserError, match="explain/test split"):
        score_features(store, run_id, FakeClient(), ["detection"], CONFIG, progress=False)
    assert store.scores(run_id).empty


def test_rerun_with_same_seed_gives_identical_scores(tmp_path):
    results = []
    for name in ("a", "b"):
        with Store(tmp_path / f"{name}.duckdb") as store:
            run_id = build_planted_store(store, fake_documents(), planted_test_features(), ctx_len=16, model="fake")
            score_features(store, run_id, FakeClient(), ["simulation", "detection", "fuzzing"], CONFIG,
                           progress=False)
            frame = store.scores(run_id).sort_values("score_id")
            results.append(frame[["score_id", "status", "score", "details"]].reset_index(drop=True))
    pd.testing.assert_frame_equal(results[0], results[1])
    def detection_orders(frame: pd.DataFrame) -> list:
        return [[i["context_id"] for i in json.loads(d)["items"]] for d in frame["details"] if "items" in json.loads(d)]

    with Store(tmp_path / "c.duckdb") as store:
        run_id = build_planted_store(store, fake_documents(), planted_test_features(), ctx_len=16, model="fake")
        other = ScoreConfig(n_activating=6, n_top=2, n_quantiles=2, classify_batch_size=4, seed=1)
        score_features(store, run_id, FakeClient(), ["detection"], other, progress=False)
        reseeded = detection_orders(store.scores(run_id).sort_values("feature_id"))
    with Store(tmp_path / "a.duckdb", read_only=True) as store:
        seed0 = detection_orders(store.scores(run_id, "detection").sort_values("feature_id"))
    assert len(seed0) == len(reseeded) == 4 and seed0 != reseeded  # the seed really drives sampling/shuffles


def test_unknown_scorer_and_missing_client_are_user_errors(planted):
    store, run_id = planted
    with pytest.raises(UserError, match="unknown scorer"):
        score_features(store, run_id, FakeClient(), ["simulashun"], CONFIG, progress=False)
    with pytest.raises(UserError, match="needs an LLM"):
        score_features(store, run_id, None, ["detection"], CONFIG, progress=False)


def test_token_counts_are_recorded_per_feature_and_scorer(planted):
    store, run_id = planted
    summary = score_features(store, run_id, FakeClient(), ["simulation", "detection"], CONFIG, progress=False)
    frame = store.scores(run_id)
    assert (frame["prompt_tokens"] > 0).all()
    assert (frame[frame["scorer"] == "detection"]["completion_tokens"] > 0).all()
    assert summary.scorers["simulation"].prompt_tokens == int(frame[frame["scorer"] == "simulation"]
                                                              ["prompt_tokens"].sum())
    assert "simulation" in summary.format()


def test_cli_scores_and_reports(tmp_path, capsys):
    from autointerp.cli import main

    db = tmp_path / "cli.duckdb"
    with Store(db) as store:
        build_planted_store(store, fake_documents(), planted_test_features(), ctx_len=16, model="fake",
                            labels={RIGHT: ["cat", "numbers 7 and 42"]})
    from autointerp.testing.testserver import FakeOpenAIServer

    with FakeOpenAIServer(latency_s=0.0, capacity=8) as server:
        code = main(["score", "--db", str(db), "--scorers", "detection", "--n-test", "4", "--no-progress",
                     "--llm", server.base_url])
    out = capsys.readouterr().out
    assert code == 0 and "detection" in out and "ok 2" in out
    assert main(["score", "--db", str(db), "--scorers", "nope"]) == 2
    assert "unknown scorer" in capsys.readouterr().err
    assert main(["score", "--db", str(tmp_path / "missing.duckdb"), "--scorers", "embedding"]) == 2


def test_detection_and_json_simulation_over_http(planted):
    """Through the real OpenAI client and a real HTTP server (FakeOpenAIServer on 127.0.0.1)."""
    from autointerp.llm import make_client
    from autointerp.testing.testserver import FakeOpenAIServer

    store, run_id = planted
    with FakeOpenAIServer(latency_s=0.01, capacity=8) as server:
        client = make_client(server.base_url)

        async def go():
            from autointerp.score import ascore_features

            try:
                return await ascore_features(store, run_id, client, ["detection", "simulation"], CONFIG,
                                             progress=False)
            finally:
                await client.aclose()

        summary = asyncio.run(go())
    frame = store.scores(run_id)
    assert len(frame) == 8
    # The scripted server answers schema-valid JSON: every item ends with a status and never a fake 0.
    assert set(frame["status"]) <= {"ok", "undefined"}, frame[["status", "error"]]
    sim = frame[frame["scorer"] == "simulation"]
    assert all(json.loads(d)["method"] == "json_fallback" for d in sim["details"])  # no tokenizer given
    assert summary.scorers["detection"].n_items == 4


def test_planted_results_table(planted):
    from autointerp.testing.planted import format_results

    store, run_id = planted
    score_features(store, run_id, FakeClient(), ["detection"], CONFIG, progress=False)
    table = planted_results(store, run_id)
    assert set(table["scorer"]) == {"detection"} and (table["right"] > table["wrong"]).all()
    assert "yes" in format_results(table)


# ---------------------------------------------------------------------- the work runner

class RaisingClient(FakeClient):
    """Raises (a bug, not a reply) on its first chat call; every later call answers by the rules."""

    async def chat(self, messages, **kwargs):
        if self.chat_calls == 0:
            self.chat_calls += 1
            raise RuntimeError("planted bug in one item")
        return await super().chat(messages, **kwargs)


def test_an_exception_in_one_item_is_recorded_as_its_failure_and_the_rest_finish(planted):
    store, run_id = planted
    summary = score_features(store, run_id, RaisingClient(), ["detection"], CONFIG, progress=False)
    frame = store.scores(run_id, "detection")
    assert len(frame) == 4 and sorted(frame["status"]) == ["exception", "ok", "ok", "ok"]
    failed = frame[frame["status"] == "exception"].iloc[0]
    assert pd.isna(failed["score"]) and "RuntimeError: planted bug in one item" in failed["error"]
    assert summary.run is not None and summary.run.n_exceptions == 1 and summary.run.n_items == 4
    summary = score_features(store, run_id, FakeClient(), ["detection"], CONFIG, retry_failed=True, progress=False)
    assert summary.scorers["detection"].status_counts == {"ok": 4} and len(store.scores(run_id, "detection")) == 4


def test_chunked_streaming_gives_the_same_scores_as_one_chunk(planted, tmp_path, monkeypatch):
    import autointerp.score.runner as runner

    store, run_id = planted
    score_features(store, run_id, FakeClient(), ["detection", "simulation"], CONFIG, progress=False)
    other = Store(tmp_path / "chunked.duckdb")
    other_run = build_planted_store(other, fake_documents(), planted_test_features(), ctx_len=16,
                                    sae_name="planted", model="fake")
    monkeypatch.setattr(runner, "CHUNK_FEATURES", 1)  # one store query per feature
    score_features(other, other_run, FakeClient(), ["detection", "simulation"], CONFIG, progress=False)
    columns = ["feature_id", "explainer_model", "scorer", "status", "score"]

    def table(s: Store, run: str) -> pd.DataFrame:
        frame = s.scores(run).merge(s.explanations(run)[["explanation_id", "explainer_model"]])
        return frame[columns].sort_values(columns[:3]).reset_index(drop=True)

    whole, chunked = table(store, run_id), table(other, other_run)
    other.close()
    assert len(whole) == 8 and whole["status"].eq("ok").all()
    pd.testing.assert_frame_equal(whole, chunked)


def test_the_sync_wrapper_refuses_inside_a_running_loop(planted):
    store, run_id = planted

    async def inside():
        score_features(store, run_id, FakeClient(), ["detection"], CONFIG, progress=False)

    with pytest.raises(RuntimeError, match="await the async function"):
        asyncio.run(inside())
    assert store.scores(run_id, "detection").empty


def test_score_ids_equal_score_id_one_by_one():
    """The batched ids are the stored keys: a mismatch would make every rerun redo finished scores."""
    from autointerp.score.runner import score_id, score_ids

    explanation_ids = ["0123abcd", 'quote " and \\ backslash', "unicode é ✓", None, ""]
    got = score_ids(explanation_ids, "detection", "modèle/x", "ph", "ch")
    want = [None if e is None else score_id(e, "detection", "modèle/x", "ph", "ch") for e in explanation_ids]
    assert got == want
    assert len(set(got[:3])) == 3


def test_score_statuses_and_totals_read_the_given_ids(tmp_path):
    """Ids travel as a registered table: only the asked-for rows are read, unknown ids are absent."""
    with Store(tmp_path / "w.duckdb") as store:
        base = {"explanation_id": "e", "run_id": "r", "feature_id": 1, "scorer": "detection",
                "scorer_model": "m", "prompt_hash": "p", "config_hash": "c", "config": {}, "chance": 0.5,
                "details": {}, "error": None, "prompt_tokens": 3, "completion_tokens": 2, "latency_s": 0.1}
        store.put_scores([
            {**base, "score_id": "a", "status": "ok", "score": 1.0},
            {**base, "score_id": "b", "status": "ok", "score": 0.0},
            {**base, "score_id": "c", "status": "parse_error", "score": None},
        ])
        assert store.score_statuses(["a", "c", "zz"]) == {"a": "ok", "c": "parse_error"}
        totals = store.score_totals(["a", "c"])
        assert list(totals["status"]) == ["ok", "parse_error"]
        assert list(totals["n"]) == [1, 1] and float(totals["mean_score"].iloc[0]) == 1.0
        assert int(totals["prompt_tokens"].sum()) == 6
        assert store.score_statuses([]) == {}


def test_split_mismatch_alone_is_found(planted):
    """The one-pass pre-check must see a context whose recorded split disagrees with its example's,
    even when no document holds both splits."""
    store, run_id = planted
    examples = store.examples(run_id)
    test_ctx = int(examples[examples["split"] == "test"]["context_id"].iloc[0])
    store.con.execute("UPDATE contexts SET split = 'explain' WHERE context_id = ?", [test_ctx])
    leaks = store.split_leaks(run_id)
    assert (leaks["problem"] == "split mismatch").any()
    assert set(leaks[leaks["problem"] == "split mismatch"]["context_id"]) == {test_ctx}
