"""Hard negatives on a real collected store (tiny random model, random SAE, wiki text, the real collect):
neighbours by decoder cosine, candidates from their top contexts, and never a context that fires the feature,
checked by recomputing the feature's dense activations on every stored hard negative."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autointerp.store import Store
from tests.collect_helpers import build_collected_store


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    return build_collected_store(tmp_path_factory.mktemp("hard"), tokens=6000, d_sae=64)


def test_no_hard_negative_ever_fires_its_feature(collected):
    from autointerp.cli import main
    from autointerp.collect.encode import token_activations
    from autointerp.models import activations_at_hook, load_model, parse_hook
    from autointerp.sae import load_sae

    features = list(range(0, 64, 4))
    spec = ",".join(str(f) for f in features)
    args = [
        "hard-negatives",
        "--db",
        str(collected.db_path),
        "--features",
        spec,
        "--neighbours",
        "6",
        "--per-feature",
        "5",
    ]
    assert main(args) == 0
    with Store(collected.db_path) as store:
        run = store.resolve_run(None)
        hard = store.examples(run.run_id, feature_ids=features, kinds=["hard_negative"])
        own = store.examples(run.run_id, feature_ids=features, kinds=["top", "random"])
    assert len(hard) > 0 and set(hard["split"]) == {"explain", "test"}
    assert (hard.groupby(["feature_id", "split"]).size() <= 5).all()
    assert (hard["max_activation"] == 0).all()
    lm = load_model(str(collected.model_dir))
    sae = load_sae(collected.sae_dir)
    point = parse_hook(run.hook, lm.n_layers)
    for rec in hard.itertuples():
        ids = torch.tensor([list(rec.token_ids)])
        acts = token_activations(
            sae, activations_at_hook(lm, point, ids), torch.ones_like(ids, dtype=torch.bool)
        )
        assert float(acts[0, 1:, rec.feature_id].max()) == 0.0, (rec.feature_id, rec.context_id)
    # none of them is one of the feature's own activating examples
    pairs = set(zip(own["feature_id"], own["context_id"], strict=True))
    assert not pairs & set(zip(hard["feature_id"], hard["context_id"], strict=True))
    # a rerun replaces them: the same rows, no duplicates
    assert main(args) == 0
    with Store(collected.db_path) as store:
        again = store.examples(run.run_id, feature_ids=features, kinds=["hard_negative"])
    assert len(again) == len(hard)
    assert sorted(zip(again["feature_id"], again["split"], again["context_id"], strict=True)) == sorted(
        zip(hard["feature_id"], hard["split"], hard["context_id"], strict=True)
    )


def test_scoring_against_hard_negatives_is_a_separate_key_and_shown_beside(collected, tmp_path):
    import shutil

    from autointerp.cli import main
    from autointerp.report.data import load_run
    from autointerp.testing.testserver import FakeOpenAIServer

    db = tmp_path / "copy.duckdb"
    shutil.copy(collected.db_path, db)
    with Store(db) as store:
        run = store.resolve_run(None)
        for fid in (1, 2, 3):
            store.put_explanation(
                {
                    "explanation_id": f"e{fid}",
                    "run_id": run.run_id,
                    "feature_id": fid,
                    "explainer_model": "hand",
                    "prompt_name": "hand",
                    "prompt_hash": "hand",
                    "config_hash": "hand",
                    "config": {},
                    "status": "ok",
                    "explanation": f"f{fid}",
                    "attempts": 1,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                }
            )
    assert main(["hard-negatives", "--db", str(db), "--per-feature", "5"]) == 0  # the labelled features
    with FakeOpenAIServer() as server:
        for negatives in ("random", "hard"):
            code = main(
                [
                    "score",
                    "--db",
                    str(db),
                    "--scorers",
                    "detection",
                    "--n-test",
                    "4",
                    "--no-progress",
                    "--null-sample",
                    "0",
                    "--negatives",
                    negatives,
                    "--llm",
                    server.base_url,
                ]
            )
            assert code == 0
        hard_prompts = [r.body for r in server.requests if r.index >= 0]
    with Store(db) as store:
        data = load_run(store, None)
        scores = store.scores(run.run_id, "detection")
        hard_ids = set(store.examples(run.run_id, kinds=["hard_negative"], split="test")["context_id"])
    assert {"detection", "detection:hard"} <= set(data.scorers)
    assert len(scores) == 6 and scores["config_hash"].nunique() == 2
    hard_rows = scores[scores["config"].map(lambda c: json.loads(c).get("negatives") == "hard")]
    shown = {
        item["context_id"]
        for d in hard_rows["details"]
        for item in json.loads(d)["items"]
        if item["label"] == 0
    }
    assert shown and shown <= hard_ids and hard_prompts
    assert np.isfinite(data.ok_scores("detection:hard")["score"]).all()
    # compare pairs the same labels' scores against random and hard negatives
    from autointerp.report.compare import CompareOptions, build_compare

    result = build_compare(
        [str(db)], None, tmp_path / "c.html", CompareOptions(n_boot=100, n_perm=100, match=False)
    )
    md = result.markdown_path.read_text()
    assert "Random vs hard negatives" in md and "| detection | tiny | 3 |" in md
    assert "detection on tiny: against hard negatives" in md
