"""The one LLM interface every stage uses. Backends (HTTP/OpenAI-compatible, embedded) sit behind it.

Every call returns a result with a `status`; a backend never raises for a failed item (only for
misconfiguration, as `UserError`, before any work starts). A failed item is recorded as a failure
by the stage, never turned into a label or a score.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: `--llm-weights`: how the embedded LLM keeps its decoder weights (auto: the model's default, `llm_weights`).
WEIGHT_FORMATS = ("auto", "int8", "full")


class Status(str, enum.Enum):
    OK = "ok"
    PARSE_ERROR = "parse_error"          # reply is not JSON
    SCHEMA_ERROR = "schema_error"        # JSON that breaks the schema
    UNUSABLE_LABEL = "unusable_label"    # a label the label-quality check rejects (echoed prompt, loop, ...)
    TRUNCATED = "truncated"              # finish_reason == 'length'
    EMPTY = "empty"                      # empty reply
    SERVER_ERROR = "server_error"        # 5xx, or an error body
    CLIENT_ERROR = "client_error"        # 4xx other than 429 (bad request, context too long)
    RATE_LIMITED = "rate_limited"        # 429 after all retries
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    NO_LOGPROBS = "no_logprobs"          # the backend cannot return prompt logprobs
    UNDEFINED = "undefined"              # a score whose value is mathematically undefined
    EXCEPTION = "exception"              # the stage's own code raised for this item (traceback in `error`)


Message = dict[str, str]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token of a chat reply: its text, its logprob and the top alternatives {text: logprob}
    at that step (the chosen token included), when the caller asked for `top_logprobs`."""

    token: str
    logprob: float
    top: dict[str, float]


@dataclass
class ChatResult:
    """One chat completion. `parsed` is set only when status is OK and a schema was given. `token_logprobs`
    is set only when logprobs were asked for and the backend returned them (else None)."""

    status: Status
    text: str | None = None
    parsed: Any = None
    error: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    token_logprobs: list[TokenLogprob] | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass
class LogprobsResult:
    """Teacher-forced logprobs at chosen prompt positions: the top N alternatives and the prompt's own token.

    `positions[i]` is a list index into the prompt token ids; `top_logprobs[i]` maps token id ->
    logprob of that token *at* prompt position `positions[i]` (i.e. predicted from the tokens before it),
    the N most likely ones (empty dicts when N was 0). `actual[i]` is the logprob of the prompt's own token
    `token_ids[positions[i]]` there, whatever its rank: what a likelihood judge reads (how well the model
    predicts the text it is shown; the intruder-likelihood scorer). None only where a server sent a
    position without the prompt's token (vLLM always includes it; a server of another layout may not).
    """

    status: Status
    positions: list[int] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    actual: list[float | None] = field(default_factory=list)
    error: str | None = None
    prompt_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@runtime_checkable
class LLMClient(Protocol):
    """What stages may ask of a model."""

    #: The model name recorded with every label/score (keys resumability).
    model_name: str
    #: True when `prompt_logprobs` works (the simulator uses it, else it falls back to JSON; the
    #: intruder-likelihood scorer needs it).
    supports_prompt_logprobs: bool
    #: Requests this client lets run at once; the work runner keeps about twice this many items in flight.
    concurrency: int

    async def check(self) -> None:
        """Fail fast (UserError) when the backend cannot serve, before a stage writes anything; may settle
        `model_name` (an HTTP client asks the server which model it serves)."""
        ...

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
        """A chat completion; with `json_schema`, the reply is parsed and validated against it. With
        `top_logprobs` N > 0, the reply's tokens come back with their top-N alternatives where the backend
        can give them (`ChatResult.token_logprobs`; None where it cannot)."""
        ...

    async def prompt_logprobs(self, token_ids: list[int], positions: list[int], top_n: int = 20) -> LogprobsResult:
        """Teacher-forced logprobs at `positions` of a prompt given as token ids: the top-N alternatives
        (`top_logprobs`) and the prompt's own token at each position (`actual`). `top_n` 0 asks for the
        prompt's tokens only (as vLLM's `prompt_logprobs: 0`): cheaper, and all a likelihood judge needs."""
        ...

    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (to build token-id prompts), or None if unknown."""
        ...

    async def aclose(self) -> None:
        ...
