"""Slow score tests: the real SmolLM2 through the embedded LocalClient, on planted features over real
wiki text tokenised by SmolLM2 (the planted-feature harness), plus rerun determinism."""

from __future__ import annotations

import asyncio
import json

import pytest

from autointerp.score import ScoreConfig, ascore_features, score_features
from autointerp.store import Store
from autointerp.testing.planted import (
    RIGHT,
    WRONG,
    build_planted_store,
    default_planted_features,
    format_results,
    planted_results,
    wiki_documents,
)
from tests.score_helpers import fake_documents, planted_test_features
from tests.test_score import CONFIG as FAST_CONFIG
from tests.test_score import by_label

pytestmark = pytest.mark.slow

CONFIG = ScoreConfig(n_activating=3, n_top=1, n_quantiles=2, classify_batch_size=6)


@pytest.fixture(scope="module")
def client():
    from autointerp.llm import make_client

    client = make_client("local:smollm2")
    asyncio.run(client.check())
    return client


@pytest.fixture(scope="module")
def planted_inputs(client):
    tokenizer = client.tokenizer()
    features = default_planted_features(tokenizer)[:2]  # digits, " the"
    return wiki_documents(tokenizer, 24), features


def score(db, client, planted_inputs, scorers):
    docs, features = planted_inputs
    store = Store(db)
    run_id = build_planted_store(store, docs, features, model="smollm2", n_top=4, n_random=6, n_nonactivating=6)
    asyncio.run(ascore_features(store, run_id, client, scorers, CONFIG, progress=False))
    return store, run_id


def test_embedding_scorer_separates_word_labels(tmp_path):
    """Real MiniLM (offline pip package): topical labels vs the wrong ones on word-level planted features."""
    with Store(tmp_path / "e.duckdb") as store:
        run_id = build_planted_store(store, fake_documents(), planted_test_features(), ctx_len=16, model="fake",
                                     labels={RIGHT: ["cat", "numbers 7 and 42"], WRONG: ["numbers 7 and 42", "cat"]})
        summary = score_features(store, run_id, None, ["embedding"], FAST_CONFIG, progress=False)
        assert summary.scorers["embedding"].status_counts == {"ok": 4}
        rows = by_label(store, run_id, "embedding")
        for fid in (0, 1):
            assert rows[(fid, RIGHT)]["score"] > rows[(fid, WRONG)]["score"]
            assert rows[(fid, RIGHT)]["chance"] == 0.5


def test_planted_harness_with_smollm2(tmp_path, client, planted_inputs):
    store, run_id = score(tmp_path / "p.duckdb", client, planted_inputs, ["simulation", "detection", "embedding"])
    try:
        frame = store.scores(run_id)
        assert len(frame) == 2 * 2 * 3  # features x labels x scorers
        # Every item ends with a status; a value only with 'ok', inside its range.
        assert frame["status"].notna().all()
        assert frame[frame["status"] != "ok"]["score"].isna().all()
        ok = frame[frame["status"] == "ok"]
        assert ok["score"].between(-1, 1).all()
        sim = frame[frame["scorer"] == "simulation"]
        for details in sim["details"]:
            d = json.loads(details)
            assert d["method"] == "logprobs" and 0 <= d["slot_coverage"] <= 1
            assert d["n_tokens"] == sum(len(c["true"]) for c in d["contexts"])
        assert (sim["prompt_tokens"] > 0).all()
        # Detection with the embedded backend reads P(1) per context from its logprobs: AUC beside accuracy.
        from autointerp.score.metrics import auc

        for details in frame[(frame["scorer"] == "detection") & (frame["status"] == "ok")]["details"]:
            d = json.loads(details)
            assert d["auc_method"] == "logprobs", d.get("auc_note")
            p_yes = [item["p_yes"] for item in d["items"]]
            assert all(0 <= p <= 1 for p in p_yes)
            assert d["auc"] == pytest.approx(auc(p_yes, [item["label"] for item in d["items"]]), abs=1e-3)
        # The embedding scorer needs no LLM; it separates topical features (digits), not function words
        # (" the": a sentence embedding of "the word the" says little), so only the digits latent is asserted.
        table = planted_results(store, run_id)
        print("\n" + format_results(table))
        digits = table[(table["scorer"] == "embedding") & (table["feature_id"] == 0)].iloc[0]
        assert digits["right"] > digits["wrong"] + 0.2, digits
        assert {RIGHT, WRONG} <= set(store.explanations(run_id)["explainer_model"])
    finally:
        store.close()


def test_smollm2_simulation_rerun_is_identical(tmp_path, client, planted_inputs):
    runs = []
    for name in ("a", "b"):
        store, run_id = score(tmp_path / f"{name}.duckdb", client, planted_inputs, ["simulation"])
        frame = store.scores(run_id).sort_values("score_id")
        runs.append(list(zip(frame["score_id"], frame["status"], frame["score"].fillna(-9), frame["details"],
                             strict=True)))
        store.close()
    assert runs[0] == runs[1]
