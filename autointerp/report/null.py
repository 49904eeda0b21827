"""The shuffled-label baseline of every scorer, as report, compare and the Markdown summary show it.

Per scorer, over the features that have an ok score with their real label AND with a shuffled label
(another feature's label, from the null set the score stage writes, see `autointerp.score.null`): the
mean with real labels, the mean with shuffled labels, their paired difference with a seeded bootstrap
95 % CI, and the share of features whose real label beats its shuffled one. A scorer whose CI includes 0
(or that has no pairs at all) is flagged: on this run it cannot tell a feature's own label from a random
one, so its mean measures nothing, whatever its distance from chance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from autointerp.report import stats

NOT_DISTINGUISHABLE = "not distinguishable from shuffled labels on this run"
NO_BASELINE = "no shuffled-label baseline on this run (score with --null-sample above 0)"
BEATS_NULL = "beats shuffled labels"
ABOVE_CHANCE = "above chance (explanation-free)"
NOT_ABOVE_CHANCE = "not above chance (explanation-free) on this run"


@dataclass(frozen=True)
class NullBaseline:
    scorer: str
    n_pairs: int
    real_mean: float | None  # over the paired features
    null_mean: float | None
    diff: float | None  # mean of real - shuffled
    ci_low: float | None
    ci_high: float | None
    p_value: float | None  # sign-flip permutation test
    share_real_wins: float | None  # fraction of paired features with real > shuffled (ties are not wins)
    share_ties: float | None
    beats_null: bool  # CI strictly above 0
    verdict: str  # '' when the scorer beats the baseline, else NOT_DISTINGUISHABLE / NO_BASELINE
    #: What passing means: BEATS_NULL for label scorers, ABOVE_CHANCE for label-free ones (intruder), whose
    #: baseline is the chance level stored with each score (null_mean then holds that chance).
    passed: str = BEATS_NULL

    def as_dict(self) -> dict:
        return asdict(self)


def _ok(scores: pd.DataFrame, scorer: str) -> pd.DataFrame:
    if scores.empty:
        return pd.DataFrame(columns=["feature_id", "score"])
    s = scores[(scores["scorer"] == scorer) & (scores["status"] == "ok") & scores["score"].notna()]
    return s[["feature_id", "score"]]


def null_baseline(
    real: pd.DataFrame, null: pd.DataFrame, scorer: str, n_boot: int = 2000, n_perm: int = 2000, seed: int = 0
) -> NullBaseline:
    """The baseline of one scorer from the real set's and the null set's score rows (newest per feature)."""
    both = _ok(real, scorer).merge(_ok(null, scorer), on="feature_id", suffixes=("_real", "_null"))
    if both.empty:
        return NullBaseline(scorer, 0, None, None, None, None, None, None, None, None, False, NO_BASELINE)
    a = both["score_real"].to_numpy(dtype=float)
    b = both["score_null"].to_numpy(dtype=float)
    diff = stats.paired_difference(a, b, n_boot, n_perm, seed)
    beats = bool(diff.low > 0)
    return NullBaseline(
        scorer=scorer,
        n_pairs=int(a.size),
        real_mean=float(a.mean()),
        null_mean=float(b.mean()),
        diff=diff.diff,
        ci_low=diff.low,
        ci_high=diff.high,
        p_value=diff.p_value,
        share_real_wins=float(np.mean(a > b)),
        share_ties=float(np.mean(a == b)),
        beats_null=beats,
        verdict="" if beats else NOT_DISTINGUISHABLE,
    )


def chance_baseline(scores: pd.DataFrame, scorer: str, n_boot: int = 2000, seed: int = 0) -> NullBaseline:
    """A label-free scorer (intruder) against the chance level stored with each of its scores: a shuffled
    label changes nothing for a scorer that reads none, so chance is its baseline. diff = mean(score -
    chance) with a bootstrap CI; it passes when the CI lies above 0."""
    ok = scores[(scores["scorer"] == scorer) & (scores["status"] == "ok") & scores["score"].notna()
                & scores["chance"].notna()] if not scores.empty else scores
    if ok.empty:
        return NullBaseline(scorer, 0, None, None, None, None, None, None, None, None, False,
                            "no scores with a chance level", ABOVE_CHANCE)
    a, c = ok["score"].to_numpy(dtype=float), ok["chance"].to_numpy(dtype=float)
    est = stats.bootstrap_ci(a - c, stats.STATISTICS["mean"], n_boot, seed)
    beats = bool(est.low is not None and est.low > 0)
    return NullBaseline(scorer, int(a.size), float(a.mean()), float(c.mean()), est.value, est.low, est.high, None,
                        float(np.mean(a > c)), float(np.mean(a == c)), beats, "" if beats else NOT_ABOVE_CHANCE,
                        ABOVE_CHANCE)


def baseline_for(real: pd.DataFrame, null: pd.DataFrame, scorer: str, label_free: list[str], n_boot: int = 2000,
                 n_perm: int = 2000, seed: int = 0) -> NullBaseline:
    """Shuffled labels for a label scorer, chance for a label-free one (`label_free` names those)."""
    if scorer in label_free:
        return chance_baseline(real, scorer, n_boot, seed)
    return null_baseline(real, null, scorer, n_boot, n_perm, seed)


def null_baselines(
    real: pd.DataFrame, null: pd.DataFrame, scorers: list[str], seed: int = 0, label_free: list[str] | None = None
) -> list[NullBaseline]:
    return [baseline_for(real, null, s, label_free or [], seed=seed) for s in scorers]
