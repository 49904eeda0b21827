"""The intruder question asked of a judge's likelihoods instead of its answer (`intruder_likelihood`).

Why: the chat intruder scorer (`intruder.py`) needs a judge that can answer a multiple-choice question, and
the models that ship through pip cannot: SmolLM2-135M and Qwen2.5-0.5B answer "text 1" whatever the texts
say, and debiasing their answer positions leaves flat probabilities (docs/validity.md). Small LMs are good
at in-context prediction, though (induction, copying): a text that shares what the others share is easier
to predict after reading them. So each text is scored by how much the other texts of its round help the
judge predict it, and the intruder is the text they help least.

The rounds are `IntruderScorer.round_contexts`, the same as the chat scorer's (same seed, same
contexts, intruder and order; marks on the firing tokens, the intruder marked on as many random tokens).
For each text j of a round two prompts are built as token ids with the judge's tokenizer, plain text
without a chat template (a document that base and instruct models alike continue):

    context prompt   header (prompts/intruder_likelihood_v1.j2), the round's other texts as
                     "Text 1: ...", "Text 2: ...", ... in the seeded order, then text j as "Text n+1: ..."
    baseline prompt  the same header, then text j alone, as "Text n+1: ..."

Each text is tokenised once, piecewise (the runs of plain text, the `<<` and `>>` marks and the marked
runs separately), so its token ids are the same in every prompt and the marked tokens' positions are
known exactly; the shown string is the chat scorer's (`one_line(mark(...))`). The gain of text j is the
mean, over its scored positions, of the teacher-forced logprob of its own token in the context prompt
minus that in the baseline prompt. Scored positions: the tokens inside the marks with
`intruder_highlight` (what the feature fires on; docs/validity.md gives the harness figures behind this
choice over all tokens, which details also report as `accuracy_all_tokens`), all tokens of the text
without. The prediction is the text with the lowest gain (ties share the credit); score = accuracy over
the rounds, chance 1/(n+1); details.auc is the ROC AUC over every text of every round, the intruder
positive and -gain its score.

Every text is scored in the same (last) position after the same header, so there is no answer position
to prefer and nothing to debias. Nothing is sampled (temperature plays no part). Requests: 2(n+1) per
round, prompt-logprob requests with top_n 0; a baseline prompt is asked once per feature when the same
text recurs. Any failed request makes the feature's score that failure (status and error), never a wrong
answer; a backend without prompt logprobs or a tokenizer gives `no_logprobs`. Like the chat scorer it
reads no explanation and is stored once per feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from autointerp.llm.base import Status
from autointerp.prompting import load_prompt
from autointerp.score.base import FeatureToScore, ScoreOutcome, register_scorer
from autointerp.score.intruder import SEED_OFFSET, IntruderScorer, Marked, credit
from autointerp.score.likelihood import own_token_logprobs
from autointerp.score.metrics import auc

#: What a segment of a shown text is: plain text, a mark (`<<` / `>>`) or text inside the marks.
PLAIN, MARK, INSIDE = "plain", "mark", "inside"

NO_LOGPROBS_FIX = (
    "intruder_likelihood reads teacher-forced prompt logprobs with the judge's tokenizer: use the embedded "
    "backend (--llm local:smollm2), or a vLLM server with --tokenizer PATH (its model's tokenizer)"
)


def shown_segments(tokens: tuple[str, ...], marks: frozenset[int], highlight: bool) -> list[tuple[str, str]]:
    """A text as the intruder scorers show it, cut into (text, kind) segments: runs of plain text, the marks
    and the marked runs. They join to exactly `one_line(mark(tokens, marks))` (or `one_line(text)` without
    highlight): whitespace is collapsed to one space across segment boundaries and stripped at the ends,
    the collapsed space kept in the segment where its run began."""
    pieces: list[tuple[str, str]] = []
    for i, token in enumerate(tokens):
        inside = highlight and i in marks
        if inside and (i - 1) not in marks:
            pieces.append(("<<", MARK))
        pieces.append((token, INSIDE if inside else PLAIN))
        if inside and (i + 1) not in marks:
            pieces.append((">>", MARK))
    out: list[list[Any]] = []  # [text, kind] per segment, adjacent pieces of one kind merged
    space_at: int | None = None  # segment where the pending whitespace run began
    for text, kind in pieces:
        if not out or out[-1][1] != kind or kind == MARK:
            out.append(["", kind])
        for char in text:
            if char.isspace():
                if space_at is None and any(t for t, _ in out):
                    space_at = len(out) - 1
                continue
            if space_at is not None:
                out[space_at][0] += " "
                space_at = None
            out[-1][0] += char
    return [(t, k) for t, k in out if t]


@dataclass(frozen=True)
class TokenisedText:
    """One shown text as token ids, and which of them are scored."""

    ids: tuple[int, ...]
    marked: tuple[int, ...]  # indices into ids of the tokens inside the marks

    def scored(self, highlight: bool) -> tuple[int, ...]:
        """Marked tokens with highlight (all tokens if a text had none), else all tokens."""
        return self.marked if highlight and self.marked else tuple(range(len(self.ids)))


def tokenise_text(tokenizer: Any, segments: list[tuple[str, str]]) -> TokenisedText:
    """Token ids of a text, segment by segment, with a space before the first one (it follows "Text k:")."""
    ids: list[int] = []
    marked: list[int] = []
    for index, (text, kind) in enumerate(segments):
        piece = [int(t) for t in tokenizer.encode((" " if index == 0 else "") + text, add_special_tokens=False)]
        if kind == INSIDE:
            marked.extend(range(len(ids), len(ids) + len(piece)))
        ids.extend(piece)
    return TokenisedText(tuple(ids), tuple(marked))


def mean_gain(context: list[float], baseline: list[float], positions: tuple[int, ...]) -> float:
    """Mean over `positions` of context - baseline logprob (both indexed by the text's own token index)."""
    return float(np.mean([context[p] - baseline[p] for p in positions]))


@register_scorer
class IntruderLikelihoodScorer(IntruderScorer):
    name: ClassVar[str] = "intruder_likelihood"
    prompt_name: ClassVar[str | None] = "intruder_likelihood_v1"
    needs_explanation: ClassVar[bool] = False
    # temperature and debiasing play no part: nothing is sampled, and every text is scored in one position
    config_keys: ClassVar[tuple[str, ...]] = ("intruder_n_activating", "intruder_rounds", "intruder_highlight")

    def config_for_hash(self) -> dict[str, Any]:
        return self.config.hashed_fields(self.config_keys)

    def _prompt_parts(self) -> tuple[Any, list[int], dict[int, list[int]], list[int]] | None:
        """(tokenizer, header ids, "Text k:" ids by k, newline ids), built once; None without a tokenizer."""
        assert self.client is not None
        if not hasattr(self, "_parts"):
            tokenizer = self.client.tokenizer()
            if tokenizer is None:
                self._parts = None
            else:
                header = load_prompt(self.prompt_name or "").render(highlight=self.config.intruder_highlight)
                header_ids = [int(t) for t in tokenizer.encode(header.rstrip("\n") + "\n\n", add_special_tokens=True)]
                labels = {k: [int(t) for t in tokenizer.encode(f"Text {k}:", add_special_tokens=False)]
                          for k in range(1, self.config.intruder_n_activating + 2)}
                newline = [int(t) for t in tokenizer.encode("\n", add_special_tokens=False)]
                self._parts = (tokenizer, header_ids, labels, newline)
        return self._parts

    async def score(self, item: FeatureToScore) -> ScoreOutcome:
        assert self.client is not None
        if not getattr(self.client, "supports_prompt_logprobs", False):
            return ScoreOutcome(Status.NO_LOGPROBS.value, error=f"the judge gives no prompt logprobs; {NO_LOGPROBS_FIX}")
        parts = self._prompt_parts()
        if parts is None:
            return ScoreOutcome(Status.NO_LOGPROBS.value, error=f"the judge's tokenizer is unknown; {NO_LOGPROBS_FIX}")
        tokenizer, header, labels, newline = parts
        rounds = self.round_contexts(item, np.random.default_rng(item.seed + SEED_OFFSET))
        if not rounds:
            return ScoreOutcome(
                Status.UNDEFINED.value,
                error="needs at least 2 activating test contexts and 1 intruder context",
            )
        highlight = self.config.intruder_highlight
        tokenised: dict[Marked, TokenisedText] = {}
        for texts, _ in rounds:
            for text in texts:
                if text not in tokenised:
                    segments = shown_segments(text.context.tokens, text.marks, highlight)
                    tokenised[text] = tokenise_text(tokenizer, segments)
        if any(not t.ids for t in tokenised.values()):
            return ScoreOutcome(Status.UNDEFINED.value, error="a text of a round has no tokens (whitespace only)")

        # Each prompt ends with text j; ask its own tokens' logprobs at every position of it (top_n 0).
        prompts: dict[tuple[int, ...], int] = {}  # prompt ids -> index into `requests` (baselines recur)
        requests: list[tuple[list[int], list[int]]] = []

        def ask(ids: list[int], text: TokenisedText) -> int:
            key = tuple(ids)
            if key not in prompts:
                start = len(ids) - len(text.ids)
                prompts[key] = len(requests)
                requests.append((ids, list(range(start, len(ids)))))
            return prompts[key]

        asked: list[list[tuple[int, int]]] = []  # per round, per text: (context request, baseline request)
        for texts, _ in rounds:
            m = len(texts)
            per_text = []
            for j, text in enumerate(texts):
                own = tokenised[text]
                ids = list(header)
                for k, other in enumerate(t for i, t in enumerate(texts) if i != j):
                    ids += labels[k + 1] + list(tokenised[other].ids) + newline
                last = labels[m] + list(own.ids)
                per_text.append((ask(ids + last, own), ask(list(header) + last, own)))
            asked.append(per_text)
        base = {"method": "likelihood", "n_requests": len(requests)}
        values, usage = await own_token_logprobs(self.client, requests, base, NO_LOGPROBS_FIX)
        if isinstance(values, ScoreOutcome):
            return values
        return self._finish(rounds, asked, values, tokenised, base, usage)

    def _finish(
        self,
        rounds: list[tuple[list[Marked], int]],
        asked: list[list[tuple[int, int]]],
        values: list[list[float]],
        tokenised: dict[Marked, TokenisedText],
        base: dict[str, Any],
        usage: dict[str, Any],
    ) -> ScoreOutcome:
        """Gains, predictions and the score from each request's own-token logprobs `values` (see the module
        docstring)."""
        highlight = self.config.intruder_highlight
        items, scores, labels = [], [], []
        all_tokens_correct = []
        for (texts, where), per_text in zip(rounds, asked, strict=True):
            gains, gains_all = [], []
            for text, (context, baseline) in zip(texts, per_text, strict=True):
                own = tokenised[text]
                c, b = values[context], values[baseline]
                gains.append(mean_gain(c, b, own.scored(highlight)))
                gains_all.append(mean_gain(c, b, tuple(range(len(own.ids)))))
            m = len(texts)
            scores += [-g for g in gains]
            labels += [j == where for j in range(m)]
            all_tokens_correct.append(credit([-g for g in gains_all], where))
            items.append({
                "n_texts": m,
                "intruder": where + 1,
                "gains": [round(g, 4) for g in gains],
                "prediction": int(np.argmin(gains)) + 1,
                "correct": credit([-g for g in gains], where),
                "scored_tokens": [len(tokenised[t].scored(highlight)) for t in texts],
            })
        accuracy = float(np.mean([i["correct"] for i in items]))
        chance = float(np.mean([1.0 / i["n_texts"] for i in items]))
        details = {
            **base,
            "accuracy": accuracy,
            "n_rounds": len(items),
            "n_activating": items[0]["n_texts"] - 1,
            "highlight": highlight,
            "negatives": self.config.negatives,
            "scored": "marked tokens" if highlight else "all tokens",
            "auc": auc(scores, labels),
            "auc_method": "likelihood",
            # the same rounds with every token of each text scored: the alternative the design was chosen over
            "accuracy_all_tokens": float(np.mean(all_tokens_correct)),
            "rounds": items,
        }
        return ScoreOutcome(Status.OK.value, score=accuracy, chance=chance, details=details, **usage)
