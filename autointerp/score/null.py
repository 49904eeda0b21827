"""Shuffled-label null sets: the baseline every score is read against.

For an explanation set (one label per feature), the null set gives a seeded sample of its features
(default: all, up to `DEFAULT_NULL_SAMPLE`) the label of ANOTHER feature of the same set: the sampled
features in a seeded random order, each taking the label of the next one round the cycle (a cyclic
derangement, so no feature ever keeps its own label). Scored with the same scorers on the same test
contexts, it answers "does this scorer reward the right label more than any plausible label?"; a scorer
whose real-minus-shuffled difference has a CI including 0 measures nothing on that run.

The null set is an ordinary explanation set in the store (explainer_model `null:shuffled`, prompt_hash
naming its base set, see `autointerp.store.sets`), so the normal score path scores it, reruns skip what
is done and failures are statuses. Each null explanation id hashes the donor's explanation id, so a
re-drawn null set (more features explained since) replaces exactly the labels that changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from autointerp.hashing import short_hash
from autointerp.llm.base import Status
from autointerp.store import Store
from autointerp.store.sets import NULL_CONFIG, NULL_MODEL, is_null_model, null_set_key

#: Features per set given a shuffled label by default ("all scored features up to 200").
DEFAULT_NULL_SAMPLE = 200


@dataclass(frozen=True)
class NullSet:
    base_key: tuple[str, str, str]
    key: tuple[str, str, str]
    n_features: int  # features holding a shuffled label
    n_replaced: int  # stale null labels deleted (with their scores) because the draw changed


def null_rows(
    run_id: str, base: pd.DataFrame, base_key: tuple[str, str, str], n_sample: int, seed: int
) -> list[dict]:
    """The explanation rows of the null set of `base` (the ok rows of one set: feature_id, explanation_id,
    explanation). Empty when fewer than two features have a label (nothing to shuffle)."""
    ok = base[base["status"] == Status.OK.value].drop_duplicates("feature_id")
    if len(ok) < 2 or n_sample < 2:
        return []
    # Order by a per-feature hash: the draw for a feature does not depend on which others exist.
    ok = ok.assign(_order=[short_hash([seed, int(f)]) for f in ok["feature_id"]]).sort_values("_order")
    sample = ok.head(n_sample).to_dict("records")
    key = null_set_key(base_key)
    rows = []
    for i, row in enumerate(sample):
        donor = sample[(i + 1) % len(sample)]
        fid = int(row["feature_id"])
        rows.append(
            {
                "explanation_id": short_hash([run_id, fid, *key, donor["explanation_id"]]),
                "run_id": run_id,
                "feature_id": fid,
                "explainer_model": NULL_MODEL,
                "prompt_name": NULL_MODEL,
                "prompt_hash": key[1],
                "config_hash": NULL_CONFIG,
                "config": {
                    "base_set": list(base_key),
                    "donor_feature_id": int(donor["feature_id"]),
                    "donor_explanation_id": str(donor["explanation_id"]),
                    "seed": seed,
                    "sample": n_sample,
                },
                "status": Status.OK.value,
                "explanation": str(donor["explanation"]),
                "raw_text": None,
                "error": None,
                "attempts": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "latency_s": 0.0,
            }
        )
    return rows


def ensure_null_sets(
    store: Store,
    run_id: str,
    n_sample: int = DEFAULT_NULL_SAMPLE,
    seed: int = 0,
    explainer_model: str | None = None,
    explanation_prompt: str | None = None,
) -> list[NullSet]:
    """Write (or bring up to date) the null set of every real explanation set of the run that the score
    selection covers (`explainer_model` / `explanation_prompt` as in `ScoreConfig`). `n_sample` 0: none."""
    if n_sample <= 0:
        return []
    sets = store.explanation_sets(run_id)
    out = []
    for row in sets.to_dict("records"):
        if is_null_model(row["explainer_model"]):
            continue
        if explainer_model is not None and row["explainer_model"] != explainer_model:
            continue
        if explanation_prompt is not None and row["prompt_name"] != explanation_prompt:
            continue
        base_key = (row["explainer_model"], row["prompt_hash"], row["config_hash"])
        base = store.set_explanations(run_id, *base_key)
        rows = null_rows(run_id, base, base_key, n_sample, seed)
        if not rows:
            continue
        replaced = store.replace_explanation_set(run_id, null_set_key(base_key), rows)
        out.append(NullSet(base_key, null_set_key(base_key), len(rows), replaced))
    return out
