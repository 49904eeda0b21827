"""Which held-out contexts a feature is scored on, and the check that they really are held out.

All scorers of a run see the same contexts for a feature, so their numbers are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autointerp.errors import UserError
from autointerp.hashing import short_hash
from autointerp.score.base import TestContext
from autointerp.score.config import ScoreConfig
from autointerp.store import ExampleRecord, Store


def feature_seed(seed: int, feature_id: int) -> int:
    """A per-feature seed: reproducible, and different features do not share one random stream."""
    return int(short_hash([seed, int(feature_id)], length=8), 16)


def _to_context(row: ExampleRecord, group: str) -> TestContext:
    if not len(row.token_ids) == len(row.tokens) == len(row.activations):
        raise ValueError(
            f"context {row.context_id} of feature {row.feature_id}: {len(row.token_ids)} token ids, "
            f"{len(row.tokens)} tokens, {len(row.activations)} activations"
        )
    return TestContext(
        context_id=row.context_id,
        doc_id=row.doc_id,
        kind=row.kind,
        group=group,
        token_ids=row.token_ids[1:],
        tokens=row.tokens[1:],
        activations=row.activations[1:],
    )


def _unique_contexts(rows: list[ExampleRecord]) -> list[ExampleRecord]:
    """The first row of each context id, in order."""
    seen: set[int] = set()
    out = []
    for row in rows:
        if row.context_id not in seen:
            seen.add(row.context_id)
            out.append(row)
    return out


def select_test_contexts(examples: Sequence[ExampleRecord], config: ScoreConfig, seed: int) -> list[TestContext]:
    """Pick one feature's test contexts from its test-split examples (`Store.example_records` of one feature).

    `n_top` top examples (by rank), then the rest of `n_activating` spread over `n_quantiles`
    equal-count bins of the random sample ordered by max activation (so weak activations are tested
    too, as in delphi's quantile sampling), then non-activating contexts at `nonactivating_ratio`
    to the activating ones actually found. Fewer are used when fewer exist; the counts go in details.
    Plain Python over records (sorts are stable, ties keep the store's order): it runs once per feature.
    """
    if any(r.split != "test" for r in examples):
        raise ValueError("select_test_contexts got non-test examples; scoring uses the test split only")
    rng = np.random.default_rng(seed)
    chosen: list[TestContext] = []
    used: set[int] = set()

    top = sorted((r for r in examples if r.kind == "top"), key=lambda r: r.rank)
    for row in top[: config.n_top]:
        chosen.append(_to_context(row, "top"))
        used.add(row.context_id)

    n_quantile_total = config.n_activating - len(chosen)
    random_rows = _unique_contexts([r for r in examples if r.kind == "random" and r.context_id not in used])
    random_rows.sort(key=lambda r: (r.max_activation, r.rank))
    if n_quantile_total > 0 and random_rows:
        n_bins = min(config.n_quantiles, len(random_rows))
        bins = np.array_split(np.arange(len(random_rows)), n_bins)
        per_bin = [n_quantile_total // n_bins + (1 if i < n_quantile_total % n_bins else 0) for i in range(n_bins)]
        for q, (positions, want) in enumerate(zip(bins, per_bin, strict=True), start=1):
            take = rng.choice(positions, size=min(want, len(positions)), replace=False)
            for pos in sorted(int(p) for p in take):
                chosen.append(_to_context(random_rows[pos], f"q{q}"))
                used.add(random_rows[pos].context_id)

    # Too few random examples: top examples beyond n_top fill the gap (still genuine test contexts).
    if len(chosen) < config.n_activating:
        for row in top[config.n_top :]:
            if len(chosen) >= config.n_activating:
                break
            if row.context_id not in used:
                chosen.append(_to_context(row, "top"))
                used.add(row.context_id)

    n_non = int(round(len(chosen) * config.nonactivating_ratio)) if chosen else config.n_nonactivating
    negative_kind = config.negative_kind
    non = _unique_contexts([r for r in examples if r.kind == negative_kind and r.context_id not in used])
    non.sort(key=lambda r: r.rank)
    if len(non) > n_non:
        keep = sorted(int(i) for i in rng.choice(len(non), size=n_non, replace=False))
        non = [non[i] for i in keep]
    for row in non:
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
