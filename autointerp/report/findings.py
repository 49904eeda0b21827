"""The compare page's conclusions in words: which differences between SAEs are significant, and which not.

Why: a table of CIs and Holm-adjusted p-values is easy to misread (a mean that looks higher, a scorer that
does not beat its baseline). These sentences are generated from the same numbers the tables show, with the
same rule (`stats.is_significant`: 95 % CI excludes 0 and Holm p < 0.05), and say when a scorer's
difference means little because the scorer did not pass its baseline (shuffled labels, or chance for the
explanation-free intruder) on one of the two SAEs.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

METRIC_WORDS = {"l0": "L0", "fve": "FVE", "ce_loss_recovered": "CE loss recovered"}


def _num(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3g}"


def metric_sentence(arms: list[dict[str, Any]], metric_keys: list[str]) -> str | None:
    """ "L0 16 vs 64; FVE 0.71 vs 0.83; ..." over the arms (no CI: each is one measurement)."""
    parts = []
    for key, word in METRIC_WORDS.items():
        if key not in metric_keys:
            continue
        values = [a["metrics"][metric_keys.index(key)] for a in arms]
        parts.append(f"{word} " + " vs ".join(_num(v) for v in values))
    if not parts:
        return None
    return "SAE metrics (" + " vs ".join(a["label"] for a in arms) + "): " + "; ".join(parts) + "."


def _passed(summary: pd.DataFrame, scorer: str, sae: str) -> bool | None:
    rows = summary[(summary["scorer"] == scorer) & (summary["sae"] == sae)]
    return None if rows.empty else bool(rows["beats_null"].iloc[0])


def difference_sentences(pairs: pd.DataFrame, summary: pd.DataFrame, what: str = "") -> list[dict[str, Any]]:
    """One sentence per (scorer, A, B) row of `pairs` (compare.pairwise or matching.scores columns)."""
    out = []
    for r in pairs.to_dict("records"):
        diff = r.get("diff")
        if diff is None or (isinstance(diff, float) and math.isnan(diff)):
            out.append(
                {
                    "significant": False,
                    "text": f"{r['scorer']}{what}: no scores to compare for {r['a']} and {r['b']}.",
                }
            )
            continue
        higher, lower = (r["a"], r["b"]) if diff > 0 else (r["b"], r["a"])
        ci = f"{r['a']} − {r['b']} = {diff:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], Holm p = {_num(r['p_holm'])}"
        if r["significant"]:
            text = f"{r['scorer']}{what}: {higher} scores significantly higher than {lower} ({ci})."
        else:
            text = f"{r['scorer']}{what}: no significant difference between {r['a']} and {r['b']} ({ci})."
        weak = [s for s in (r["a"], r["b"]) if _passed(summary, r["scorer"], s) is False]
        if weak:
            text += (
                f" Read with care: {r['scorer']} does not pass its baseline on {', '.join(weak)}, so its "
                "scores there do not track the features."
            )
        out.append({"significant": bool(r["significant"]), "text": text})
    return out


def findings(
    summary: pd.DataFrame,
    pairs: pd.DataFrame,
    matching: Any,
    arms: list[dict[str, Any]],
    metric_keys: list[str],
    negatives: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """Every sentence of the "In words" section, significant ones first within each block."""
    items: list[dict[str, Any]] = []
    sentence = metric_sentence(arms, metric_keys)
    if sentence:
        items.append({"significant": None, "text": sentence})
    if not pairs.empty:
        items += sorted(difference_sentences(pairs, summary), key=lambda x: not x["significant"])
    for r in [] if negatives is None else negatives.to_dict("records"):
        verdict = "makes it significantly harder" if r["harder"] else "does not make it significantly harder"
        items.append(
            {
                "significant": bool(r["harder"]),
                "text": (
                    f"{r['scorer']} on {r['sae']}: against hard negatives {verdict} on the same {r['n']} labels (random "
                    f"{r['random_mean']:.3f} vs hard {r['hard_mean']:.3f}; difference {r['diff']:+.3f} "
                    f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}])."
                ),
            }
        )
    if matching is not None and not matching.pairs.empty:
        for r in matching.pairs.to_dict("records"):
            items.append(
                {
                    "significant": None,
                    "text": (
                        f"{r['n_in_both']} features of {r['a']} have a match in {r['b']} at decoder cosine ≥ "
                        f"{r['threshold']:g}; {r['n_new_in_a']} are new in {r['a']} and {r['n_new_in_b']} new in {r['b']}."
                    ),
                }
            )
        if not matching.scores.empty:
            items += sorted(
                difference_sentences(matching.scores, summary, " on matched features"),
                key=lambda x: not x["significant"],
            )
    return items
