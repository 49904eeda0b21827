"""Bootstrap confidence intervals and significance tests for comparing explanation scores.

Why these tests: explanation scores are bounded, skewed and often bimodal, so we use resampling
(no normality assumption). Two situations need different tests:

- *Different SAEs* have different features, so there is no pairing: the question is whether the
  mean score of SAE A differs from SAE B's. We bootstrap each group independently to get a 95 %
  CI of the difference of means, and compute a two-sided permutation-test p-value (labels shuffled
  over the pooled scores).
- *The same SAE's features* under two explainers (or two scorer configurations) are paired by
  feature id: we bootstrap the mean of the per-feature differences and use a sign-flip permutation
  test, which is far more sensitive because feature-to-feature variation cancels.

Everything is seeded, so a report is reproducible byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]  # maps (n_boot, n) resamples to (n_boot,) statistics


def _mean(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=-1)


def _median(samples: np.ndarray) -> np.ndarray:
    return np.median(samples, axis=-1)


def fraction_above(threshold: float) -> Statistic:
    """Statistic: fraction of values >= threshold."""

    def stat(samples: np.ndarray) -> np.ndarray:
        return (samples >= threshold).mean(axis=-1)

    return stat


STATISTICS: dict[str, Statistic] = {"mean": _mean, "median": _median}


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile-bootstrap 95 % interval (NaN when there is no data)."""

    value: float
    low: float
    high: float


def bootstrap_ci(
    values: np.ndarray, statistic: Statistic = _mean, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """Percentile bootstrap CI of `statistic` over `values`."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"))
    point = float(statistic(data[None, :])[0])
    rng = np.random.default_rng(seed)
    resamples = data[rng.integers(0, data.size, size=(n_boot, data.size))]
    boots = statistic(resamples)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(boots, [tail, 100.0 - tail])
    # The percentile interval always contains the point estimate for means of non-degenerate data; clamp
    # the rare floating-point edge so the CI never excludes its own estimate.
    return Estimate(point, float(min(low, point)), float(max(high, point)))


@dataclass(frozen=True)
class Difference:
    """A - B: the difference of means with its CI, a permutation p-value and how it was tested."""

    diff: float
    low: float
    high: float
    p_value: float
    paired: bool
    n_a: int
    n_b: int


def unpaired_difference(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, n_perm: int = 2000, seed: int = 0
) -> Difference:
    """Difference of means of two independent groups: bootstrap CI + two-sided permutation p-value."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        nan = float("nan")
        return Difference(nan, nan, nan, nan, False, int(x.size), int(y.size))
    observed = float(x.mean() - y.mean())
    rng = np.random.default_rng(seed)
    boot_x = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    boot_y = y[rng.integers(0, y.size, size=(n_boot, y.size))].mean(axis=1)
    low, high = np.percentile(boot_x - boot_y, [2.5, 97.5])
    pooled = np.concatenate([x, y])
    # Permutations: argsort of random keys gives n_perm independent shuffles in one vectorised step.
    order = np.argsort(rng.random((n_perm, pooled.size)), axis=1)
    shuffled = pooled[order]
    perm = shuffled[:, : x.size].mean(axis=1) - shuffled[:, x.size :].mean(axis=1)
    p = _p_value(perm, observed)
    return Difference(observed, float(min(low, observed)), float(max(high, observed)), p, False, x.size, y.size)


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, n_perm: int = 2000, seed: int = 0) -> Difference:
    """Mean of per-item differences a_i - b_i: bootstrap CI + sign-flip permutation p-value."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError("paired samples must have the same length (align them by feature id first)")
    if x.size == 0:
        nan = float("nan")
        return Difference(nan, nan, nan, nan, True, 0, 0)
    d = x - y
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    signs = rng.choice(np.array([-1.0, 1.0]), size=(n_perm, d.size))
    perm = (signs * d).mean(axis=1)
    p = _p_value(perm, observed)
    return Difference(observed, float(min(low, observed)), float(max(high, observed)), p, True, d.size, d.size)


def _p_value(null: np.ndarray, observed: float) -> float:
    """Two-sided permutation p-value with the +1 correction (never exactly 0)."""
    tol = 1e-12 * max(1.0, abs(observed))
    extreme = int(np.sum(np.abs(null) >= abs(observed) - tol))
    return (extreme + 1) / (null.size + 1)


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (controls the family-wise error over all pairs of one scorer)."""
    indexed = [(p, i) for i, p in enumerate(p_values) if p == p]  # skip NaN
    m = len(indexed)
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(indexed)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def is_significant(diff: Difference, adjusted_p: float, alpha: float = 0.05) -> bool:
    """Significant when the 95 % CI of the difference excludes 0 AND the (adjusted) p-value < alpha.

    Requiring both keeps the verdict consistent with what the table shows (an interval that straddles 0
    is never called significant, whatever the permutation test says).
    """
    if diff.diff != diff.diff or adjusted_p != adjusted_p:
        return False
    return (diff.low > 0 or diff.high < 0) and adjusted_p < alpha
