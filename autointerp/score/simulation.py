"""Simulation scoring (Bills et al. 2023): can a model predict per-token activations from the label?

Method (logprobs, "all at once"): the prompt is built directly as token ids with the simulator's
own tokenizer, so every slot position is exact: a shared prefix (the chat-templated instructions and
explanation from `prompts/simulation_v1.j2`), then, per context token, `[token] TAB [placeholder] NL`.
The placeholder is "0", the value of almost every token. Bills et al. used the word "unknown",
but a small simulator mostly copies whatever fills the earlier slots: with "unknown" SmolLM2 put
62-100 % of the mass on "unknown" again and the digits fell out of the top-20 at most slots (measured
with vLLM and locally), leaving nothing to read. With "0" the teacher-forced context is what a
calibrated simulator would mostly have written itself, every slot's top-20 holds the digits, and
the renormalised digit distribution still carries the model's guess of the value. We read the top-N logprobs at each slot, keep the value tokens, renormalise,
and take the expected value. Nothing the model predicts is fed back (teacher forcing), so one forward
pass scores every token of a request.

Scale: 0-9, not 0-10. SmolLM2's tokenizer (and many others) writes "10" as two tokens, "1" "0",
so P("1") at a slot would mix "1" and the start of "10"; with single-digit values every value is
exactly one token. Expected values are multiplied by 10/9 so predictions and true activations
(normalised to 0-10 by the feature's max activation) share the 0-10 range; Pearson correlation is
unchanged by this affine map, it only keeps stored predictions readable. Recorded in details.scale.

Slots where no value token made the top-N are left out of the correlation (their count is in
details); if fewer than `min_slot_coverage` of slots have one, the score is 'undefined' (the model
gave no usable prediction), never a 0. Score = Pearson correlation over all tokens of all scored
contexts together (activating and non-activating), as Bills et al.; details.by_group holds the
correlation of each group (top, each quantile) together with the non-activating contexts.

Fallback when `client.supports_prompt_logprobs` is False (or the tokenizer is unknown): one chat
request per context asking for `{"activations": [ints]}`, validated for length and range; labelled
`method: json_fallback` in details.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, ClassVar

from autointerp.llm.base import LogprobsResult, Status
from autointerp.prompting import load_prompt
from autointerp.score.base import FeatureToScore, ScoreOutcome, Scorer, TestContext, register_scorer
from autointerp.score.metrics import pearson

SCALE_MAX = 9
PLACEHOLDER = "0"
TRUE_SCALE = 10.0


def chat_prefix_ids(tokenizer: Any, user_text: str) -> list[int]:
    """Token ids of a chat with one user message, ending where the assistant's reply begins."""
    messages = [{"role": "user", "content": user_text}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys") and "input_ids" in ids:  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer.encode(user_text + "\n\n", add_special_tokens=True)]


def single_token(tokenizer: Any, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


class SlotLayout:
    """The special token ids of the slot layout for one tokenizer (None when it cannot be built)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tab = single_token(tokenizer, "\t")
        self.newline = single_token(tokenizer, "\n")
        self.placeholder = [int(i) for i in tokenizer.encode(PLACEHOLDER, add_special_tokens=False)]
        self.values = [single_token(tokenizer, str(v)) for v in range(SCALE_MAX + 1)]

    @property
    def problem(self) -> str | None:
        if self.tab is None or self.newline is None:
            return "TAB or newline is not a single token in the simulator's tokenizer"
        if any(v is None for v in self.values):
            return f"the values 0..{SCALE_MAX} are not single tokens in the simulator's tokenizer"
        return None

    def append_context(self, ids: list[int], context: TestContext) -> list[int]:
        """Append one context's lines to `ids`; return the slot positions (one per token)."""
        slots = []
        for token_id in context.token_ids:
            ids.extend((int(token_id), self.tab))
            slots.append(len(ids))
            ids.extend(self.placeholder)
            ids.append(self.newline)
        ids.append(self.newline)  # a blank line between contexts
        return slots


def expected_value(top: dict[int, float], value_ids: list[int]) -> float | None:
    """Expected 0..SCALE_MAX value from the value tokens among `top` (renormalised); None if none."""
    probs = [(v, math.exp(top[t])) for v, t in enumerate(value_ids) if t in top]
    total = sum(p for _, p in probs)
    if not probs or total <= 0:
        return None
    return sum(v * p for v, p in probs) / total


def true_normalised(context: TestContext, max_activation: float) -> list[float]:
    """True activations on the 0-10 scale (negative values clipped to 0, as "not firing")."""
    if max_activation <= 0:
        return [0.0] * len(context.activations)
    return [TRUE_SCALE * min(max(a, 0.0), max_activation) / max_activation for a in context.activations]


def correlation_details(
    contexts: list[TestContext], truths: list[list[float]], preds: list[list[float | None]]
) -> tuple[float | None, dict[str, Any]]:
    """Overall Pearson over all kept slots, plus each group's correlation with the non-activating ones."""
    def flatten(indices: list[int]) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for i in indices:
            for t, p in zip(truths[i], preds[i], strict=True):
                if p is not None:
                    xs.append(t)
                    ys.append(p)
        return xs, ys

    everything = list(range(len(contexts)))
    score = pearson(*flatten(everything))
    non = [i for i, c in enumerate(contexts) if not c.activating]
    groups = sorted({c.group for c in contexts if c.activating})
    by_group = {g: pearson(*flatten([i for i, c in enumerate(contexts) if c.group == g] + non)) for g in groups}
    return score, {"by_group": by_group}


@register_scorer
class SimulationScorer(Scorer):
    name: ClassVar[str] = "simulation"
    prompt_name: ClassVar[str | None] = "simulation_v1"
    config_keys: ClassVar[tuple[str, ...]] = (
        "simulation_contexts_per_request", "top_logprobs", "min_slot_coverage", "temperature",
    )

    @property
    def use_logprobs(self) -> bool:
        return bool(getattr(self.client, "supports_prompt_logprobs", False)) and self._layout_problem() is None

    def _layout(self) -> SlotLayout | None:
        """The slot layout of the client's tokenizer, built once (it encodes a dozen strings; per item it
        was a measurable share of the score stage's CPU)."""
        assert self.client is not None
        if not hasattr(self, "_cached_layout"):
            tokenizer = self.client.tokenizer()
            self._cached_layout = None if tokenizer is None else SlotLayout(tokenizer)
        return self._cached_layout

    def _layout_problem(self) -> str | None:
        layout = self._layout()
        if layout is None:
            return "the simulator's tokenizer is unknown (pass --tokenizer for an HTTP server)"
        return layout.problem

    @property
    def prompt_hash(self) -> str:
        # The two methods give different numbers: they must never share a score key.
        method = "logprobs" if self.use_logprobs else "json"
        json_hash = load_prompt("simulation_json_v1").hash
        return f"{super().prompt_hash}-{method}" + ("" if self.use_logprobs else f"-{json_hash}")

    async def score(self, item: FeatureToScore) -> ScoreOutcome:
        contexts = [c for c in item.contexts if c.tokens]
        if not contexts:
            return ScoreOutcome(Status.UNDEFINED.value, error="no test contexts for this feature")
        truths = [true_normalised(c, item.max_activation) for c in contexts]
        if self.use_logprobs:
            return await self._score_logprobs(item, contexts, truths)
        reason = "client has no prompt logprobs" if not getattr(self.client, "supports_prompt_logprobs", False) \
            else self._layout_problem()
        return await self._score_json(item, contexts, truths, reason or "")

    # ------------------------------------------------------------------ logprob method
    async def _score_logprobs(
        self, item: FeatureToScore, contexts: list[TestContext], truths: list[list[float]]
    ) -> ScoreOutcome:
        assert self.client is not None
        tokenizer = self.client.tokenizer()
        layout = self._layout()
        assert layout is not None
        prompt = load_prompt(self.prompt_name or "").render(
            explanation=item.explanation, scale_max=SCALE_MAX, placeholder=PLACEHOLDER
        )
        prefix = chat_prefix_ids(tokenizer, prompt.rstrip("\n"))
        per_request = self.config.simulation_contexts_per_request
        chunks = [list(range(i, min(i + per_request, len(contexts)))) for i in range(0, len(contexts), per_request)]
        requests = []
        for chunk in chunks:
            ids = list(prefix)
            slots = [layout.append_context(ids, contexts[i]) for i in chunk]
            requests.append((chunk, ids, slots))
        results: list[LogprobsResult] = await asyncio.gather(*[
            self.client.prompt_logprobs(ids, [p for s in slots for p in s], top_n=self.config.top_logprobs)
            for _, ids, slots in requests
        ])
        prompt_tokens = sum(r.prompt_tokens or len(ids) for r, (_, ids, _) in zip(results, requests, strict=True))
        latency = sum(r.latency_s for r in results)
        base = {"method": "logprobs", "scale": self._scale_note(), "n_requests": len(requests),
                "contexts_per_request": per_request, "prefix_tokens": len(prefix)}
        failed = [r for r in results if not r.ok]
        if failed:
            return ScoreOutcome(failed[0].status.value, error=f"{len(failed)}/{len(results)} requests failed: "
                                f"{failed[0].error}", details=base, prompt_tokens=prompt_tokens, latency_s=latency)
        value_ids = [int(v) for v in layout.values if v is not None]
        preds: list[list[float | None]] = [[] for _ in contexts]
        for (chunk, _, slots), result in zip(requests, results, strict=True):
            n_slots = sum(len(s) for s in slots)
            if len(result.top_logprobs) != n_slots:
                return ScoreOutcome(Status.SERVER_ERROR.value, details=base, prompt_tokens=prompt_tokens,
                                    error=f"asked logprobs at {n_slots} positions, got {len(result.top_logprobs)}")
            tops = iter(result.top_logprobs)
            for i, context_slots in zip(chunk, slots, strict=True):
                for _ in context_slots:
                    ev = expected_value(next(tops), value_ids)  # every backend returns {token id: logprob}
                    preds[i].append(None if ev is None else ev * TRUE_SCALE / SCALE_MAX)
        return self._finish(contexts, truths, preds, base, prompt_tokens, 0, latency)

    @staticmethod
    def _scale_note() -> str:
        return f"simulator values 0-{SCALE_MAX} (single tokens), expected value x 10/{SCALE_MAX} -> 0-10"

    def _finish(
        self,
        contexts: list[TestContext],
        truths: list[list[float]],
        preds: list[list[float | None]],
        details: dict[str, Any],
        prompt_tokens: int,
        completion_tokens: int,
        latency: float,
    ) -> ScoreOutcome:
        n_slots = sum(len(p) for p in preds)
        n_kept = sum(1 for p in preds for v in p if v is not None)
        coverage = n_kept / n_slots if n_slots else 0.0
        score, extra = correlation_details(contexts, truths, preds)
        details = {
            **details,
            **extra,
            "n_contexts": len(contexts),
            "n_activating": sum(c.activating for c in contexts),
            "n_tokens": n_slots,
            "slot_coverage": coverage,
            "contexts": [
                {"context_id": c.context_id, "group": c.group,
                 "true": [round(v, 3) for v in t], "predicted": [None if v is None else round(v, 3) for v in p]}
                for c, t, p in zip(contexts, truths, preds, strict=True)
            ],
        }
        common = {"chance": 0.0, "details": details, "prompt_tokens": prompt_tokens,
                  "completion_tokens": completion_tokens, "latency_s": latency}
        if coverage < self.config.min_slot_coverage:
            return ScoreOutcome(Status.UNDEFINED.value, error=f"value tokens were in the simulator's top-"
                                f"{self.config.top_logprobs} at only {coverage:.0%} of slots "
                                f"(need {self.config.min_slot_coverage:.0%})", **common)
        if score is None:
            flat_true = [v for t in truths for v in t]
            why = "true activations are constant (all zero?)" if len(set(flat_true)) <= 1 else \
                "predictions are constant"
            return ScoreOutcome(Status.UNDEFINED.value, error=f"correlation undefined: {why}", **common)
        return ScoreOutcome(Status.OK.value, score=score, **common)

    # ------------------------------------------------------------------ JSON fallback
    async def _score_json(
        self, item: FeatureToScore, contexts: list[TestContext], truths: list[list[float]], reason: str
    ) -> ScoreOutcome:
        assert self.client is not None
        template = load_prompt("simulation_json_v1")

        async def one(context: TestContext) -> tuple[Any, list[float | None] | None, str | None]:
            n = len(context.tokens)
            schema = {
                "type": "object",
                "properties": {"activations": {"type": "array", "minItems": n, "maxItems": n,
                                               "items": {"type": "integer", "minimum": 0, "maximum": SCALE_MAX}}},
                "required": ["activations"],
            }
            text = template.render(explanation=item.explanation, n_tokens=n, scale_max=SCALE_MAX,
                                   tokens_json=json.dumps(list(context.tokens), ensure_ascii=False))
            result = await self.client.chat(  # type: ignore[union-attr]
                [{"role": "user", "content": text}], json_schema=schema, max_tokens=4 * n + 32,
                temperature=self.config.temperature, seed=self.config.seed,
            )
            if not result.ok:
                return result, None, f"{result.status.value}: {result.error}"
            values = result.parsed.get("activations") if isinstance(result.parsed, dict) else None
            if not isinstance(values, list) or len(values) != n or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= SCALE_MAX for v in values
            ):
                return result, None, f"schema_error: expected {n} integers 0-{SCALE_MAX}, got {str(values)[:200]}"
            return result, [v * TRUE_SCALE / SCALE_MAX for v in values], None

        outcomes = await asyncio.gather(*[one(c) for c in contexts])
        prompt_tokens = sum(r.prompt_tokens for r, _, _ in outcomes)
        completion_tokens = sum(r.completion_tokens for r, _, _ in outcomes)
        latency = sum(r.latency_s for r, _, _ in outcomes)
        base = {"method": "json_fallback", "fallback_reason": reason, "scale": f"simulator values 0-{SCALE_MAX}, "
                f"x 10/{SCALE_MAX} -> 0-10", "n_requests": len(contexts)}
        errors = [(r, e) for r, _, e in outcomes if e is not None]
        if errors:
            result, error = errors[0]
            status = result.status.value if not result.ok else Status.SCHEMA_ERROR.value
            return ScoreOutcome(status, error=f"{len(errors)}/{len(contexts)} replies unusable; first: {error}",
                                details=base, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                latency_s=latency)
        preds: list[list[float | None]] = [list(p) for _, p, _ in outcomes if p is not None]
        return self._finish(contexts, truths, preds, base, prompt_tokens, completion_tokens, latency)
