"""The embedded backend's prefix cache: same replies and logprobs as without it, with the shared head computed once."""

from __future__ import annotations

import asyncio

import pytest

from autointerp.llm.local_client import LocalClient
from autointerp.llm.prefix_cache import PrefixCache, PromptStates, common_prefix_len


def test_common_prefix_len() -> None:
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_len([[1, 2, 3]]) == 3
    assert common_prefix_len([[1], [2]]) == 0
    assert common_prefix_len([]) == 0


def test_prefix_cache_keeps_shared_heads_and_extends_them() -> None:
    built: list[tuple[list[int], object]] = []

    def compute(ids: list[int], past: object) -> list[int]:
        built.append((ids, past))
        return [*(past or []), *ids]  # stands for a KV cache: the tokens it covers

    cache = PrefixCache(compute, max_entries=2, min_tokens=3)
    head = list(range(10))
    assert cache.shared([head + [50, 51], head + [60]], limit=10) == (10, head)
    assert built == [(head, None)]
    # a lone prompt reuses the kept head but is never kept itself
    assert cache.shared([head + [70, 71, 72, 73]], limit=13) == (10, head)
    assert len(built) == 1 and len(cache.entries) == 1
    # a longer shared head is computed from the kept one: only the new tokens run
    longer = head + [80, 81, 82, 83]
    assert cache.shared([longer + [1], longer + [2]], limit=14) == (14, longer)
    assert built[-1] == ([80, 81, 82, 83], head)
    # a head shorter than min_tokens is not used; the caller's copy can change without touching the kept one
    assert cache.shared([[1, 2, 9], [1, 2, 8]], limit=2) == (0, None)
    _, copy = cache.shared([longer + [5], longer + [6]], limit=14)
    copy.append(99)
    assert cache.entries[tuple(longer)] == longer
    assert cache.stats.prefixes_built == 2


@pytest.fixture(scope="module")
def client() -> LocalClient:
    return LocalClient("smollm2", dtype="float32")  # exactness at 1e-3: bf16 rounds differently per batch shape


def test_replies_and_logprobs_equal_with_and_without_prefix_cache(client: LocalClient) -> None:
    """Greedy replies are the same text, logprobs the same numbers; the shared head is reused."""
    system = "You name things. " * 20
    messages = [
        [{"role": "system", "content": system}, {"role": "user", "content": q}]
        for q in ("Name a fruit.", "Name a colour, then three animals please.", "Hi")
    ]
    tokenizer = client.tokenizer()
    head = tokenizer.encode("Instructions: predict the next token. " * 12)
    requests = [
        head + tokenizer.encode(t) for t in ("the cat sat on the mat", "one two three", "a b c d e f g")
    ]

    async def go() -> tuple[list[str | None], list[list[dict[int, float]]]]:
        replies = await asyncio.gather(*[client.chat(m, max_tokens=6) for m in messages])
        logprobs = await asyncio.gather(
            *[client.prompt_logprobs(r, list(range(len(head) + 1, len(r))), top_n=5) for r in requests]
        )
        assert all(r.text for r in replies) and all(
            r.ok for r in logprobs
        )  # max_tokens cuts replies: 'truncated'
        return [r.text for r in replies], [r.top_logprobs for r in logprobs]

    cached = asyncio.run(go())
    assert client.prefix_cache is not None
    stats = client.prefix_cache.stats
    assert stats.prefixes_built >= 2 and stats.reused_tokens >= 2 * len(head)
    kept, client.prefix_cache = client.prefix_cache, None
    try:
        plain = asyncio.run(go())
    finally:
        client.prefix_cache = kept
    assert cached[0] == plain[0]
    for with_cache, without in zip(cached[1], plain[1], strict=True):
        for a, b in zip(with_cache, without, strict=True):
            assert list(a) == list(b)
            assert max(abs(a[k] - b[k]) for k in a) < 1e-3


@pytest.mark.slow
def test_a_chunked_prefill_gives_the_same_replies_and_logprobs(client: LocalClient) -> None:
    """Prompts read `prefill_chunk` positions per forward pass (for memory): same greedy replies and logprobs as in
    one pass, with and without the prefix cache, for a batch whose rows have different lengths (padding)."""
    system = "You label things in a few words. " * 6
    messages = [
        [{"role": "system", "content": system}, {"role": "user", "content": q}]
        for q in ("Name a fruit.", "Name a colour, then three animals, then a country, please.", "Hi")
    ]
    widths: list[int] = []  # positions per forward pass of the model
    embed = client._load().model.get_input_embeddings()
    handle = embed.register_forward_pre_hook(lambda _module, args: widths.append(args[0].shape[1]))

    def replies() -> list[tuple[str | None, list[float], list[list[str]]]]:
        async def go() -> list:
            return await asyncio.gather(*[client.chat(m, max_tokens=8, top_logprobs=3) for m in messages])

        got = asyncio.run(go())
        assert all(r.text and r.token_logprobs for r in got)
        return [(r.text, [t.logprob for t in r.token_logprobs], [list(t.top) for t in r.token_logprobs or []])
                for r in got]

    kept = client.prefix_cache, client.prefill_chunk, client.prompt_states
    client.prompt_states = PromptStates(0)  # every pass reads the prompts (kept states would skip the second)
    try:
        for prefix_cache in (kept[0], None):
            client.prefix_cache, client.prefill_chunk = prefix_cache, 0
            whole = replies()
            client.prefill_chunk = 8
            widths.clear()
            chunked = replies()
            if prefix_cache is None:  # (the prefix cache reads its shared head in one pass of one row)
                assert max(widths) <= 8 and len(widths) > 10
            for (text_a, logprobs_a, top_a), (text_b, logprobs_b, top_b) in zip(whole, chunked, strict=True):
                assert text_a == text_b and top_a == top_b
                assert logprobs_a == pytest.approx(logprobs_b, abs=1e-4)
    finally:
        handle.remove()
        client.prefix_cache, client.prefill_chunk, client.prompt_states = kept
