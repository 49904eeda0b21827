"""Shared machinery of the classification scorers (detection, fuzzing).

The model sees a shuffled batch of test contexts and answers, per context, 1 (the explanation
applies) or 0 as JSON `{"answers": [...]}`; the reply must have exactly one 0/1 (or boolean) per
context. A batch whose reply is missing, unparsable or of the wrong length makes the feature's
score a failure with that status: it is never counted as a wrong answer, let alone a 0.
Score = balanced accuracy (chance 0.5, also when the classes are unbalanced); precision, recall,
F1 and the confusion counts go in details. Where the backend returns token logprobs (the embedded
backend; vLLM and other OpenAI-compatible servers with chat `logprobs`), each answer's P(1) is read from
the alternatives at the token that wrote it, P(1) / (P(1) + P(0)), and details.auc is the ROC AUC of those
probabilities against the truth (`auc_method` 'logprobs'); the report shows it beside balanced accuracy.
Where they are missing (a server that ignores the field, an answer whose alternatives lack 0 and 1), the
hard answers stay the result: details.auc is None and `auc_method` says why.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from autointerp.llm.base import ChatResult, Status, TokenLogprob
from autointerp.prompting import load_prompt
from autointerp.score.base import FeatureToScore, ScoreOutcome, Scorer, TestContext
from autointerp.score.metrics import auc, classification_metrics

#: Alternatives per reply token asked for (OpenAI's and vLLM's cap is 20).
TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Shown:
    """One context as shown to the model, with the answer that counts as correct."""

    context: TestContext
    text: str
    label: bool          # True: the explanation applies (detection) / the marks are right (fuzzing)
    variant: str         # 'activating', 'nonactivating', 'mismarked'


def one_line(text: str) -> str:
    return " ".join(text.split())


def answers_schema(n: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"answers": {"type": "array", "minItems": n, "maxItems": n, "items": {"enum": [0, 1]}}},
        "required": ["answers"],
    }


def reply_steps(result: ChatResult) -> tuple[list[TokenLogprob], int] | None:
    """The reply's logprob steps and the text offset where the first one starts; None when the tokens do not
    spell the reply (a prefill is fine: it is a prefix) or there are none."""
    steps = result.token_logprobs
    if not steps or result.text is None:
        return None
    generated = "".join(step.token for step in steps)
    # vLLM lists the end-of-turn token (e.g. '<|im_end|>') among the reply's logprobs but leaves it out of
    # the text: drop trailing steps the text does not end with (at most two, so a real mismatch still fails).
    for _ in range(2):
        if result.text.endswith(generated) or not steps:
            break
        steps = steps[:-1]
        generated = "".join(step.token for step in steps)
    if not steps or not result.text.endswith(generated):
        return None
    return steps, len(result.text) - len(generated)


def answer_probabilities(result: ChatResult, n: int) -> list[float] | None:
    """P(answer = 1) for each of the n answers of a reply, from its token logprobs; None when unavailable.

    The answers are the 0/1 characters of the `answers` array. For the token that wrote one, the
    alternatives that differ from it only in that character (e.g. "1" vs "0", or ",1" vs ",0") give
    P(1) / (P(1) + P(0)); an alternative missing from the top-N counts as 0, both missing is None.
    """
    aligned = reply_steps(result)
    if aligned is None:
        return None
    steps, offset = aligned
    starts, position = [], offset
    for step in steps:
        starts.append(position)
        position += len(step.token)
    text = result.text
    key = text.find('"answers"')
    bracket = text.find("[", key) if key >= 0 else -1
    if bracket < 0:
        return None
    out: list[float] = []
    index = bracket + 1
    while index < len(text) and text[index] != "]" and len(out) < n:
        char = text[index]
        if char in "01":
            if index < offset:
                return None  # written by the prefill, not by the model
            k = max(i for i, start in enumerate(starts) if start <= index)
            token, j = steps[k].token, index - starts[k]
            mass = {digit: math.exp(steps[k].top[token[:j] + digit + token[j + 1 :]])
                    if token[:j] + digit + token[j + 1 :] in steps[k].top else 0.0 for digit in "01"}
            if mass["0"] + mass["1"] <= 0:
                return None
            out.append(mass["1"] / (mass["0"] + mass["1"]))
        index += 1
    return out if len(out) == n else None


def parse_answers(result: ChatResult, n: int) -> tuple[list[bool] | None, str | None]:
    """The n answers of a reply, or (None, why not)."""
    if not result.ok:
        return None, f"{result.status.value}: {result.error}"
    answers = result.parsed.get("answers") if isinstance(result.parsed, dict) else None
    if not isinstance(answers, list) or len(answers) != n:
        got = len(answers) if isinstance(answers, list) else type(answers).__name__
        return None, f"expected {n} answers, got {got}"
    out = []
    for value in answers:
        if isinstance(value, bool) or value in (0, 1):
            out.append(bool(value))
        else:
            return None, f"answer {value!r} is not 0/1"
    return out, None


class ClassificationScorer(Scorer):
    """Base of detection and fuzzing: subclasses say how a context is shown and labelled."""

    config_keys: ClassVar[tuple[str, ...]] = ("classify_batch_size", "temperature")
    #: 2: per-context P(yes) from logprobs and AUC in details.
    method_version: ClassVar[int] = 2
    #: Added to the feature seed so detection and fuzzing shuffle differently but reproducibly.
    seed_offset: ClassVar[int] = 0

    def prepare(self, item: FeatureToScore, rng: np.random.Generator) -> list[Shown]:
        raise NotImplementedError

    async def score(self, item: FeatureToScore) -> ScoreOutcome:
        assert self.client is not None
        rng = np.random.default_rng(item.seed + self.seed_offset)
        shown = self.prepare(item, rng)
        if not shown:
            return ScoreOutcome(Status.UNDEFINED.value, error="no test contexts for this feature")
        order = rng.permutation(len(shown))
        shown = [shown[i] for i in order]
        size = self.config.classify_batch_size
        batches = [shown[i : i + size] for i in range(0, len(shown), size)]
        template = load_prompt(self.prompt_name or "")

        async def ask(batch: list[Shown]) -> ChatResult:
            text = template.render(explanation=item.explanation, n=len(batch), texts=[s.text for s in batch])
            return await self.client.chat(  # type: ignore[union-attr]
                [{"role": "user", "content": text}], json_schema=answers_schema(len(batch)),
                max_tokens=4 * len(batch) + 32, temperature=self.config.temperature, seed=self.config.seed,
                top_logprobs=TOP_LOGPROBS,
            )

        results = await asyncio.gather(*[ask(b) for b in batches])
        tokens = {
            "prompt_tokens": sum(r.prompt_tokens for r in results),
            "completion_tokens": sum(r.completion_tokens for r in results),
            "latency_s": sum(r.latency_s for r in results),
        }
        predictions: list[bool] = []
        probabilities: list[float] | None = []
        for batch, result in zip(batches, results, strict=True):
            answers, error = parse_answers(result, len(batch))
            if answers is None:
                status = result.status.value if not result.ok else Status.SCHEMA_ERROR.value
                n_bad = sum(parse_answers(r, len(b))[0] is None for b, r in zip(batches, results, strict=True))
                return ScoreOutcome(status, error=f"{n_bad}/{len(batches)} batches unusable; first: {error}",
                                    details={"n_batches": len(batches), "raw_text": (result.text or "")[:500]},
                                    **tokens)
            predictions.extend(answers)
            p_yes = answer_probabilities(result, len(batch))
            probabilities = None if p_yes is None or probabilities is None else probabilities + p_yes
        labels = [s.label for s in shown]
        metrics = classification_metrics(labels, predictions)
        if probabilities is not None:
            auc_value, auc_method = auc(probabilities, labels), "logprobs"
            auc_note = None if auc_value is not None else "undefined: the test set lacks one of the two classes"
        else:
            auc_value, auc_method = None, "hard_answers"
            auc_note = "not computed: the backend returned no usable logprobs, so only the hard 0/1 answers count"
        by_variant_group: dict[str, dict[str, int]] = {}
        for s, p in zip(shown, predictions, strict=True):
            key = f"{s.variant}:{s.context.group}"
            entry = by_variant_group.setdefault(key, {"n": 0, "said_yes": 0})
            entry["n"] += 1
            entry["said_yes"] += int(p)
        details = {
            **metrics.as_dict(),
            "auc": auc_value,
            "auc_method": auc_method,
            "auc_note": auc_note,
            "n_batches": len(batches),
            "batch_size": size,
            "by_variant_group": by_variant_group,
            "items": [{"context_id": s.context.context_id, "variant": s.variant, "group": s.context.group,
                       "label": int(s.label), "predicted": int(p),
                       "p_yes": None if probabilities is None else round(probabilities[i], 4)}
                      for i, (s, p) in enumerate(zip(shown, predictions, strict=True))],
        }
        if metrics.balanced_accuracy is None:
            return ScoreOutcome(Status.UNDEFINED.value, chance=0.5, details=details,
                                error="balanced accuracy undefined: the test set lacks one of the two classes",
                                **tokens)
        return ScoreOutcome(Status.OK.value, score=metrics.balanced_accuracy, chance=0.5, details=details, **tokens)
