"""Reusing the KV cache of a prompt prefix that many requests share (the embedded backend's prefix cache).

Why: on a CPU, reading the prompt dominates the embedded backend's time, and most of every prompt is
the same text: the explain prompt's instructions and worked examples are identical for every feature,
and a feature's simulation requests share the simulator's instructions. vLLM caches such prefixes
itself; here the backend computes the shared head once, keeps its KV cache (a few MB), and runs only
each request's own tail over it. Outputs are those of the full prompt: the prefix tokens sit at the
same positions and the tail attends to them as it would in one forward pass.

A batch's shared prefix is the longest common token prefix of its prompts. Prefixes of batches of
two or more prompts are kept (least recently used out), so a later batch, or a lone prompt, that
starts with a kept prefix reuses it; a lone prompt's own text is never kept (nothing else shares it).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: Shorter shared heads are not worth a cache entry (the copy costs about what recomputing them does).
MIN_PREFIX_TOKENS = 32


def common_prefix_len(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every sequence starts with."""
    if not sequences:
        return 0
    first, n = sequences[0], min(len(s) for s in sequences)
    for other in sequences[1:]:
        i = 0
        while i < n and other[i] == first[i]:
            i += 1
        n = i
    return n


@dataclass
class PrefixStats:
    """Prompt tokens the model computed vs took from a kept prefix (the benchmark prints both)."""

    computed_tokens: int = 0
    reused_tokens: int = 0
    prefixes_built: int = 0


class PrefixCache:
    """Kept KV caches of shared prompt prefixes, keyed by their token ids.

    `compute(ids, past)` must run the model over `ids` (continuing `past`, a kept cache for a shorter
    head of them, or None) and return the resulting cache for batch size 1.
    """

    def __init__(
        self,
        compute: Callable[[list[int], Any], Any],
        max_entries: int = 4,
        min_tokens: int = MIN_PREFIX_TOKENS,
    ) -> None:
        self.compute = compute
        self.max_entries = max_entries
        self.min_tokens = min_tokens
        self.entries: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self.stats = PrefixStats()

    def shared(self, prompts: Sequence[Sequence[int]], limit: int, private: bool = True) -> tuple[int, Any]:
        """(prefix length P, a private batch-size-1 copy of its cache) for `prompts`, or (0, None).

        `limit` caps P (each prompt must keep at least its last token, and logprob positions, outside
        the prefix). The copy is the caller's to extend: kept entries never change. `private=False`: the kept
        entry itself, for a caller that only reads it (shared-head generation).
        """
        n = min(common_prefix_len(prompts), limit)
        head = tuple(prompts[0][:n])
        best: tuple[int, ...] = ()
        for key in self.entries:
            if len(best) < len(key) <= n and head[: len(key)] == key:
                best = key
        if len(prompts) >= 2 and n - len(best) >= self.min_tokens:
            past = copy.deepcopy(self.entries[best]) if best else None
            self.entries[head] = self.compute(list(head[len(best) :]), past)
            self.stats.prefixes_built += 1
            self.stats.computed_tokens += n - len(best)
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)
            best = head
        if len(best) < self.min_tokens:
            return 0, None
        self.entries.move_to_end(best)
        self.stats.reused_tokens += len(best) * len(prompts)
        return len(best), copy.deepcopy(self.entries[best]) if private else self.entries[best]


class PromptStates:
    """The read state of the most recent whole prompts (`shared_head.PromptState`), keyed by their text and the
    length of the shared head they were read after, least recently used out.

    Why: explain retries a reply the label check rejects with the very same prompt, sampled hotter; reading its
    ~480-token tail again cost as much as a new feature (SmolLM2, 48 demo features: 7-9 retries). Keeping the
    states of the last batch's rows (`max_entries`: the batch size; each a tail's keys and values, ~11 MB for
    SmolLM2) lets a retry skip straight to generating, and the micro-batcher takes such a prompt first
    (`holds`), before its state is pushed out. Thread-safe: the batcher asks from the event loop while the
    model's thread adds states.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[tuple[int, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, head_length: int, prompt: str) -> Any:
        """The kept state of `prompt` read after its first `head_length` tokens, or None."""
        with self._lock:
            state = self.entries.get((head_length, prompt))
            if state is not None:
                self.entries.move_to_end((head_length, prompt))
            return state

    def holds(self, prompt: str) -> bool:
        """Whether a state of `prompt` is kept (after any head)."""
        with self._lock:
            return any(text == prompt for _, text in self.entries)

    def put(self, head_length: int, prompt: str, state: Any) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self.entries[(head_length, prompt)] = state
            self.entries.move_to_end((head_length, prompt))
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()
