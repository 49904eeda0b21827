"""The planted hard-negative harness: siblings' top contexts on which the feature never fires, rerun-safe."""

from __future__ import annotations

import pytest

from autointerp.store import Store
from autointerp.testing.hard_negative_validity import (
    HARD_NEGATIVE_KIND,
    format_hardness,
    hardness_table,
    sibling_order,
    write_hard_negatives,
)
from autointerp.testing.planted import RIGHT, PlantedFeature, build_planted_store
from tests.score_helpers import RULES, fake_documents, planted_test_features


@pytest.fixture()
def planted(tmp_path):
    store = Store(tmp_path / "planted.duckdb")
    features = planted_test_features()
    run_id = build_planted_store(
        store, fake_documents(), features, ctx_len=16, model="fake", labels={RIGHT: ["cats", "numbers"]}
    )
    yield store, run_id, features
    store.close()


def test_siblings_are_the_same_kind_nearest_first():
    kinds = ["token", "span", "token", "token"]
    features = [PlantedFeature(f"f{i}", lambda i, t: False, kind) for i, kind in enumerate(kinds)]
    assert sibling_order(features, 2) == [3, 0]
    assert sibling_order(features, 1) == []


def test_hard_negatives_are_siblings_top_contexts_where_the_feature_never_fires(planted):
    store, run_id, features = planted
    written = write_hard_negatives(store, run_id, features, per_feature=4)
    hard = store.examples(run_id, kinds=[HARD_NEGATIVE_KIND])
    tops = store.examples(run_id, kinds=["top"])
    assert 0 < written[0] <= 4 and 0 <= written[1] <= 4  # numbers: every top context of cats has a digit
    rule = {0: RULES["cats"], 1: RULES["numbers"]}
    for rec in hard.itertuples():
        assert not any(rule[rec.feature_id](t) for t in rec.tokens)  # the feature is 0 everywhere on it
        sibling = 1 - rec.feature_id
        assert rec.context_id in set(
            tops[(tops["feature_id"] == sibling) & (tops["split"] == rec.split)]["context_id"]
        )
    assert not hard.duplicated(["feature_id", "split", "context_id"]).any()
    write_hard_negatives(store, run_id, features, per_feature=4)  # a rerun replaces, never duplicates
    again = store.examples(run_id, kinds=[HARD_NEGATIVE_KIND])
    assert again[["feature_id", "split", "context_id"]].equals(hard[["feature_id", "split", "context_id"]])


def test_table_is_empty_without_paired_scores(planted):
    store, run_id, _ = planted
    assert hardness_table(store, run_id, ["embedding"]) == []
    assert format_hardness([]).startswith("scorer")
