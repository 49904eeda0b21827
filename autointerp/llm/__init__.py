"""LLM clients behind one interface (`LLMClient` in `base.py`), chosen by one `--llm` string.

`--llm local:smollm2` (the default) runs a transformers model in this process; `--llm
http://host:8000/v1[,http://host2:8000/v1...]` talks to one or more OpenAI-compatible servers
(vLLM, llama.cpp, hosted APIs). Stages build their client with `client_from_args(args)` and call
`await client.check()` before any work, so a run never starts against a dead server; after
`check()`, `client.model_name` is the name to record with every label and score.

Heavy imports (torch, transformers, httpx) happen inside `make_client`, keeping `--help` instant.
"""

from __future__ import annotations

import argparse
from typing import Any

from autointerp.errors import UserError
from autointerp.llm.base import WEIGHT_FORMATS, ChatResult, LLMClient, LogprobsResult, Message, Status

__all__ = [
    "DEFAULT_LLM",
    "ChatResult",
    "LLMClient",
    "LogprobsResult",
    "Message",
    "Status",
    "WEIGHT_FORMATS",
    "add_llm_arguments",
    "client_from_args",
    "make_client",
]

DEFAULT_LLM = "local:smollm2"

# Options each backend accepts; anything else passed to make_client is a bug in the caller.
_HTTP_OPTIONS = {
    "api_key_env", "concurrency", "timeout_s", "max_retries", "rps", "tpm", "tokenizer_spec",
    "guided_json", "backoff_initial_s", "backoff_max_s", "replica_down_s", "max_retry_after_s",
}
_LOCAL_OPTIONS = {"device", "dtype", "weights", "max_batch_size", "batch_wait_s", "json_prefill"}


def make_client(llm: str, model: str | None = None, **options: Any) -> LLMClient:
    """The client for an `--llm` value.

    `llm`: `local:SPEC` (SPEC as for `autointerp.models.load_model`: `smollm2`, a HF directory, a
    .gguf) or one or more comma-separated `http(s)://` base URLs (with or without the `/v1`).
    `model`: the served model name (HTTP only; None: the one model the server serves).
    `options`: HTTP: api_key_env, concurrency, timeout_s, max_retries, rps, tpm, tokenizer_spec,
    guided_json, ...; local: device, dtype, weights, max_batch_size, batch_wait_s, json_prefill.
    Options set to None are dropped, so argparse defaults of None mean "backend default".
    """
    options = {key: value for key, value in options.items() if value is not None}
    spec = (llm or "").strip()
    if spec.startswith("local:"):
        unknown = set(options) - _LOCAL_OPTIONS - _HTTP_OPTIONS
        if unknown:
            raise TypeError(f"unknown LLM client options: {sorted(unknown)}")
        model_spec = spec.removeprefix("local:").strip()
        if not model_spec:
            raise UserError("--llm local: needs a model after the colon", "use e.g. --llm local:smollm2")
        if model is not None:
            raise UserError(
                f"--llm-model {model!r} was given with a local model ({spec})",
                "--llm-model names a model served over HTTP; for a local model put it in --llm local:SPEC",
            )
        from autointerp.llm.local_client import LocalClient

        return LocalClient(model_spec, **{k: v for k, v in options.items() if k in _LOCAL_OPTIONS})
    urls = [part.strip() for part in spec.split(",") if part.strip()]
    if urls and all(url.startswith(("http://", "https://")) for url in urls):
        unknown = set(options) - _HTTP_OPTIONS - _LOCAL_OPTIONS
        if unknown:
            raise TypeError(f"unknown LLM client options: {sorted(unknown)}")
        from autointerp.llm.openai_client import OpenAIClient

        return OpenAIClient(urls, model, **{k: v for k, v in options.items() if k in _HTTP_OPTIONS})
    raise UserError(
        f"--llm {llm!r} is neither local:MODEL nor http(s):// base URLs",
        "use --llm local:smollm2 (embedded), or --llm http://127.0.0.1:8000/v1 for a vLLM / "
        "OpenAI-compatible server (several replicas: comma-separated URLs)",
    )


def add_llm_arguments(parser: argparse.ArgumentParser, prefix: str = "", default_llm: str = DEFAULT_LLM) -> None:
    """Add the LLM flags shared by explain and score.

    `prefix` lets one command take two clients (e.g. prefix='simulator-' gives --simulator-llm,
    --simulator-llm-model, ...); `client_from_args(args, prefix)` reads them back.
    """
    dest = prefix.replace("-", "_")
    group = parser.add_argument_group(f"{prefix}LLM client" if prefix else "LLM client")
    group.add_argument(
        f"--{prefix}llm", dest=f"{dest}llm", default=default_llm,
        help="local:MODEL (embedded transformers, e.g. local:smollm2) or OpenAI-compatible base URL(s), "
        "comma-separated for several replicas, e.g. http://127.0.0.1:8000/v1 (default: %(default)s)",
    )
    group.add_argument(f"--{prefix}llm-model", dest=f"{dest}llm_model", default=None,
                       help="served model name (default: the one model the server lists)")
    group.add_argument(f"--{prefix}concurrency", dest=f"{dest}concurrency", type=int, default=None,
                       help="requests in flight at once (HTTP; default 64, enough to fill a vLLM batch)")
    group.add_argument(f"--{prefix}timeout", dest=f"{dest}timeout", type=float, default=None,
                       help="seconds per request attempt (HTTP; default 120)")
    group.add_argument(f"--{prefix}max-retries", dest=f"{dest}max_retries", type=int, default=None,
                       help="retries after a 429/5xx/timeout/dropped connection (HTTP; default 4)")
    group.add_argument(f"--{prefix}rps", dest=f"{dest}rps", type=float, default=None,
                       help="at most this many requests per second (HTTP; default: no limit)")
    group.add_argument(f"--{prefix}tpm", dest=f"{dest}tpm", type=float, default=None,
                       help="at most this many tokens per minute, prompt + completion (HTTP; default: no limit)")
    group.add_argument(f"--{prefix}api-key-env", dest=f"{dest}api_key_env", default=None,
                       help="environment variable holding the API key (HTTP; default OPENAI_API_KEY, optional)")
    group.add_argument(f"--{prefix}tokenizer", dest=f"{dest}tokenizer", default=None,
                       help="tokenizer of the served model (smollm2, a directory): enables prompt logprobs "
                       "for the simulator over HTTP")
    group.add_argument(f"--{prefix}llm-weights", dest=f"{dest}llm_weights", choices=WEIGHT_FORMATS,
                       default=None,
                       help="embedded LLM (local:...): int8 keeps the decoder's linear weights as int8 with a scale "
                       "per row (half the memory of bf16), full as loaded; auto: the model's default")
    group.add_argument(f"--{prefix}no-guided-json", dest=f"{dest}no_guided_json", action="store_true",
                       help="do not send response_format json_schema (for servers that refuse it); "
                       "replies are still validated here")


def client_from_args(args: argparse.Namespace, prefix: str = "") -> LLMClient:
    """The client described by the flags `add_llm_arguments(parser, prefix)` added."""
    dest = prefix.replace("-", "_")

    def get(name: str) -> Any:
        return getattr(args, f"{dest}{name}", None)

    return make_client(
        get("llm") or DEFAULT_LLM,
        get("llm_model"),
        concurrency=get("concurrency"),
        timeout_s=get("timeout"),
        max_retries=get("max_retries"),
        rps=get("rps"),
        tpm=get("tpm"),
        api_key_env=get("api_key_env"),
        tokenizer_spec=get("tokenizer"),
        guided_json=False if get("no_guided_json") else None,
        device=get("device"),
        weights=get("llm_weights"),
    )
