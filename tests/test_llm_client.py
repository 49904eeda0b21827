"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1, scripted to misbehave."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from typing import Any

import jsonschema
import pytest

from autointerp.errors import UserError
from autointerp.llm import Status, add_llm_arguments, client_from_args, make_client
from autointerp.llm.local_client import LocalClient, json_object_end
from autointerp.llm.openai_client import OpenAIClient, normalize_base_url, parse_retry_after
from autointerp.llm.ratelimit import AsyncTokenBucket
from autointerp.llm.replies import judge_reply
from autointerp.testing.testserver import FakeOpenAIServer, Fault, example_from_schema

SCHEMA = {
    "type": "object",
    "properties": {"explanation": {"type": "string", "minLength": 1}},
    "required": ["explanation"],
    "additionalProperties": False,
}
MESSAGES = [{"role": "user", "content": "Describe feature 7."}]


def fast_client(server: FakeOpenAIServer | list[FakeOpenAIServer], **options: Any) -> OpenAIClient:
    servers = server if isinstance(server, list) else [server]
    defaults = {"timeout_s": 0.5, "max_retries": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    client = make_client(",".join(s.base_url for s in servers), **{**defaults, **options})
    assert isinstance(client, OpenAIClient)
    return client


async def chat_once(client: OpenAIClient, schema: dict[str, Any] | None = SCHEMA):
    try:
        return await client.chat(MESSAGES, json_schema=schema)
    finally:
        await client.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------- the happy path


def test_chat_with_schema_sends_response_format_and_validates():
    with FakeOpenAIServer() as server:
        result = asyncio.run(chat_once(fast_client(server)))
    assert result.status is Status.OK, result.error
    jsonschema.validate(result.parsed, SCHEMA)
    assert json.loads(result.text) == result.parsed
    assert result.finish_reason == "stop" and result.attempts == 1
    assert result.prompt_tokens > 0 and result.completion_tokens > 0 and result.latency_s > 0
    body = server.requests[0].body
    assert body["model"] == "fake-model" and body["temperature"] == 0.0 and body["seed"] == 0
    assert body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True}}


def test_guided_json_can_be_disabled_for_servers_that_refuse_it():
    with FakeOpenAIServer(accept_response_format=False) as server:
        refused = asyncio.run(chat_once(fast_client(server)))
        # Unguided, this server writes prose: still validated on our side.
        prose = asyncio.run(chat_once(fast_client(server, guided_json=False)))
    assert refused.status is Status.CLIENT_ERROR and refused.attempts == 1 and "400" in refused.error
    assert prose.status is Status.PARSE_ERROR and "response_format" not in server.requests[-1].body
    with FakeOpenAIServer(accept_response_format=False, chat_reply=lambda body: '{"explanation": "dates"}') as server:
        accepted = asyncio.run(chat_once(fast_client(server, guided_json=False)))
    assert accepted.status is Status.OK and accepted.parsed == {"explanation": "dates"}


def test_plain_chat_without_schema():
    with FakeOpenAIServer(chat_reply=lambda body: "hello " + body["messages"][-1]["content"]) as server:
        result = asyncio.run(chat_once(fast_client(server), schema=None))
    assert result.status is Status.OK and result.text == "hello Describe feature 7." and result.parsed is None
    assert "response_format" not in server.requests[0].body


# ---------------------------------------------------------------------- content faults: never OK, not retried


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("malformed_json", Status.PARSE_ERROR),
        ("schema_break", Status.SCHEMA_ERROR),
        ("empty", Status.EMPTY),
        ("truncated", Status.TRUNCATED),
    ],
)
def test_content_faults_give_their_status(fault, status):
    with FakeOpenAIServer(fault_rates={fault: 1.0}) as server:
        result = asyncio.run(chat_once(fast_client(server)))
    assert result.status is status, result
    assert not result.ok and result.parsed is None and result.error
    assert result.attempts == 1 and len(server.requests) == 1


def test_truncated_reply_that_still_parses_is_not_trusted():
    # Guided decoding only guarantees a valid object once generation *finished*.
    reply = {"content": json.dumps({"explanation": "cut"}), "finish_reason": "length"}
    with FakeOpenAIServer(chat_reply=lambda body: reply) as server:
        result = asyncio.run(chat_once(fast_client(server)))
    assert result.status is Status.TRUNCATED and result.parsed is None


def test_code_fenced_json_is_accepted_but_extra_prose_is_not():
    assert judge_reply('```json\n{"explanation": "x"}\n```', "stop", SCHEMA).status is Status.OK
    assert judge_reply('Sure! {"explanation": "x"}', "stop", SCHEMA).status is Status.PARSE_ERROR
    assert judge_reply('{"explanation": ""}', "stop", SCHEMA).status is Status.SCHEMA_ERROR
    assert judge_reply("   ", "stop", None).status is Status.EMPTY
    assert judge_reply("text", None, None).status is Status.TRUNCATED


# ---------------------------------------------------------------------- transport faults: retried


@pytest.mark.parametrize("fault", ["500", "drop", "hang", "bad_body", Fault("429", retry_after_s=0.05)])
def test_one_transient_fault_is_retried_to_success(fault):
    with FakeOpenAIServer(faults={0: Fault("hang", hang_s=5) if fault == "hang" else fault}) as server:
        result = asyncio.run(chat_once(fast_client(server, timeout_s=0.3)))
    assert result.status is Status.OK, result.error
    assert result.attempts == 2 and len(server.requests) == 2
    jsonschema.validate(result.parsed, SCHEMA)


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("500", Status.SERVER_ERROR),
        ("429", Status.RATE_LIMITED),
        ("hang", Status.TIMEOUT),
        ("drop", Status.CONNECTION_ERROR),
        ("bad_body", Status.SERVER_ERROR),
    ],
)
def test_persistent_fault_ends_in_a_failure_after_bounded_attempts(fault, status):
    faults = {i: Fault(fault, retry_after_s=0.01, hang_s=5) for i in range(10)}
    with FakeOpenAIServer(faults=faults) as server:
        result = asyncio.run(chat_once(fast_client(server, timeout_s=0.2, max_retries=2)))
    assert result.status is status and not result.ok and result.parsed is None
    assert result.attempts == 3 and len(server.requests) == 3
    assert result.error


def test_client_errors_are_not_retried():
    with FakeOpenAIServer() as server:
        result = asyncio.run(chat_once(fast_client(server, model="no-such-model")))
        # check() was skipped because a model was named; the 404 is a client error, tried once.
    assert result.status is Status.CLIENT_ERROR and result.attempts == 1 and "404" in result.error


def test_retry_after_is_honoured():
    with FakeOpenAIServer(faults={0: Fault("429", retry_after_s=0.6)}) as server:
        started = time.perf_counter()
        result = asyncio.run(chat_once(fast_client(server)))
        elapsed = time.perf_counter() - started
    assert result.status is Status.OK and result.attempts == 2
    gap = server.requests[1].arrived - server.requests[0].arrived
    assert 0.6 <= gap < 1.2, gap
    assert elapsed >= 0.6
    assert parse_retry_after("2") == 2.0 and parse_retry_after(None) is None
    assert parse_retry_after("soon") is None and parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_no_fault_mix_ever_yields_ok_with_bad_content():
    kinds = ["500", "429", "hang", "drop", "malformed_json", "schema_break", "empty", "truncated", "bad_body"]
    rates = {kind: 0.06 for kind in kinds}

    async def many(client: OpenAIClient):
        try:
            return await asyncio.gather(*[client.chat(MESSAGES, json_schema=SCHEMA) for _ in range(80)])
        finally:
            await client.aclose()

    with FakeOpenAIServer(fault_rates=rates, seed=3) as server:
        results = asyncio.run(many(fast_client(server, timeout_s=0.3, max_retries=1)))
        faulted = sum(r.fault is not None for r in server.requests)
    statuses = {r.status for r in results}
    assert Status.OK in statuses and len(statuses) > 2 and faulted > 10
    for result in results:
        if result.ok:
            jsonschema.validate(json.loads(result.text), SCHEMA)
            assert result.parsed == json.loads(result.text)
        else:
            assert result.parsed is None and result.error


# ---------------------------------------------------------------------- concurrency and replicas


def test_concurrency_limit_is_respected_at_the_server():
    async def many(client: OpenAIClient):
        try:
            return await asyncio.gather(*[client.chat(MESSAGES) for _ in range(30)])
        finally:
            await client.aclose()

    with FakeOpenAIServer(latency_s=0.05, capacity=100) as server:
        results = asyncio.run(many(fast_client(server, concurrency=5)))
    assert all(r.ok for r in results)
    assert server.max_in_flight == 5


def test_server_capacity_queues_the_rest():
    async def many(client: OpenAIClient):
        try:
            return await asyncio.gather(*[client.chat(MESSAGES) for _ in range(6)])
        finally:
            await client.aclose()

    with FakeOpenAIServer(latency_s=0.1, capacity=2) as server:
        started = time.perf_counter()
        results = asyncio.run(many(fast_client(server, concurrency=10)))
        elapsed = time.perf_counter() - started
        metrics = server.metrics_text()
    assert all(r.ok for r in results) and server.max_in_flight == 2
    assert 0.3 <= elapsed < 1.0
    assert "vllm:request_success_total" in metrics and "autointerp_testserver_max_in_flight 2" in metrics


def test_requests_spread_over_several_base_urls():
    async def many(client: OpenAIClient):
        try:
            return await asyncio.gather(*[client.chat(MESSAGES) for _ in range(30)])
        finally:
            await client.aclose()

    servers = [FakeOpenAIServer(latency_s=0.05).start() for _ in range(3)]
    try:
        client = fast_client(servers)
        results = asyncio.run(many(client))
    finally:
        for server in servers:
            server.kill()
    assert all(r.ok for r in results)
    counts = [len(s.requests) for s in servers]
    assert sum(counts) == 30 and min(counts) >= 8, counts


def test_a_dying_replica_does_not_stop_the_run():
    async def many(client: OpenAIClient):
        try:
            return await asyncio.gather(*[client.chat(MESSAGES, json_schema=SCHEMA) for _ in range(40)])
        finally:
            await client.aclose()

    healthy = FakeOpenAIServer(latency_s=0.05).start()
    dying = FakeOpenAIServer(latency_s=0.05, faults={4: "die"}).start()
    try:
        results = asyncio.run(many(fast_client([healthy, dying], concurrency=8)))
    finally:
        healthy.kill()
        dying.kill()
    assert not dying.alive
    assert all(r.ok for r in results), [(r.status, r.attempts, r.error) for r in results if not r.ok]
    # Requests already sent to it when it died (up to its share of the 8 in flight) were retried elsewhere.
    assert 5 <= len(dying.requests) <= 12, len(dying.requests)
    # A reply written just before the death may never reach the client: it is then redone elsewhere.
    assert dying.completed >= 4 and healthy.completed >= 40 - dying.completed, (dying.completed, healthy.completed)
    assert any(r.attempts > 1 for r in results)  # the ones in flight on the dying replica were retried


def test_a_single_server_dying_mid_run_fails_the_rest_without_labels():
    async def sequential(client: OpenAIClient):
        try:
            return [await client.chat(MESSAGES, json_schema=SCHEMA) for _ in range(6)]
        finally:
            await client.aclose()

    with FakeOpenAIServer(faults={3: "die"}) as server:
        results = asyncio.run(sequential(fast_client(server, max_retries=1)))
    assert [r.status for r in results[:3]] == [Status.OK] * 3
    assert all(r.status is Status.CONNECTION_ERROR and r.parsed is None for r in results[3:])


# ---------------------------------------------------------------------- startup check


def test_server_down_at_start_is_a_user_error():
    client = make_client(f"http://127.0.0.1:{free_port()}/v1")

    async def check():
        try:
            await client.check()
        finally:
            await client.aclose()

    with pytest.raises(UserError) as info:
        asyncio.run(check())
    assert "no OpenAI-compatible server at http://127.0.0.1:" in info.value.message
    assert "autointerp serve" in info.value.message and "--llm" in info.value.message


def test_check_resolves_or_rejects_the_model():
    async def checked(client: OpenAIClient):
        try:
            await client.check()
            return client.model_name
        finally:
            await client.aclose()

    with FakeOpenAIServer(model="smol") as server:
        assert asyncio.run(checked(fast_client(server))) == "smol"
        assert asyncio.run(checked(fast_client(server, model="smol"))) == "smol"
        with pytest.raises(UserError, match="not served"):
            asyncio.run(checked(fast_client(server, model="other")))
        # A chat before check() resolves the model itself.
        result = asyncio.run(chat_once(fast_client(server)))
    assert result.ok and server.requests[-1].body["model"] == "smol"


def test_check_routes_around_a_replica_that_is_down_at_start():
    async def run(client: OpenAIClient):
        try:
            await client.check()
            return await asyncio.gather(*[client.chat(MESSAGES) for _ in range(5)])
        finally:
            await client.aclose()

    with FakeOpenAIServer() as server:
        client = make_client(f"{server.base_url},http://127.0.0.1:{free_port()}", timeout_s=1)
        results = asyncio.run(run(client))
    assert all(r.ok and r.attempts == 1 for r in results)


# ---------------------------------------------------------------------- prompt logprobs


def scripted_logprobs(token_ids: list[int], position: int, top_n: int) -> dict[int, float]:
    return {100 + position + k: -0.5 * (k + 1) for k in range(top_n)}


def test_prompt_logprobs_parses_vllm_layout_at_positions():
    async def ask(client: OpenAIClient):
        try:
            return await client.prompt_logprobs([5, 6, 7, 8, 9], [1, 3, 4], top_n=3)
        finally:
            await client.aclose()

    with FakeOpenAIServer(logprobs_reply=scripted_logprobs) as server:
        result = asyncio.run(ask(fast_client(server)))
    assert result.status is Status.OK and result.positions == [1, 3, 4]
    assert result.top_logprobs == [scripted_logprobs([], p, 3) for p in (1, 3, 4)]  # actual token (rank>3) dropped
    assert result.actual == [-30.0] * 3  # ... but read on its own: the test server's value for an unlisted token
    body = server.requests[0].body
    assert body["prompt"] == [5, 6, 7, 8, 9] and body["prompt_logprobs"] == 3 and body["max_tokens"] == 1
    assert result.prompt_tokens == 5


def own_token_scripted(token_ids: list[int], position: int, top_n: int) -> dict[int, float]:
    """Top N far from the prompt, plus the prompt's own token ranked just below them (-0.1 x its position)."""
    return {**{1000 + k: -0.01 * (k + 1) for k in range(top_n)}, token_ids[position]: -0.1 * position - 1.0}


@pytest.mark.parametrize("top_n", [0, 2, 20])
def test_prompt_logprobs_return_the_prompt_tokens_own_logprob_beyond_top_n(top_n):
    """vLLM lists the prompt's actual token at every position whatever its rank; the client keeps top-N
    semantics for `top_logprobs` and reads the actual token into `actual` (top_n 0: only that)."""

    async def ask(client: OpenAIClient):
        try:
            return await client.prompt_logprobs([5, 6, 7, 8, 9], [1, 2, 4], top_n=top_n)
        finally:
            await client.aclose()

    with FakeOpenAIServer(logprobs_reply=own_token_scripted) as server:
        result = asyncio.run(ask(fast_client(server)))
        entry = server._completions_body({"prompt": [5, 6, 7, 8, 9], "prompt_logprobs": top_n}, None)
    assert result.status is Status.OK and server.requests[0].body["prompt_logprobs"] == top_n
    assert result.actual == pytest.approx([-1.1, -1.2, -1.4])
    assert result.top_logprobs == [{1000 + k: -0.01 * (k + 1) for k in range(top_n)}] * 3
    assert entry["choices"][0]["prompt_logprobs"][1]["6"]["rank"] == top_n + 1  # the actual token's own rank


def test_prompt_logprobs_top_n_0_over_the_default_server():
    """The default (pre-encoded) reply path with 0 alternatives still gives valid JSON with the prompt token."""

    async def ask(client: OpenAIClient):
        try:
            return await client.prompt_logprobs([1, 2, 3, 4], [1, 3], top_n=0)
        finally:
            await client.aclose()

    with FakeOpenAIServer() as server:
        result = asyncio.run(ask(fast_client(server)))
    assert result.ok and result.top_logprobs == [{}, {}] and result.actual == [-30.0, -30.0]


def test_prompt_logprobs_default_replies_are_deterministic_logprobs():
    async def ask(client: OpenAIClient):
        try:
            return [await client.prompt_logprobs([1, 2, 3, 4], [2, 3], top_n=20) for _ in range(2)]
        finally:
            await client.aclose()

    with FakeOpenAIServer() as server:
        first, second = asyncio.run(ask(fast_client(server)))
    assert first.ok and first.top_logprobs == second.top_logprobs
    for top in first.top_logprobs:
        assert len(top) == 20 and all(lp < 0 for lp in top.values())
        assert sum(2.718281828 ** lp for lp in top.values()) <= 1.0 + 1e-9


def test_prompt_logprobs_missing_from_server_is_no_logprobs():
    async def ask(client: OpenAIClient):
        try:
            return await client.prompt_logprobs([1, 2, 3], [1, 2], top_n=5)
        finally:
            await client.aclose()

    with FakeOpenAIServer(supports_prompt_logprobs=False) as server:
        result = asyncio.run(ask(fast_client(server)))
    assert result.status is Status.NO_LOGPROBS and result.top_logprobs == [] and result.error


def test_prompt_logprobs_rejects_bad_arguments():
    client = make_client("http://127.0.0.1:1/v1", "m")
    with pytest.raises(ValueError, match="top_n"):
        asyncio.run(client.prompt_logprobs([1, 2], [1], top_n=21))
    with pytest.raises(ValueError, match="top_n"):
        asyncio.run(client.prompt_logprobs([1, 2], [1], top_n=-1))
    with pytest.raises(ValueError, match="position 0"):
        asyncio.run(client.prompt_logprobs([1, 2], [0], top_n=5))


def test_supports_prompt_logprobs_needs_a_tokenizer():
    assert make_client("http://127.0.0.1:1/v1").supports_prompt_logprobs is False
    assert make_client("http://127.0.0.1:1/v1", tokenizer_spec="smollm2").supports_prompt_logprobs is True
    assert make_client("http://127.0.0.1:1/v1").tokenizer() is None


# ---------------------------------------------------------------------- rate limits


def test_requests_per_second_limit_paces_requests():
    async def many(client: OpenAIClient):
        try:
            return await asyncio.gather(*[client.chat(MESSAGES) for _ in range(10)])
        finally:
            await client.aclose()

    with FakeOpenAIServer() as server:
        started = time.perf_counter()
        results = asyncio.run(many(fast_client(server, rps=10)))
        elapsed = time.perf_counter() - started
    assert all(r.ok for r in results)
    assert elapsed < 1.5
    gaps = sorted(r.arrived for r in server.requests)
    assert gaps[-1] - gaps[0] >= 0.0  # the burst of 10 fits the bucket: no wait needed
    with FakeOpenAIServer() as server:
        started = time.perf_counter()
        asyncio.run(many(fast_client(server, rps=5)))
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.9  # 5 at once, then 5 more at 5 per second


def test_token_bucket_waits_for_tokens():
    async def take():
        bucket = AsyncTokenBucket(rate=100, capacity=50)
        started = time.perf_counter()
        for _ in range(4):
            await bucket.acquire(50)
        return time.perf_counter() - started

    assert 1.3 <= asyncio.run(take()) < 2.5  # 150 tokens beyond the first burst at 100/s


# ---------------------------------------------------------------------- wiring


def test_make_client_picks_the_backend():
    local = make_client("local:smollm2")
    assert isinstance(local, LocalClient) and local.model_name == "local:smollm2" and local._lm is None
    http = make_client("http://a:8000, https://b.example.com/api/v1", "m", concurrency=3)
    assert isinstance(http, OpenAIClient) and http.concurrency == 3 and http.model_name == "m"
    assert http.base_urls == ["http://a:8000/v1", "https://b.example.com/api/v1"]
    assert normalize_base_url("http://h:1/v1/") == "http://h:1/v1"
    for bad in ("gpt-4", "", "local:", "ftp://x"):
        with pytest.raises(UserError):
            make_client(bad)
    with pytest.raises(UserError, match="--llm-model"):
        make_client("local:smollm2", "m")


def test_cli_flags_round_trip_with_prefix():
    parser = argparse.ArgumentParser()
    add_llm_arguments(parser)
    add_llm_arguments(parser, prefix="simulator-")
    args = parser.parse_args([
        "--llm", "http://x:1/v1", "--llm-model", "m", "--concurrency", "7", "--timeout", "3", "--max-retries", "1",
        "--rps", "2", "--tpm", "6000", "--api-key-env", "MY_KEY", "--no-guided-json",
        "--simulator-llm", "http://y:2/v1", "--simulator-tokenizer", "smollm2",
    ])
    client = client_from_args(args)
    assert isinstance(client, OpenAIClient)
    assert (client.model_name, client.concurrency, client.timeout_s, client.max_retries) == ("m", 7, 3.0, 1)
    assert client.api_key_env == "MY_KEY" and client.guided_json is False
    simulator = client_from_args(args, prefix="simulator-")
    assert simulator.base_urls == ["http://y:2/v1"] and simulator.supports_prompt_logprobs
    assert simulator.concurrency == 64 and simulator.guided_json is True
    default = client_from_args(parser.parse_args([]))
    assert isinstance(default, LocalClient)


def test_api_key_is_sent_from_the_named_env_var(monkeypatch):
    monkeypatch.setenv("AUTOINTERP_TEST_KEY", "sekrit")
    client = make_client("http://127.0.0.1:1/v1", api_key_env="AUTOINTERP_TEST_KEY")
    assert client._headers() == {"Authorization": "Bearer sekrit"}
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert make_client("http://127.0.0.1:1/v1")._headers() == {}


# ---------------------------------------------------------------------- test-server helpers


@pytest.mark.parametrize(
    "schema",
    [
        SCHEMA,
        {"type": "object", "properties": {"items": {"type": "array", "minItems": 3, "items": {"type": "integer",
         "minimum": 0, "maximum": 10}}, "flag": {"type": "boolean"}, "kind": {"enum": ["a", "b"]}},
         "required": ["items", "flag", "kind"]},
        {"type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}, "$defs": {"P": {"type": "number"}},
         "required": ["p"]},
    ],
)
def test_example_from_schema_is_valid(schema):
    jsonschema.validate(example_from_schema(schema), schema)


def test_json_object_end():
    assert json_object_end('{"a": "}{"} tail') == len('{"a": "}{"}')
    assert json_object_end('{"a": [1, {"b": 2}]') is None
    assert json_object_end('{"a": "x\\"}"}') == len('{"a": "x\\"}"}')


def test_prompt_logprobs_fast_reply_path_equals_a_whole_parse():
    """The reply decoder leaves each position raw and parses only those asked for; the figures must equal
    what a whole-body parse gives, and a body of another shape still reads (whole)."""
    import orjson

    from autointerp.llm.openai_client import _decode_prompt_logprobs_reply, _position_logprobs, _top_entries

    token_ids = [11, 7, 300, 5, 9000, 42]
    with FakeOpenAIServer() as server:
        reply = server._completions_body({"prompt": token_ids, "prompt_logprobs": 5}, None)
        encoded = reply.pop("_raw_prompt_logprobs")
        raw = orjson.dumps(reply).replace(orjson.dumps("\u0000autointerp-prompt-logprobs\u0000"), encoded, 1)
    whole = orjson.loads(raw)["choices"][0]["prompt_logprobs"]
    fast = _decode_prompt_logprobs_reply(raw)
    assert fast["usage"]["prompt_tokens"] == len(token_ids)
    entries = fast["choices"][0]["prompt_logprobs"]
    assert len(entries) == len(token_ids) == len(whole) and whole[0] is None
    for p in range(1, len(token_ids)):
        assert _top_entries(entries[p], 5) == _top_entries(whole[p], 5)
        assert _position_logprobs(entries[p], 5, token_ids[p]) == _position_logprobs(whole[p], 5, token_ids[p])
        assert _position_logprobs(entries[p], 5, token_ids[p])[1] == whole[p][str(token_ids[p])]["logprob"]
        assert len(_top_entries(entries[p], 5)) == 5 and str(token_ids[p]) in whole[p]  # vLLM adds the actual token
    # choices as an object is not the expected shape: the decoder falls back to reading it whole
    odd = orjson.dumps({"choices": {"0": 1}, "prompt_logprobs": [None, {"3": {"logprob": -1.0, "rank": 1}}]})
    assert _decode_prompt_logprobs_reply(odd)["choices"] == {"0": 1}
    error = _decode_prompt_logprobs_reply(orjson.dumps({"error": {"message": "boom"}}))
    assert error["error"] == {"message": "boom"}


def test_a_raw_position_of_another_layout_reads_like_a_parsed_one():
    """The typed per-position decoder takes vLLM's layout; a plain {token: logprob} map or a missing position
    goes the generic way and gives the same answers (or the same error) as a parsed entry."""
    import msgspec
    import orjson

    from autointerp.llm.openai_client import _position_logprobs, _top_entries

    vllm = {"5": {"logprob": -0.1, "rank": 1, "decoded_token": "a"}, "9": {"logprob": -3.0, "rank": 2},
            "77": {"logprob": -30.0, "rank": 4000, "decoded_token": "z"}}
    plain = {"5": -0.1, "9": -3.0}
    for entry in (vllm, plain):
        assert _top_entries(msgspec.Raw(orjson.dumps(entry)), 2) == _top_entries(entry, 2) == {5: -0.1, 9: -3.0}
        for actual, value in ((9, -3.0), (12345, None)):  # a token the server did not send: None, never a guess
            expected = ({5: -0.1, 9: -3.0}, value)
            assert _position_logprobs(msgspec.Raw(orjson.dumps(entry)), 2, actual) == expected
            assert _position_logprobs(entry, 2, actual) == expected
    assert _position_logprobs(vllm, 2, 77) == ({5: -0.1, 9: -3.0}, -30.0)
    with pytest.raises(ValueError, match="no logprobs"):
        _top_entries(msgspec.Raw(b"null"), 2)
    with pytest.raises(ValueError):
        _top_entries(msgspec.Raw(orjson.dumps({"the": -0.5})), 2)  # keyed by text, not token id
