"""Intruder scoring: is a feature coherent, without any explanation in the loop?

Why: detection, fuzzing and simulation all read a label, so comparing two SAEs by them also compares how
well one explainer wrote for each. Here the scorer model sees `intruder_n_activating` activating test
contexts of the feature plus one intruder (a non-activating test context with `negatives random`, or a
hard negative, a top context of a neighbouring feature on which this one does not fire, with `negatives
hard`) in a seeded random order, and names the intruder (Paulo & Belrose 2025). A feature whose contexts
share something recognisable is easy; a polysemantic or noisy one is not. With `intruder_highlight` the
tokens the feature fires on are marked `<<like this>>` (as the fuzzing scorer marks them) and the
intruder gets as many marks on random tokens, so marks alone give nothing away.

Each feature is asked `intruder_rounds` times (different activating contexts, intruder and position each
round). Score = accuracy over the rounds; chance = 1 / (n + 1), stored beside it. Where the backend
returns token logprobs, P(text i is the intruder) is read from the alternatives at the token that wrote
the answer, and details.auc is the ROC AUC of those probabilities over every text of every round (the
intruder is the positive); else `auc_method` is 'hard_answers'. A round whose reply is unusable makes
the feature's score a failure with that status, never a wrong answer. The scorer never reads the
explanation, so its scores are stored once per feature (see `autointerp.store.sets.label_free_id`).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, ClassVar

import numpy as np

from autointerp.llm.base import ChatResult, Status
from autointerp.prompting import load_prompt
from autointerp.score.base import FeatureToScore, ScoreOutcome, Scorer, TestContext, register_scorer
from autointerp.score.classify import TOP_LOGPROBS, one_line, reply_steps
from autointerp.score.fuzzing import firing_positions, mark, random_positions
from autointerp.score.metrics import auc

#: Added to the feature seed so the intruder draws differ from detection's and fuzzing's.
SEED_OFFSET = 3


def intruder_schema(n: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"intruder": {"enum": list(range(1, n + 1))}},
        "required": ["intruder"],
    }


def parse_intruder(result: ChatResult, n: int) -> tuple[int | None, str | None]:
    """The 1-based answer of a reply, or (None, why not)."""
    if not result.ok:
        return None, f"{result.status.value}: {result.error}"
    value = result.parsed.get("intruder") if isinstance(result.parsed, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n:
        return None, f"intruder {value!r} is not a text number 1..{n}"
    return value, None


def position_probabilities(result: ChatResult, n: int) -> list[float] | None:
    """P(text i is the intruder) for i = 1..n from the logprobs of the token that wrote the answer; None
    when unavailable (no logprobs, a prefilled answer, n > 9, or no digit among the alternatives)."""
    aligned = reply_steps(result)
    if aligned is None or n > 9:
        return None
    steps, offset = aligned
    text = result.text or ""
    key = text.find('"intruder"')
    colon = text.find(":", key) if key >= 0 else -1
    index = next((i for i in range(colon + 1, len(text)) if text[i].isdigit()), -1) if colon >= 0 else -1
    if index < offset:
        return None  # no answer digit, or it was written by the prefill
    position = offset
    for step in steps:
        if position <= index < position + len(step.token):
            j = index - position
            mass = [
                math.exp(step.top[alt])
                if (alt := step.token[:j] + str(d) + step.token[j + 1 :]) in step.top
                else 0.0
                for d in range(1, n + 1)
            ]
            total = sum(mass)
            return [m / total for m in mass] if total > 0 else None
        position += len(step.token)
    return None


@register_scorer
class IntruderScorer(Scorer):
    name: ClassVar[str] = "intruder"
    prompt_name: ClassVar[str | None] = "intruder_v1"
    needs_explanation: ClassVar[bool] = False
    config_keys: ClassVar[tuple[str, ...]] = (
        "temperature",
        "intruder_n_activating",
        "intruder_rounds",
        "intruder_highlight",
    )

    def _show(self, context: TestContext, marks: set[int]) -> str:
        return one_line(mark(context.tokens, marks) if self.config.intruder_highlight else context.text)

    def rounds(self, item: FeatureToScore, rng: np.random.Generator) -> list[tuple[list[str], int]]:
        """Per round: the texts in the order shown and the 0-based position of the intruder."""
        activating = [c for c in item.contexts if c.activating and c.tokens and firing_positions(c)]
        negatives = [c for c in item.contexts if not c.activating and c.tokens]
        if len(activating) < 2 or not negatives:
            return []
        n = min(self.config.intruder_n_activating, len(activating))
        k = max(1, int(round(float(np.mean([len(firing_positions(c)) for c in activating])))))
        intruders = [negatives[int(i)] for i in rng.permutation(len(negatives))]
        out = []
        for r in range(self.config.intruder_rounds):
            chosen = [activating[int(i)] for i in rng.choice(len(activating), size=n, replace=False)]
            texts = [self._show(c, firing_positions(c)) for c in chosen]
            intruder = intruders[r % len(intruders)]
            where = int(rng.integers(0, n + 1))
            texts.insert(where, self._show(intruder, random_positions(len(intruder.tokens), k, rng)))
            out.append((texts, where))
        return out

    async def score(self, item: FeatureToScore) -> ScoreOutcome:
        assert self.client is not None
        rounds = self.rounds(item, np.random.default_rng(item.seed + SEED_OFFSET))
        if not rounds:
            return ScoreOutcome(
                Status.UNDEFINED.value,
                error="needs at least 2 activating test contexts and 1 intruder context",
            )
        template = load_prompt(self.prompt_name or "")

        async def ask(texts: list[str]) -> ChatResult:
            prompt = template.render(n=len(texts), texts=texts, highlight=self.config.intruder_highlight)
            return await self.client.chat(  # type: ignore[union-attr]
                [{"role": "user", "content": prompt}],
                json_schema=intruder_schema(len(texts)),
                max_tokens=16,
                temperature=self.config.temperature,
                seed=self.config.seed,
                top_logprobs=TOP_LOGPROBS,
            )

        results = await asyncio.gather(*[ask(texts) for texts, _ in rounds])
        tokens = {
            "prompt_tokens": sum(r.prompt_tokens for r in results),
            "completion_tokens": sum(r.completion_tokens for r in results),
            "latency_s": sum(r.latency_s for r in results),
        }
        items, probabilities, labels = [], [], []
        has_probabilities = True
        for (texts, where), result in zip(rounds, results, strict=True):
            answer, error = parse_intruder(result, len(texts))
            if answer is None:
                status = result.status.value if not result.ok else Status.SCHEMA_ERROR.value
                return ScoreOutcome(
                    status,
                    error=f"round {len(items) + 1}/{len(rounds)} unusable: {error}",
                    details={"raw_text": (result.text or "")[:500]},
                    **tokens,
                )
            p = position_probabilities(result, len(texts))
            has_probabilities = has_probabilities and p is not None
            if p is not None:
                probabilities += p
                labels += [i == where for i in range(len(texts))]
            items.append(
                {
                    "n_texts": len(texts),
                    "intruder": where + 1,
                    "answer": answer,
                    "correct": answer == where + 1,
                    "p_intruder": None if p is None else round(p[where], 4),
                }
            )
        accuracy = float(np.mean([i["correct"] for i in items]))
        chance = float(np.mean([1.0 / i["n_texts"] for i in items]))
        auc_value = auc(probabilities, labels) if has_probabilities else None
        details = {
            "accuracy": accuracy,
            "n_rounds": len(items),
            "n_activating": items[0]["n_texts"] - 1,
            "highlight": self.config.intruder_highlight,
            "negatives": self.config.negatives,
            "auc": auc_value,
            "auc_method": "logprobs" if has_probabilities else "hard_answers",
            "rounds": items,
        }
        return ScoreOutcome(Status.OK.value, score=accuracy, chance=chance, details=details, **tokens)
