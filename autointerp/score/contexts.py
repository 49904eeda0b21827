"""Which held-out contexts a feature is scored on, and the check that they really are held out.

All scorers of a run see the same contexts for a feature, so their numbers are comparable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from autointerp.errors import UserError
from autointerp.hashing import short_hash
from autointerp.score.base import TestContext
from autointerp.score.config import ScoreConfig
from autointerp.store import Store


def feature_seed(seed: int, feature_id: int) -> int:
    """A per-feature seed: reproducible, and different features do not share one random stream."""
    return int(short_hash([seed, int(feature_id)], length=8), 16)


def _to_context(row: dict, group: str) -> TestContext:
    token_ids = [int(t) for t in row["token_ids"]]
    tokens = [str(t) for t in row["tokens"]]
    activations = [float(a) for a in row["activations"]]
    if not len(token_ids) == len(tokens) == len(activations):
        raise ValueError(
            f"context {row['context_id']} of feature {row['feature_id']}: {len(token_ids)} token ids, "
            f"{len(tokens)} tokens, {len(activations)} activations"
        )
    return TestContext(
        context_id=int(row["context_id"]),
        doc_id=int(row["doc_id"]),
        kind=str(row["kind"]),
        group=group,
        token_ids=tuple(token_ids[1:]),
        tokens=tuple(tokens[1:]),
        activations=tuple(activations[1:]),
    )


def select_test_contexts(examples: pd.DataFrame, config: ScoreConfig, seed: int) -> list[TestContext]:
    """Pick one feature's test contexts from its test-split examples (one feature's rows of `Store.examples`).

    `n_top` top examples (by rank), then the rest of `n_activating` spread over `n_quantiles`
    equal-count bins of the random sample ordered by max activation (so weak activations are tested
    too, as in delphi's quantile sampling), then non-activating contexts at `nonactivating_ratio`
    to the activating ones actually found. Fewer are used when fewer exist; the counts go in details.
    """
    if not examples.empty and set(examples["split"]) != {"test"}:
        raise ValueError("select_test_contexts got non-test examples; scoring uses the test split only")
    rng = np.random.default_rng(seed)
    chosen: list[TestContext] = []
    used: set[int] = set()

    top = examples[examples["kind"] == "top"].sort_values("rank")
    for row in top.head(config.n_top).to_dict("records"):
        chosen.append(_to_context(row, "top"))
        used.add(int(row["context_id"]))

    n_quantile_total = config.n_activating - len(chosen)
    random_rows = examples[(examples["kind"] == "random") & ~examples["context_id"].isin(used)]
    random_rows = random_rows.drop_duplicates("context_id").sort_values(["max_activation", "rank"])
    if n_quantile_total > 0 and not random_rows.empty:
        n_bins = min(config.n_quantiles, len(random_rows))
        bins = np.array_split(np.arange(len(random_rows)), n_bins)
        per_bin = [n_quantile_total // n_bins + (1 if i < n_quantile_total % n_bins else 0) for i in range(n_bins)]
        records = random_rows.to_dict("records")
        for q, (positions, want) in enumerate(zip(bins, per_bin, strict=True), start=1):
            take = rng.choice(positions, size=min(want, len(positions)), replace=False)
            for pos in sorted(int(p) for p in take):
                chosen.append(_to_context(records[pos], f"q{q}"))
                used.add(int(records[pos]["context_id"]))

    # Too few random examples: top examples beyond n_top fill the gap (still genuine test contexts).
    if len(chosen) < config.n_activating:
        for row in top.iloc[config.n_top :].to_dict("records"):
            if len(chosen) >= config.n_activating:
                break
            if int(row["context_id"]) not in used:
                chosen.append(_to_context(row, "top"))
                used.add(int(row["context_id"]))

    n_non = int(round(len(chosen) * config.nonactivating_ratio)) if chosen else config.n_nonactivating
    negative_kind = config.negative_kind
    non = examples[(examples["kind"] == negative_kind) & ~examples["context_id"].isin(used)]
    non = non.drop_duplicates("context_id").sort_values("rank")
    if len(non) > n_non:
        keep = sorted(int(i) for i in rng.choice(len(non), size=n_non, replace=False))
        non = non.iloc[keep]
    for row in non.to_dict("records"):
        chosen.append(_to_context(row, negative_kind))
    return chosen


def check_no_leakage(store: Store, run_id: str) -> None:
    """Refuse to score when a test context shares a document with an explain-split example.

    The explainer may have seen any explain-split example; a test context from the same document
    would let a label score well by memorising that document rather than describing the feature.
    """
    leaks = store.split_leaks(run_id)
    if leaks.empty:
        return
    first = leaks.iloc[0]
    raise UserError(
        f"{len(leaks)} example(s) break the explain/test split (first: {first['problem']}, document "
        f"{first['doc_id']}, feature {first['feature_id']}, context {first['context_id']}); scores would "
        "be measured on text the explainer saw",
        "re-run `autointerp collect` into a fresh --db (the split is by document), then explain and score again",
    )
