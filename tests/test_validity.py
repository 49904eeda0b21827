"""Validity harness v2: >= 20 planted features of four kinds over real wiki text (SmolLM2's tokenizer), right
vs shuffled labels; the embedding scorer (real MiniLM) must separate them with a CI above 0."""

from __future__ import annotations

import pytest

from autointerp.testing.planted import _digit_runs, _inside_parentheses, validity_features


def test_span_features_fire_on_whole_spans():
    tokens = ["In", " ", "1", "9", "9", "0", " (", "about", " 12", ")", " and", " 2", "0", "0", "5", "7"]
    years = _digit_runs(tokens, 4)
    assert [t for t, on in zip(tokens, years, strict=True) if on] == [
        "1",
        "9",
        "9",
        "0",
    ]  # 20057 is not a year
    inside = _inside_parentheses(tokens)
    assert [t for t, on in zip(tokens, inside, strict=True) if on] == ["about", " 12"]


def test_validity_features_cover_several_kinds():
    features = validity_features()
    assert len(features) >= 20 and len({f.label for f in features}) == len(features)
    assert {f.kind for f in features} == {"token", "token class", "word class", "span"}


@pytest.mark.slow
def test_embedding_scorer_separates_right_from_shuffled_labels(tmp_path, capsys):
    from autointerp.testing.planted import main

    assert main(["--scorers", "embedding", "--db", str(tmp_path / "v.duckdb"), "--n-docs", "800"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("embedding "))
    assert " yes " in row, out  # the CI of right - shuffled lies above 0
    from autointerp.store import Store
    from autointerp.testing.planted import validity_table

    with Store(tmp_path / "v.duckdb", read_only=True) as store:
        (result,) = validity_table(store, store.resolve_run("planted").run_id, ["embedding"])
    assert result.n_pairs >= 20 and result.ci_low > 0 and result.auc > 0.6
