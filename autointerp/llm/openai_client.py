"""The client for OpenAI-compatible HTTP servers: vLLM (`vllm serve`), llama.cpp's server, hosted APIs.

Built to keep a vLLM batch full and to survive what real servers do: many requests in flight
(a slot queue, default 64), retries with exponential backoff and jitter (tenacity) on 429 (honouring
Retry-After), 5xx, timeouts and dropped connections, optional request/token rate limits for hosted
quotas, and several base URLs (vLLM replicas) with a dead replica routed around. Every call ends in
a `ChatResult` / `LogprobsResult` with a status; only misconfiguration found by `check()` raises.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from autointerp.errors import UserError
from autointerp.llm.base import ChatResult, LogprobsResult, Message, Status, TokenLogprob
from autointerp.llm.ratelimit import AsyncTokenBucket
from autointerp.llm.replicas import Replica, ReplicaPool
from autointerp.llm.replies import judge_reply

logger = logging.getLogger(__name__)

_JSON_HEADERS = {"Content-Type": "application/json"}

#: vLLM refuses prompt_logprobs above 20 (HTTP 400), as does the OpenAI legacy API.
MAX_PROMPT_LOGPROBS = 20


class _AttemptFailed(Exception):
    """One HTTP attempt that did not give a usable body; `retryable` decides whether tenacity goes on."""

    def __init__(
        self,
        status: Status,
        message: str,
        *,
        retryable: bool,
        replica: Replica | None = None,
        replica_fault: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retryable = retryable
        self.replica = replica
        self.replica_fault = replica_fault
        self.retry_after = retry_after


@dataclass
class _LoopState:
    """Per-event-loop objects: an aiohttp session and asyncio primitives cannot cross loops (asyncio.run
    twice). `slots` allows `concurrency` requests in flight over all replicas together.

    Why aiohttp and not httpx: the transport was most of the client's CPU. Against the test server, here, a
    JSON chat request cost 1.17 ms of client CPU over sharded httpx pools (one pool of 64 cost 6.9 ms: httpcore
    scans every connection per request event) and 0.2 ms over one aiohttp session; reading a 1.2 MB
    prompt-logprob reply took ~2.6 ms through httpcore's 64 KB reads and h11 events, ~1 ms with aiohttp.
    """

    loop: asyncio.AbstractEventLoop
    session: aiohttp.ClientSession
    slots: asyncio.Semaphore
    model_lock: asyncio.Lock


def normalize_base_url(url: str) -> str:
    """`http://host:8000` -> `http://host:8000/v1`; a URL with a path (hosted APIs) is kept as given."""
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/]+/.+", url):
        url += "/v1"
    return url


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: fall back to our own backoff
    return max(0.0, when.timestamp() - time.time())


def _error_text(raw: bytes) -> str:
    """The message of an error body (OpenAI's {"error": {"message"}} or a bare {"message"}), else its text."""
    try:
        body = orjson.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))[:500]
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])[:500]
    return str(body)[:500]


def _ca_bundle() -> str | None:
    """certifi's CA bundle when installed (what most Python clients use), else the system's."""
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _schema_name(schema: dict[str, Any]) -> str:
    """OpenAI wants json_schema.name to match ^[a-zA-Z0-9_-]{1,64}$."""
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(schema.get("title") or "reply"))
    return name[:64] or "reply"


class OpenAIClient:
    """`LLMClient` over one or more OpenAI-compatible base URLs.

    Call `await check()` first: it fails fast (UserError) when no server answers, and settles
    `model_name` when the server serves exactly one model and none was named.
    """

    def __init__(
        self,
        base_urls: str | list[str],
        model: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 64,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        rps: float | None = None,
        tpm: float | None = None,
        tokenizer_spec: str | None = None,
        guided_json: bool = True,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        replica_down_s: float = 10.0,
        max_retry_after_s: float = 120.0,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        self.base_urls = [normalize_base_url(u) for u in urls]
        if concurrency < 1:
            raise UserError(f"--concurrency must be at least 1, got {concurrency}", "use e.g. --concurrency 64")
        if timeout_s <= 0:
            raise UserError(f"--timeout must be positive, got {timeout_s}", "use e.g. --timeout 120")
        if max_retries < 0:
            raise UserError(f"--max-retries must be >= 0, got {max_retries}", "use e.g. --max-retries 4")
        self._model = model
        self.api_key_env = api_key_env
        self.api_key = os.environ.get(api_key_env) or None
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.guided_json = guided_json
        self.tokenizer_spec = tokenizer_spec
        self.supports_prompt_logprobs = tokenizer_spec is not None
        self.max_retry_after_s = max_retry_after_s
        self.pool = ReplicaPool(self.base_urls, down_s=replica_down_s)
        self._request_bucket = AsyncTokenBucket(rps) if rps else None
        # Burst of one minute's worth; each request takes its estimated tokens, settled after the reply.
        self._token_bucket = AsyncTokenBucket(tpm / 60.0, capacity=tpm) if tpm else None
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._state: _LoopState | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._tokenizer: Any = None
        self._checked = False
        #: Counts of final statuses and of retried attempts, for progress lines and benchmarks.
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ plumbing

    @property
    def model_name(self) -> str:
        return self._model or ""

    def __repr__(self) -> str:
        return f"OpenAIClient({','.join(self.base_urls)!r}, model={self._model!r})"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            if self._ssl_context is None:
                # Built once: loading the CA bundle costs ~70 ms.
                self._ssl_context = ssl.create_default_context(cafile=_ca_bundle())
            connector = aiohttp.TCPConnector(
                # The slots bound requests; the connector only needs room for them plus check()'s GETs.
                limit=self.concurrency + len(self.base_urls),
                limit_per_host=0,
                ssl=self._ssl_context,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s, sock_connect=min(10.0, self.timeout_s)),
                # Bodies are read whole, then parsed here (orjson / msgspec); no cookies between requests.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._state = _LoopState(loop, session, asyncio.Semaphore(self.concurrency), asyncio.Lock())
        return self._state

    async def aclose(self) -> None:
        if self._state is not None and self._state.loop is asyncio.get_running_loop():
            await self._state.session.close()
        self._state = None

    async def __aenter__(self) -> OpenAIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def tokenizer(self) -> Any:
        if self.tokenizer_spec is None:
            return None
        if self._tokenizer is None:
            from autointerp.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_spec)
        return self._tokenizer

    # ------------------------------------------------------------------ startup check

    async def check(self) -> None:
        """Fail fast, before any work, when no server answers or the model is not served."""
        state = self._loop_state()
        served: dict[str, list[str]] = {}
        dead: dict[str, str] = {}
        for replica in self.pool.replicas:
            url = f"{replica.base_url}/models"
            try:
                async with state.session.get(
                    url, timeout=aiohttp.ClientTimeout(total=min(self.timeout_s, 10.0))
                ) as response:
                    code, raw = response.status, await response.read()
            except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                dead[replica.base_url] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if code in (401, 403):
                raise UserError(
                    f"{url} refused the request (HTTP {code}): {_error_text(raw)}",
                    f"put the server's API key in ${self.api_key_env} (or name another variable with --api-key-env)",
                )
            if code != 200:
                dead[replica.base_url] = f"HTTP {code} from {url}: {_error_text(raw)}"
                continue
            try:
                data = orjson.loads(raw).get("data", [])
                served[replica.base_url] = [str(item["id"]) for item in data]
            except (ValueError, AttributeError, KeyError, TypeError) as exc:
                dead[replica.base_url] = f"{url} did not answer an OpenAI model list: {exc}"
        if not served:
            reasons = "; ".join(f"{u}: {why}" for u, why in dead.items())
            raise UserError(
                f"no OpenAI-compatible server at {', '.join(self.base_urls)} ({reasons})",
                "start one with `autointerp serve --model DIR` (or vllm serve), or check --llm "
                "(e.g. --llm http://127.0.0.1:8000/v1)",
            )
        for url, why in dead.items():
            logger.warning("LLM replica %s is not answering (%s); routing around it", url, why)
            self.pool.mark_down(next(r for r in self.pool.replicas if r.base_url == url))
        all_models = sorted({m for models in served.values() for m in models})
        if self._model is not None:
            missing = [u for u, models in served.items() if self._model not in models]
            if missing:
                raise UserError(
                    f"model {self._model!r} is not served at {', '.join(missing)} (it serves: "
                    f"{', '.join(served[missing[0]]) or 'nothing'})",
                    "pass --llm-model with one of the served names",
                )
        elif len(all_models) == 1:
            self._model = all_models[0]
        elif not all_models:
            raise UserError(f"the server at {', '.join(served)} serves no model", "check the server's --model")
        else:
            raise UserError(
                f"the server serves several models ({', '.join(all_models)}) and none was chosen",
                "pass --llm-model NAME",
            )
        self._checked = True

    async def _ensure_model(self) -> None:
        if self._checked or self._model is not None:
            return
        async with self._loop_state().model_lock:
            if not self._checked and self._model is None:
                await self.check()

    # ------------------------------------------------------------------ one request, with retries

    def _wait(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _AttemptFailed):
            if exc.retry_after is not None:
                # Honour the server's wish, plus a little jitter so waiting clients do not return in lockstep.
                return min(exc.retry_after, self.max_retry_after_s) * (1.0 + 0.1 * random.random())
            if exc.replica_fault and exc.replica is not None and self.pool.another_is_up(exc.replica):
                return 0.0  # another replica can take it now
        # Exponential backoff with full-size jitter (tenacity's wait_exponential_jitter, minus its
        # parameter renames across versions).
        exponential = self.backoff_initial_s * 2 ** (retry_state.attempt_number - 1)
        return min(self.backoff_max_s, exponential) + random.uniform(0, self.backoff_initial_s)

    async def _attempt(
        self,
        path: str,
        payload: dict[str, Any],
        token_estimate: float,
        avoid: Replica | None,
        decode: Callable[[bytes], Any] = orjson.loads,
    ) -> dict[str, Any]:
        state = self._loop_state()
        if self._request_bucket is not None:
            await self._request_bucket.acquire(1)
        if self._token_bucket is not None:
            await self._token_bucket.acquire(token_estimate)
        content = orjson.dumps(payload)  # encoded before taking a slot; orjson is ~10x the stdlib encoder
        async with state.slots:
            replica = self.pool.pick(avoid)
            url = f"{replica.base_url}{path}"
            replica.in_flight += 1
            replica.requests += 1
            try:
                async with state.session.post(url, data=content, headers=_JSON_HEADERS) as response:
                    code = response.status
                    raw = await response.read()
                    retry_after = response.headers.get("Retry-After")
            except asyncio.TimeoutError as exc:  # before ClientError: aiohttp's ServerTimeoutError is both
                raise _AttemptFailed(
                    Status.TIMEOUT, f"no reply from {url} within {self.timeout_s:g}s ({type(exc).__name__})",
                    retryable=True, replica=replica,
                ) from exc
            except aiohttp.ClientError as exc:  # refused, reset, dropped mid-reply
                self.pool.mark_down(replica)
                raise _AttemptFailed(
                    Status.CONNECTION_ERROR, f"connection to {url} failed: {type(exc).__name__}: {exc}",
                    retryable=True, replica=replica, replica_fault=True,
                ) from exc
            finally:
                replica.in_flight -= 1
        if code == 429:
            raise _AttemptFailed(
                Status.RATE_LIMITED, f"HTTP 429 from {url}: {_error_text(raw)}", retryable=True,
                replica=replica, retry_after=parse_retry_after(retry_after),
            )
        if code == 408:
            raise _AttemptFailed(Status.TIMEOUT, f"HTTP 408 from {url}", retryable=True, replica=replica)
        if code >= 500:
            self.pool.mark_down(replica)
            raise _AttemptFailed(
                Status.SERVER_ERROR, f"HTTP {code} from {url}: {_error_text(raw)}", retryable=True,
                replica=replica, replica_fault=True,
                retry_after=parse_retry_after(retry_after) if code == 503 else None,
            )
        if code >= 400:
            raise _AttemptFailed(
                Status.CLIENT_ERROR, f"HTTP {code} from {url}: {_error_text(raw)}", retryable=False,
                replica=replica,
            )
        try:
            # orjson: a simulation reply carries top-20 logprobs for every prompt position (hundreds of KB);
            # the stdlib parser on the event loop was the bottleneck of the whole score stage.
            body = decode(raw)
        except ValueError as exc:  # orjson's and msgspec's decode errors are ValueErrors
            raise _AttemptFailed(
                Status.SERVER_ERROR,
                f"{url} answered HTTP {code} with a body that is not JSON: "
                f"{raw[:200].decode('utf-8', errors='replace')!r}",
                retryable=True, replica=replica,
            ) from exc
        if not isinstance(body, dict) or "error" in body:
            raise _AttemptFailed(
                Status.SERVER_ERROR, f"{url} answered with an error body: {str(body)[:500]}", retryable=True,
                replica=replica,
            )
        self.pool.mark_ok(replica)
        return body

    async def _post(
        self,
        path: str,
        payload: dict[str, Any],
        token_estimate: float,
        decode: Callable[[bytes], Any] = orjson.loads,
    ) -> tuple[dict[str, Any] | _AttemptFailed, int]:
        """The response body (or the last failure) and the number of attempts made; `decode` reads the body."""
        attempts = 0
        last_failed: list[Replica | None] = [None]

        def remember(retry_state: RetryCallState) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            last_failed[0] = exc.replica if isinstance(exc, _AttemptFailed) else None
            self.counters["retries"] += 1

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception(lambda e: isinstance(e, _AttemptFailed) and e.retryable),
            before_sleep=remember,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    return await self._attempt(path, payload, token_estimate, last_failed[0], decode), attempts
        except _AttemptFailed as exc:
            return exc, attempts
        raise AssertionError("tenacity ended without a result")  # unreachable: reraise=True

    # ------------------------------------------------------------------ the LLMClient interface

    async def chat(
        self,
        messages: list[Message],
        *,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = 0,
        top_logprobs: int = 0,
    ) -> ChatResult:
        await self._ensure_model()
        started = time.perf_counter()
        payload: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if seed is not None:
            payload["seed"] = seed
        if top_logprobs > 0:
            payload["logprobs"] = True
            payload["top_logprobs"] = min(int(top_logprobs), MAX_PROMPT_LOGPROBS)
        if json_schema is not None and self.guided_json:
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": _schema_name(json_schema), "schema": json_schema, "strict": True},
            }
        estimate = sum(len(m.get("content") or "") for m in messages) / 4 + max_tokens
        body, attempts = await self._post("/chat/completions", payload, estimate)
        latency = time.perf_counter() - started
        if isinstance(body, _AttemptFailed):
            self.counters[body.status.value] += 1
            return ChatResult(body.status, error=body.message, latency_s=latency, attempts=attempts)
        usage = body.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        if self._token_bucket is not None and usage:
            self._token_bucket.refund(estimate - prompt_tokens - completion_tokens)
        try:
            choice = body["choices"][0]
            text = choice["message"].get("content")
            finish_reason = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            self.counters[Status.SERVER_ERROR.value] += 1
            return ChatResult(
                Status.SERVER_ERROR, error=f"reply without choices[0].message: {exc!r}; body {str(body)[:300]}",
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, latency_s=latency,
                attempts=attempts,
            )
        verdict = judge_reply(text, finish_reason, json_schema)
        self.counters[verdict.status.value] += 1
        return ChatResult(
            verdict.status, text=text, parsed=verdict.parsed, error=verdict.error, finish_reason=finish_reason,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, latency_s=latency, attempts=attempts,
            token_logprobs=_chat_logprobs(choice.get("logprobs")) if top_logprobs > 0 else None,
        )

    async def prompt_logprobs(self, token_ids: list[int], positions: list[int], top_n: int = 20) -> LogprobsResult:
        if not 0 <= top_n <= MAX_PROMPT_LOGPROBS:
            raise ValueError(f"top_n must be in 0..{MAX_PROMPT_LOGPROBS} (vLLM's limit; 0: the prompt's tokens only), "
                             f"got {top_n}")
        bad = [p for p in positions if not 1 <= p < len(token_ids)]
        if bad:
            raise ValueError(f"positions {bad} are outside 1..{len(token_ids) - 1} (position 0 has no prediction)")
        await self._ensure_model()
        started = time.perf_counter()
        # max_tokens 1, not 0: vLLM answers 400 "max_tokens must be at least 1" in some paths.
        payload = {
            "model": self._model,
            "prompt": [int(t) for t in token_ids],
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": top_n,
        }
        body, attempts = await self._post("/completions", payload, len(token_ids) + 1, _decode_prompt_logprobs_reply)
        latency = time.perf_counter() - started
        if isinstance(body, _AttemptFailed):
            self.counters[body.status.value] += 1
            return LogprobsResult(body.status, positions=list(positions), error=body.message, latency_s=latency,
                                  attempts=attempts)
        usage = body.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or len(token_ids))
        result = LogprobsResult(Status.OK, positions=list(positions), prompt_tokens=prompt_tokens,
                                latency_s=latency, attempts=attempts)
        choices = body.get("choices") or [{}]
        entries = choices[0].get("prompt_logprobs") if isinstance(choices[0], dict) else None
        if entries is None:
            entries = body.get("prompt_logprobs")
        if entries is None:
            result.status = Status.NO_LOGPROBS
            result.error = "the server returned no prompt_logprobs (is it vLLM? other servers ignore the field)"
        elif len(entries) != len(token_ids):
            result.status = Status.SERVER_ERROR
            result.error = f"prompt_logprobs has {len(entries)} entries for a prompt of {len(token_ids)} tokens"
        else:
            try:
                read = [_position_logprobs(entries[p], top_n, int(token_ids[p])) for p in positions]
                result.top_logprobs = [top for top, _ in read]
                result.actual = [actual for _, actual in read]
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                result.status = Status.SERVER_ERROR
                result.error = f"cannot read prompt_logprobs: {exc!r}"
        self.counters[result.status.value] += 1
        return result


def _chat_logprobs(block: Any) -> list[TokenLogprob] | None:
    """OpenAI chat `logprobs.content` ([{token, logprob, top_logprobs: [{token, logprob}]}]) -> TokenLogprob
    list; None when the server sent none or something unreadable (the caller then uses the hard answers)."""
    content = block.get("content") if isinstance(block, dict) else None
    if not isinstance(content, list) or not content:
        return None
    out = []
    try:
        for entry in content:
            top = {str(t["token"]): float(t["logprob"]) for t in entry.get("top_logprobs") or []}
            top.setdefault(str(entry["token"]), float(entry["logprob"]))
            out.append(TokenLogprob(str(entry["token"]), float(entry["logprob"]), top))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return out


class _PromptLogprobsChoice(msgspec.Struct):
    prompt_logprobs: list[msgspec.Raw] | None = None


class _PromptLogprobsReply(msgspec.Struct):
    """What `prompt_logprobs` reads of a /completions reply; every other field is skipped unparsed."""

    choices: list[_PromptLogprobsChoice] | None = None
    usage: dict[str, Any] | None = None
    prompt_logprobs: list[msgspec.Raw] | None = None  # where some servers put it
    error: Any = None


_PROMPT_LOGPROBS_DECODER = msgspec.json.Decoder(_PromptLogprobsReply)


def _decode_prompt_logprobs_reply(content: bytes) -> Any:
    """A prompt-logprob reply (top-N at EVERY prompt position: ~1 MB for 650 tokens) with each position
    left as raw JSON, so only the positions asked for are parsed: 0.7 ms instead of orjson's 4.4 ms for
    the whole body, measured here. A body of another shape is read whole (the caller then judges it)."""
    try:
        reply = _PROMPT_LOGPROBS_DECODER.decode(content)
    except msgspec.ValidationError:
        return orjson.loads(content)
    body: dict[str, Any] = {
        "usage": reply.usage,
        "choices": [{"prompt_logprobs": c.prompt_logprobs} for c in reply.choices or []],
        "prompt_logprobs": reply.prompt_logprobs,
    }
    if reply.error is not None:
        body["error"] = reply.error
    return body


class _Logprob(msgspec.Struct):
    """One alternative of a vLLM prompt-logprob position; `decoded_token` is skipped unparsed."""

    logprob: float
    rank: int | None = None


#: A position as vLLM sends it ({token-id string: {logprob, rank, decoded_token}}). Typed decoding is 2.2x
#: faster than orjson plus a Python loop (3.4 vs 7.5 us per 21-entry position, measured here), and a
#: simulation reply has ~150 positions to read. Other layouts (plain {token: logprob}) take the generic path.
_POSITION_DECODER = msgspec.json.Decoder(dict[int, _Logprob] | None)


def _top_entries(entry: dict[str, Any] | msgspec.Raw | None, top_n: int) -> dict[int, float]:
    """vLLM's {token-id string: {logprob, rank, decoded_token}} -> {token id: logprob}, top-N by rank.

    vLLM adds the prompt's actual token even when it ranks below N; it is dropped so every
    backend returns the same top-N set. A `msgspec.Raw` entry (the fast reply path) is parsed here.
    """
    if isinstance(entry, msgspec.Raw):
        try:
            typed = _POSITION_DECODER.decode(entry)
        except msgspec.ValidationError:  # keys that are not token ids, odd fields: the generic path judges it
            entry = orjson.loads(bytes(entry))
        else:
            if typed is None:
                raise ValueError("no logprobs at a requested position")
            return {token: info.logprob for token, info in typed.items() if info.rank is None or info.rank <= top_n}
    if entry is None:
        raise ValueError("no logprobs at a requested position")
    out: dict[int, float] = {}
    for token, info in entry.items():
        logprob = info["logprob"] if isinstance(info, dict) else info
        rank = info.get("rank") if isinstance(info, dict) else None
        if rank is not None and int(rank) > top_n:
            continue
        out[int(token)] = float(logprob)
    return out


def _position_logprobs(
    entry: dict[str, Any] | msgspec.Raw | None, top_n: int, actual: int
) -> tuple[dict[int, float], float | None]:
    """One prompt position: its top-N {token id: logprob} (as `_top_entries`) and the logprob of the prompt's
    own token `actual`, which vLLM sends in every entry whatever its rank (None when a server did not).

    Why one parse for both: a raw vLLM entry decodes in ~3.4 us and a simulation reply has ~150 positions;
    decoding each twice (once per reader) would add that again to every request. Entries of another
    layout go through `_top_entries`, the one reader of those."""
    if isinstance(entry, msgspec.Raw):
        try:
            typed = _POSITION_DECODER.decode(entry)
        except msgspec.ValidationError:  # not vLLM's layout: the generic path below judges it
            entry = orjson.loads(bytes(entry))
        else:
            if typed is None:
                raise ValueError("no logprobs at a requested position")
            own = typed.get(actual)
            top = {token: info.logprob for token, info in typed.items() if info.rank is None or info.rank <= top_n}
            return top, None if own is None else own.logprob
    top = _top_entries(entry, top_n)
    info = entry.get(str(actual)) if isinstance(entry, dict) else None
    value = info.get("logprob") if isinstance(info, dict) else info
    return top, None if value is None else float(value)
