"""Detection asked of a judge's likelihoods (`detection_likelihood`): a judge whose predictions follow the label
scores high and a shuffled label lower, a judge without signal scores exactly chance through ties, both
prompts of a context end in the same ids and the neutral one is asked once, failures stay failures, the HTTP
path gives the in-process numbers, and the CLI, report and compare take the scorer like detection."""

from __future__ import annotations

import asyncio
import json
import math
import re

import numpy as np
import pytest

from autointerp.llm.base import LogprobsResult, Status
from autointerp.score import ScoreConfig, ascore_features
from autointerp.score.base import get_scorer_class
from autointerp.score.detection_likelihood import (
    DetectionLikelihoodScorer,
    NeutralCache,
    expected_confusion,
    predicted_share,
)
from autointerp.store import Store
from autointerp.store.sets import NULL_MODEL
from autointerp.testing.planted import RIGHT, build_planted_store
from autointerp.testing.testserver import FakeOpenAIServer
from tests.score_helpers import fake_documents, planted_test_features, rule_for
from tests.test_intruder_likelihood import WordTokenizer

CONFIG = ScoreConfig(n_activating=6, n_top=2, n_quantiles=2)
#: The fake judge's logprob of a token the label names, and of any other token.
NAMED, OTHER = -0.5, -3.0


def label_of(text: str) -> str | None:
    """The description a prompt's header states, None for the neutral header (an empty description)."""
    found = re.search(r'described as "(.*?)"', text)
    return None if found is None else found.group(1) or None


def reading_logprob(tokenizer: WordTokenizer, token_ids: list[int], position: int) -> float:
    """A judge that reads the header: after a description it expects the tokens the description names (the
    test rules: "cats" names " cat", "numbers" names digits); without one, nothing in particular."""
    before = tokenizer.decode(token_ids[:position])
    label = label_of(before.split("\n\nText:")[0])
    if label is None or "\n\nText:" not in before:  # the neutral header, or a position inside the header
        return OTHER
    return NAMED if rule_for(label)(tokenizer.decode([token_ids[position]])) else OTHER


class LikelihoodClient:
    """An in-process judge with the word tokenizer: `mode` 'reading' (above), 'constant' (every token -1),
    'server_error' (every request fails), 'missing_actual' (a server that omits the prompt's tokens)."""

    model_name = "fake-likelihood"
    concurrency = 8

    def __init__(self, mode: str = "reading", logprobs: bool = True, tokenizer: bool = True) -> None:
        self.mode = mode
        self.supports_prompt_logprobs = logprobs
        self._tokenizer = WordTokenizer() if tokenizer else None
        self.requests: list[tuple[list[int], list[int], int]] = []

    def tokenizer(self) -> WordTokenizer | None:
        return self._tokenizer

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def chat(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the likelihood judge never chats")

    async def prompt_logprobs(self, token_ids: list[int], positions: list[int], top_n: int = 20) -> LogprobsResult:
        self.requests.append((list(token_ids), list(positions), top_n))
        if self.mode == "server_error":
            return LogprobsResult(Status.SERVER_ERROR, error="HTTP 500: boom")
        actual: list[float | None]
        if self.mode == "constant":
            actual = [-1.0] * len(positions)
        elif self.mode == "missing_actual":
            actual = [None] * len(positions)
        else:
            assert self._tokenizer is not None
            actual = [reading_logprob(self._tokenizer, token_ids, p) for p in positions]
        return LogprobsResult(Status.OK, positions=list(positions), top_logprobs=[{}] * len(positions),
                              actual=actual, prompt_tokens=len(token_ids))


@pytest.fixture()
def planted(tmp_path):
    store = Store(tmp_path / "planted.duckdb")
    run_id = build_planted_store(
        store, fake_documents(), planted_test_features(), ctx_len=16, model="fake",
        labels={RIGHT: ["cats", "numbers"]},
    )
    yield store, run_id
    store.close()


def score(store, run_id, client, config=CONFIG, feature_ids=(0, 1), scorers=("detection_likelihood",)):
    async def go():
        try:
            return await ascore_features(
                store, run_id, client, list(scorers), config, None if feature_ids is None else list(feature_ids),
                progress=False,
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def right_and_shuffled(store, run_id, client, config=CONFIG):
    """Score the right labels, then the shuffled ones (the score command's null pass), with one client."""
    from autointerp.score.null import ensure_null_sets

    ensure_null_sets(store, run_id, n_sample=2, seed=0)

    async def go():
        try:
            for chosen in (config, ScoreConfig(**{**config.__dict__, "explainer_model": NULL_MODEL})):
                await ascore_features(store, run_id, client, ["detection_likelihood"], chosen, [0, 1], progress=False)
        finally:
            await client.aclose()

    asyncio.run(go())
    frame = store.scores(run_id, "detection_likelihood")
    expl = store.explanations(run_id)[["explanation_id", "explainer_model", "explanation"]]
    return frame.merge(expl, on="explanation_id").sort_values(["explainer_model", "feature_id"])


def brute_force_balanced_accuracy(gains: list[float], labels: list[bool]) -> float:
    """Mean balanced accuracy of the top-k prediction over many uniformly random orders of the ties."""
    rng = np.random.default_rng(0)
    k, n_pos, n_neg = sum(labels), sum(labels), len(labels) - sum(labels)
    values = []
    for _ in range(20000):
        order = np.lexsort((rng.random(len(gains)), -np.asarray(gains)))
        chosen = set(order[:k].tolist())
        tp = sum(1 for i in chosen if labels[i])
        tn = sum(1 for i in range(len(labels)) if i not in chosen and not labels[i])
        values.append((tp / n_pos + tn / n_neg) / 2)
    return float(np.mean(values))


def test_top_n_prediction_splits_the_credit_of_ties_exactly():
    labels = [True, True, False, False, False]
    assert expected_confusion([3.0, 2.0, 1.0, 0.0, -1.0], labels) == (2.0, 0.0, 3.0, 0.0)
    assert expected_confusion([0.0] * 5, labels) == pytest.approx((0.8, 1.2, 1.8, 1.2))  # k/n of each
    for gains in ([1.0, 0.5, 0.5, 0.5, 0.0], [0.5, 0.5, 2.0, 0.5, 0.5], [0.0] * 5, [1.0, 1.0, 1.0, 0.0, 0.0]):
        tp, fp, tn, fn = expected_confusion(gains, labels)
        assert tp + fp == pytest.approx(2) and tp + fn == 2 and fp + tn == 3
        assert (tp / 2 + tn / 3) / 2 == pytest.approx(brute_force_balanced_accuracy(gains, labels), abs=0.01)
    assert predicted_share([1.0, 0.5, 0.5, 0.5, 0.0], 2) == pytest.approx([1.0, 1 / 3, 1 / 3, 1 / 3, 0.0])
    cache = NeutralCache(max_entries=2)
    cache.put((1,), (0.1,))
    cache.put((2,), (0.2,))
    assert cache.get((1,)) == (0.1,)  # (1,) is now the most recent: (2,) goes first
    cache.put((3,), (0.3,))
    assert len(cache) == 2 and cache.get((2,)) is None and cache.get((1,)) == (0.1,)


def test_a_judge_that_follows_the_label_detects_and_a_shuffled_label_does_worse(planted):
    store, run_id = planted
    frame = right_and_shuffled(store, run_id, LikelihoodClient())
    assert set(frame["status"]) == {"ok"} and set(frame["chance"]) == {0.5}
    right = frame[frame["explainer_model"] == RIGHT]
    shuffled = frame[frame["explainer_model"] == NULL_MODEL]
    assert right["score"].tolist() == [1.0, 1.0]
    assert shuffled["explanation"].tolist() == ["numbers", "cats"]
    assert (shuffled["score"].to_numpy() < 1.0).all()
    details = json.loads(right["details"].iloc[0])
    assert details["auc"] == 1.0 and details["auc_method"] == "likelihood" and details["balanced_accuracy"] == 1.0
    items = details["items"]
    assert {i["variant"] for i in items} == {"activating", "nonactivating"}
    assert all(i["gain"] > 0 for i in items if i["label"]) and all(i["gain"] == 0 for i in items if not i["label"])
    # a context's gain is its largest token gain (a named token: NAMED - OTHER); the mean over its tokens is kept
    assert all(i["gain"] == NAMED - OTHER and 0 < i["gain_mean"] < i["gain"] for i in items if i["label"])
    assert details["gain"] == "largest token gain" and details["mean_gain"] == {"balanced_accuracy": 1.0, "auc": 1.0}
    assert sum(i["predicted"] for i in items) == details["n_positive"] == details["n_negative"] == 6


def test_a_judge_without_signal_scores_exactly_chance_through_ties(planted):
    store, run_id = planted
    score(store, run_id, LikelihoodClient(mode="constant"))
    frame = store.scores(run_id, "detection_likelihood")
    assert set(frame["status"]) == {"ok"} and frame["score"].tolist() == [0.5, 0.5]
    details = json.loads(frame["details"].iloc[0])
    assert details["auc"] == 0.5 and {i["gain"] for i in details["items"]} == {0.0}
    assert {i["predicted"] for i in details["items"]} == {0.5}


def test_both_prompts_end_with_the_same_context_and_the_neutral_one_is_asked_once(planted):
    """Per context: a label prompt and a neutral prompt ending in the same ids, every asked position inside the
    context; the shuffled-label pass with the same client asks only its label prompts."""
    store, run_id = planted
    client = LikelihoodClient()
    tokenizer = WordTokenizer()
    score(store, run_id, client, feature_ids=[0])
    endings: dict[str | None, list[tuple[int, ...]]] = {}
    for ids, positions, top_n in client.requests:
        assert top_n == 0 and positions == list(range(positions[0], len(ids)))
        head = tokenizer.decode(ids[: positions[0]])
        assert head.startswith("Texts in which a feature of a language model fires") and head.endswith("\n\nText:")
        assert 'The feature is described as "' in head  # the neutral header too, with an empty description
        endings.setdefault(label_of(head), []).append(tuple(ids[positions[0]:]))
    assert set(endings) == {"cats", None} and len(endings["cats"]) == 12
    assert sorted(endings["cats"]) == sorted(endings[None])  # the same context ids after either header
    n_first = len(client.requests)
    client.requests.clear()
    from autointerp.score.null import ensure_null_sets

    ensure_null_sets(store, run_id, n_sample=2, seed=0)
    score(store, run_id, client, feature_ids=[0], config=ScoreConfig(**{**CONFIG.__dict__,
                                                                       "explainer_model": NULL_MODEL}))
    assert n_first == 24 and len(client.requests) == 12  # the neutral prompts came from the cache
    assert all(label_of(tokenizer.decode(ids[: pos[0]])) == "numbers" for ids, pos, _ in client.requests)
    (null_row,) = store.scores(run_id, "detection_likelihood").merge(
        store.explanations(run_id)[["explanation_id", "explainer_model"]], on="explanation_id"
    ).query("explainer_model == @NULL_MODEL").to_dict("records")
    assert json.loads(null_row["details"])["n_neutral_cached"] == 12


@pytest.mark.parametrize(
    ("client", "status", "words"),
    [
        (LikelihoodClient(mode="server_error"), "server_error", "requests failed: HTTP 500"),
        (LikelihoodClient(mode="missing_actual"), "no_logprobs", "without the prompt's own tokens"),
        (LikelihoodClient(logprobs=False), "no_logprobs", "--llm local:smollm2"),
        (LikelihoodClient(tokenizer=False), "no_logprobs", "--tokenizer"),
    ],
)
def test_failures_are_failures_never_scores(planted, client, status, words):
    store, run_id = planted
    score(store, run_id, client, feature_ids=[0])
    (row,) = store.scores(run_id, "detection_likelihood").to_dict("records")
    assert row["status"] == status and (row["score"] is None or math.isnan(row["score"])) and words in row["error"]


def test_registered_beside_detection_and_keyed_by_the_contexts_only():
    """Nothing is sampled, so temperature and the chat batch size stay out of the key; the sampling fields
    and the negatives enter it."""
    from autointerp.llm import make_client

    assert get_scorer_class("detection_likelihood") is DetectionLikelihoodScorer
    assert DetectionLikelihoodScorer.needs_explanation is True
    client = make_client("http://127.0.0.1:9/v1")
    key = DetectionLikelihoodScorer(client, ScoreConfig()).config_for_hash()
    same = DetectionLikelihoodScorer(client, ScoreConfig(temperature=0.7, classify_batch_size=2)).config_for_hash()
    assert same == key
    for change in ({"n_activating": 5}, {"seed": 1}, {"negatives": "hard"}, {"nonactivating_ratio": 2.0}):
        assert DetectionLikelihoodScorer(client, ScoreConfig(**change)).config_for_hash() != key
    asyncio.run(client.aclose())


def http_reading(token_ids: list[int], position: int, top_n: int) -> dict[int, float]:
    """The test server's scripted reply: the reading judge's value for the prompt's own token."""
    return {token_ids[position]: reading_logprob(WordTokenizer(), token_ids, position)}


def http_client(server: FakeOpenAIServer, **options: object):
    from autointerp.llm import make_client

    defaults = {"timeout_s": 2.0, "max_retries": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.02,
                "tokenizer_spec": "fake"}
    client = make_client(server.base_url, **{**defaults, **options})
    client._tokenizer = WordTokenizer()  # what --tokenizer would load, without a model directory
    return client


def test_over_http_the_reading_judge_gives_the_in_process_numbers(planted):
    store, run_id = planted
    with FakeOpenAIServer(logprobs_reply=http_reading) as server:
        score(store, run_id, http_client(server))
        bodies = [r.body for r in server.requests if r.index >= 0]
    assert len(bodies) == 48 and all(b["prompt_logprobs"] == 0 and isinstance(b["prompt"], list) for b in bodies)
    assert all("messages" not in b for b in bodies)  # plain prompts, no chat
    score(store, run_id, LikelihoodClient())
    frame = store.scores(run_id, "detection_likelihood")
    assert set(frame["status"]) == {"ok"} and len(frame) == 4
    over_http, in_process = (frame[frame["scorer_model"] == m].sort_values("feature_id")
                             for m in ("fake-model", "fake-likelihood"))
    assert over_http["score"].tolist() == in_process["score"].tolist() == [1.0, 1.0]
    assert over_http["details"].tolist() == in_process["details"].tolist()


def test_over_http_a_failed_request_and_a_server_without_prompt_logprobs_are_failures(planted):
    from autointerp.llm import make_client

    store, run_id = planted
    with FakeOpenAIServer(logprobs_reply=http_reading, fault_rates={"500": 1.0}) as server:
        score(store, run_id, http_client(server), feature_ids=[0])
    with FakeOpenAIServer(supports_prompt_logprobs=False) as server:
        score(store, run_id, http_client(server), feature_ids=[1])
    with FakeOpenAIServer() as server:  # no --tokenizer: nothing is asked
        score(store, run_id, make_client(server.base_url), feature_ids=[1], config=ScoreConfig(n_activating=4))
        assert not [r for r in server.requests if r.index >= 0]
    rows = store.scores(run_id, "detection_likelihood").sort_values(["feature_id", "prompt_tokens"]).to_dict("records")
    assert [r["status"] for r in rows] == ["server_error", "no_logprobs", "no_logprobs"]
    assert all(r["score"] is None or math.isnan(r["score"]) for r in rows)
    assert rows[1]["prompt_tokens"] == 0 and "--tokenizer" in rows[1]["error"]  # nothing was asked
    assert "no prompt_logprobs" in rows[2]["error"] and "--llm local:smollm2" in rows[2]["error"]


def test_the_score_command_scores_real_and_shuffled_labels(planted, tmp_path, monkeypatch):
    """`autointerp score --scorers detection_likelihood --tokenizer ...` against the test server: the real
    labels and the null pass's shuffled ones are scored (ok), the neutral prompts asked once for both."""
    import autointerp.models
    from autointerp.cli import main

    store, run_id = planted
    store.close()
    monkeypatch.setattr(autointerp.models, "load_tokenizer", lambda spec: WordTokenizer())
    with FakeOpenAIServer(logprobs_reply=http_reading) as server:
        code = main(["score", "--db", str(tmp_path / "planted.duckdb"), "--scorers", "detection_likelihood",
                     "--llm", server.base_url, "--tokenizer", "fake", "--n-test", "6", "--n-quantiles", "2",
                     "--no-progress"])
        n_requests = len([r for r in server.requests if r.index >= 0])
    assert code == 0
    with Store(tmp_path / "planted.duckdb") as again:
        frame = again.scores(run_id, "detection_likelihood").merge(
            again.explanations(run_id)[["explanation_id", "explainer_model"]], on="explanation_id")
    assert len(frame) == 4 and set(frame["status"]) == {"ok"}
    assert frame[frame["explainer_model"] == RIGHT]["score"].tolist() == [1.0, 1.0]
    assert n_requests == 2 * 12 * 2 + 2 * 12  # real: label + neutral per context; shuffled: label only


def test_the_score_command_records_no_logprobs_without_a_tokenizer(planted, tmp_path):
    from autointerp.cli import main

    store, run_id = planted
    store.close()
    with FakeOpenAIServer() as server:
        code = main(["score", "--db", str(tmp_path / "planted.duckdb"), "--scorers", "detection_likelihood",
                     "--llm", server.base_url, "--features", "0", "--no-progress", "--null-sample", "0"])
    assert code == 1  # a stored failure: the command says so by its exit code
    with Store(tmp_path / "planted.duckdb") as again:
        (row,) = again.scores(run_id, "detection_likelihood").to_dict("records")
    assert row["status"] == "no_logprobs" and "--tokenizer" in row["error"]


def test_report_and_compare_read_it_like_detection(planted, tmp_path):
    """Its threshold is detection's, its baseline is the shuffled labels (it reads the label), and scored
    against random and hard negatives it gets compare's paired random-vs-hard row."""
    from autointerp.report.compare import CompareOptions, build_compare, load_arms, negatives_effect
    from autointerp.report.data import load_run, threshold_for
    from autointerp.report.null import baseline_for
    from autointerp.testing.hard_negative_validity import write_hard_negatives

    store, run_id = planted
    write_hard_negatives(store, run_id, planted_test_features(), per_feature=6)
    client = LikelihoodClient()
    right_and_shuffled(store, run_id, client)
    hard = ScoreConfig(**{**CONFIG.__dict__, "negatives": "hard"})
    right_and_shuffled(store, run_id, client, config=hard)
    data = load_run(store, None)
    assert {"detection_likelihood", "detection_likelihood:hard"} <= set(data.scorers)
    assert "detection_likelihood" not in data.label_free_scorers
    assert threshold_for("detection_likelihood") == threshold_for("detection_likelihood:hard") == 0.75
    hard_rows = data.scores[data.scores["scorer"] == "detection_likelihood:hard"].sort_values("feature_id")
    assert hard_rows["status"].tolist() == ["ok", "undefined"]
    base = baseline_for(data.scores, data.null_scores, "detection_likelihood", data.label_free_scorers)
    assert base.n_pairs == 2 and base.real_mean == 1.0 and base.null_mean < 1.0
    from autointerp.report.export import export_catalog

    export_catalog(store, None, tmp_path / "catalog.parquet", "parquet")
    store.close()
    import duckdb

    catalog = duckdb.sql(f"SELECT * FROM '{tmp_path / 'catalog.parquet'}' ORDER BY feature_id").df()
    assert catalog["detection_likelihood_score"].tolist() == [1.0, 1.0]
    assert catalog["detection_likelihood_null"].notna().all()  # its shuffled-label score beside it
    # against hard negatives in columns of their own (they used to overwrite the random-negative ones)
    assert catalog["detection_likelihood_hard_status"].tolist() == ["ok", "undefined"]
    assert catalog["detection_likelihood_hard_score"].iloc[0] == 1.0
    options = CompareOptions(n_boot=200, n_perm=200, match=False)
    result = build_compare([str(tmp_path / "planted.duckdb")], None, tmp_path / "c.html", options)
    assert {"detection_likelihood", "detection_likelihood:hard"} <= set(result.summary["scorer"])
    (row,) = negatives_effect(load_arms([str(tmp_path / "planted.duckdb")], None, options), options).to_dict("records")
    # "numbers" has no hard negatives (every top context of "cats" holds a digit): undefined there, not a number
    assert row["scorer"] == "detection_likelihood" and row["n"] == 1 and row["random_mean"] == 1.0
    assert row["random_ci_low"] <= row["random_mean"] <= row["random_ci_high"]
    assert row["hard_ci_low"] <= row["hard_mean"] <= row["hard_ci_high"]
    # one workspace, one SAE: no A - B pairs, and the page still shows the random-vs-hard table (it hid it)
    assert "Random vs hard negatives" in result.html_path.read_text()
    markdown = result.markdown_path.read_text()
    assert "| detection\\_likelihood | planted | 1 | 1 [1, 1] | 1 [1, 1] | 0 [0, 0] |" in markdown


def test_the_planted_harness_prints_its_auc_row(planted):
    from autointerp.testing.planted import validity_table

    store, run_id = planted
    right_and_shuffled(store, run_id, LikelihoodClient())
    rows = {r.scorer: r for r in validity_table(store, run_id, ["detection_likelihood"])}
    assert set(rows) == {"detection_likelihood", "detection_likelihood:auc"}
    assert rows["detection_likelihood"].right_mean == 1.0 and rows["detection_likelihood:auc"].right_mean == 1.0
