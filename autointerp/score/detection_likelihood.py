"""Detection asked of a judge's likelihoods instead of its answers (`detection_likelihood`).

Why: the chat detection scorer (`detection.py`) needs a judge that can say whether a description fits a
text, and the models that ship through pip cannot: with SmolLM2-135M its answers and its P(yes) are at
chance under right and shuffled labels alike (docs/validity.md). What a small LM does well is predict text,
and a description that fits a text makes some of the text's tokens easier to predict (those it names, or
words of its topic). So each test context is scored by how much the label, stated before it, helps the
judge predict it; the contexts the label helps most are called activating.

Test contexts are the ones `detection` sees (the base machinery's draw: activating ones from the top and
every quantile, and random or hard negatives per `--negatives`). For each context two prompts are built as
token ids with the judge's tokenizer, plain text without a chat template:

    label prompt     prompts/detection_likelihood_v1.j2 with the label ('Texts in which a feature of a
                     language model fires. The feature is described as "<label>".'), a blank line,
                     "Text:", the context
    neutral prompt   the same with an empty description (`described as ""`), a blank line, "Text:", the
                     context

The context is `one_line(text)` (what detection shows), tokenised once with a leading space, so its ids are
identical in both prompts. The neutral header keeps the label header's words and drops only the label:
stating *some* description moves every token's logprob (by about as much for a wrong label as for the right
one), and a neutral header of the same form cancels that part. A token's gain is its teacher-forced logprob
in the label prompt minus that in the neutral prompt; the context's gain is its largest token gain (the
token the label helps most: a feature fires on some tokens, not on the whole text), the mean over its
tokens is kept beside it (`gain_mean`, and `mean_gain` metrics in details). docs/validity.md gives the
figures behind both choices (the mean over all tokens and the header without the description sentence did
not separate right from shuffled labels there). The neutral prompt does not depend on the label: its
logprobs are kept per client (bounded, least recently used out), so the shuffled-label null pass and
contexts shared between features ask it once.

Score: the n contexts with the highest gains (n = the activating contexts shown) are predicted activating,
and the score is the balanced accuracy of that prediction (chance 0.5). Tied gains share the credit: a tie
group straddling the cut contributes its expected counts under a uniformly random order, so a judge whose
gains are all equal scores exactly 0.5. details.auc is the ROC AUC of the gains (activating positive, ties
1/2); details.items has each context's gains.

Nothing is sampled (temperature plays no part). Requests: 2 prompt-logprob requests per context (top_n 0),
fewer where the neutral one is cached. Any failed request makes the feature's score that failure (status and
error), never a number; a backend without prompt logprobs or a tokenizer gives `no_logprobs`.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from autointerp.llm.base import Status
from autointerp.prompting import load_prompt
from autointerp.score.base import FeatureToScore, ScoreOutcome, Scorer, TestContext, register_scorer
from autointerp.score.classify import one_line
from autointerp.score.likelihood import own_token_logprobs
from autointerp.score.metrics import auc

NO_LOGPROBS_FIX = (
    "detection_likelihood reads teacher-forced prompt logprobs with the judge's tokenizer: use the embedded "
    "backend (--llm local:smollm2), or a vLLM server with --tokenizer PATH (its model's tokenizer)"
)

#: Neutral-prompt results kept per client: each is a context's token logprobs (~60 floats) keyed by the
#: prompt's ids, so 8,192 entries stay around 10 MB while covering a few hundred features' contexts, enough
#: for the shuffled-label pass that follows the real one.
NEUTRAL_CACHE_ENTRIES = 8192


class NeutralCache:
    """Own-token logprobs of neutral prompts, by prompt ids, least recently used out beyond `max_entries`."""

    def __init__(self, max_entries: int = NEUTRAL_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._values: OrderedDict[tuple[int, ...], tuple[float, ...]] = OrderedDict()

    def get(self, key: tuple[int, ...]) -> tuple[float, ...] | None:
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: tuple[int, ...], value: tuple[float, ...]) -> None:
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self.max_entries:
            self._values.popitem(last=False)

    def __len__(self) -> int:
        return len(self._values)


#: One cache per judge client: a client is one model, and the score command uses the same client for the
#: real and the shuffled-label pass (each pass has its own scorer instance). Weak keys: a closed, dropped
#: client takes its cache with it.
_NEUTRAL_CACHES: weakref.WeakKeyDictionary[Any, NeutralCache] = weakref.WeakKeyDictionary()


def neutral_cache(client: Any) -> NeutralCache:
    """The neutral-prompt cache of `client` (made on first use)."""
    cache = _NEUTRAL_CACHES.get(client)
    if cache is None:
        cache = _NEUTRAL_CACHES[client] = NeutralCache()
    return cache


def expected_confusion(gains: list[float], labels: list[bool]) -> tuple[float, float, float, float]:
    """Expected (tp, fp, tn, fn) when the top-k gains (k = number of positives) are predicted positive and
    ties are ordered uniformly at random: groups of equal gains wholly above the cut count in full, the
    group straddling it counts the chosen share of each of its members."""
    n_pos = sum(labels)
    n_neg = len(labels) - n_pos
    tp = fp = 0.0
    left = float(n_pos)
    for value in sorted(set(gains), reverse=True):
        if left <= 0:
            break
        members = [y for g, y in zip(gains, labels, strict=True) if g == value]
        share = min(1.0, left / len(members))
        tp += share * sum(members)
        fp += share * (len(members) - sum(members))
        left -= share * len(members)
    return tp, fp, n_neg - fp, n_pos - tp


def predicted_share(gains: list[float], k: int) -> list[float]:
    """Per context, the probability that it is among the top k under a uniformly random order of ties."""
    out = [0.0] * len(gains)
    left = float(k)
    for value in sorted(set(gains), reverse=True):
        if left <= 0:
            break
        idx = [i for i, g in enumerate(gains) if g == value]
        share = min(1.0, left / len(idx))
        for i in idx:
            out[i] = share
        left -= share * len(idx)
    return out


@dataclass(frozen=True)
class Context:
    """A test context as the judge reads it: the shown text's token ids."""

    context: TestContext
    ids: tuple[int, ...]


@register_scorer
class DetectionLikelihoodScorer(Scorer):
    name: ClassVar[str] = "detection_likelihood"
    prompt_name: ClassVar[str | None] = "detection_likelihood_v1"
    # nothing is sampled: only which contexts are drawn (the sampling fields and negatives) changes the score
    config_keys: ClassVar[tuple[str, ...]] = ()

    def _prompt_parts(self) -> tuple[Any, list[int]] | None:
        """(tokenizer, ids of the blank line and "Text:" that end both headers), built once; None without a
        tokenizer."""
        assert self.client is not None
        if not hasattr(self, "_parts"):
            tokenizer = self.client.tokenizer()
            self._parts = None if tokenizer is None else (
                tokenizer, [int(t) for t in tokenizer.encode("\n\nText:", add_special_tokens=False)])
        return self._parts

    def header_ids(self, tokenizer: Any, explanation: str) -> list[int]:
        """The header stating `explanation` ("" for the neutral header), as ids, special tokens the tokenizer
        adds included."""
        text = load_prompt(self.prompt_name or "").render(explanation=explanation).strip()
        return [int(t) for t in tokenizer.encode(text, add_special_tokens=True)]

    async def score(self, item: FeatureToScore) -> ScoreOutcome:
        assert self.client is not None
        if not getattr(self.client, "supports_prompt_logprobs", False):
            return ScoreOutcome(Status.NO_LOGPROBS.value, error=f"the judge gives no prompt logprobs; {NO_LOGPROBS_FIX}")
        parts = self._prompt_parts()
        if parts is None:
            return ScoreOutcome(Status.NO_LOGPROBS.value, error=f"the judge's tokenizer is unknown; {NO_LOGPROBS_FIX}")
        tokenizer, text_label = parts
        contexts = []
        n_empty = 0
        for c in item.contexts:
            shown = one_line(c.text)
            if not shown:
                n_empty += 1
                continue
            contexts.append(Context(c, tuple(int(t) for t in tokenizer.encode(" " + shown, add_special_tokens=False))))
        n_pos = sum(c.context.activating for c in contexts)
        if n_pos == 0 or n_pos == len(contexts):
            return ScoreOutcome(Status.UNDEFINED.value, chance=0.5, error="balanced accuracy undefined: the test set "
                                "lacks one of the two classes", details={"n_contexts": len(contexts)})
        label_head = self.header_ids(tokenizer, item.explanation) + text_label
        neutral_head = self.header_ids(tokenizer, "") + text_label
        cache = neutral_cache(self.client)

        # Every label prompt, and each neutral prompt not cached yet, asked once; each prompt ends with its
        # context, whose own tokens' logprobs are asked at every position of it (top_n 0).
        requests: dict[tuple[int, ...], int] = {}  # prompt ids -> the context's length (its last tokens)
        neutral: dict[tuple[int, ...], tuple[float, ...]] = {}  # neutral prompt ids -> logprobs, from the cache
        for c in contexts:
            requests[tuple(label_head) + c.ids] = len(c.ids)
            key = tuple(neutral_head) + c.ids
            cached = cache.get(key)
            if cached is not None:
                neutral[key] = cached
            else:
                requests[key] = len(c.ids)
        asked = [(list(ids), list(range(len(ids) - n, len(ids)))) for ids, n in requests.items()]
        base = {"method": "likelihood", "n_requests": len(asked), "n_neutral_cached": len(neutral)}
        got, usage = await own_token_logprobs(self.client, asked, base, NO_LOGPROBS_FIX)
        if isinstance(got, ScoreOutcome):
            return got
        values = {tuple(ids): tuple(v) for (ids, _), v in zip(asked, got, strict=True)}
        for c in contexts:
            key = tuple(neutral_head) + c.ids
            if key not in neutral:
                neutral[key] = values[key]
                cache.put(key, values[key])
        token_gains = [np.subtract(values[tuple(label_head) + c.ids], neutral[tuple(neutral_head) + c.ids])
                       for c in contexts]
        return self._finish(contexts, token_gains, base, usage, n_empty)

    def _finish(
        self,
        contexts: list[Context],
        token_gains: list[np.ndarray],
        base: dict[str, Any],
        usage: dict[str, Any],
        n_empty: int,
    ) -> ScoreOutcome:
        """Balanced accuracy of the top-n prediction, AUC and per-context details from each context's token
        gains (see the module docstring)."""
        labels = [c.context.activating for c in contexts]
        n_pos, n_neg = sum(labels), len(labels) - sum(labels)
        gains = [float(g.max()) for g in token_gains]
        means = [float(g.mean()) for g in token_gains]
        tp, fp, tn, fn = expected_confusion(gains, labels)
        balanced = (tp / n_pos + tn / n_neg) / 2
        shares = predicted_share(gains, n_pos)
        _, _, mean_tn, mean_fn = expected_confusion(means, labels)
        details = {
            **base,
            "balanced_accuracy": balanced,
            # expected counts (ties split), so they may be fractional; precision = recall since n are predicted
            "true_positive": tp, "false_positive": fp, "true_negative": tn, "false_negative": fn,
            "recall": tp / n_pos, "precision": tp / n_pos,
            "n": len(labels), "n_positive": n_pos, "n_negative": n_neg, "n_empty_skipped": n_empty,
            "auc": auc(gains, labels),
            "auc_method": "likelihood",
            "negatives": self.config.negatives,
            "gain": "largest token gain",
            # the same requests with each context's gain the mean over its tokens: the alternative not chosen
            "mean_gain": {"balanced_accuracy": ((n_pos - mean_fn) / n_pos + mean_tn / n_neg) / 2,
                          "auc": auc(means, labels)},
            "items": [{"context_id": c.context.context_id, "variant": "activating" if y else c.context.kind,
                       "group": c.context.group, "label": int(y), "gain": round(g, 5), "gain_mean": round(m, 5),
                       "top_token": int(np.argmax(t)), "n_tokens": len(c.ids), "predicted": round(s, 4)}
                      for c, y, g, m, t, s in zip(contexts, labels, gains, means, token_gains, shares, strict=True)],
        }
        return ScoreOutcome(Status.OK.value, score=balanced, chance=0.5, details=details, **usage)
