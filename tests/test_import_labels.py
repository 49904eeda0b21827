"""`autointerp import-labels`: CSV, JSONL, parquet and Neuronpedia JSON become explanation sets that score
(resumably), report, compare and export treat like the explainer's own; a bad file is one error naming the
row, exit 2, and nothing written. Real DuckDB files, the real CLI and a real HTTP server."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from autointerp.cli import main
from autointerp.store import Store
from autointerp.testing.planted import RIGHT, build_planted_store
from autointerp.testing.testserver import FakeOpenAIServer
from tests.score_helpers import fake_documents, planted_test_features


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "ws.duckdb"
    with Store(path) as store:
        build_planted_store(
            store,
            fake_documents(),
            planted_test_features(),
            ctx_len=16,
            model="fake",
            labels={RIGHT: ["cat", "numbers 7 and 42"]},
        )
    return path


def explanations(db) -> pd.DataFrame:
    with Store(db, read_only=True) as store:
        return store.explanations(store.resolve_run(None).run_id)


def test_csv_labels_are_scored_reported_compared_and_exported_like_the_explainers(db, tmp_path, capsys):
    csv = tmp_path / "human.csv"
    csv.write_text('feature_id,label\n1,"numbers, e.g. 7 and 42"\n0,cats\n')
    assert main(["import-labels", "--db", str(db), "--file", str(csv), "--source", "human"]) == 0
    assert "2 label(s)" in capsys.readouterr().out
    frame = explanations(db)
    human = frame[frame["explainer_model"] == "human"].set_index("feature_id")["explanation"].to_dict()
    assert human == {0: "cats", 1: "numbers, e.g. 7 and 42"}
    assert main(["import-labels", "--db", str(db), "--file", str(csv), "--source", "human"]) == 0
    assert len(explanations(db)) == len(frame)  # the same file again: the same set, nothing new
    args = [
        "score",
        "--db",
        str(db),
        "--scorers",
        "detection",
        "--n-test",
        "4",
        "--no-progress",
        "--source",
        "human",
    ]
    with FakeOpenAIServer(latency_s=0.0, capacity=8) as server:
        assert main([*args, "--llm", server.base_url]) == 0
        with Store(db, read_only=True) as store:
            run_id = store.resolve_run(None).run_id
            scored = store.scores(run_id).merge(
                store.explanations(run_id)[["explanation_id", "explainer_model"]]
            )
        assert set(scored["explainer_model"]) == {
            "human",
            "null:shuffled",
        }  # the planted set was not asked for
        capsys.readouterr()
        assert main([*args, "--llm", server.base_url]) == 0
        assert "2 already done" in capsys.readouterr().out  # a rerun on imported labels skips what is done
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "r.html"), "--source", "human"]) == 0
    md = (tmp_path / "r.md").read_text()
    assert "labels: human / imported" in md and "numbers, e.g. 7 and 42" in (tmp_path / "r.html").read_text()
    assert main(["export", "--db", str(db), "--out", str(tmp_path / "c.parquet"), "--source", "human"]) == 0
    catalog = duckdb.sql(
        f"SELECT feature_id, label, explainer_model, detection_score FROM '{tmp_path}/c.parquet' "
        "ORDER BY feature_id"
    ).df()
    assert catalog["label"].tolist() == ["cats", "numbers, e.g. 7 and 42"]
    assert set(catalog["explainer_model"]) == {"human"} and catalog["detection_score"].notna().all()
    assert main(["compare", "--db", str(db), "--out", str(tmp_path / "cmp.html"), "--all-explainers"]) == 0
    assert "human" in (tmp_path / "cmp.md").read_text()


def test_jsonl_parquet_and_neuronpedia_layouts(db, tmp_path, capsys):
    jsonl = tmp_path / "tool.jsonl"
    jsonl.write_text(
        '{"feature_id": 0, "label": "cat", "source": "tool-a"}\n'
        '{"feature_id": 1, "label": "digits", "source": "tool-b"}\n'
    )
    pq = tmp_path / "labels.parquet"
    pd.DataFrame({"feature_id": [0, 1], "label": ["felines", "numerals"]}).to_parquet(pq)
    neuronpedia = tmp_path / "np.json"
    neuronpedia.write_text(
        json.dumps(
            [
                {
                    "modelId": "fake",
                    "layer": "0-planted",
                    "index": "1",
                    "description": " numbers ",
                    "explanationModelName": "gpt-4o-mini",
                    "typeName": "oai_token-act-pair",
                },
                {
                    "modelId": "fake",
                    "layer": "0-planted",
                    "index": "0",
                    "description": "cats",
                    "explanationModelName": "gpt-4o-mini",
                    "typeName": "oai_token-act-pair",
                },
            ]
        )
    )
    for path in (jsonl, pq, neuronpedia):
        assert main(["import-labels", "--db", str(db), "--file", str(path)]) == 0, capsys.readouterr().err
    frame = explanations(db)
    sets = {
        m: g.set_index("feature_id")["explanation"].to_dict() for m, g in frame.groupby("explainer_model")
    }
    assert sets["tool-a"] == {0: "cat"} and sets["tool-b"] == {1: "digits"}  # the source column names the set
    assert sets["labels"] == {0: "felines", 1: "numerals"}  # no source: the file name
    assert sets["gpt-4o-mini"] == {0: "cats", 1: "numbers"}  # Neuronpedia's explanation model names the set


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "feature_id,label\n0,cats\n7,dogs\n",
            "human.csv row 2 (line 3): feature 7 is not a feature of this SAE",
        ),
        ("feature_id,label\n0,cats\n1,  \n", "human.csv row 2 (line 3): feature 1 has an empty label"),
        ("feature_id,label\n0,cats\n1,numbers\n0,felines\n", "row 3 (line 4): feature 0 is labelled twice"),
        ("feature_id,label\n0,cats\nx1,numbers\n", "row 2 (line 3): feature id 'x1' is not an integer"),
        ("id,text\n0,cats\n", "has no feature id and label columns"),
        ("feature_id,label\n", "holds no labels"),
    ],
)
def test_bad_files_are_one_error_naming_the_row_and_nothing_is_written(
    db, tmp_path, capsys, content, message
):
    before = explanations(db)
    bad = tmp_path / "human.csv"
    bad.write_text(content)
    assert main(["import-labels", "--db", str(db), "--file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err and err.count("error:") == 1
    assert len(explanations(db)) == len(before)


def test_reserved_source_and_unknown_file_type(db, tmp_path, capsys):
    good = tmp_path / "l.csv"
    good.write_text("feature_id,label\n0,cats\n")
    assert main(["import-labels", "--db", str(db), "--file", str(good), "--source", "null:shuffled"]) == 2
    assert "reserved" in capsys.readouterr().err
    other = tmp_path / "l.txt"
    other.write_text("0 cats\n")
    assert main(["import-labels", "--db", str(db), "--file", str(other)]) == 2
    assert "unknown label file type" in capsys.readouterr().err
