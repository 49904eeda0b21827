"""Scoring explanations on held-out (test-split) contexts: simulation, detection, fuzzing, embedding.

Public API: `score_features`, `ScoreConfig`, `ScoreSummary`, the `Scorer` base class with
`register_scorer` / `available_scorers`, and `check_no_leakage`.
"""

from autointerp.score.base import (
    FeatureToScore,
    ScoreOutcome,
    Scorer,
    TestContext,
    available_scorers,
    get_scorer_class,
    register_scorer,
)
from autointerp.score.config import ScoreConfig
from autointerp.score.contexts import check_no_leakage, select_test_contexts
from autointerp.score.runner import ScorerSummary, ScoreSummary, ascore_features, score_features

__all__ = [
    "FeatureToScore",
    "ScoreConfig",
    "ScoreOutcome",
    "ScoreSummary",
    "Scorer",
    "ScorerSummary",
    "TestContext",
    "ascore_features",
    "available_scorers",
    "check_no_leakage",
    "get_scorer_class",
    "register_scorer",
    "score_features",
    "select_test_contexts",
]
