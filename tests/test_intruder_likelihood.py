"""The intruder question asked of a judge's likelihoods (`intruder_likelihood`): a judge that copies in context
finds the intruder, a judge without signal scores chance through ties, the texts are tokenised so their
marks are known exactly, failures stay failures, and the HTTP path works against the real test server."""

from __future__ import annotations

import asyncio
import json
import math
import random

import pytest

from autointerp.llm.base import LogprobsResult, Status
from autointerp.score import ScoreConfig, ascore_features
from autointerp.score.base import get_scorer_class
from autointerp.score.classify import one_line
from autointerp.score.fuzzing import mark
from autointerp.score.intruder import IntruderScorer
from autointerp.score.intruder_likelihood import (
    INSIDE,
    MARK,
    PLAIN,
    IntruderLikelihoodScorer,
    shown_segments,
    tokenise_text,
)
from autointerp.store import Store
from autointerp.store.sets import LABEL_FREE_PREFIX, NULL_MODEL
from autointerp.testing.planted import RIGHT, build_planted_store
from autointerp.testing.testserver import FakeOpenAIServer
from tests.score_helpers import FakeTokenizer, fake_documents, planted_test_features


class WordTokenizer(FakeTokenizer):
    """The fake vocabulary, cut greedily: the longest known word at each point, else one character (the
    FakeTokenizer alone spells any multi-word string character by character)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            word = max((w for w in self.vocab if text.startswith(w, i)), key=len, default=None)
            ids += [self.vocab[word]] if word else super().encode(text[i])
            i += len(word) if word else 1
        return ids


CONFIG = ScoreConfig(n_activating=6, n_top=2, n_quantiles=2, intruder_n_activating=3, intruder_rounds=4)
SEEN, UNSEEN = -0.1, -5.0


def induction_logprob(token_ids: list[int], position: int) -> float:
    """A copying judge: the token at `position` is likely when the same two-token sequence (previous token,
    this token) occurred earlier in the prompt, unlikely otherwise: in-context prediction, nothing more."""
    pair = (token_ids[position - 1], token_ids[position])
    earlier = zip(token_ids[: position - 1], token_ids[1:position], strict=True)
    return SEEN if pair in set(earlier) else UNSEEN


class LikelihoodClient:
    """An in-process judge with the FakeTokenizer: `mode` 'induction' (above), 'constant' (every token -1),
    'server_error' (every request fails), 'missing_actual' (a server that omits the prompt's tokens)."""

    model_name = "fake-likelihood"
    concurrency = 8

    def __init__(self, mode: str = "induction", logprobs: bool = True, tokenizer: bool = True) -> None:
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
            actual = [induction_logprob(token_ids, p) for p in positions]
        return LogprobsResult(Status.OK, positions=list(positions), top_logprobs=[{}] * len(positions),
                              actual=actual, prompt_tokens=len(token_ids))


@pytest.fixture()
def planted(tmp_path):
    store = Store(tmp_path / "planted.duckdb")
    run_id = build_planted_store(
        store, fake_documents(), planted_test_features(), ctx_len=16, model="fake", labels={RIGHT: ["cats"]}
    )  # feature 1 ("numbers") has no label
    yield store, run_id
    store.close()


def score(store, run_id, client, config=CONFIG, feature_ids=(0, 1), scorers=("intruder_likelihood",)):
    async def go():
        try:
            return await ascore_features(
                store, run_id, client, list(scorers), config, None if feature_ids is None else list(feature_ids),
                progress=False,
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_shown_segments_join_to_the_text_the_chat_judge_sees():
    rng = random.Random(0)
    alphabet = [" the", "cat", "\n", " ", "  ", "x ", "\t\n", " 7", ",", "<<"]
    for _ in range(3000):
        tokens = tuple(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        marks = frozenset(i for i in range(len(tokens)) if rng.random() < 0.3)
        for highlight in (True, False):
            segments = shown_segments(tokens, marks, highlight)
            shown = one_line(mark(tokens, set(marks))) if highlight else one_line("".join(tokens))
            assert "".join(text for text, _ in segments) == shown
            assert all(text for text, _ in segments) and (highlight or {k for _, k in segments} <= {PLAIN})
    got = shown_segments((" of", " the", " cat", "\n", " sat"), frozenset({1, 3}), True)
    assert got == [("of", PLAIN), ("<<", MARK), (" the", INSIDE), (">>", MARK), (" cat", PLAIN), ("<<", MARK),
                   (" ", INSIDE), (">>", MARK), (" sat", PLAIN)]


def test_a_text_is_tokenised_piecewise_and_its_marked_tokens_are_known():
    tokenizer = WordTokenizer()
    text = tokenise_text(tokenizer, [("the", PLAIN), ("<<", MARK), (" cat", INSIDE), (">>", MARK), (" sat", PLAIN)])
    words = [tokenizer.decode([i]) for i in text.ids]
    assert words == [" the", "<", "<", " cat", ">", ">", " sat"]  # a space before the first segment
    assert text.marked == (3,) and text.scored(True) == (3,) and text.scored(False) == tuple(range(7))


def test_a_copying_judge_finds_every_intruder_and_scores_are_per_feature(planted):
    store, run_id = planted
    client = LikelihoodClient()
    summary = score(store, run_id, client)
    frame = store.scores(run_id, "intruder_likelihood")
    assert sorted(frame["feature_id"]) == [0, 1]  # the unlabelled feature too
    assert frame["explanation_id"].str.startswith(LABEL_FREE_PREFIX).all()
    # "cats" (one token) always; "numbers" (" 7", " 42", runs of them) in most rounds: in this 14-word world a
    # random multi-token mark on the intruder is often a pair the other texts show too
    assert set(frame["status"]) == {"ok"} and frame["score"].tolist() == [1.0, 0.75]
    assert frame["chance"].tolist() == [0.25, 0.25]
    details = json.loads(frame["details"].iloc[0])
    assert details["method"] == "likelihood" and details["auc"] == 1.0 and details["scored"] == "marked tokens"
    for r in details["rounds"]:
        intruder = r["intruder"] - 1
        assert r["prediction"] == r["intruder"] and r["correct"] == 1.0
        assert r["gains"][intruder] == 0.0  # nothing the other texts show helps predict random marks
        assert all(g > 0 for j, g in enumerate(r["gains"]) if j != intruder)
    # 2(n+1) prompts per round at most (baselines of recurring texts asked once), all plain prompt logprobs
    n_requests = len(client.requests)
    assert n_requests == sum(json.loads(d)["n_requests"] for d in frame["details"])
    assert 2 * 4 * CONFIG.intruder_rounds < n_requests <= 2 * 2 * 4 * CONFIG.intruder_rounds
    assert all(top_n == 0 for _, _, top_n in client.requests)
    assert summary.scorers["intruder_likelihood"].mean_score == 0.875
    # a rerun skips; the shuffled-label selection never scores a label-free scorer
    again = LikelihoodClient()
    score(store, run_id, again)
    score(store, run_id, again, config=ScoreConfig(**{**CONFIG.__dict__, "explainer_model": NULL_MODEL}))
    assert again.requests == []


def test_each_prompt_ends_with_its_text_and_the_baseline_holds_that_text_alone(planted):
    """Context and baseline prompts of a text end with the same token ids (same label, same text), the
    context prompt holds the other texts before them, and every asked position lies in that last text."""
    store, run_id = planted
    client = LikelihoodClient()
    score(store, run_id, client, feature_ids=[0])
    tokenizer = WordTokenizer()
    endings: dict[int, set[tuple[int, ...]]] = {1: set(), 4: set()}
    for ids, positions, _ in client.requests:
        text = tokenizer.decode(ids)
        assert text.startswith("Texts from a corpus") and "<<like this>>" in text.split("\n")[0]
        assert positions == list(range(positions[0], len(ids)))  # every token of the last text, nothing else
        assert tokenizer.decode(ids[: positions[0]]).endswith("\nText 4:")
        # a baseline (the last text alone) or a context prompt (the 3 others, then it)
        endings[text.count("\nText ")].add(tuple(ids[positions[0]:]))
    assert endings[4] and endings[1] == endings[4]


def test_a_judge_without_signal_scores_chance_through_ties(planted):
    store, run_id = planted
    score(store, run_id, LikelihoodClient(mode="constant"))
    frame = store.scores(run_id, "intruder_likelihood")
    assert set(frame["status"]) == {"ok"} and frame["score"].tolist() == pytest.approx([0.25, 0.25])
    details = json.loads(frame["details"].iloc[0])
    assert details["auc"] == 0.5 and all(set(r["gains"]) == {0.0} for r in details["rounds"])


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
    (row,) = store.scores(run_id, "intruder_likelihood").to_dict("records")
    assert row["status"] == status and (row["score"] is None or math.isnan(row["score"])) and words in row["error"]


def test_rounds_are_the_chat_intruders_and_the_key_ignores_what_plays_no_part():
    """Same rounds as the chat scorer (same seed, texts, marks, order); temperature and debiasing change
    nothing here, so they stay out of the score key, while n, rounds and highlight enter it."""
    from autointerp.llm import make_client

    assert get_scorer_class("intruder_likelihood") is IntruderLikelihoodScorer
    assert IntruderLikelihoodScorer.needs_explanation is False
    client = make_client("http://127.0.0.1:9/v1")
    key = IntruderLikelihoodScorer(client, ScoreConfig()).config_for_hash()
    assert IntruderLikelihoodScorer(client, ScoreConfig(temperature=0.7, intruder_debias=False)).config_for_hash() == key
    for change in ({"intruder_n_activating": 3}, {"intruder_rounds": 2}, {"intruder_highlight": False}):
        assert IntruderLikelihoodScorer(client, ScoreConfig(**change)).config_for_hash() != key
    assert IntruderLikelihoodScorer.round_contexts is IntruderScorer.round_contexts
    asyncio.run(client.aclose())


def http_induction(token_ids: list[int], position: int, top_n: int) -> dict[int, float]:
    """The test server's scripted reply: the copying judge's value for the prompt's own token."""
    return {token_ids[position]: induction_logprob(token_ids, position)}


def http_client(server: FakeOpenAIServer, **options: object):
    from autointerp.llm import make_client

    defaults = {"timeout_s": 2.0, "max_retries": 1, "backoff_initial_s": 0.01, "backoff_max_s": 0.02,
                "tokenizer_spec": "fake"}
    client = make_client(server.base_url, **{**defaults, **options})
    client._tokenizer = WordTokenizer()  # what --tokenizer would load, without a model directory
    return client


def test_over_http_the_copying_judge_finds_the_intruders(planted):
    store, run_id = planted
    with FakeOpenAIServer(logprobs_reply=http_induction) as server:
        score(store, run_id, http_client(server))
        bodies = [r.body for r in server.requests if r.index >= 0]
    assert bodies and all(b["prompt_logprobs"] == 0 and isinstance(b["prompt"], list) for b in bodies)
    assert all("messages" not in b for b in bodies)  # plain prompts, no chat
    score(store, run_id, LikelihoodClient())  # the same judge in process: the same gains
    frame = store.scores(run_id, "intruder_likelihood")
    assert set(frame["status"]) == {"ok"} and len(frame) == 4
    over_http, in_process = (frame[frame["scorer_model"] == m] for m in ("fake-model", "fake-likelihood"))
    assert over_http["score"].tolist() == in_process["score"].tolist() == [1.0, 0.75]
    assert over_http["details"].tolist() == in_process["details"].tolist()


def test_over_http_a_failed_request_and_a_server_without_prompt_logprobs_are_failures(planted):
    store, run_id = planted
    with FakeOpenAIServer(logprobs_reply=http_induction, fault_rates={"500": 1.0}) as server:
        score(store, run_id, http_client(server), feature_ids=[0])
    with FakeOpenAIServer(supports_prompt_logprobs=False) as server:
        score(store, run_id, http_client(server), feature_ids=[1])
    with FakeOpenAIServer() as server:  # no --tokenizer: nothing is asked
        from autointerp.llm import make_client

        score(store, run_id, make_client(server.base_url), feature_ids=[1],
              config=ScoreConfig(**{**CONFIG.__dict__, "intruder_rounds": 2}))
        assert not [r for r in server.requests if r.index >= 0]
    rows = store.scores(run_id, "intruder_likelihood").sort_values(["feature_id", "prompt_tokens"]).to_dict("records")
    assert [r["status"] for r in rows] == ["server_error", "no_logprobs", "no_logprobs"]
    assert all(r["score"] is None or math.isnan(r["score"]) for r in rows)
    assert rows[1]["prompt_tokens"] == 0 and "--tokenizer" in rows[1]["error"]  # nothing was asked
    assert "no prompt_logprobs" in rows[2]["error"] and "--llm local:smollm2" in rows[2]["error"]


def test_report_and_compare_read_it_against_chance_like_the_intruder(planted, tmp_path):
    from autointerp.report.compare import CompareOptions, build_compare
    from autointerp.report.data import load_run, threshold_for
    from autointerp.report.null import ABOVE_CHANCE, baseline_for

    store, run_id = planted
    score(store, run_id, LikelihoodClient(), scorers=("intruder_likelihood",))
    data = load_run(store, None)
    assert data.label_free_scorers == ["intruder_likelihood"] and data.chance("intruder_likelihood") == 0.25
    base = baseline_for(data.scores, data.null_scores, "intruder_likelihood", data.label_free_scorers)
    assert base.beats_null and base.passed == ABOVE_CHANCE and base.null_mean == 0.25
    assert threshold_for("intruder_likelihood") == threshold_for("intruder") == 0.6
    store.close()
    result = build_compare(
        [str(tmp_path / "planted.duckdb")], None, tmp_path / "c.html",
        CompareOptions(n_boot=200, n_perm=200, match=False),
    )
    row = result.summary[result.summary["scorer"] == "intruder_likelihood"].iloc[0]
    assert row["n"] == 2 and row["chance"] == 0.25 and row["beats_null"] and row["label_free"]


def test_the_score_command_takes_the_scorer(planted, tmp_path):
    """`autointerp score --scorers intruder_likelihood` parses and reaches the scorer (here it records
    no_logprobs: an HTTP judge without --tokenizer, which the error names)."""
    from autointerp.cli import main

    store, run_id = planted
    store.close()
    with FakeOpenAIServer() as server:
        code = main(["score", "--db", str(tmp_path / "planted.duckdb"), "--scorers", "intruder_likelihood",
                     "--llm", server.base_url, "--features", "0", "--no-progress", "--null-sample", "0"])
    assert code == 1  # a stored failure: the command says so by its exit code
    with Store(tmp_path / "planted.duckdb") as again:
        (row,) = again.scores(run_id, "intruder_likelihood").to_dict("records")
    assert row["status"] == "no_logprobs" and "--tokenizer" in row["error"]


@pytest.mark.slow
def test_smollm2_finds_most_intruders_of_planted_features(tmp_path):
    """The embedded SmolLM2-135M as the likelihood judge, on planted features over real wiki text: where its
    chat answer carries nothing (docs/validity.md), its in-context predictions find most intruders."""
    from autointerp.llm import make_client
    from autointerp.models import load_tokenizer
    from autointerp.testing.planted import validity_features, wiki_documents

    wanted = {'the word "of"', "commas", 'the pronouns "it" and "its"'}
    features = [f for f in validity_features() if f.label in wanted]
    # 3 activating + 1 intruder (chance 0.25), 3 questions: ~65 prompts, ~30 s on 2 idle cores
    config = ScoreConfig(n_activating=10, n_top=2, intruder_n_activating=3, intruder_rounds=3)
    with Store(tmp_path / "planted.duckdb") as store:
        run_id = build_planted_store(store, wiki_documents(load_tokenizer("smollm2"), 300), features)
        client = make_client("local:smollm2")
        score(store, run_id, client, config=config, feature_ids=[0, 1, 2])
        frame = store.scores(run_id, "intruder_likelihood")
    assert len(frame) == 3 and set(frame["status"]) == {"ok"}, frame[["status", "error"]]
    details = [json.loads(d) for d in frame["details"]]
    print("\nSmolLM2 likelihood judge:", dict(zip(frame["feature_id"], frame["score"], strict=True)),
          "AUC", [d["auc"] for d in details])
    # measured: accuracy 0.67 / 0.67 / 1.0 in bfloat16, 0.33 / 0.67 / 1.0 in float32 (CPUs without native bf16);
    # AUC 0.85-1.0 in both
    assert frame["score"].mean() >= 0.5 and all(d["auc"] > 0.75 for d in details)
