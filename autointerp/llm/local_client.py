"""The embedded backend: a transformers causal LM in this process (`--llm local:smollm2`).

For machines without a server: no setup, same interface as the HTTP client. Concurrent calls are
gathered into padded batches (see `microbatch.py`) and run in one worker thread, so the event loop
stays free. Chat uses the tokenizer's chat template; temperature 0 is greedy decoding.

Generation goes through `shared_head.py` where the model family allows it (the prompts' shared head
stored once, rows leaving the batch as they finish), else through transformers' `generate`. There the
client also keeps what reading its last batch's prompts left (`prompt_states`), so the same prompt asked
again soon (explain's retry of a rejected label) goes straight to generating.

JSON replies are grammar-constrained with xgrammar (the engine vLLM uses for guided decoding) when
it is installed (`pip install autointerp[embedded]`): the reply can then only be schema-valid JSON,
as with a vLLM server; the text the grammar forces at the start (`{"explanation": "`) is read with the
prompt rather than generated a step per token. Without xgrammar we keep it honest and light: the reply is
prefilled with the schema's fixed head (`{"explanation": "` for an object whose first required
property is a string: the only text a guided decoder would allow there anyway; small models
otherwise wander off before writing any JSON),
generation stops once a complete top-level JSON object has been written (like a stop sequence),
and then the reply goes through the same parse / schema checks as every backend (`replies.py`).
A small model that writes something else gets PARSE_ERROR / SCHEMA_ERROR, never a fake OK.

The backend never aborts a run: an exception while generating or scoring a batch is retried item by
item (so one bad item cannot sink its batch-mates), and an item that still fails ends as SERVER_ERROR
with the exception text, like a 5xx from a server.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from autointerp.errors import UserError
from autointerp.llm import shared_head
from autointerp.llm.base import WEIGHT_FORMATS, ChatResult, LogprobsResult, Message, Status, TokenLogprob
from autointerp.llm.microbatch import MicroBatcher
from autointerp.llm.prefix_cache import PrefixCache, PromptStates
from autointerp.llm.replies import judge_reply

# transformers 5.2x renames generate's/forward's `past_key_values` to `cache` and warns on every call (once per
# batch: dozens of lines in a demo). The old name still works in every version we support; the new one does not
# exist in the older ones, so keep the old name and silence exactly this warning.
warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)


@dataclass
class _ChatItem:
    prompt: str            # the templated prompt, ready to tokenize
    prefill: str           # text the assistant reply starts with (part of the reply)
    max_tokens: int
    temperature: float
    seed: int | None
    stop_after_json: bool
    schema_key: str | None = None      # canonical JSON of the schema, for grammar-guided decoding
    top_logprobs: int = 0              # > 0: return each reply token with its top-N alternatives

    @property
    def text(self) -> str:
        """What the model reads: the prompt and the reply's start (also the key of its kept read state)."""
        return self.prompt + self.prefill


@dataclass
class _Generated:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_logprobs: list[TokenLogprob] | None = None
    error: str | None = None           # set when generation raised: the item is a SERVER_ERROR


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc's `malloc_trim`; elsewhere nothing).

    Why: glibc keeps what a batch freed (activations, the KV cache that grew by concatenation) for reuse,
    and a later batch of another shape reuses little of it: after one qwen1.5b explain batch the heap held
    410 MB free against 252 MB in use, and in simulation the free part grew batch by batch (196 -> 326 MB).
    Called once per batch; giving the pages back and faulting them in again costs milliseconds against
    batches of seconds.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    """glibc, or None where the C library is another (macOS, musl) and has no `malloc_trim`."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


@contextmanager
def _grouped_query_sdpa() -> Iterator[None]:
    """Within: transformers hands grouped-query attention to SDPA as is, with the padding mask.

    Why: with a padding mask, transformers copies each KV head once per query head it serves before SDPA
    (qwen1.5b: 6 copies, 56 MB per layer for 8 rows of 1,150 tokens, at the peak of a chunked prefill) unless
    TRANSFORMERS_SDPA_FORCE_GQA is set; torch's CPU kernel then groups the heads itself, bit for bit the same
    for queries of several positions (measured), with no copy and no slower. Only around such forward passes:
    for one-position queries (decoding) transformers has a faster layout of its own (7 vs 30 ms per layer).
    Versions of transformers that do not know the variable ignore it.
    """
    name = "TRANSFORMERS_SDPA_FORCE_GQA"
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _describe(exc: BaseException) -> str:
    return f"embedded backend failed: {type(exc).__name__}: {exc}"[:2000]


def _isolated(run: Any, items: list[Any], failed: Any) -> list[Any]:
    """`run(items)`; when it raises, each item alone, and `failed(exc)` for items that still raise.

    Why item by item: a batch fails as a whole (one over-long prompt, one grammar hiccup), but its
    other items are fine and should not be lost with it.
    """
    try:
        return list(run(items))
    except Exception as exc:  # noqa: BLE001 - any backend failure becomes a per-item status
        if len(items) == 1:
            return [failed(exc)]
    results = []
    for item in items:
        try:
            results.extend(run([item]))
        except Exception as exc:  # noqa: BLE001 - recorded on this item, the others continue
            results.append(failed(exc))
    return results


@dataclass
class _LogprobsItem:
    token_ids: list[int]
    positions: list[int]
    top_n: int


#: Asked positions whose vocabulary-wide logprobs are computed at once: 32 positions hold ~50 MB for Qwen (the
#: bf16 logits, their float32 copy, the log-softmax). With 64, qwen0.5b's simulation peaked ~100 MB higher
#: (1,650 vs 1,545 MB with 16 on 8 demo features); 32 took 1.02x the time of 64 and 16 took 1.09x (the
#: vocabulary-wide product is less efficient with fewer rows; `_logprobs_chunk` on ~1,000-token prompts).
LOGPROB_POSITIONS = 32

#: One prompt's answer: the top-N {token id: logprob} per asked position, and the prompt token's logprob there.
_Logprobs = tuple[list[dict[int, float]], list[float]]


def schema_prefill(schema: dict[str, Any] | None) -> str:
    """The forced start of a reply to an object schema: `{"first_required": ` plus `"` or `[` by its type.

    Only the part every valid reply shares (key order follows `required`, as our prompts ask), so the
    prefill never makes an invalid reply look valid: the whole text is still parsed and validated.
    """
    if not schema or schema.get("type", "object") != "object":
        return ""
    properties = schema.get("properties") or {}
    required = schema.get("required") or []
    if not required or required[0] not in properties:
        return "{"
    first = required[0]
    head = "{" + json.dumps(first) + ": "
    kind = properties[first].get("type")
    if kind == "string":
        return head + '"'
    if kind == "array":
        return head + "["
    return head


def json_object_end(text: str) -> int | None:
    """Index just past the first complete top-level JSON object or array in `text`, else None."""
    depth = 0
    in_string = escaped = False
    started = False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
            started = True
        elif char in "}]":
            depth -= 1
            if started and depth == 0:
                return index + 1
    return None


def _step_logprobs(tokenizer: Any, row_scores: list[Any], reply_ids: list[int], top_n: int) -> list[TokenLogprob]:
    """Per generated token of one row: its logprob and the top-N alternatives, each token decoded alone.
    `row_scores`: the row's scores [vocab] per step, after the logits processors."""
    import torch

    out = []
    for step, token_id in enumerate(reply_ids):
        logprobs = torch.log_softmax(row_scores[step].float(), dim=-1)
        values, indices = logprobs.topk(min(top_n, logprobs.shape[-1]))
        top = {tokenizer.decode([int(i)]): float(v) for v, i in zip(values.tolist(), indices.tolist(), strict=True)
               if v > float("-inf")}
        text = tokenizer.decode([int(token_id)])
        chosen = float(logprobs[int(token_id)])
        top.setdefault(text, chosen)
        out.append(TokenLogprob(text, chosen, top))
    return out


class _Grammars:
    """Compiled JSON-schema grammars for guided decoding (xgrammar), built lazily and cached per schema."""

    def __init__(self) -> None:
        try:
            import xgrammar
        except ImportError:
            self._xgr: Any = None
        else:
            self._xgr = xgrammar
        self._compiler: Any = None
        self._compiled: dict[str, Any] = {}
        self._forced: dict[str, str] = {}

    @property
    def available(self) -> bool:
        return self._xgr is not None

    def logits_processors(
        self, lm: Any, schema_key: str | None, batch_size: int, stop_ids: list[int], forced: str = ""
    ) -> Any:
        """A fresh logits-processor list constraining every row to `schema_key` (None: unconstrained), each row's
        reply already started with `forced` (the rows' common prefill)."""
        from transformers import LogitsProcessorList

        if schema_key is None or self._xgr is None:
            return None
        return LogitsProcessorList([GuidedRows(self._xgr, self._compile(lm, schema_key), batch_size, stop_ids,
                                               forced=forced)])

    def _compile(self, lm: Any, schema_key: str) -> Any:
        if self._compiler is None:
            # The logits are as wide as the model's embedding (Qwen: 151936), wider than the tokenizer's
            # vocabulary; the bitmask must cover the whole width or the padding ids stay allowed.
            vocab_size = max(int(lm.model.config.vocab_size), len(lm.tokenizer))
            info = self._xgr.TokenizerInfo.from_huggingface(lm.tokenizer, vocab_size=vocab_size)
            self._compiler = self._xgr.GrammarCompiler(info)
        if schema_key not in self._compiled:
            # No free whitespace: small models otherwise fill max_tokens with spaces (as noted for vLLM).
            self._compiled[schema_key] = self._compiler.compile_json_schema(schema_key, any_whitespace=False)
        return self._compiled[schema_key]

    def forced_head(self, lm: Any, schema_key: str | None) -> str:
        """The text every reply the grammar allows starts with (`{"explanation": "`), '' without a grammar.

        Why: those characters cost one decoding step per token (5 for the explain schema, a step of every row
        of the batch) while the grammar leaves the model no choice; read with the prompt they cost a prompt
        position each (jump-forward decoding, as in SGLang). The reply still holds them and is still parsed.
        """
        if schema_key is None or self._xgr is None:
            return ""
        if schema_key not in self._forced:
            matcher = self._xgr.GrammarMatcher(self._compile(lm, schema_key))
            self._forced[schema_key] = matcher.find_jump_forward_string()
        return self._forced[schema_key]


class GuidedRows:
    """Grammar-constrained decoding for a batch whose rows finish at different steps.

    Why not `xgrammar.contrib.hf.LogitsProcessor`: it asserts on every token it is fed, but transformers
    feeds a finished row its pad token, and models with several end ids (Qwen: `<|im_end|>` ends a turn,
    `<|endoftext|>` pads and ends generation) finish on ids the tokenizer's one EOS does not name; it
    also leaves a terminated row's stale mask in place. Here every stop id ends the grammar, a finished
    row is only allowed a stop id, and a token the grammar rejects ends that row (its reply then fails
    parsing on its own) instead of raising for the whole batch.
    """

    def __init__(self, xgr: Any, compiled: Any, batch_size: int, stop_ids: list[int], forced: str = "") -> None:
        self.xgr = xgr
        self.stop_ids = sorted(stop_ids)
        self.matchers = [xgr.GrammarMatcher(compiled, override_stop_tokens=self.stop_ids) for _ in range(batch_size)]
        for matcher in self.matchers:  # the reply's forced head, read with the prompt (`_Grammars.forced_head`)
            if forced and not matcher.accept_string(forced):
                raise ValueError(f"the grammar refuses its own forced head {forced!r}")
        self.finished = [False] * batch_size
        self.rejected: list[int | None] = [None] * batch_size   # the token a row's grammar refused, if any
        self.bitmask = xgr.allocate_token_bitmask(batch_size, compiled.tokenizer_info.vocab_size)
        self.started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.started:
            for row, matcher in enumerate(self.matchers):
                if self.finished[row]:
                    continue
                token = int(input_ids[row, -1])
                if token in self.stop_ids:
                    self.finished[row] = True
                elif not matcher.accept_token(token):
                    self.finished[row], self.rejected[row] = True, token
                elif matcher.is_terminated():
                    self.finished[row] = True
        self.started = True
        active = [row for row, done in enumerate(self.finished) if not done]
        for row in active:
            self.matchers[row].fill_next_token_bitmask(self.bitmask, row)
        if active:
            self.xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device), indices=active)
        for row, done in enumerate(self.finished):
            if done:
                stop = scores[row, self.stop_ids[0]].clone()
                scores[row] = -torch.inf
                scores[row, self.stop_ids[0]] = torch.nan_to_num(stop, neginf=0.0)
        return scores


class RowTemperature:
    """Per-row sampling temperature for one `generate` call: a row at temperature 0 keeps only its best token
    (sampling it is greedy decoding), a row at T > 0 has its scores divided by T. Applied after any grammar."""

    def __init__(self, temperatures: list[float]) -> None:
        self.temperatures = temperatures

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for row, temperature in enumerate(self.temperatures):
            if temperature > 0:
                scores[row] = scores[row] / temperature
            else:
                best = int(scores[row].argmax())
                kept = scores[row, best].clone()
                scores[row] = -torch.inf
                scores[row, best] = kept
        return scores


class LocalClient:
    """`LLMClient` over a transformers model loaded with `autointerp.models.load_model`."""

    supports_prompt_logprobs = True

    def __init__(
        self,
        spec: str,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        weights: str = "auto",
        max_batch_size: int | None = None,
        batch_wait_s: float = 0.005,
        json_prefill: bool = True,
        max_batch_tokens: int | None = None,
        prefix_entries: int = 4,
        prefill_chunk: int | None = None,
        shared_head: bool = True,
        prompt_states: int | None = None,
    ) -> None:
        from autointerp.kernel_cache import bound_kernel_caches

        bound_kernel_caches()  # memory flat in the number of prompt lengths met (for callers other than the CLI)
        self.spec = spec
        self.model_name = f"local:{spec}"
        self.device = device
        self.dtype = dtype
        if weights not in WEIGHT_FORMATS:
            raise UserError(f"unknown weight format {weights!r} for the embedded LLM",
                            f"use one of {', '.join(WEIGHT_FORMATS)}")
        self.weights = weights
        self.json_prefill = json_prefill
        # Generate with the shared head's KV cache stored once (`shared_head.py`) where the model supports it.
        self.shared_head = shared_head
        # None below: the model's own default (a shipped model's `PartsModel` settings; autointerp.models says why).
        from autointerp.models import llm_batch_size, llm_batch_tokens, llm_prefill_chunk

        # Tokens per teacher-forced forward (simulation): 4,096, not 16,384: qwen0.5b simulated the 12 demo
        # features in 8.6 s per feature instead of 11.1 s (less padding, more prefix reuse); the shipped Qwen
        # models 2,048, for memory.
        self.max_batch_tokens = llm_batch_tokens(spec) if max_batch_tokens is None else max_batch_tokens
        # Prompt positions per forward pass when a batch's prompts are read before generating (0: all at once):
        # 256, or 128 for the shipped Qwen models.
        self.prefill_chunk = llm_prefill_chunk(spec) if prefill_chunk is None else prefill_chunk
        if max_batch_size is None:  # the model's own default (None: what `--llm local:SPEC` passes)
            max_batch_size = llm_batch_size(spec)
        self.concurrency = max_batch_size  # one micro-batch in flight keeps the model busy
        self._lm: Any = None
        self._load_lock = threading.Lock()
        self.prefix_cache = PrefixCache(self._prefix_kv, max_entries=prefix_entries) if prefix_entries else None
        # The read state of the last batch's prompts: a retry of a rejected reply (same prompt) skips reading it.
        self.prompt_states = PromptStates(max_batch_size if prompt_states is None else prompt_states)
        self._grammars = _Grammars()
        # One thread: the model is not used concurrently, and this CPU has few cores to share anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autointerp-local-llm")
        self._chat_batcher: MicroBatcher[_ChatItem, _Generated] = MicroBatcher(
            self._generate_batch, self._executor, max_batch_size, batch_wait_s,
            prefer=lambda item: self.prompt_states.holds(item.text))
        # (tokenizer, forced reply head) per schema, once known: a caller's next chat is then queued without a
        # trip through the model's thread (which may be busy with a whole batch by then)
        self._reply_heads: dict[str | None, tuple[Any, str]] = {}
        # A logprobs result is (top-N per position, the prompt token's logprob per position), or the error
        # text when the forward pass raised.
        self._logprobs_batcher: MicroBatcher[_LogprobsItem, _Logprobs | str] = MicroBatcher(
            self._logprobs_batch, self._executor, max_batch_size, batch_wait_s)

    def __repr__(self) -> str:
        return f"LocalClient({self.spec!r}, device={self.device!r})"

    # ------------------------------------------------------------------ loading

    def _load(self) -> Any:
        with self._load_lock:
            if self._lm is None:
                from autointerp.models import llm_dtype, llm_weights, load_model

                dtype = llm_dtype(self.spec, self.device) if self.dtype == "auto" else self.dtype
                weights = llm_weights(self.spec, self.device) if self.weights == "auto" else self.weights
                self._lm = load_model(self.spec, device=self.device, dtype=dtype, weights=weights)
            return self._lm

    async def check(self) -> None:
        """Load the model now (a bad spec is a UserError before any work starts)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def tokenizer(self) -> Any:
        return self._load().tokenizer

    async def aclose(self) -> None:
        # The model stays loaded: a client is usually closed at the end of the process.
        return None

    async def __aenter__(self) -> LocalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ chat

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
        started = time.perf_counter()
        wants_object = json_schema is not None and json_schema.get("type", "object") == "object"
        guided = json_schema is not None and self._grammars.available
        schema_key = self._schema_key(json_schema) if guided else None
        if schema_key not in self._reply_heads:
            self._reply_heads[schema_key] = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._reply_head, schema_key)
        tokenizer, forced = self._reply_heads[schema_key]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if guided:
            prefill = forced if self.json_prefill else ""
        else:
            prefill = schema_prefill(json_schema) if wants_object and self.json_prefill else ""
        item = _ChatItem(prompt, prefill, max_tokens, temperature, seed, stop_after_json=json_schema is not None,
                         schema_key=schema_key, top_logprobs=max(0, int(top_logprobs)))
        generated = await self._chat_batcher.submit(item)
        if generated.error is not None:
            return ChatResult(Status.SERVER_ERROR, text=generated.text or None, error=generated.error,
                              finish_reason="error", prompt_tokens=generated.prompt_tokens,
                              latency_s=time.perf_counter() - started)
        verdict = judge_reply(generated.text, generated.finish_reason, json_schema)
        return ChatResult(
            verdict.status, text=generated.text, parsed=verdict.parsed, error=verdict.error,
            finish_reason=generated.finish_reason, prompt_tokens=generated.prompt_tokens,
            completion_tokens=generated.completion_tokens, latency_s=time.perf_counter() - started,
            token_logprobs=generated.token_logprobs,
        )

    @staticmethod
    def _schema_key(schema: dict[str, Any]) -> str:
        """The canonical JSON of a schema: what grammars are compiled and batches grouped by."""
        return json.dumps(schema, sort_keys=True)

    def _reply_head(self, schema_key: str | None) -> tuple[Any, str]:
        """(tokenizer, the grammar's forced reply head) in the worker thread. A schema the grammar compiler
        refuses gets no forced head here: the batch compiles it again and records the error on the item."""
        tokenizer = self.tokenizer()
        try:
            return tokenizer, self._grammars.forced_head(self._load(), schema_key)
        except Exception:  # noqa: BLE001 - reported per item by `_generate_batch`, not lost
            return tokenizer, ""

    def _generate_batch(self, items: list[_ChatItem]) -> list[_Generated]:
        """Runs in the worker thread; items that cannot share one `generate` call run as separate batches.

        Rows of one call share a grammar. Greedy and sampled rows share a call (`RowTemperature`): explain's
        sampled retry of a rejected label then rides with the next features' first tries instead of costing a
        round of its own (SmolLM2, 12 demo features: 1 retry was a third round, ~10 % of explain's time). Rows
        that ask for logprobs keep calls of their own settings: their scores must be the model's, not a
        per-row transform of them.
        """
        groups: dict[tuple[str | None, str, float | None, int | None], list[int]] = {}
        for index, item in enumerate(items):
            sampling = (item.temperature, item.seed) if item.top_logprobs > 0 else (None, None)
            key = (item.schema_key, item.prefill, *sampling)
            groups.setdefault(key, []).append(index)
        results: list[_Generated | None] = [None] * len(items)
        for indices in groups.values():
            group = _isolated(self._generate_group, [items[i] for i in indices],
                              lambda exc: _Generated("", "error", 0, 0, error=_describe(exc)))
            for index, result in zip(indices, group, strict=True):
                results[index] = result
        release_free_memory()
        return [r for r in results if r is not None]

    def _generate_group(self, items: list[_ChatItem]) -> list[_Generated]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        lm = self._load()
        tokenizer, model = lm.tokenizer, lm.model
        prompts = [tokenizer(item.text, add_special_tokens=False)["input_ids"] for item in items]
        stop_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        configured_eos = model.generation_config.eos_token_id
        stop_ids |= set(configured_eos if isinstance(configured_eos, list) else [configured_eos])
        stop_ids.discard(None)
        if self.shared_head and shared_head.supports(model):
            return self._generate_shared_head(lm, items, prompts, sorted(stop_ids))
        encoded, past = self._layout_prompts(prompts, tokenizer.pad_token_id or 0)
        past = self._prefill(lm, encoded, past)
        prompt_length = encoded["input_ids"].shape[1]

        class JsonDone(StoppingCriteria):
            """Stops a row once its reply holds a complete JSON object (rows without a schema never stop here)."""

            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                for row, item in enumerate(items):
                    if item.stop_after_json:
                        text = item.prefill + tokenizer.decode(input_ids[row, prompt_length:], skip_special_tokens=True)
                        done[row] = json_object_end(text) is not None
                return done

        first = items[0]
        temperatures = [item.temperature for item in items]
        sample = max(temperatures) > 0
        mixed = len(set(temperatures)) > 1  # per-row temperatures: RowTemperature, after the grammar's mask
        config = GenerationConfig(
            max_new_tokens=max(item.max_tokens for item in items),
            do_sample=sample,
            temperature=(1.0 if mixed else first.temperature) if sample else None,
            top_p=1.0 if sample else None,
            top_k=0 if sample else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(stop_ids),
        )
        seeds = [item.seed for item in items if item.temperature > 0] or [first.seed]
        if seeds[0] is not None:
            torch.manual_seed(seeds[0])
        criteria = StoppingCriteriaList([JsonDone()]) if any(i.stop_after_json for i in items) else None
        processors = self._grammars.logits_processors(lm, first.schema_key, len(items), sorted(stop_ids),
                                                      forced=first.prefill)
        if mixed:
            processors = LogitsProcessorList([*(processors or []), RowTemperature(temperatures)])
        want_logprobs = any(item.top_logprobs > 0 for item in items)
        with torch.inference_mode():
            generated = model.generate(
                input_ids=encoded["input_ids"].to(lm.device),
                attention_mask=encoded["attention_mask"].to(lm.device),
                past_key_values=past,
                generation_config=config,
                stopping_criteria=criteria,
                logits_processor=processors,
                # the scores after the logits processors: with a grammar, only tokens it allows carry mass
                output_scores=want_logprobs,
                return_dict_in_generate=want_logprobs,
            )
        output = generated.sequences if want_logprobs else generated
        return [
            self._reply(tokenizer, item, output[row, prompt_length:].tolist(), stop_ids,
                        [step[row] for step in generated.scores] if item.top_logprobs > 0 else None,
                        int(encoded["attention_mask"][row].sum()))
            for row, item in enumerate(items)
        ]

    @staticmethod
    def _reply(tokenizer: Any, item: _ChatItem, new_ids: list[int], stop_ids: set[int], row_scores: list[Any] | None,
               prompt_tokens: int) -> _Generated:
        """One row's result from its generated ids (cut at its stop token / complete JSON object)."""
        new_ids = new_ids[: item.max_tokens]
        ended = next((i for i, token in enumerate(new_ids) if token in stop_ids), None)
        reply_ids = new_ids if ended is None else new_ids[:ended]
        text = item.prefill + tokenizer.decode(reply_ids, skip_special_tokens=True)
        finish = "stop" if ended is not None else "length"
        if item.stop_after_json:
            end = json_object_end(text)
            if end is not None:
                text, finish = text[:end], "stop"
        token_logprobs = None
        if item.top_logprobs > 0 and row_scores is not None:
            token_logprobs = _step_logprobs(tokenizer, row_scores, reply_ids, item.top_logprobs)
        return _Generated(text, finish, prompt_tokens, len(reply_ids), token_logprobs)

    def _generate_shared_head(self, lm: Any, items: list[_ChatItem], prompts: list[list[int]],
                              stop_ids: list[int]) -> list[_Generated]:
        """`_generate_group` with the shared head stored once (`shared_head.generate`; same replies up to
        float rounding, a finished row leaves the batch)."""
        tokenizer = lm.tokenizer
        shared, past = self._shared_prefix(prompts, min(len(p) for p in prompts) - 1, private=False)
        temperatures = [item.temperature for item in items]
        first = items[0]
        processors = list(self._grammars.logits_processors(lm, first.schema_key, len(items), stop_ids,
                                                           forced=first.prefill) or [])
        if max(temperatures) > 0:  # the scores a sampled row draws from are divided by its temperature
            processors.append(RowTemperature(temperatures))

        def done(row: int, ids: list[int]) -> bool:
            item = items[row]
            return item.stop_after_json and json_object_end(
                item.prefill + tokenizer.decode(ids, skip_special_tokens=True)) is not None

        seeds = [item.seed for item in items if item.temperature > 0] or [first.seed]
        rows = [shared_head.Row(p[shared:], item.max_tokens, item.temperature,
                                self.prompt_states.get(shared, item.text))
                for p, item in zip(prompts, items, strict=True)]
        if self.prefix_cache is not None:  # a known tail is not read again
            known = sum(len(row.tail) for row in rows if row.known is not None)
            self.prefix_cache.stats.computed_tokens -= known
            self.prefix_cache.stats.reused_tokens += known
        replies, scores = shared_head.generate(
            lm, past, shared, rows, stop_ids=stop_ids, processors=processors, done=done,
            keep_scores=any(item.top_logprobs > 0 for item in items), chunk=self.prefill_chunk, seed=seeds[0],
            remember=lambda row, state: self.prompt_states.put(shared, items[row].text, state),
        )
        return [self._reply(tokenizer, item, replies[row], set(stop_ids), None if scores is None else scores[row],
                            len(prompts[row]))
                for row, item in enumerate(items)]

    def _layout_prompts(self, prompts: list[list[int]], pad: int) -> tuple[dict[str, Any], Any]:
        """Batch tensors for generation: [shared prefix][left padding][own tail] per row, and the prefix's cache.

        The padding sits between the prefix (taken from the prefix cache, computed once) and each row's
        tail, so every row's reply still starts at the right edge; positions come from the attention
        mask, so the tail's tokens keep the positions they have in the unpadded prompt.
        """
        import torch

        shared, past = self._shared_prefix(prompts, min(len(p) for p in prompts) - 1, private=True)
        if past is not None and len(prompts) > 1:
            past.batch_repeat_interleave(len(prompts))
        tails = [p[shared:] for p in prompts]
        width = max(len(t) for t in tails)
        input_ids = torch.full((len(prompts), shared + width), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, (prompt, tail) in enumerate(zip(prompts, tails, strict=True)):
            input_ids[row, :shared] = torch.tensor(prompt[:shared], dtype=torch.long)
            attention_mask[row, :shared] = 1
            input_ids[row, shared + width - len(tail):] = torch.tensor(tail, dtype=torch.long)
            attention_mask[row, shared + width - len(tail):] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}, past

    def _shared_prefix(self, prompts: list[list[int]], limit: int, private: bool) -> tuple[int, Any]:
        """(P, the batch-size-1 KV cache of the prompts' shared head of P tokens) from the prefix cache, or (0, None);
        counts the tokens the batch still has to compute. `private`: a copy the caller may extend."""
        if self.prefix_cache is None:
            return 0, None
        shared, past = self.prefix_cache.shared(prompts, limit=limit, private=private)
        self.prefix_cache.stats.computed_tokens += sum(len(p) - shared for p in prompts)
        return shared, past

    def _prefill(self, lm: Any, encoded: dict[str, Any], past: Any) -> Any:
        """The KV cache after all but the last prompt position, read `prefill_chunk` positions at a time.

        Why: `generate` reads a batch's whole prompts in one forward pass, and on a CPU its transient
        activations are what sets the process's peak memory (8 explain prompts of ~1,100 tokens: the MLP's
        [8 x T, intermediate] products, ~0.5 GB for qwen1.5b). In chunks, only a chunk's activations exist at a
        time; the KV cache holds the same entries. `generate` then reads the last position from the cache
        and continues as before: every token attends to the same keys at the same positions (positions as
        `generate` derives them from the attention mask), so greedy replies are the same (float32: equal to
        ~1e-6; bf16 rounds slightly differently per matmul shape, as with any change of batch).
        """
        import torch
        from transformers import DynamicCache

        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        start, end = (0 if past is None else past.get_seq_length()), ids.shape[1] - 1
        if not self.prefill_chunk or end - start <= self.prefill_chunk:
            return past
        cache = past if past is not None else DynamicCache(config=lm.model.config)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        backbone = getattr(lm.model, lm.model.base_model_prefix, lm.model)
        with torch.inference_mode(), _grouped_query_sdpa():
            for first in range(start, end, self.prefill_chunk):
                last = min(first + self.prefill_chunk, end)
                backbone(input_ids=ids[:, first:last].to(lm.device), attention_mask=mask[:, :last].to(lm.device),
                         position_ids=positions[:, first:last].to(lm.device), past_key_values=cache, use_cache=True)
        return cache

    def _prefix_kv(self, ids: list[int], past: Any) -> Any:
        """The KV cache after running `ids` (continuing `past`), batch size 1: a prefix cache entry."""
        import torch
        from transformers import DynamicCache

        lm = self._load()
        cache = past if past is not None else DynamicCache(config=lm.model.config)
        start = cache.get_seq_length()
        backbone = getattr(lm.model, lm.model.base_model_prefix, lm.model)
        with torch.inference_mode():
            backbone(input_ids=torch.tensor([ids], device=lm.device),
                     position_ids=torch.arange(start, start + len(ids), device=lm.device).unsqueeze(0),
                     past_key_values=cache, use_cache=True)
        return cache

    # ------------------------------------------------------------------ prompt logprobs

    async def prompt_logprobs(self, token_ids: list[int], positions: list[int], top_n: int = 20) -> LogprobsResult:
        if top_n < 0:
            raise ValueError(f"top_n must be at least 0 (0: the prompt's own tokens only), got {top_n}")
        bad = [p for p in positions if not 1 <= p < len(token_ids)]
        if bad:
            raise ValueError(f"positions {bad} are outside 1..{len(token_ids) - 1} (position 0 has no prediction)")
        started = time.perf_counter()
        got = await self._logprobs_batcher.submit(_LogprobsItem(list(token_ids), list(positions), top_n))
        if isinstance(got, str):
            return LogprobsResult(Status.SERVER_ERROR, error=got, prompt_tokens=len(token_ids),
                                  latency_s=time.perf_counter() - started)
        top, actual = got
        return LogprobsResult(Status.OK, positions=list(positions), top_logprobs=top, actual=list(actual),
                              prompt_tokens=len(token_ids), latency_s=time.perf_counter() - started)

    def _logprobs_batch(self, items: list[_LogprobsItem]) -> list[_Logprobs | str]:
        """Teacher-forced forward passes, a token budget at a time, keeping logits only where asked."""
        self.prompt_states.clear()  # kept for a retry in the next generate batch; a scoring pass ends that round
        out: list[_Logprobs | str] = []
        chunk: list[_LogprobsItem] = []
        for item in items:
            longest = max([len(i.token_ids) for i in chunk] + [len(item.token_ids)])
            if chunk and longest * (len(chunk) + 1) > self.max_batch_tokens:
                out += self._logprobs_isolated(chunk)
                chunk = []
            chunk.append(item)
        if chunk:
            out += self._logprobs_isolated(chunk)
        return out

    def _logprobs_isolated(self, chunk: list[_LogprobsItem]) -> list[_Logprobs | str]:
        """One forward pass's results (an error text per item on failure), its freed memory handed back.

        Why trim after every pass, not every batch: each pass's prompt has another length, so its activations
        have other sizes, and the heap reused little of what the pass before freed: within a batch of 8 qwen0.5b
        simulation requests (~1,000 tokens each, one per pass) the resting RSS rose by 20-100 MB per pass,
        ~250 MB by the batch's end, on top of which the last pass's ~100 MB of activations set the peak."""
        try:
            return _isolated(self._logprobs_chunk, chunk, _describe)
        finally:
            release_free_memory()

    def _logprobs_chunk(self, items: list[_LogprobsItem]) -> list[_Logprobs]:
        import torch

        lm = self._load()
        model = lm.model
        pad = lm.tokenizer.pad_token_id or 0
        # A shared head (the simulator's instructions) comes from the prefix cache; every asked position
        # predicts from a hidden state after it, so each position p needs p - 1 >= the prefix length.
        limit = min(min([len(i.token_ids)] + [p for p in i.positions]) - 1 for i in items)
        shared, past = self._shared_prefix([i.token_ids for i in items], limit, private=True)
        if past is not None and len(items) > 1:
            past.batch_repeat_interleave(len(items))
        length = max(len(item.token_ids) for item in items) - shared
        # Right padding: real tokens keep positions shared..n-1, exactly as in an unpadded forward pass.
        input_ids = torch.full((len(items), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(items), shared + length), dtype=torch.long)
        for row, item in enumerate(items):
            input_ids[row, : len(item.token_ids) - shared] = torch.tensor(item.token_ids[shared:])
            attention_mask[row, : len(item.token_ids)] = 1
        inputs = {"input_ids": input_ids.to(lm.device), "attention_mask": attention_mask.to(lm.device),
                  "position_ids": torch.arange(shared, shared + length, device=lm.device).expand(len(items), -1)}
        if past is not None:
            inputs["past_key_values"] = past
        backbone = getattr(model, model.base_model_prefix, None)
        head = model.get_output_embeddings()
        # Models that rescale logits after the head (Gemma 2's softcapping, Cohere's logit_scale) take the full path.
        rescaled = any(getattr(model.config, name, None) for name in ("final_logit_softcapping", "logit_scale"))
        with torch.inference_mode(), _grouped_query_sdpa():
            if backbone is not None and head is not None and not rescaled:
                # Only the asked positions go through the (vocabulary-wide) LM head: saves memory and time.
                hidden = backbone(**inputs, use_cache=past is not None).last_hidden_state
                logits = None
            else:
                logits = model(**inputs, use_cache=past is not None).logits
            # The pass's KV cache and freed activations go before the vocabulary-wide logprobs, so their heap pages
            # are not resident under those (qwen0.5b simulation, 8 demo features: peak 1,713 -> 1,662-1,669 MB).
            del inputs, past
            release_free_memory()
            results = []
            for row, item in enumerate(items):
                top: list[dict[int, float]] = []
                actual: list[float] = []
                # LOGPROB_POSITIONS positions at a time: the [positions, vocab] logits in float32 for the softmax
                # are the largest tensors here (all rows' at once were ~2.5 GB for a batch of Qwen simulation
                # prompts, one row's ~0.4 GB for ~260 positions: qwen0.5b's peak RSS in simulation).
                for first in range(0, len(item.positions), LOGPROB_POSITIONS):
                    positions = item.positions[first : first + LOGPROB_POSITIONS]
                    index = [p - 1 - shared for p in positions]
                    part = head(hidden[row, index]) if logits is None else logits[row, index]
                    logprobs = torch.log_softmax(part.float(), dim=-1)
                    # the prompt's own token at each asked position (teacher forcing: the token that follows)
                    own = torch.tensor([item.token_ids[p] for p in positions], dtype=torch.long, device=logprobs.device)
                    actual += logprobs.gather(-1, own.unsqueeze(-1)).squeeze(-1).tolist()
                    if item.top_n > 0:
                        values, indices = logprobs.topk(min(item.top_n, logprobs.shape[-1]), dim=-1)
                        top += [dict(zip(idx.tolist(), val.tolist(), strict=True))
                                for val, idx in zip(values, indices, strict=True)]
                    else:  # top_n 0: the prompt's tokens only, no vocabulary-wide sort
                        top += [{} for _ in positions]
                    del part, logprobs
                results.append((top, actual))
        return results
