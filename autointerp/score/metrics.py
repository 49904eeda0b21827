"""Score arithmetic: Pearson correlation, classification metrics and AUC.

Every function returns None when its value is mathematically undefined (a constant input, no
positives, ...). Callers store that as status 'undefined'; it must never turn into 0 or a silent NaN,
because a 0 would read as "the explanation is useless" when really the test could not measure it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation of two equal-length sequences; None if either is constant or too short.

    Computed in float64 from centred sums (not via np.corrcoef, which warns and gives NaN on
    constant input) so the undefined case is decided explicitly.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"pearson needs two 1-D sequences of equal length, got {a.shape} and {b.shape}")
    if a.size < 2 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    da = a - a.mean()
    db = b - b.mean()
    saa = float(np.dot(da, da))
    sbb = float(np.dot(db, db))
    # A constant input leaves only rounding noise in its centred sum of squares.
    scale_a = float(np.dot(a, a)) or 1.0
    scale_b = float(np.dot(b, b)) or 1.0
    if saa <= 1e-24 * scale_a or sbb <= 1e-24 * scale_b:
        return None
    r = float(np.dot(da, db)) / math.sqrt(saa * sbb)
    return max(-1.0, min(1.0, r))


@dataclass(frozen=True)
class Classification:
    """Binary-classification metrics; None where a denominator is zero."""

    n: int
    n_positive: int
    n_negative: int
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int
    accuracy: float | None
    balanced_accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def classification_metrics(labels: Sequence[bool | int], predictions: Sequence[bool | int]) -> Classification:
    """Confusion counts and the derived metrics; balanced accuracy needs both classes present."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    y = [bool(v) for v in labels]
    p = [bool(v) for v in predictions]
    tp = sum(1 for a, b in zip(y, p, strict=True) if a and b)
    fp = sum(1 for a, b in zip(y, p, strict=True) if not a and b)
    tn = sum(1 for a, b in zip(y, p, strict=True) if not a and not b)
    fn = sum(1 for a, b in zip(y, p, strict=True) if a and not b)
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    balanced = None if recall is None or specificity is None else (recall + specificity) / 2
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return Classification(
        n=len(y),
        n_positive=tp + fn,
        n_negative=tn + fp,
        true_positive=tp,
        false_positive=fp,
        true_negative=tn,
        false_negative=fn,
        accuracy=_ratio(tp + tn, len(y)),
        balanced_accuracy=balanced,
        precision=precision,
        recall=recall,
        f1=f1,
    )


def balanced_accuracy(labels: Sequence[bool | int], predictions: Sequence[bool | int]) -> float | None:
    return classification_metrics(labels, predictions).balanced_accuracy


def auc(scores: Sequence[float], labels: Sequence[bool | int]) -> float | None:
    """ROC AUC by the Mann-Whitney U statistic (ties count one half); None without both classes.

    AUC = P(score of a random positive > score of a random negative), which is what
    "the explanation ranks activating contexts above non-activating ones" means.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray([bool(v) for v in labels])
    n_pos = int(y.sum())
    n_neg = int((~y).sum())
    if n_pos == 0 or n_neg == 0 or not np.all(np.isfinite(s)):
        return None
    # Average ranks handle ties exactly (each tied pair contributes 1/2).
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
