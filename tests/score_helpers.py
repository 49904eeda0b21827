"""Fakes for the score tests: a tiny word tokenizer and an LLM client whose answers follow a rule.

The fake simulator reads the explanation out of the prompt it is given and "knows" which tokens
each explanation describes, so a right label gets perfect predictions and a wrong one does not;
it locates each slot's token from the slot layout (token, TAB, slot), so an off-by-one in the
layout shows up as a lower score.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

import numpy as np

from autointerp.llm.base import ChatResult, LogprobsResult, Status
from autointerp.testing.planted import PlantedFeature

WORDS = [" the", " cat", " sat", " on", " a", " mat", " dog", " ran", " far", " 7", " 42", " blue", ".", " and"]
SPECIAL = {"\t": 1, "\n": 2, "unknown": 3}
DIGITS = {str(d): 10 + d for d in range(10)}
WORD_IDS = {w: 100 + i for i, w in enumerate(WORDS)}
CHAR_BASE = 1000


class FakeTokenizer:
    """Words of WORDS and the slot-layout specials are single tokens; any other text goes char by char."""

    chat_template = None

    def __init__(self) -> None:
        self.vocab = {**SPECIAL, **DIGITS, **WORD_IDS}
        self.inverse = {v: k for k, v in self.vocab.items()}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if text in self.vocab:
            return [self.vocab[text]]
        return [CHAR_BASE + ord(ch) for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.inverse.get(i, chr(i - CHAR_BASE) if i >= CHAR_BASE else "?") for i in ids)

    def __len__(self) -> int:
        return 2000


# What each explanation used in the tests is about: a predicate on a token string.
RULES: dict[str, Callable[[str], bool]] = {
    "cats": lambda tok: tok.strip() == "cat",
    "numbers": lambda tok: tok.strip().isdigit(),
    "dogs": lambda tok: tok.strip() == "dog",
}


def rule_for(explanation: str) -> Callable[[str], bool]:
    for key, rule in RULES.items():
        if key in explanation:
            return rule
    return lambda tok: False


def planted_test_features() -> list[PlantedFeature]:
    return [
        PlantedFeature("cats", lambda i, t: RULES["cats"](t)),
        PlantedFeature("numbers", lambda i, t: RULES["numbers"](t)),
    ]


def fake_documents(n_docs: int = 24, length: int = 48, seed: int = 0) -> list[list[tuple[int, str]]]:
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        words = [WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=length)]
        if d % 3 == 2:  # some documents have no cats or numbers at all (non-activating contexts)
            words = [w for w in words if w.strip() not in ("cat", "7", "42")]
            words = (words * 3)[:length]
        docs.append([(WORD_IDS[w], w) for w in words])
    return docs


class FakeClient:
    """An LLMClient following RULES. `mode` breaks it on purpose: 'garbage' (unparsable chat replies),
    'short' (one answer too few), 'server_error' (every request fails)."""

    def __init__(self, model_name: str = "fake-llm", logprobs: bool = True, mode: str = "ok") -> None:
        self.model_name = model_name
        self.supports_prompt_logprobs = logprobs
        self.concurrency = 8
        self.mode = mode
        self._tokenizer = FakeTokenizer()
        self.chat_calls = 0
        self.logprob_calls = 0

    def tokenizer(self) -> FakeTokenizer:
        return self._tokenizer

    async def aclose(self) -> None:
        return None

    async def check(self) -> None:
        return None

    async def prompt_logprobs(self, token_ids: list[int], positions: list[int], top_n: int = 20) -> LogprobsResult:
        self.logprob_calls += 1
        if self.mode == "server_error":
            return LogprobsResult(Status.SERVER_ERROR, error="HTTP 500: boom")
        text = self._tokenizer.decode(token_ids)
        explanation = re.search(r'Its description: "(.*?)"', text).group(1)
        rule = rule_for(explanation)
        tops = []
        for p in positions:
            assert token_ids[p - 1] == SPECIAL["\t"], "a slot must follow a TAB"
            token = self._tokenizer.decode([token_ids[p - 2]])
            high = rule(token)
            tops.append({
                SPECIAL["unknown"]: math.log(0.5),
                DIGITS["9"]: math.log(0.45 if high else 0.01),
                DIGITS["0"]: math.log(0.01 if high else 0.45),
            })
        return LogprobsResult(Status.OK, positions=list(positions), top_logprobs=tops, prompt_tokens=len(token_ids))

    async def chat(self, messages, *, json_schema=None, max_tokens=256, temperature=0.0, seed=0,
                   top_logprobs=0) -> ChatResult:  # gives no logprobs: the scorers' hard-answer fallback
        self.chat_calls += 1
        content = messages[-1]["content"]
        tokens_in = len(content) // 4
        if self.mode == "server_error":
            return ChatResult(Status.SERVER_ERROR, error="HTTP 500: boom", prompt_tokens=tokens_in)
        if self.mode == "garbage":
            return ChatResult(Status.PARSE_ERROR, text="I think yes", error="reply is not JSON", prompt_tokens=tokens_in)
        explanation = re.search(r'described as: "(.*?)"|Its description: "(.*?)"', content)
        rule = rule_for(next(g for g in explanation.groups() if g is not None))
        if "Tokens (JSON list):" in content:
            tokens = json.loads(content.split("Tokens (JSON list): ", 1)[1].split("\n", 1)[0])
            parsed = {"activations": [9 if rule(t) else 0 for t in tokens]}
        else:
            texts = re.findall(r"^Text \d+: (.*)$", content, flags=re.M)
            answers = []
            for t in texts:
                if "<<" in t:  # fuzzing: judge the marked spans
                    spans = re.findall(r"<<(.*?)>>", t)
                    answers.append(int(bool(spans) and all(any(rule(" " + w) for w in re.findall(r"\w+", s))
                                                           for s in spans)))
                else:
                    answers.append(int(any(rule(" " + w) for w in re.findall(r"\w+", t))))
            if self.mode == "short":
                answers = answers[:-1]
            parsed = {"answers": answers}
        text = json.dumps(parsed)
        return ChatResult(Status.OK, text=text, parsed=parsed, prompt_tokens=tokens_in,
                          completion_tokens=len(text) // 3)
