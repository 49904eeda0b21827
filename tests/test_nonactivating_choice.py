"""Non-activating examples: the first k sampled contexts (priority order) where a feature never fires.

`_nonactivating_tables` only scans the sample rows up to the one where every feature has its k
contexts; this checks it against the definition, per feature, including features that fire on
almost every sampled context (which must keep the whole sample in play) and dead ones."""

from __future__ import annotations

import numpy as np
import pytest

from autointerp.collect.pass2 import _nonactivating_tables


def _expected(sample: np.ndarray, fires: np.ndarray, k: int) -> dict[int, list[tuple[int, int]]]:
    chosen: dict[int, list[tuple[int, int]]] = {}
    for feature in range(fires.shape[1]):
        silent = [int(sample[row]) for row in range(len(sample)) if not fires[row, feature]][:k]
        chosen[feature] = list(enumerate(silent))
    return chosen


@pytest.mark.parametrize("dense", [0, 3])
def test_first_k_silent_sampled_contexts_per_feature(dense: int) -> None:
    rng = np.random.default_rng(dense)
    n, d, k = 40, 300, 6
    fires = rng.random((n, d)) < 0.1
    fires[:, :dense] = True  # dense: never silent
    fires[:, dense : dense + 2] = True
    fires[n - 2 :, dense : dense + 2] = False  # silent only on the last two sampled contexts
    fires[:, -1] = False  # dead feature: silent everywhere
    sample = rng.permutation(10 * n)[:n].astype(np.int64)
    got: dict[int, list[tuple[int, int]]] = {f: [] for f in range(d)}
    used: set[int] = set()
    for table, contexts in _nonactivating_tables("run", 1, sample, fires, k, {}):
        assert set(table.column("kind").to_pylist()) == {"nonactivating"}
        assert set(table.column("split").to_pylist()) == {"test"}
        for feature, rank, context in zip(
            table.column("feature_id").to_pylist(),
            table.column("rank").to_pylist(),
            table.column("context_id").to_pylist(),
            strict=True,
        ):
            got[feature].append((rank, context))
        used |= contexts
    assert got == _expected(sample, fires, k)
    assert all(got[f] == [] for f in range(dense))
    assert len(got[dense]) == 2 and len(got[d - 1]) == k
    assert used == {c for pairs in got.values() for _, c in pairs}
