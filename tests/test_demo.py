"""`autointerp demo` end to end on the real SmolLM2, at a reduced size (the README's first command, smaller).

Trains a small TopK SAE, collects, evaluates, explains and scores a few features with the embedded
SmolLM2, and writes the report and the parquet catalog; then checks what a user would look at.
"""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pandas as pd
import pytest

from autointerp.store import Store
from autointerp.store.sets import NULL_MODEL


@pytest.mark.slow
def test_demo_runs_every_stage_on_the_real_model(tmp_path):
    out = tmp_path / "demo"
    command = [
        sys.executable, "-m", "autointerp", "demo", "--out-dir", str(out), "--sae-dir", str(tmp_path / "sae"),
        "--train-tokens", "8000", "--latents", "512", "--k", "16", "--tokens", "6000", "--features", "3",
        "--no-progress",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "report:" in done.stdout and "catalog:" in done.stdout

    # The SAE was written in SAELens format and is reused by a second run (cached).
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["d_sae"] == 512

    with Store(out / "demo.duckdb", read_only=True) as store:
        run = store.resolve_run(None)
        assert run.d_sae == 512 and run.status == "complete"
        everything = store.explanations(run.run_id)
        null = everything[everything["explainer_model"] == NULL_MODEL]
        labels = everything[everything["explainer_model"] != NULL_MODEL]
        assert len(labels) == 3
        assert labels["status"].notna().all()
        assert labels.loc[labels["status"] != "ok", "explanation"].isna().all(), "a failure became a label"
        assert (labels["status"] == "ok").sum() >= 1, labels[["status", "error"]].to_dict("records")
        all_scores = store.scores(run.run_id)
        scores = all_scores[~all_scores["explanation_id"].isin(null["explanation_id"])]
        ok_labels = set(labels.loc[labels["status"] == "ok", "explanation_id"])
        assert set(scores["explanation_id"]) == ok_labels
        # the null baseline: each labelled feature is also scored with another feature's label
        if len(ok_labels) >= 2:
            assert len(null) == len(ok_labels) and set(null["feature_id"]) == set(
                labels.loc[labels["status"] == "ok", "feature_id"])
            assert set(all_scores[all_scores["explanation_id"].isin(null["explanation_id"])]["scorer"]) == set(
                scores["scorer"])
        assert set(scores["scorer"]) == {"simulation", "detection", "fuzzing", "embedding"}
        assert scores.loc[scores["status"] != "ok", "score"].isna().all(), "a failure became a score"
        simulation = scores[scores["scorer"] == "simulation"]
        methods = {json.loads(d)["method"] for d in simulation["details"] if d}
        assert methods == {"logprobs"}, "the embedded simulator must read prompt logprobs, not fall back to JSON"
        metrics = store.sae_metrics(run.run_id)
        assert 0 < metrics["fve"] <= 1 and metrics["l0"] == pytest.approx(16, abs=0.5)

    html = (out / "report.html").read_text(encoding="utf-8")
    first_label = labels.loc[labels["status"] == "ok", "explanation"].iloc[0]
    import html as html_lib

    assert html_lib.escape(first_label, quote=False)[:40] in html or json.dumps(first_label)[1:40] in html
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "Null baseline: real labels vs shuffled labels" in markdown
    assert "beats shuffled labels" in markdown or "not distinguishable from shuffled labels on this run" in markdown \
        or "no shuffled-label baseline" in markdown

    catalog = pd.read_parquet(out / "catalog.parquet")
    assert len(catalog) == 512 and catalog["feature_id"].is_unique
    assert {"simulation_null", "detection_null", "fuzzing_null", "embedding_null"} <= set(catalog.columns)
    assert catalog["label"].notna().sum() == (labels["status"] == "ok").sum()
    count = duckdb.sql(f"SELECT count(*) FROM '{out / 'catalog.parquet'}'").fetchall()[0][0]
    assert count == 512
