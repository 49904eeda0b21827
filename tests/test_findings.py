"""The compare page's sentences follow the tables' numbers and significance rule."""

from __future__ import annotations

import pandas as pd

from autointerp.report.findings import difference_sentences, findings, metric_sentence


def test_sentences_name_the_higher_sae_only_when_significant_and_flag_weak_scorers():
    pairs = pd.DataFrame(
        [
            {
                "scorer": "detection",
                "a": "k16",
                "b": "k64",
                "diff": -0.12,
                "ci_low": -0.2,
                "ci_high": -0.04,
                "p_holm": 0.004,
                "significant": True,
            },
            {
                "scorer": "intruder",
                "a": "k16",
                "b": "k64",
                "diff": 0.05,
                "ci_low": -0.1,
                "ci_high": 0.2,
                "p_holm": 0.5,
                "significant": False,
            },
        ]
    )
    summary = pd.DataFrame(
        [
            {"scorer": "detection", "sae": "k16", "beats_null": True},
            {"scorer": "detection", "sae": "k64", "beats_null": False},
            {"scorer": "intruder", "sae": "k16", "beats_null": True},
            {"scorer": "intruder", "sae": "k64", "beats_null": True},
        ]
    )
    det, intr = difference_sentences(pairs, summary)
    assert det["significant"] and "k64 scores significantly higher than k16" in det["text"]
    assert "Read with care" in det["text"] and "k64" in det["text"].split("Read with care")[1]
    assert (
        not intr["significant"] and "no significant difference" in intr["text"] and "Read" not in intr["text"]
    )
    arms = [{"label": "k16", "metrics": [16.0, 0.7]}, {"label": "k64", "metrics": [64.0, 0.8]}]
    assert metric_sentence(arms, ["l0", "fve"]) == "SAE metrics (k16 vs k64): L0 16 vs 64; FVE 0.7 vs 0.8."
    items = findings(summary, pairs, None, arms, ["l0", "fve"])
    assert [i["significant"] for i in items] == [None, True, False]
