"""Shared-head generation (`autointerp.llm.shared_head`): the same attention, replies and logprobs as attention
over each whole prompt, with the shared head stored once and finished rows leaving the batch."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from autointerp.llm import shared_head
from autointerp.llm.local_client import LocalClient
from autointerp.llm.shared_head import SharedHeadCache, shared_head_attention


def _attend(query, head_k, head_v, tail_k, tail_v, mask) -> torch.Tensor:
    """`shared_head_attention` for one layer, with `head_*` as the cache's shared head."""
    cache = SharedHeadCache(None, query.shape[0], tail_k.shape[2])
    cache.head = None if head_k is None else [(head_k, head_v)]
    shared_head._ACTIVE.cache = cache
    try:
        out, _ = shared_head_attention(SimpleNamespace(layer_idx=0), query, tail_k, tail_v, mask)
    finally:
        shared_head._ACTIVE.cache = None
    return out.transpose(1, 2)


@pytest.mark.parametrize("q_len", [1, 5])
@pytest.mark.parametrize("with_head", [True, False])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("decode", ["matmul", "flash"])
def test_attention_equals_attention_over_the_whole_prompt(q_len: int, with_head: bool, rows: int,
                                                          dtype: torch.dtype, decode: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Grouped-query attention over [head][padded tail] against float32 SDPA over the concatenated keys: reading a
    prompt (flash kernel) and decoding (matmuls for the tail, and for the head when one query is all it gets; or
    the flash kernel, `DECODE_ATTENTION`)."""
    monkeypatch.setattr(shared_head, "DECODE_ATTENTION", decode)
    torch.manual_seed(0)
    heads, kv_heads, dim, head_len, tail_len = 6, 2, 16, 11 if with_head else 0, 9
    query = torch.randn(rows, heads, q_len, dim)
    head_k, head_v = torch.randn(1, kv_heads, head_len, dim), torch.randn(1, kv_heads, head_len, dim)
    tail_k, tail_v = torch.randn(rows, kv_heads, tail_len, dim), torch.randn(rows, kv_heads, tail_len, dim)
    pads = torch.tensor([0, 2, 4])[:rows]                # left padding of each row's tail
    columns = torch.arange(tail_len)
    queries_at = torch.arange(tail_len - q_len, tail_len)  # the last q_len tail positions ask
    allowed = (columns[None, None, :] <= queries_at[None, :, None]) & (columns[None, None, :] >= pads[:, None, None])
    mask = torch.zeros(rows, 1, q_len, tail_len).masked_fill(~allowed[:, None], float("-inf"))
    got = _attend(query.to(dtype), head_k.to(dtype) if with_head else None, head_v.to(dtype), tail_k.to(dtype),
                  tail_v.to(dtype), mask.to(dtype))
    assert got.dtype == dtype

    keys = torch.cat([head_k.expand(rows, -1, -1, -1), tail_k], dim=2)
    values = torch.cat([head_v.expand(rows, -1, -1, -1), tail_v], dim=2)
    full = torch.cat([torch.ones(rows, q_len, head_len, dtype=torch.bool), allowed], dim=2)[:, None]
    # the inputs as the kernels see them (rounded to `dtype`), attention itself in float32
    rounded = [t.to(dtype).float() for t in (query, keys, values)]
    want = F.scaled_dot_product_attention(*rounded, attn_mask=full, enable_gqa=True)
    tolerance = {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got.float(), want, **tolerance)


def test_cache_appends_in_place_and_drops_finished_rows() -> None:
    cache = SharedHeadCache(None, rows=3, capacity=4)
    k = torch.arange(3 * 2 * 2 * 1, dtype=torch.float32).view(3, 2, 2, 1)
    keys, _ = cache.update(k, k, 0)
    buffer = cache.keys[0]
    keys, _ = cache.update(k[:, :, :1] + 100, k[:, :, :1], 0)
    assert cache.keys[0] is buffer and keys.shape == (3, 2, 3, 1)    # appended where it was, no new buffer
    assert cache.get_seq_length() == 3
    cache.keep_rows(torch.tensor([0, 2]))
    assert cache.keys[0].shape[0] == 2 and torch.equal(cache.keys[0][1, :, :3], torch.cat([k[2], k[2, :, :1] + 100], 1))
    with pytest.raises(ValueError, match="holds 4 positions"):
        cache.update(torch.zeros(2, 2, 2, 1), torch.zeros(2, 2, 2, 1), 0)


def _tiny_llama() -> SimpleNamespace:
    """A 2-layer Llama with random weights (grouped-query attention), as `shared_head.generate` takes it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.3)
    model = LlamaForCausalLM(config).eval()
    return SimpleNamespace(model=model, device=torch.device("cpu"))


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of tails each call of `shared_head._read_tails` reads, from now on in this test."""
    reads: list[int] = []
    original = shared_head._read_tails

    def counted(backbone, cache, tails, *args):
        reads.append(len(tails))
        return original(backbone, cache, tails, *args)

    monkeypatch.setattr(shared_head, "_read_tails", counted)
    return reads


def test_a_known_prompt_state_gives_what_reading_the_prompt_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows whose tail was read before (`Row.known`, from `remember`) are not read again, whatever their length
    against the rows read with them, and reply and score as if they had been read in this batch."""
    lm = _tiny_llama()
    backbone = lm.model.model
    with torch.inference_mode():
        head = backbone(input_ids=torch.arange(1, 11).unsqueeze(0), use_cache=True).past_key_values
    tails = [list(range(20, 33)), list(range(40, 45)), [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 23],
             [50, 51, 52]]

    reads = _count_reads(monkeypatch)

    def run(rows: list, remember=None) -> tuple[list, list, list[int]]:
        reads.clear()
        replies, scores = shared_head.generate(lm, head, 10, rows, stop_ids=[0], keep_scores=True, chunk=4,
                                               remember=remember)
        return replies, scores, list(reads)

    states: dict[int, shared_head.PromptState] = {}
    want, want_scores, read = run([shared_head.Row(t, 6, 0.0) for t in tails], lambda row, state: states.update({row: state}))
    assert read == [4] and sorted(states) == [0, 1, 2, 3]
    assert states[1].kv[0][0].shape == (2, 5, 8)                     # [kv heads, its own tail, head dim]
    # known rows 0 (longer than the row read with them) and 2 (the longest), read: rows 1 and 3
    mixed = [shared_head.Row(t, 6, 0.0, states[i] if i in (0, 2) else None) for i, t in enumerate(tails)]
    got, got_scores, read = run(mixed)
    assert read == [2] and got == want
    for a, b in zip(got_scores, want_scores, strict=True):
        torch.testing.assert_close(torch.stack(a), torch.stack(b), atol=1e-4, rtol=1e-4)
    # every row known: nothing is read
    got, _, read = run([shared_head.Row(t, 6, 0.0, states[i]) for i, t in enumerate(tails)])
    assert read == [] and got == want


def test_prompt_states_keep_the_most_recent_prompts() -> None:
    from autointerp.llm.prefix_cache import PromptStates

    states = PromptStates(max_entries=2)
    states.put(10, "p1", "a")
    states.put(10, "p2", "b")
    assert states.get(10, "p1") == "a"                # now the most recent
    assert states.get(11, "p1") is None               # read after another head: not the same state
    assert states.holds("p1") and not states.holds("p3")
    states.put(10, "p3", "c")
    assert states.get(10, "p2") is None and states.get(10, "p1") == "a" and states.get(10, "p3") == "c"
    states.clear()
    assert not states.holds("p1")
    off = PromptStates(max_entries=0)
    off.put(10, "p1", "a")
    assert off.get(10, "p1") is None


def test_only_known_families_on_a_cpu_take_it() -> None:
    def model(kind: str, device: str = "cpu", **config: object) -> SimpleNamespace:
        return SimpleNamespace(config=SimpleNamespace(model_type=kind, **config), device=torch.device(device))

    assert shared_head.supports(model("llama"))
    assert shared_head.supports(model("qwen2", layer_types=["full_attention"] * 2))
    assert not shared_head.supports(model("gpt2"))
    assert not shared_head.supports(model("llama", device="meta"))
    assert not shared_head.supports(model("qwen2", use_sliding_window=True))
    assert not shared_head.supports(model("qwen2", layer_types=["full_attention", "sliding_attention"]))


@pytest.fixture(scope="module")
def clients() -> tuple[LocalClient, LocalClient]:
    """SmolLM2 in float32 (equal up to float rounding), generating with and without the shared head."""
    fast = LocalClient("smollm2", dtype="float32", max_batch_size=4)
    plain = LocalClient("smollm2", dtype="float32", max_batch_size=4, shared_head=False)
    plain._lm = fast._load()
    return fast, plain


@pytest.mark.slow
def test_replies_and_logprobs_equal_those_of_transformers_generate(clients: tuple[LocalClient, LocalClient]) -> None:
    """Rows of different lengths that finish at different steps (so rows leave the batch), read in chunks
    smaller than their tails, with a shared head from the prefix cache: the same greedy text and logprobs."""
    fast, plain = clients
    fast.prefill_chunk = plain.prefill_chunk = 8
    system = "You answer in a few words. " * 12
    questions = ["Name a fruit.", "Count from one to twenty, in words, separated by commas please.", "Hi",
                 "What colour is the sky?"]
    messages = [[{"role": "system", "content": system}, {"role": "user", "content": q}] for q in questions]

    def ask(client: LocalClient) -> list:
        async def run() -> list:
            return await asyncio.gather(*[client.chat(m, max_tokens=6 + 6 * i, top_logprobs=3)
                                          for i, m in enumerate(messages)])
        return asyncio.run(run())

    calls: list[int] = []
    original = shared_head.generate

    def counted(*args, **kwargs):
        calls.append(len(args[3]))
        return original(*args, **kwargs)

    shared_head.generate = counted
    try:
        got = ask(fast)
    finally:
        shared_head.generate = original
    want = ask(plain)
    assert calls == [4] and fast.prefix_cache.stats.reused_tokens > 0
    assert [r.text for r in got] == [r.text for r in want]
    assert len({r.completion_tokens for r in got}) > 1          # the rows did end apart
    for a, b in zip(got, want, strict=True):
        assert [s.token for s in a.token_logprobs] == [s.token for s in b.token_logprobs]
        for step_a, step_b in zip(a.token_logprobs, b.token_logprobs, strict=True):
            assert step_a.logprob == pytest.approx(step_b.logprob, abs=2e-3)


@pytest.mark.slow
def test_guided_replies_start_with_the_forced_head_read_with_the_prompt(clients: tuple[LocalClient, LocalClient]) -> None:
    """The grammar's forced start (`{"explanation": "`) is part of the prompt, not generated step by step: the
    reply still holds it and still parses, and completion tokens count only what the model chose."""
    fast, _ = clients
    schema = {"type": "object", "properties": {"explanation": {"type": "string"}}, "required": ["explanation"]}
    lm = fast._load()
    forced = fast._grammars.forced_head(lm, LocalClient._schema_key(schema))
    assert forced == '{"explanation": "'

    async def run():
        return await fast.chat([{"role": "user", "content": "Describe a cat in five words."}], json_schema=schema,
                               max_tokens=40)

    result = asyncio.run(run())
    assert result.text.startswith(forced) and result.parsed and result.parsed["explanation"].strip()
    assert result.completion_tokens < len(lm.tokenizer(result.text, add_special_tokens=False)["input_ids"])


@pytest.mark.slow
def test_a_forced_head_the_grammar_refuses_is_an_error(clients: tuple[LocalClient, LocalClient]) -> None:
    from autointerp.llm.local_client import GuidedRows

    fast, _ = clients
    schema = {"type": "object", "properties": {"answers": {"type": "array"}}, "required": ["answers"]}
    lm = fast._load()
    key = LocalClient._schema_key(schema)
    compiled = fast._grammars._compile(lm, key)
    assert fast._grammars.forced_head(lm, key) == '{"answers": ['
    with pytest.raises(ValueError, match="refuses its own forced head"):
        GuidedRows(fast._grammars._xgr, compiled, 1, [lm.tokenizer.eos_token_id], forced='{"explanation": "')


@pytest.mark.slow
def test_a_prompt_asked_again_is_not_read_again(clients: tuple[LocalClient, LocalClient],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A retry with the same prompt (explain's retry of a rejected label) skips reading it: the client keeps the
    read state of its last batch's prompts; replies and logprobs are those of reading it."""
    from autointerp.llm.prefix_cache import PromptStates

    fast, plain = clients
    fast.prompt_states = PromptStates(4)
    system = "Reply with one short sentence. " * 10
    questions = ["Name a fruit.", "What colour is the sky?", "Count to five.", "Hi there"]

    def ask(client: LocalClient, asked: list[str]) -> list:
        async def run() -> list:
            return await asyncio.gather(*[client.chat([{"role": "system", "content": system},
                                                       {"role": "user", "content": q}], max_tokens=8, top_logprobs=2)
                                          for q in asked])
        return asyncio.run(run())

    reads = _count_reads(monkeypatch)
    first = ask(fast, questions[:3])
    reused = fast.prefix_cache.stats.reused_tokens
    again = ask(fast, [questions[2], questions[3]])
    assert reads == [3, 1]                                   # the repeated prompt was not read
    assert fast.prefix_cache.stats.reused_tokens > reused
    assert again[0].text == first[2].text and again[1].text == ask(plain, [questions[3]])[0].text
    for step_a, step_b in zip(again[0].token_logprobs, first[2].token_logprobs, strict=True):
        assert step_a.token == step_b.token and step_a.logprob == pytest.approx(step_b.logprob, abs=2e-3)
