"""A real HTTP server speaking the OpenAI protocol, scripted to be slow, busy or broken.

The LLM stages are tested (and `autointerp bench llm` measures them) against this server rather
than against mocks, so retries, timeouts, dropped connections and queueing go through real
sockets and the real httpx client. It answers like vLLM: `/v1/models`, `/v1/chat/completions`,
`/v1/completions` (with `prompt_logprobs` on token-id prompts), `/health`, `/metrics`.

    with FakeOpenAIServer(latency_s=0.2, capacity=64, faults={3: "500", 5: Fault("429", retry_after_s=1)}) as server:
        client = make_client(server.base_url)

Service model: at most `capacity` requests are in service at once, each for `latency_s`; the rest
queue (so throughput is capacity / latency). Faults are chosen per request index (0-based, over the
two completion endpoints, in arrival order) and/or at random with `fault_rates` (seeded).

Also runnable as a process: `python -m autointerp.testing.testserver --port 8000 --latency 0.2 --capacity 64`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

FAULT_KINDS = (
    "500",             # HTTP 500 with an error body
    "429",             # HTTP 429 with Retry-After: retry_after_s
    "hang",            # no answer for hang_s (longer than the client's timeout)
    "drop",            # close the connection without answering
    "malformed_json",  # 200, the reply content is not JSON
    "schema_break",    # 200, the reply content is JSON that breaks the requested schema
    "empty",           # 200, empty content
    "truncated",       # 200, content cut off, finish_reason 'length'
    "bad_body",        # 200, the HTTP body itself is not JSON
    "die",             # drop this request and stop serving (refuse every later connection)
)


@dataclass(frozen=True)
class Fault:
    kind: str
    retry_after_s: float = 1.0
    hang_s: float = 60.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; known: {', '.join(FAULT_KINDS)}")


@dataclass
class RecordedRequest:
    index: int                 # arrival order over the completion endpoints; -1 for other paths
    path: str
    body: Any                  # the parsed JSON body (None for GET)
    fault: str | None
    arrived: float             # time.monotonic() at arrival
    started: float | None = None   # when it got a capacity slot
    finished: float | None = None


ChatReply = Callable[[dict[str, Any]], "str | dict[str, Any]"]
LogprobsReply = Callable[[list[int], int, int], dict[int, float]]


# ---------------------------------------------------------------------- default replies

def example_from_schema(schema: dict[str, Any], rng: random.Random | None = None) -> Any:
    """A small object that satisfies a JSON schema (the subset structured outputs use).

    Handles type object/array/string/integer/number/boolean/null, enum, const, anyOf/oneOf/allOf
    (first branch), required, minItems/maxItems, minLength/maxLength, minimum/maximum, local $ref.
    """
    rng = rng or random.Random(0)
    return _example(schema, schema, rng)


def _example(schema: dict[str, Any], root: dict[str, Any], rng: random.Random) -> Any:
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return _example(node, root, rng)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return _example(schema[key][0], root, rng)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: _example(sub, root, rng) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        count = min(count, int(schema.get("maxItems", count)))
        return [_example(schema.get("items", {}), root, rng) for _ in range(count)]
    if kind == "string":
        words = ["tokens", "about", "the", "weather", "in", "Paris", "numbers", "code"]
        # distinct words: a fake label reads like a label (no loop the label-quality check would reject)
        text = " ".join(rng.sample(words, 4))
        text = text.ljust(int(schema.get("minLength", 0)), "x")
        return text[: int(schema["maxLength"])] if "maxLength" in schema else text
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 10))
        value = rng.randint(int(low) + ("exclusiveMinimum" in schema), int(high) - ("exclusiveMaximum" in schema))
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def schema_breaking_value(schema: dict[str, Any]) -> Any:
    """JSON that certainly breaks `schema` (a wrong top-level type)."""
    kind = schema.get("type", "object")
    return ["not", "an", "object"] if kind != "array" else {"not": "an array"}


#: Pre-encoded top-N rows the fast prompt-logprob path draws from (per top_n, built on first use).
_LOGPROB_ROWS = 1024
#: Where `_serve_one` splices the pre-encoded prompt_logprobs into the encoded reply.
_PLACEHOLDER = "\u0000autointerp-prompt-logprobs\u0000"
_PLACEHOLDER_JSON = orjson.dumps(_PLACEHOLDER)
_RAW_LOGPROBS = "_raw_prompt_logprobs"


def prefix_seeds(token_ids: list[int]) -> list[int]:
    """A seed per position that depends on the tokens up to and including it (a running CRC-32), in O(n).

    Seeding each position from a re-serialised prefix was O(n^2) per request and made the test server,
    not the client under test, the bottleneck of prompt-logprob benchmarks."""
    seeds, crc = [], 0
    for token in token_ids:
        crc = zlib.crc32(int(token).to_bytes(4, "little", signed=True), crc)
        seeds.append(crc)
    return seeds


def pseudo_random_logprobs(
    token_ids: list[int], position: int, top_n: int, vocab_size: int = 49152, seed: int | None = None
) -> dict[int, float]:
    """Deterministic top-N logprobs for position `position` (depends on the tokens up to it).

    `seed`: `prefix_seeds(token_ids)[position]` when the caller has it (the server computes them once)."""
    if seed is None:
        seed = prefix_seeds(token_ids[: position + 1])[-1]
    rng = random.Random(seed)
    top_n = min(top_n, vocab_size)
    start = rng.randrange(vocab_size)
    step = rng.randrange(1, vocab_size)
    while math.gcd(step, vocab_size) != 1:  # a step coprime with the vocabulary: the N ids are distinct
        step += 1
    weights = sorted((rng.random() + 1e-3 for _ in range(top_n)), reverse=True)
    total = sum(weights) / 0.95  # the top N hold 95 % of the mass
    return {(start + k * step) % vocab_size: math.log(w / total) for k, w in enumerate(weights)}


def _count_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


# ---------------------------------------------------------------------- the server

class FakeOpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 in a background thread (its own asyncio loop).

    Knobs: `latency_s` per request in service, `capacity` requests in service at once,
    `faults` {request index: kind or Fault}, `fault_rates` {kind: probability}, `chat_reply`
    (request body -> content string, or a dict overriding {"content", "finish_reason"}),
    `logprobs_reply` (token_ids, position, top_n -> {token id: logprob}), `model`,
    `supports_prompt_logprobs` (False: ignore the field, like llama.cpp), `accept_response_format`
    (False: answer 400 to response_format, like servers without structured outputs).
    Observations: `requests` (RecordedRequest list), `max_in_flight`, `completed`, `alive`.
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        capacity: int = 64,
        faults: Mapping[int, str | Fault] | None = None,
        fault_rates: Mapping[str, float] | None = None,
        seed: int = 0,
        model: str = "fake-model",
        chat_reply: ChatReply | None = None,
        logprobs_reply: LogprobsReply | None = None,
        supports_prompt_logprobs: bool = True,
        accept_response_format: bool = True,
        chat_logprobs: bool = True,
        vocab_size: int = 49152,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency_s = latency_s
        self.capacity = capacity
        self.faults = {int(i): f if isinstance(f, Fault) else Fault(f) for i, f in (faults or {}).items()}
        self.fault_rates = {Fault(kind).kind: float(p) for kind, p in (fault_rates or {}).items()}
        self.model = model
        self.chat_reply = chat_reply
        self.logprobs_reply = logprobs_reply
        self.supports_prompt_logprobs = supports_prompt_logprobs
        self.accept_response_format = accept_response_format
        self.chat_logprobs = chat_logprobs
        self.vocab_size = vocab_size
        self._logprob_rows: dict[int, list[tuple[frozenset[int], bytes]]] = {}
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.waiting = 0
        self.max_in_flight = 0
        self.completed = 0
        self.prompt_tokens_total = 0
        self.completion_tokens_total = 0
        self.alive = False
        self._rng = random.Random(seed)
        self._next_index = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._stopped: asyncio.Event | None = None
        self._lock = threading.Lock()

    # -------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(ready))
            except OSError as exc:  # e.g. the port is taken: surfaced to start() below
                errors.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        if not self.alive:
            raise RuntimeError("the test server did not start within 10 s")
        return self

    async def _serve(self, ready: threading.Event) -> None:
        self._slots = asyncio.Semaphore(self.capacity)
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._connection, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        self.alive = True
        ready.set()
        await self._stopped.wait()
        self._shutdown_now()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _shutdown_now(self) -> None:
        """Stop listening and abort every open connection (what a killed process looks like)."""
        self.alive = False
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def kill(self) -> None:
        """Die now: refuse new connections, drop the ones open. Safe to call from any thread."""
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:  # the loop closed between the check and the call: already dead
                return
        if self._thread is not None:
            self._thread.join(10)

    stop = kill

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # -------------------------------------------------------------- HTTP/1.1, by hand (no aiohttp here)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        try:
            while self.alive:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, target, _version = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    key, _, value = line.decode("latin-1").partition(":")
                    headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                raw = await reader.readexactly(length) if length else b""
                keep_open = await self._dispatch(method, target.split("?")[0], raw, writer)
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, ValueError):
            return  # the client went away, or we are shutting down: nothing to answer
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _send(self, writer: asyncio.StreamWriter, code: int, body: bytes | str | dict[str, Any],
                    content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
        if isinstance(body, dict):
            body = orjson.dumps(body)  # prompt-logprob replies are ~1 MB: stdlib json was a third of the server's CPU
        if isinstance(body, str):
            body = body.encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error"}.get(code, "Status")
        head = [f"HTTP/1.1 {code} {reason}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
                "Connection: keep-alive"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()

    @staticmethod
    def _error(message: str, kind: str = "BadRequestError", code: int = 400) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    async def _dispatch(self, method: str, path: str, raw: bytes, writer: asyncio.StreamWriter) -> bool:
        path = path.rstrip("/")
        if method == "GET" and path == "/health":
            await self._send(writer, 200, b"", content_type="text/plain")
            return True
        if method == "GET" and path == "/v1/models":
            await self._send(writer, 200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "autointerp-testserver"}]})
            return True
        if method == "GET" and path == "/metrics":
            await self._send(writer, 200, self.metrics_text(), content_type="text/plain; version=0.0.4")
            return True
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            return await self._completion(path, raw, writer)
        await self._send(writer, 404, self._error(f"no route {method} {path}", "NotFoundError", 404))
        return True

    def _choose_fault(self, index: int) -> Fault | None:
        if index in self.faults:
            return self.faults[index]
        for kind, probability in self.fault_rates.items():
            if self._rng.random() < probability:
                return Fault(kind)
        return None

    async def _completion(self, path: str, raw: bytes, writer: asyncio.StreamWriter) -> bool:
        assert self._slots is not None and self._stopped is not None
        with self._lock:
            index = self._next_index
            self._next_index += 1
            fault = self._choose_fault(index)
        try:
            body = orjson.loads(raw or b"null")
        except ValueError:  # orjson.JSONDecodeError is a ValueError
            body = None
        record = RecordedRequest(index, path, body, fault.kind if fault else None, time.monotonic())
        self.requests.append(record)
        if not isinstance(body, dict):
            await self._send(writer, 400, self._error("request body is not a JSON object"))
            return True
        if body.get("model") != self.model:
            await self._send(writer, 404, self._error(f"The model `{body.get('model')}` does not exist.",
                                                      "NotFoundError", 404))
            return True
        if "response_format" in body and not self.accept_response_format:
            await self._send(writer, 400, self._error("response_format is not supported by this server"))
            return True
        self.waiting += 1
        async with self._slots:
            self.waiting -= 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            record.started = time.monotonic()
            try:
                return await self._serve_one(path, body, fault, writer)
            finally:
                self.in_flight -= 1
                record.finished = time.monotonic()

    async def _serve_one(self, path: str, body: dict[str, Any], fault: Fault | None,
                         writer: asyncio.StreamWriter) -> bool:
        kind = fault.kind if fault else None
        if kind == "hang":
            await asyncio.sleep(fault.hang_s)  # type: ignore[union-attr]
            writer.transport.abort()
            return False
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if kind == "drop":
            writer.transport.abort()
            return False
        if kind == "die":
            assert self._stopped is not None
            writer.transport.abort()
            self._shutdown_now()
            self._stopped.set()
            return False
        if kind == "500":
            await self._send(writer, 500, self._error("scripted internal error", "InternalServerError", 500))
            return True
        if kind == "429":
            await self._send(writer, 429, self._error("scripted rate limit", "RateLimitError", 429),
                             headers={"Retry-After": f"{fault.retry_after_s:g}"})  # type: ignore[union-attr]
            return True
        if kind == "bad_body":
            await self._send(writer, 200, b"<html>502 Bad Gateway</html>", content_type="text/html")
            return True
        if path == "/v1/chat/completions":
            reply = self._chat_body(body, kind)
        else:
            reply = self._completions_body(body, kind)
        self.completed += 1
        self.prompt_tokens_total += reply["usage"]["prompt_tokens"]
        self.completion_tokens_total += reply["usage"]["completion_tokens"]
        raw_logprobs = reply.pop(_RAW_LOGPROBS, None)
        if raw_logprobs is None:
            await self._send(writer, 200, reply)
        else:  # splice the pre-encoded prompt_logprobs array in place of its placeholder
            await self._send(writer, 200, orjson.dumps(reply).replace(_PLACEHOLDER_JSON, raw_logprobs, 1))
        return True

    def _content(self, body: dict[str, Any], kind: str | None) -> tuple[str, str]:
        """(content, finish_reason) for a chat or text completion, after content faults."""
        schema = None
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
        if kind == "empty":
            return "", "stop"
        if kind == "malformed_json":
            return '{"explanation": "unterminated', "stop"
        if kind == "schema_break":
            return json.dumps(schema_breaking_value(schema or {})), "stop"
        if self.chat_reply is not None:
            custom = self.chat_reply(body)
            content, finish = (custom.get("content", ""), custom.get("finish_reason", "stop")) \
                if isinstance(custom, dict) else (str(custom), "stop")
        elif schema is not None:
            content, finish = json.dumps(example_from_schema(schema, random.Random(zlib.crc32(json.dumps(body, sort_keys=True).encode())))), "stop"
        else:
            content, finish = "This is a reply from the autointerp test server.", "stop"
        if kind == "truncated":
            content, finish = content[: max(1, len(content) // 2)], "length"
        return content, finish

    def _chat_body(self, body: dict[str, Any], kind: str | None) -> dict[str, Any]:
        content, finish = self._content(body, kind)
        prompt = " ".join(str(m.get("content", "")) for m in body.get("messages", []))
        return {
            "id": f"chatcmpl-{self._next_index}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish, "logprobs": self._chat_logprobs(body, content, finish)}],
            "usage": {"prompt_tokens": _count_tokens(prompt), "completion_tokens": _count_tokens(content),
                      "total_tokens": _count_tokens(prompt) + _count_tokens(content)},
        }

    def _chat_logprobs(self, body: dict[str, Any], content: str, finish: str) -> dict[str, Any] | None:
        """OpenAI-style `logprobs.content` when asked (`logprobs: true`): one token per character; at a digit
        0/1 the other digit is the runner-up, with a deterministic confidence between 0.55 and 0.95."""
        if not body.get("logprobs") or not self.chat_logprobs:
            return None
        top_n = int(body.get("top_logprobs") or 0)
        entries = []
        for i, char in enumerate(content):
            if char in "01":
                p = 0.55 + 0.4 * random.Random(f"{len(content)}:{i}:{content[:i]}").random()
                other = "1" if char == "0" else "0"
                top = [{"token": char, "logprob": math.log(p)}, {"token": other, "logprob": math.log(1 - p)}]
            else:
                top = [{"token": char, "logprob": 0.0}]
            entries.append({"token": char, "logprob": top[0]["logprob"], "top_logprobs": top[:top_n]})
        if finish == "stop":
            # Like vLLM: the end-of-turn token is listed among the reply's logprobs but is not in its text.
            entries.append({"token": "<|im_end|>", "logprob": 0.0, "top_logprobs": [{"token": "<|im_end|>", "logprob": 0.0}][:top_n]})
        return {"content": entries}

    def _completions_body(self, body: dict[str, Any], kind: str | None) -> dict[str, Any]:
        prompt = body.get("prompt")
        token_ids = prompt if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt) else None
        content, finish = self._content(body, kind)
        prompt_tokens = len(token_ids) if token_ids is not None else _count_tokens(str(prompt))
        choice: dict[str, Any] = {"index": 0, "text": content, "finish_reason": finish, "logprobs": None}
        top_n = body.get("prompt_logprobs")
        raw_logprobs = None
        if top_n is not None and token_ids is not None and self.supports_prompt_logprobs:
            if self.logprobs_reply is None and int(top_n) > 0:  # 0 (the prompt's tokens only) takes the plain path
                raw_logprobs = self._encoded_prompt_logprobs(token_ids, int(top_n))
                choice["prompt_logprobs"] = _PLACEHOLDER
            else:
                seeds = prefix_seeds(token_ids)
                choice["prompt_logprobs"] = [None] + [
                    self._logprob_entry(token_ids, position, int(top_n), seeds[position])
                    for position in range(1, len(token_ids))]
        reply = {
            "id": f"cmpl-{self._next_index}", "object": "text_completion", "created": int(time.time()),
            "model": self.model, "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": _count_tokens(content),
                      "total_tokens": prompt_tokens + _count_tokens(content)},
        }
        if raw_logprobs is not None:
            reply[_RAW_LOGPROBS] = raw_logprobs
        return reply

    def _encoded_prompt_logprobs(self, token_ids: list[int], top_n: int) -> bytes:
        """The `prompt_logprobs` array as JSON bytes, in vLLM's layout, at ~1 us per position.

        Each position takes one of `_LOGPROB_ROWS` pre-encoded top-N rows, chosen by the seed of its prefix
        (so it still depends on the tokens up to it), plus the actual prompt token when it is not among
        them. Building and encoding ~20 dicts per position made the server, not the client under test,
        the bottleneck of prompt-logprob benchmarks (~14 ms of server CPU per 646-token request)."""
        rows = self._logprob_rows.get(top_n)
        if rows is None:
            rows = []
            for row in range(_LOGPROB_ROWS):
                top = pseudo_random_logprobs([], 0, top_n, self.vocab_size, seed=row)
                ranked = sorted(top.items(), key=lambda kv: -kv[1])
                body = orjson.dumps({str(t): {"logprob": lp, "rank": r + 1, "decoded_token": f"<{t}>"}
                                     for r, (t, lp) in enumerate(ranked)})
                rows.append((frozenset(top), body[:-1]))  # without the closing brace
            self._logprob_rows[top_n] = rows
        parts = [b"[null"]
        rank = self.vocab_size
        for position, seed in enumerate(prefix_seeds(token_ids)):
            if position == 0:
                continue
            ids, head = rows[seed % _LOGPROB_ROWS]
            actual = token_ids[position]
            if actual in ids:
                parts.append(head + b"}")
            else:
                parts.append(head + b',"%d":{"logprob":-30.0,"rank":%d,"decoded_token":"<%d>"}}' % (actual, rank, actual))
        return b",".join(parts) + b"]"

    def _logprob_entry(self, token_ids: list[int], position: int, top_n: int, seed: int) -> dict[str, Any]:
        """vLLM's layout: top N by rank plus the actual prompt token (with its own rank); `top_n` 0 gives the
        actual token alone. A `logprobs_reply` may name more tokens than N (the actual one among them, to
        script its logprob): only the N best are listed, and the actual token's entry takes its value and
        rank from them (else -30 at the vocabulary's last rank)."""
        if self.logprobs_reply is not None:
            top = self.logprobs_reply(token_ids, position, top_n)
        else:
            top = pseudo_random_logprobs(token_ids, position, top_n, self.vocab_size, seed=seed)
        ranked = sorted(top.items(), key=lambda kv: -kv[1])
        entry = {str(t): {"logprob": lp, "rank": r + 1, "decoded_token": f"<{t}>"}
                 for r, (t, lp) in enumerate(ranked[:top_n])}
        actual = token_ids[position]
        if str(actual) not in entry:
            rank = next((r + 1 for r, (t, _) in enumerate(ranked) if t == actual), self.vocab_size)
            entry[str(actual)] = {"logprob": top.get(actual, -30.0), "rank": rank, "decoded_token": f"<{actual}>"}
        return entry

    def metrics_text(self) -> str:
        """A few of vLLM's Prometheus metrics, under the same names, so benchmarks read both alike."""
        lines = [
            f'vllm:num_requests_running{{model_name="{self.model}"}} {self.in_flight}',
            f'vllm:num_requests_waiting{{model_name="{self.model}"}} {self.waiting}',
            f'vllm:request_success_total{{model_name="{self.model}"}} {self.completed}',
            f'vllm:prompt_tokens_total{{model_name="{self.model}"}} {self.prompt_tokens_total}',
            f'vllm:generation_tokens_total{{model_name="{self.model}"}} {self.completion_tokens_total}',
            f"autointerp_testserver_max_in_flight {self.max_in_flight}",
            f"autointerp_testserver_requests_total {len(self.requests)}",
        ]
        return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground (for benchmarks in a separate process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request in service")
    parser.add_argument("--capacity", type=int, default=64, help="requests in service at once")
    parser.add_argument("--model", default="fake-model")
    parser.add_argument("--fault-rates", default="{}", help='JSON, e.g. {"500": 0.05, "drop": 0.01}')
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(latency_s=args.latency, capacity=args.capacity, model=args.model, host=args.host,
                              port=args.port, fault_rates=json.loads(args.fault_rates), seed=args.seed)
    server.start()
    print(f"serving {server.base_url} (latency {args.latency}s, capacity {args.capacity})", flush=True)
    try:
        while server.alive:
            time.sleep(0.5)
    except KeyboardInterrupt:
        server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
