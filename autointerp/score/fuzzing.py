"""Fuzzing scoring: does the explanation say WHICH tokens the feature fires on?

Every context is shown with tokens marked `<<like this>>`:
- activating contexts: the tokens whose activation is at least MARK_THRESHOLD x that context's max
  (consecutive ones merged into one span, as the explainer saw them) -> correct marks (label 1);
- non-activating contexts: as many randomly chosen tokens as an activating context of this feature
  has marked on average -> wrong marks (label 0);
- optionally (`fuzz_mismarked_fraction`, default 0), that fraction of activating contexts is shown
  with its marks moved to random non-firing tokens -> wrong marks (label 0), as delphi's
  "incorrectly marked" examples. Off by default: with it, the test also needs the model to read
  the marks precisely, which small simulators cannot; turn it on with a capable model.
The model answers per context whether the marks are correct. Metrics: see `classify.py`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from autointerp.score.base import FeatureToScore, TestContext, register_scorer
from autointerp.score.classify import ClassificationScorer, Shown, one_line

MARK_THRESHOLD = 0.3


def mark(tokens: tuple[str, ...], marked: set[int]) -> str:
    """Tokens joined, with each run of consecutive marked positions wrapped in << >>."""
    out = []
    for i, token in enumerate(tokens):
        if i in marked and (i - 1) not in marked:
            out.append("<<")
        out.append(token)
        if i in marked and (i + 1) not in marked:
            out.append(">>")
    return "".join(out)


def firing_positions(context: TestContext) -> set[int]:
    peak = max(context.activations, default=0.0)
    if peak <= 0:
        return set()
    return {i for i, a in enumerate(context.activations) if a >= MARK_THRESHOLD * peak and a > 0}


def random_positions(n_tokens: int, k: int, rng: np.random.Generator, exclude: set[int] = frozenset()) -> set[int]:
    pool = [i for i in range(n_tokens) if i not in exclude]
    if not pool:
        return set()
    return {int(i) for i in rng.choice(pool, size=min(k, len(pool)), replace=False)}


@register_scorer
class FuzzingScorer(ClassificationScorer):
    name: ClassVar[str] = "fuzzing"
    prompt_name: ClassVar[str | None] = "fuzzing_v1"
    seed_offset: ClassVar[int] = 2
    config_keys: ClassVar[tuple[str, ...]] = ("classify_batch_size", "temperature", "fuzz_mismarked_fraction")

    def prepare(self, item: FeatureToScore, rng: np.random.Generator) -> list[Shown]:
        contexts = [c for c in item.contexts if c.tokens]
        activating = [c for c in contexts if c.activating and firing_positions(c)]
        counts = [len(firing_positions(c)) for c in activating]
        k = max(1, int(round(float(np.mean(counts))))) if counts else 1
        n_mismarked = int(round(len(activating) * self.config.fuzz_mismarked_fraction))
        mismarked_ids = {activating[int(i)].context_id
                         for i in rng.choice(len(activating), size=n_mismarked, replace=False)} if n_mismarked else set()
        shown = []
        for c in contexts:
            if not c.activating:
                shown.append(Shown(c, one_line(mark(c.tokens, random_positions(len(c.tokens), k, rng))),
                                   False, "nonactivating"))
                continue
            firing = firing_positions(c)
            if not firing:
                continue  # an "activating" context whose activations were all at position 0
            if c.context_id in mismarked_ids:
                wrong = random_positions(len(c.tokens), len(firing), rng, exclude=firing)
                if wrong:
                    shown.append(Shown(c, one_line(mark(c.tokens, wrong)), False, "mismarked"))
                    continue
            shown.append(Shown(c, one_line(mark(c.tokens, firing)), True, "activating"))
        return shown
