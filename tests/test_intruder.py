"""Intruder scorer (explanation-free): over a real HTTP server speaking the OpenAI protocol, an oracle that
reads the marks finds every intruder, a server answering a fixed position scores near chance, failures stay
failures, and scores are stored once per feature (labelled or not), never for the shuffled-label set."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pandas as pd
import pytest

from autointerp.llm.base import ChatResult, Status, TokenLogprob
from autointerp.score import ScoreConfig, ascore_features
from autointerp.score.intruder import (
    IntruderScorer,
    credit,
    debias,
    intruder_schema,
    parse_intruder,
    position_probabilities,
    rotate,
)
from autointerp.store import Store
from autointerp.store.sets import LABEL_FREE_PREFIX, NULL_MODEL
from autointerp.testing.planted import RIGHT, build_planted_store
from autointerp.testing.testserver import FakeOpenAIServer
from tests.score_helpers import RULES, fake_documents, planted_test_features

CONFIG = ScoreConfig(n_activating=6, n_top=2, n_quantiles=2, intruder_n_activating=3, intruder_rounds=4)


def oracle(body: dict) -> str:
    """Names the one text whose marked tokens break the rule (of RULES) that the other texts' marks follow."""
    prompt = body["messages"][-1]["content"]
    texts = re.findall(r"^Text \d+: (.*)$", prompt, flags=re.M)
    marks = [[w for span in re.findall(r"<<(.*?)>>", t) for w in span.split()] for t in texts]
    for rule in RULES.values():
        follows = [bool(ms) and all(rule(m) for m in ms) for ms in marks]
        if follows.count(False) == 1:
            return json.dumps({"intruder": follows.index(False) + 1})
    return json.dumps({"intruder": 1})


@pytest.fixture()
def planted(tmp_path):
    store = Store(tmp_path / "planted.duckdb")
    run_id = build_planted_store(
        store, fake_documents(), planted_test_features(), ctx_len=16, model="fake", labels={RIGHT: ["cats"]}
    )  # feature 1 has no label
    yield store, run_id
    store.close()


def run(store, run_id, server, config=CONFIG, feature_ids=None, scorers=("intruder",)):
    from autointerp.llm import make_client

    client = make_client(server.base_url)

    async def go():
        try:
            return await ascore_features(
                store, run_id, client, list(scorers), config, feature_ids, progress=False
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_oracle_finds_every_intruder_and_scores_are_per_feature(planted):
    store, run_id = planted
    with FakeOpenAIServer(chat_reply=oracle) as server:
        summary = run(store, run_id, server, feature_ids=[0, 1])
        # debiased: each round asked once per rotation (3 activating + 1 intruder: 4 rotations)
        assert sum(r.index >= 0 for r in server.requests) == 2 * CONFIG.intruder_rounds * 4
    frame = store.scores(run_id, "intruder")
    assert sorted(frame["feature_id"]) == [0, 1]  # the unlabelled feature too
    assert frame["explanation_id"].str.startswith(LABEL_FREE_PREFIX).all()
    assert set(frame["status"]) == {"ok"} and frame["score"].tolist() == [1.0, 1.0]
    assert frame["chance"].tolist() == [0.25, 0.25]
    details = json.loads(frame["details"].iloc[0])
    assert details["n_rounds"] == 4 and details["auc_method"] == "logprobs" and details["auc"] == 1.0
    assert details["debias"] and details["raw_accuracy"] == 1.0
    assert all(r["method"] == "logprobs" and len(r["answers"]) == 4 for r in details["rounds"])
    assert summary.scorers["intruder"].mean_score == 1.0
    # a rerun skips; the shuffled-label selection never scores a label-free scorer
    with FakeOpenAIServer(chat_reply=oracle) as server:
        again = run(store, run_id, server, feature_ids=[0, 1])
        run(store, run_id, server, config=ScoreConfig(**{**CONFIG.__dict__, "explainer_model": NULL_MODEL}))
        assert sum(r.index >= 0 for r in server.requests) == 0
    assert again.scorers["intruder"].n_skipped == 2


def test_without_feature_ids_the_labelled_features_are_scored(planted):
    store, run_id = planted
    with FakeOpenAIServer(chat_reply=oracle) as server:
        run(store, run_id, server, scorers=("intruder", "detection"))
    frame = store.scores(run_id)
    assert sorted(frame[frame["scorer"] == "intruder"]["feature_id"]) == [0]
    assert len(frame[frame["scorer"] == "detection"]) == 1


def test_fixed_answer_scores_near_chance_and_highlight_changes_the_key(planted):
    store, run_id = planted
    config = ScoreConfig(
        **{**CONFIG.__dict__, "intruder_rounds": 8, "intruder_highlight": False, "intruder_debias": False}
    )
    with FakeOpenAIServer(chat_reply=lambda body: json.dumps({"intruder": 1})) as server:
        run(store, run_id, server, config=config, feature_ids=[0, 1])
        prompt = next(r for r in server.requests if r.index >= 0).body["messages"][-1]["content"]
    assert "<<" not in prompt
    frame = store.scores(run_id, "intruder")
    assert frame["score"].between(0.0, 0.6).all() and frame["score"].mean() < 0.5
    with FakeOpenAIServer(chat_reply=oracle) as server:  # highlight on: another key, scored again
        run(store, run_id, server, feature_ids=[0])
    assert len(store.scores(run_id, "intruder")) == 3


@pytest.mark.parametrize("fault", ["schema_break", "malformed_json"])
def test_unusable_reply_is_a_failure_never_a_score(planted, fault):
    store, run_id = planted
    with FakeOpenAIServer(chat_reply=oracle, faults={0: fault}) as server:
        run(store, run_id, server, feature_ids=[0])
    (row,) = store.scores(run_id, "intruder").to_dict("records")
    assert row["status"] not in ("ok", "undefined") and pd.isna(row["score"]) and "unusable" in row["error"]


def test_parsing_and_position_probabilities():
    ok = ChatResult(
        Status.OK,
        text='{"intruder":3}',
        parsed={"intruder": 3},
        token_logprobs=[
            TokenLogprob('{"intruder":', 0.0, {}),
            TokenLogprob("3", -0.2, {"3": -0.2, "1": -2.0, "9": -1.0}),
            TokenLogprob("}", 0.0, {}),
        ],
    )
    assert parse_intruder(ok, 4) == (3, None)
    p = position_probabilities(ok, 4)
    assert p is not None and p[2] > p[0] > 0 and p[1] == 0 == p[3] and sum(p) == pytest.approx(1.0)
    assert parse_intruder(ChatResult(Status.OK, parsed={"intruder": 5}), 4)[0] is None
    assert parse_intruder(ChatResult(Status.OK, parsed={"intruder": True}), 4)[0] is None
    assert position_probabilities(ChatResult(Status.OK, text='{"intruder":3}'), 4) is None
    assert intruder_schema(3)["properties"]["intruder"]["enum"] == [1, 2, 3]


def test_report_and_compare_read_the_intruder_against_chance(planted, tmp_path):
    from autointerp.report.compare import CompareOptions, build_compare
    from autointerp.report.data import load_run
    from autointerp.report.null import ABOVE_CHANCE, baseline_for

    store, run_id = planted
    with FakeOpenAIServer(chat_reply=oracle) as server:
        run(store, run_id, server, feature_ids=[0, 1], scorers=("intruder", "detection"))
    data = load_run(store, None)
    assert data.label_free_scorers == ["intruder"] and set(data.scorers) == {"intruder", "detection"}
    assert data.chance("intruder") == 0.25
    base = baseline_for(data.scores, data.null_scores, "intruder", data.label_free_scorers)
    assert base.beats_null and base.passed == ABOVE_CHANCE and base.null_mean == 0.25 and base.diff == 0.75
    store.close()
    result = build_compare(
        [str(tmp_path / "planted.duckdb")],
        None,
        tmp_path / "c.html",
        CompareOptions(n_boot=200, n_perm=200, match=False),
    )
    row = result.summary[result.summary["scorer"] == "intruder"].iloc[0]
    assert row["n"] == 2 and row["chance"] == 0.25 and row["beats_null"] and row["label_free"]
    md = result.markdown_path.read_text()
    assert "| intruder | planted | 2 | 0.25 | 1 [1, 1]" in md and ABOVE_CHANCE in md


def biased_oracle(body: dict) -> str:
    """A judge that prefers position 1: it names the real intruder only when that sits at position 3, and
    answers "1" otherwise, so without debiasing it is right only when the intruder is at 1 or 3."""
    truth = json.loads(oracle(body))["intruder"]
    return json.dumps({"intruder": truth if truth == 3 else 1})


def test_debias_recovers_the_intruder_from_a_position_biased_distribution():
    rng = np.random.default_rng(0)
    prior = np.array([0.6, 0.2, 0.1, 0.06, 0.04])  # the judge's preference per position
    for _ in range(50):
        intruder = int(rng.integers(0, 5))
        position_probs = []
        for shift in range(5):
            signal = np.ones(5)
            signal[(intruder + shift) % 5] = 2.0  # the intruder's position, twice as likely as the prior says
            p = prior * signal
            position_probs.append(list(p / p.sum()))
            assert (
                int(np.argmax(p)) == 0 or (intruder + shift) % 5 == 1
            )  # raw answer: position 1 nearly always
        p_text = debias(position_probs)
        assert int(np.argmax(p_text)) == intruder and credit(p_text, intruder) == 1.0
    # no signal at all: the prior cancels exactly, every text ties, credit is chance
    flat = debias([list(prior)] * 5)
    assert np.allclose(flat, flat[0]) and credit(flat, 2) == pytest.approx(0.2)
    assert rotate(["a", "b", "c"], 1) == ["c", "a", "b"]  # text j shown at position (j + 1) mod 3
    with pytest.raises(ValueError, match="rotations"):
        debias([[0.5, 0.5]])


@pytest.mark.parametrize("logprobs", [True, False])
def test_debias_beats_a_position_biased_judge_over_http(planted, logprobs):
    store, run_id = planted
    debiased = ScoreConfig(**{**CONFIG.__dict__, "intruder_rounds": 8})
    single = ScoreConfig(**{**debiased.__dict__, "intruder_debias": False})
    with FakeOpenAIServer(chat_reply=biased_oracle, chat_logprobs=logprobs) as server:
        run(store, run_id, server, config=debiased, feature_ids=[0, 1])
        run(store, run_id, server, config=single, feature_ids=[0, 1])
    frame = store.scores(run_id, "intruder")
    assert len(frame) == 4  # debias on and off are two score keys
    on = frame[frame["details"].str.contains('"debias": true')]
    off = frame[frame["details"].str.contains('"debias": false')]
    assert on["score"].tolist() == [1.0, 1.0] and (off["score"] < 0.9).all()
    details = json.loads(on["details"].iloc[0])
    assert details["raw_accuracy"] == pytest.approx(
        0.5
    )  # right only in the rotations with the intruder at 1 or 3
    assert {r["method"] for r in details["rounds"]} == {"logprobs" if logprobs else "vote"}
    assert details["auc_method"] == ("logprobs" if logprobs else "votes")
    assert all(r["answers"].count(1) >= 2 for r in details["rounds"])  # raw answers kept


def test_debias_off_keeps_the_key_scores_had_before_the_setting():
    from autointerp.llm import make_client

    client = make_client("http://127.0.0.1:9/v1")
    off = IntruderScorer(client, ScoreConfig(intruder_debias=False)).config_for_hash()
    on = IntruderScorer(client, ScoreConfig()).config_for_hash()
    assert "intruder_debias" not in off and on == {**off, "intruder_debias": True}
    asyncio.run(client.aclose())


def test_the_validity_harness_needs_planted_above_chance_to_say_separates() -> None:
    """A gap made only by random latents scoring below chance (a position-biased judge) is not separation."""
    from autointerp.report.stats import Difference
    from autointerp.testing.intruder_validity import GroupResult, verdict

    def planted(low: float, high: float) -> GroupResult:
        return GroupResult("planted", 20, (low + high) / 2, low, high, 0.25, None, None, "ok 20")

    gap = Difference(0.114, 0.03, 0.20, 0.01, False, 20, 20)
    assert verdict(planted(0.18, 0.30), gap).startswith("does not separate: planted features are not above")
    assert verdict(planted(0.40, 0.60), gap) == "separates"
    no_gap = Difference(0.05, -0.02, 0.12, 0.2, False, 20, 20)
    assert verdict(planted(0.40, 0.60), no_gap).startswith("does not separate (CI of the difference")
    empty = Difference(float("nan"), float("nan"), float("nan"), float("nan"), False, 0, 20)
    assert verdict(planted(0.40, 0.60), empty).startswith("does not separate")


def test_the_catalog_carries_label_free_scores_and_keeps_hard_negative_detection_apart(planted, tmp_path):
    """Export joined scores through the label set, so intruder scores (stored per feature) never reached the
    catalog, and detection against hard negatives shared one column with detection against random ones."""
    from autointerp.report.export import export_catalog

    store, run_id = planted
    with FakeOpenAIServer(chat_reply=oracle) as server:
        run(store, run_id, server, feature_ids=[0, 1], scorers=("intruder", "detection"))
    # A second detection row for feature 0, scored later "against hard negatives" (as score --negatives hard
    # stores it): copied from the random-negative row with a distinct score.
    row = store.query_df("SELECT * FROM scores WHERE scorer = 'detection'").iloc[0]
    store.con.execute(
        "INSERT INTO scores SELECT * REPLACE (score_id || '-hard' AS score_id, 0.123 AS score, 'ok' AS status, "
        "json_merge_patch(config, '{\"negatives\": \"hard\"}')::JSON AS config, created_at + INTERVAL 1 SECOND "
        "AS created_at) FROM scores WHERE score_id = ?", [row["score_id"]])
    result = export_catalog(store, None, tmp_path / "catalog.parquet", "parquet")
    assert "intruder" in result.scorers and "detection:hard" in result.scorers
    catalog = pd.read_parquet(tmp_path / "catalog.parquet").set_index("feature_id")
    intruder = store.scores(run_id, "intruder").set_index("feature_id")
    for feature in (0, 1):  # feature 1 has no label, and still has its label-free score
        assert catalog.loc[feature, "intruder_score"] == intruder.loc[feature, "score"] == 1.0
        assert catalog.loc[feature, "intruder_status"] == "ok" and catalog.loc[feature, "intruder_chance"] == 0.25
    assert catalog.loc[0, "detection_hard_score"] == 0.123 and catalog.loc[0, "detection_hard_status"] == "ok"
    # the random-negative row keeps its own column (here a failure: the oracle server answers intruder JSON)
    assert catalog.loc[0, "detection_status"] == row["status"] != "ok"
    assert pd.isna(catalog.loc[0, "detection_score"])
    lines = (tmp_path / "catalog.jsonl")
    export_catalog(store, None, lines, "neuronpedia")
    first = json.loads(lines.read_text().splitlines()[0])
    assert first["labelFreeScores"] == [{"scorer": "intruder", "value": 1.0, "chance": 0.25, "status": "ok"}]
