"""Detection scoring: does the explanation tell activating contexts from non-activating ones?

Unmarked test contexts (activating ones from the top and every quantile, plus non-activating ones),
shuffled with the feature's seed, in batches; the model answers per context whether the explanation
fits. Metrics and failure handling: see `classify.py`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from autointerp.score.base import FeatureToScore, register_scorer
from autointerp.score.classify import ClassificationScorer, Shown, one_line


@register_scorer
class DetectionScorer(ClassificationScorer):
    name: ClassVar[str] = "detection"
    prompt_name: ClassVar[str | None] = "detection_v1"
    seed_offset: ClassVar[int] = 1

    def prepare(self, item: FeatureToScore, rng: np.random.Generator) -> list[Shown]:
        return [
            Shown(c, one_line(c.text), c.activating, "activating" if c.activating else "nonactivating")
            for c in item.contexts if c.tokens
        ]
