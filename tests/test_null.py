"""Shuffled-label null baselines: the null set is a seeded derangement stored as an explanation set, scored
through the normal score path (reruns skip it), shown by report/Markdown with its verdict, exported as
`<scorer>_null`, and off with `--null-sample 0`. Real DuckDB files, the real CLI and a real HTTP server."""

from __future__ import annotations

import asyncio
import dataclasses

import duckdb
import pandas as pd
import pytest

from autointerp.report.null import NOT_DISTINGUISHABLE, null_baseline
from autointerp.score import ScoreConfig, ascore_features
from autointerp.score.null import ensure_null_sets, null_rows
from autointerp.store import Store
from autointerp.store.sets import NULL_MODEL, null_set_key
from autointerp.testing.planted import RIGHT, build_planted_store
from tests.score_helpers import FakeClient, fake_documents, planted_test_features

CONFIG = ScoreConfig(n_activating=6, n_top=2, n_quantiles=2, classify_batch_size=4)
BASE = (RIGHT, "planted", "planted")


def base_frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "feature_id": range(n),
            "explanation_id": [f"e{i}" for i in range(n)],
            "explanation": [f"label {i}" for i in range(n)],
            "status": "ok",
        }
    )


def test_null_labels_are_a_seeded_derangement_of_a_sample() -> None:
    rows = null_rows("run", base_frame(300), BASE, n_sample=200, seed=0)
    assert len(rows) == 200 and len({r["feature_id"] for r in rows}) == 200
    donors = [r["config"]["donor_feature_id"] for r in rows]
    assert all(r["feature_id"] != d for r, d in zip(rows, donors, strict=True))  # never its own label
    assert sorted(donors) == sorted(r["feature_id"] for r in rows)  # each sampled label used exactly once
    assert all(r["explanation"] == f"label {r['config']['donor_feature_id']}" for r in rows)
    assert {(r["explainer_model"], r["prompt_hash"], r["config_hash"]) for r in rows} == {null_set_key(BASE)}
    assert rows == null_rows("run", base_frame(300), BASE, n_sample=200, seed=0)  # seeded
    other = null_rows("run", base_frame(300), BASE, n_sample=200, seed=1)
    assert {r["feature_id"] for r in other} != {r["feature_id"] for r in rows}
    assert null_rows("run", base_frame(1), BASE, 200, 0) == []  # one label: nothing to shuffle
    assert len(null_rows("run", base_frame(5), BASE, 200, 0)) == 5  # all, when fewer than the cap


@pytest.fixture()
def planted(tmp_path):
    store = Store(tmp_path / "planted.duckdb")
    run_id = build_planted_store(
        store,
        fake_documents(),
        planted_test_features(),
        ctx_len=16,
        model="fake",
        labels={RIGHT: ["cats", "numbers"]},
    )
    yield store, run_id
    store.close()


def score_with_null(store: Store, run_id: str, client, scorers: list[str]) -> None:
    async def go() -> None:
        await ascore_features(store, run_id, client, scorers, CONFIG, progress=False)
        await ascore_features(
            store,
            run_id,
            client,
            scorers,
            dataclasses.replace(CONFIG, explainer_model=NULL_MODEL),
            progress=False,
        )

    asyncio.run(go())


def test_null_set_scored_by_the_normal_path_and_separates(planted) -> None:
    store, run_id = planted
    made = ensure_null_sets(store, run_id)
    assert [(m.n_features, m.n_replaced) for m in made] == [(2, 0)]
    null = store.set_explanations(run_id, *null_set_key(BASE))
    assert dict(zip(null["feature_id"], null["explanation"], strict=True)) == {0: "numbers", 1: "cats"}
    score_with_null(store, run_id, FakeClient(), ["detection"])
    real, shuffled = store.set_scores(run_id, *BASE), store.set_scores(run_id, *null_set_key(BASE))
    assert len(real) == 2 and len(shuffled) == 2
    result = null_baseline(real, shuffled, "detection")
    assert result.n_pairs == 2 and result.beats_null and result.verdict == ""
    assert result.real_mean > result.null_mean and result.share_real_wins == 1.0
    # the same label for every feature: real and shuffled are the same test, and the verdict says so
    same = shuffled.assign(score=real.set_index("feature_id").loc[shuffled["feature_id"], "score"].to_numpy())
    flat = null_baseline(real, same, "detection")
    assert not flat.beats_null and flat.verdict == NOT_DISTINGUISHABLE and flat.diff == 0
    # a second draw with nothing changed keeps every row and score
    n_scores = len(store.scores(run_id))
    assert [(m.n_features, m.n_replaced) for m in ensure_null_sets(store, run_id)] == [(2, 0)]
    assert len(store.scores(run_id)) == n_scores


def test_null_set_redrawn_replaces_stale_labels_and_their_scores(planted) -> None:
    store, run_id = planted
    ensure_null_sets(store, run_id)
    score_with_null(store, run_id, FakeClient(), ["detection"])
    store.put_explanation(
        {
            "explanation_id": "extra",
            "run_id": run_id,
            "feature_id": 2,
            "explainer_model": RIGHT,
            "prompt_name": "planted",
            "prompt_hash": "planted",
            "config_hash": "planted",
            "config": {},
            "status": "ok",
            "explanation": "dogs",
            "attempts": 1,
        }
    )
    made = ensure_null_sets(store, run_id)
    assert made[0].n_features == 3 and made[0].n_replaced >= 1
    null = store.set_explanations(run_id, *null_set_key(BASE))
    assert len(null) == 3 and null["feature_id"].is_unique  # one label per feature, never two
    orphans = store.query_df(
        "SELECT count(*) AS n FROM scores s LEFT JOIN explanations e USING (explanation_id) "
        "WHERE e.explanation_id IS NULL"
    )
    assert int(orphans["n"][0]) == 0


def test_cli_score_report_export_show_the_null_baseline(tmp_path, capsys) -> None:
    from autointerp.cli import main
    from autointerp.testing.testserver import FakeOpenAIServer

    db = tmp_path / "cli.duckdb"
    with Store(db) as store:
        build_planted_store(
            store,
            fake_documents(),
            planted_test_features(),
            ctx_len=16,
            model="fake",
            labels={RIGHT: ["cat", "numbers 7 and 42"]},
        )
    args = ["score", "--db", str(db), "--scorers", "detection", "--n-test", "4", "--no-progress"]
    with FakeOpenAIServer(latency_s=0.0, capacity=8) as server:
        assert main([*args, "--llm", server.base_url]) == 0
        out = capsys.readouterr().out
        assert "null baseline (2 feature(s) with a shuffled label" in out
        with Store(db, read_only=True) as store:
            n_scores = len(store.scores(store.resolve_run(None).run_id))
        assert n_scores == 4  # 2 real + 2 shuffled
        assert main([*args, "--llm", server.base_url]) == 0  # rerun: everything skipped
        assert "2 already done" in capsys.readouterr().out
        with Store(db, read_only=True) as store:
            assert len(store.scores(store.resolve_run(None).run_id)) == n_scores
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "r.html")]) == 0
    md = (tmp_path / "r.md").read_text()
    assert "Null baseline: real labels vs shuffled labels" in md
    null_part = md.split("Null baseline: real labels vs shuffled labels", 1)[1]
    row = next(line for line in null_part.splitlines() if line.startswith("| detection | 2 |"))
    assert "beats shuffled labels" in row or NOT_DISTINGUISHABLE in row
    assert "Null baseline" in (tmp_path / "r.html").read_text()
    assert main(["compare", "--db", str(db), "--out", str(tmp_path / "cmp.html")]) == 0
    compare_md = (
        (tmp_path / "cmp.md").read_text().split("Null baseline: real labels vs shuffled labels", 1)[1]
    )
    assert any(line.startswith("| detection | planted | 2 |") for line in compare_md.splitlines())
    assert main(["export", "--db", str(db), "--out", str(tmp_path / "c.parquet")]) == 0
    catalog = duckdb.sql(
        f"SELECT feature_id, detection_score, detection_null FROM '{tmp_path / 'c.parquet'}'"
    ).df()
    assert catalog["detection_null"].notna().sum() == 2 and catalog["detection_score"].notna().sum() == 2


def test_null_sample_zero_turns_it_off(tmp_path, capsys) -> None:
    from autointerp.cli import main
    from autointerp.testing.testserver import FakeOpenAIServer

    db = tmp_path / "off.duckdb"
    with Store(db) as store:
        build_planted_store(
            store,
            fake_documents(),
            planted_test_features(),
            ctx_len=16,
            model="fake",
            labels={RIGHT: ["cat", "numbers 7 and 42"]},
        )
    with FakeOpenAIServer(latency_s=0.0, capacity=8) as server:
        assert (
            main(
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
                    "--llm",
                    server.base_url,
                ]
            )
            == 0
        )
    assert "null baseline" not in capsys.readouterr().out
    with Store(db, read_only=True) as store:
        run_id = store.resolve_run(None).run_id
        assert (store.explanations(run_id)["explainer_model"] != NULL_MODEL).all()
        assert len(store.scores(run_id)) == 2
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "r.html")]) == 0
    assert "no shuffled-label baseline on this run" in (tmp_path / "r.md").read_text()
    assert main(["score", "--db", str(db), "--null-sample", "-1", "--scorers", "embedding"]) == 2
