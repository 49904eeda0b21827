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

Answer-position debiasing (`intruder_debias`, default on). Why: a small judge prefers a position whatever
the texts say (SmolLM2 answered "text 1" to all 185 questions of the validity run), so its accuracy is the
share of intruders that happened to sit there, for coherent and random features alike. Each round is
therefore asked n+1 times with the same texts cyclically rotated, so every text sits at every position
once; a text's P(intruder) is the mean, over the rotations, of the probability given to the position it
sat at. A position prior adds the same amount to every text and cancels; the prediction is the text with
the highest mean (ties share the credit, so a judge with no signal scores chance in expectation). Without
logprobs each rotation's answer is a one-hot vote and the same mean is a majority vote (`method` 'vote').
Details keep every rotation's raw answer, and `raw_accuracy`, the share of those answers that were right.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Marked:
    """One text of an intruder round: a test context and the token positions marked on it."""

    context: TestContext
    marks: frozenset[int]


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


def rotate(texts: list[str], shift: int) -> list[str]:
    """The texts with text j shown at position (j + shift) mod m."""
    m = len(texts)
    return [texts[(i - shift) % m] for i in range(m)]


def debias(position_probs: list[list[float]]) -> list[float]:
    """P(text j is the intruder) from the m rotations of one round: rotation s showed text j at position
    (j + s) mod m, so text j's mean over s visits every position once and a position prior cancels."""
    m = len(position_probs)
    if any(len(p) != m for p in position_probs):
        raise ValueError(f"debias needs {m} rotations of {m} positions each")
    return [float(np.mean([position_probs[s][(j + s) % m] for s in range(m)])) for j in range(m)]


def one_hot(answer: int, m: int) -> list[float]:
    """A 1-based answer as a probability vector over m positions (a vote)."""
    return [1.0 if i == answer - 1 else 0.0 for i in range(m)]


def credit(p_text: list[float], intruder: int) -> float:
    """1 when the intruder alone has the highest probability, 1/k when it ties with k - 1 others, else 0."""
    top = max(p_text)
    ties = [j for j, p in enumerate(p_text) if p >= top - 1e-12]
    return 1.0 / len(ties) if intruder in ties else 0.0


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
        "intruder_debias",
    )

    def config_for_hash(self) -> dict[str, Any]:
        """Debiasing off is how every intruder score before the setting was made, so off stays out of the
        key (those scores keep theirs) and on, the default, enters it."""
        out = super().config_for_hash()
        if not self.config.intruder_debias:
            out.pop("intruder_debias")
        return out

    def _show(self, context: TestContext, marks: set[int]) -> str:
        return one_line(mark(context.tokens, marks) if self.config.intruder_highlight else context.text)

    def round_contexts(self, item: FeatureToScore, rng: np.random.Generator) -> list[tuple[list[Marked], int]]:
        """Per round: the contexts in the order shown, each with the positions marked on it (the firing
        tokens; the intruder's k random ones), and the 0-based position of the intruder. Every judge of
        the intruder question (this chat judge, the likelihood judge) draws its rounds here."""
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
            texts = [Marked(c, frozenset(firing_positions(c))) for c in chosen]
            intruder = intruders[r % len(intruders)]
            where = int(rng.integers(0, n + 1))
            texts.insert(where, Marked(intruder, frozenset(random_positions(len(intruder.tokens), k, rng))))
            out.append((texts, where))
        return out

    def rounds(self, item: FeatureToScore, rng: np.random.Generator) -> list[tuple[list[str], int]]:
        """Per round: the texts in the order shown and the 0-based position of the intruder."""
        return [
            ([self._show(m.context, set(m.marks)) for m in texts], where)
            for texts, where in self.round_contexts(item, rng)
        ]

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

        shifts = range(len(rounds[0][0])) if self.config.intruder_debias else range(1)
        asked = [(r, shift) for r in range(len(rounds)) for shift in shifts]
        results = await asyncio.gather(*[ask(rotate(rounds[r][0], shift)) for r, shift in asked])
        tokens = {
            "prompt_tokens": sum(r.prompt_tokens for r in results),
            "completion_tokens": sum(r.completion_tokens for r in results),
            "latency_s": sum(r.latency_s for r in results),
        }
        replies: list[list[tuple[int, list[float] | None]]] = [[] for _ in rounds]
        for (r, shift), result in zip(asked, results, strict=True):
            answer, error = parse_intruder(result, len(rounds[r][0]))
            if answer is None:
                status = result.status.value if not result.ok else Status.SCHEMA_ERROR.value
                return ScoreOutcome(
                    status,
                    error=f"round {r + 1}/{len(rounds)} (rotation {shift}) unusable: {error}",
                    details={"raw_text": (result.text or "")[:500]},
                    **tokens,
                )
            replies[r].append((answer, position_probabilities(result, len(rounds[r][0]))))
        if self.config.intruder_debias:
            return self._debiased(rounds, replies, tokens)
        return self._single(rounds, [reply[0] for reply in replies], tokens)

    def _details(
        self, items: list[dict[str, Any]], auc_value: float | None, auc_method: str
    ) -> dict[str, Any]:
        return {
            "accuracy": float(np.mean([i["correct"] for i in items])),
            "n_rounds": len(items),
            "n_activating": items[0]["n_texts"] - 1,
            "highlight": self.config.intruder_highlight,
            "negatives": self.config.negatives,
            "debias": self.config.intruder_debias,
            "auc": auc_value,
            "auc_method": auc_method,
            "rounds": items,
        }

    def _debiased(
        self,
        rounds: list[tuple[list[str], int]],
        replies: list[list[tuple[int, list[float] | None]]],
        tokens: dict[str, Any],
    ) -> ScoreOutcome:
        """Each round's prediction from its rotations (see the module docstring)."""
        items, probabilities, labels = [], [], []
        all_logprobs = True
        for (texts, where), reply in zip(rounds, replies, strict=True):
            m = len(texts)
            with_logprobs = all(p is not None for _, p in reply)
            all_logprobs = all_logprobs and with_logprobs
            p_text = debias([p if with_logprobs and p is not None else one_hot(a, m) for a, p in reply])
            probabilities += p_text
            labels += [j == where for j in range(m)]
            # rotation s showed the intruder at position (where + s) mod m
            raw = [a == (where + s) % m + 1 for s, (a, _) in enumerate(reply)]
            items.append(
                {
                    "n_texts": m,
                    "intruder": where + 1,
                    "answers": [a for a, _ in reply],
                    "raw_accuracy": round(float(np.mean(raw)), 4),
                    "method": "logprobs" if with_logprobs else "vote",
                    "p_text": [round(p, 4) for p in p_text],
                    "prediction": int(np.argmax(p_text)) + 1,
                    "correct": credit(p_text, where),
                    "p_intruder": round(p_text[where], 4),
                }
            )
        accuracy = float(np.mean([i["correct"] for i in items]))
        chance = float(np.mean([1.0 / i["n_texts"] for i in items]))
        details = self._details(items, auc(probabilities, labels), "logprobs" if all_logprobs else "votes")
        details["raw_accuracy"] = float(np.mean([i["raw_accuracy"] for i in items]))
        return ScoreOutcome(Status.OK.value, score=accuracy, chance=chance, details=details, **tokens)

    def _single(
        self,
        rounds: list[tuple[list[str], int]],
        replies: list[tuple[int, list[float] | None]],
        tokens: dict[str, Any],
    ) -> ScoreOutcome:
        """One question per round, in its seeded order (`intruder_debias` off)."""
        items, probabilities, labels = [], [], []
        has_probabilities = True
        for (texts, where), (answer, p) in zip(rounds, replies, strict=True):
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
        details = self._details(items, auc_value, "logprobs" if has_probabilities else "hard_answers")
        return ScoreOutcome(Status.OK.value, score=accuracy, chance=chance, details=details, **tokens)
