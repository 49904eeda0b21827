"""Generating for a batch whose prompts share a head, with the head's KV cache stored once (shared-head attention).

Why: the embedded backend's explain batches are 8 prompts that start with the same ~700 tokens (instructions
and worked examples) and differ in a ~480-token tail. The prefix cache already runs that head once, but
`model.generate` then needs it copied into every row, and on a CPU a decoding step is bound by memory traffic:
each step read every row's copy of the head and copied the whole cache again to append one position
(`torch.cat`), 40-50 % of a step for SmolLM2 (torch profiler, 4 rows). Here the head stays one batch-1 tensor
per layer that every row's queries read; each row's own tail lives in a buffer allocated for the whole reply,
so a step writes one position; a row that has finished leaves the batch instead of riding along to the end.
vLLM and FlashInfer call the same idea cascade attention. Attention over the two parts is merged exactly
(softmax over the union, through each part's log-sum-exp), so outputs are those of attention over the whole
prompt up to float rounding. A row whose tail was read before (a retry of the same prompt) brings what that
read left behind (`PromptState`) and goes straight to generating.

Only for model families whose attention modules are known to take it (`supports`) and on a CPU; everything
else uses `model.generate`. The caller (`local_client`) keeps what a reply means: grammar, stop rules, text.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: The name this attention is registered under with transformers' `AttentionInterface`.
ATTENTION_NAME = "autointerp_shared_head"

#: Model types whose attention calls `cache.update(k, v, layer_idx, ...)` and then the registered attention
#: function with RoPE already applied, with no sliding windows or soft-capping (read from transformers 5.x).
SUPPORTED_MODEL_TYPES = ("llama", "qwen2")

#: How a decoding step attends to each row's tail: "matmul" (`_grouped_attention`; see `_attend` for why) or
#: "flash" (torch's CPU kernel, as when reading a prompt). `python -m autointerp.bench.shared_head --compare
#: decode` times the two on the same batch.
DECODE_ATTENTION = "matmul"

_ACTIVE = threading.local()   # the SharedHeadCache of the forward pass running in this thread
_REGISTERED = False


def supports(model: Any) -> bool:
    """Whether `model` can run here: a supported family, on a CPU, every layer full attention."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if getattr(getattr(model, "device", None), "type", None) != "cpu":
        return False
    if getattr(config, "use_sliding_window", False) or getattr(config, "attn_logit_softcapping", None):
        return False
    layer_types = getattr(config, "layer_types", None) or []
    return all(kind == "full_attention" for kind in layer_types)


class SharedHeadCache:
    """A KV cache in two parts: the shared head once (batch 1) and each row's own positions after it.

    Duck-types the `update` of transformers' caches (what the attention modules call); the tail buffers hold
    `capacity` positions, allocated at the first update, so appending a position writes only that position.
    Keys and values keep the dtype the model wrote them in (torch's CPU flash kernel accumulates bf16 in
    float32).
    """

    def __init__(self, head: Any, rows: int, capacity: int) -> None:
        self.head: list[tuple[Any, Any]] | None = None
        if head is not None:
            layers = getattr(head, "layers", None)
            self.head = [(layer.keys, layer.values) for layer in layers] if layers is not None else list(head)
        self.head_length = 0 if self.head is None else int(self.head[0][0].shape[2])
        self.rows, self.capacity = rows, capacity
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.lengths: list[int] = []

    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Append `key_states` / `value_states` ([rows, kv heads, n, dim]) to layer `layer_idx`'s tail; return
        the tail so far (views, no copy)."""
        import torch

        while len(self.keys) <= layer_idx:
            self.keys.append(None)
            self.values.append(None)
            self.lengths.append(0)
        if self.keys[layer_idx] is None:
            shape = (key_states.shape[0], key_states.shape[1], self.capacity, key_states.shape[3])
            self.keys[layer_idx] = torch.empty(shape, dtype=key_states.dtype, device=key_states.device)
            self.values[layer_idx] = torch.empty(shape, dtype=key_states.dtype, device=key_states.device)
        start, n = self.lengths[layer_idx], key_states.shape[2]
        if start + n > self.capacity:
            raise ValueError(f"SharedHeadCache holds {self.capacity} positions per row, asked for {start + n}")
        self.keys[layer_idx][:, :, start : start + n] = key_states
        self.values[layer_idx][:, :, start : start + n] = value_states
        self.lengths[layer_idx] = start + n
        return self.keys[layer_idx][:, :, : start + n], self.values[layer_idx][:, :, : start + n]

    def keep_rows(self, rows: Any) -> None:
        """Keep only `rows` (a long tensor of row indices) of every tail: finished rows leave the batch."""
        self.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, rows) for v in self.values]
        self.rows = int(rows.numel())

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.head_length + (self.lengths[layer_idx] if layer_idx < len(self.lengths) else 0)

    def state(self, row: int, size: int, hidden: Any) -> PromptState:
        """A copy of row `row`'s last `size` positions read so far (its tail without the left padding)."""
        end = self.lengths[0]
        return PromptState([(k[row, :, end - size : end].clone(), v[row, :, end - size : end].clone())
                            for k, v in zip(self.keys, self.values, strict=True)], hidden.clone())


def shared_head_attention(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
    dropout: float = 0.0, **kwargs: Any,
) -> tuple[Any, None]:
    """Attention over [shared head][this row's tail] for queries [rows, heads, q, dim]; `key` / `value` are the
    row tails from `SharedHeadCache.update`, `attention_mask` the additive mask over them ([rows, 1, q, tail],
    in the query's dtype). Returns [rows, q, heads, dim] in the query's dtype, as transformers expects."""
    cache: SharedHeadCache = _ACTIVE.cache
    head = None if cache.head is None else cache.head[module.layer_idx]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = _attend(query, key, value, attention_mask, head, scale)
    return out.transpose(1, 2).contiguous(), None


def _merge(out_a: Any, lse_a: Any, out_b: Any, lse_b: Any) -> Any:
    """Softmax attention over the union of two key sets, from each set's output and log-sum-exp."""
    import torch

    top = torch.maximum(lse_a, lse_b)
    weight_a, weight_b = torch.exp(lse_a - top), torch.exp(lse_b - top)
    merged = (out_a.float() * weight_a + out_b.float() * weight_b) / (weight_a + weight_b)
    return merged.to(out_a.dtype)


def _attend(query: Any, key: Any, value: Any, mask: Any, head: tuple[Any, Any] | None, scale: float) -> Any:
    """Each part's attention and log-sum-exp (what the merge needs); the head part takes every row's queries as
    one sequence, with no mask (every tail position sees the whole head).

    Reading a prompt (many positions per row): torch's CPU flash kernel, 3-5x faster there than matmuls and a
    softmax. Decoding (one position per row): matmuls over grouped heads for the tail, as the flash kernel
    pads a lone query to a block of them: 8 SmolLM2 rows, 480 tail positions, 2.0 ms per layer against 0.4 ms
    (`_grouped_attention`; same error against float32 attention). The head keeps the flash kernel unless one
    query is all it gets (8 rows folded into one sequence: 0.20 ms flash, 0.29 ms matmuls; 1 row: 0.38 ms, 0.14).
    """
    import torch

    rows, heads, q_len, dim = query.shape
    if q_len == 1 and DECODE_ATTENTION == "matmul":
        out_tail, lse_tail = _grouped_attention(query, key, value, mask, scale)
    else:
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        out_tail, lse_tail = flash(query, key, value, 0.0, False, attn_mask=mask, scale=scale)[:2]
    if head is None:
        return out_tail
    folded = query.transpose(0, 1).reshape(1, heads, rows * q_len, dim)
    if rows * q_len == 1 and DECODE_ATTENTION == "matmul":
        out_head, lse_head = _grouped_attention(folded, head[0], head[1], None, scale)
    else:
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        out_head, lse_head = flash(folded, head[0], head[1], 0.0, False, scale=scale)[:2]
    out_head = out_head.view(heads, rows, q_len, dim).transpose(0, 1)
    lse_head = lse_head.view(heads, rows, q_len).transpose(0, 1)
    return _merge(out_head, lse_head.unsqueeze(-1), out_tail, lse_tail.unsqueeze(-1))


def _grouped_attention(query: Any, key: Any, value: Any, mask: Any, scale: float) -> tuple[Any, Any]:
    """(output [rows, heads, q, dim] in the query's dtype, log-sum-exp [rows, heads, q] in float32) of attention
    with `heads // kv heads` query heads per key/value head, computed as matmuls in float32 (scores in bf16
    would cost a few hundredths in the output). For a few queries per row: the softmax over [q, keys] is then
    small, and the matmuls read each row's keys once for all its query heads."""
    import torch

    rows, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    grouped = query.reshape(rows, kv_heads, group * q_len, dim).float()
    scores = torch.matmul(grouped, key.float().transpose(-1, -2)).mul_(scale)      # [rows, kv, group * q, keys]
    if mask is not None:
        keys = scores.shape[-1]
        scores = (scores.view(rows, kv_heads, group, q_len, keys)
                  + mask.float().view(mask.shape[0], 1, 1, q_len, keys)).view(rows, kv_heads, group * q_len, keys)
    lse = torch.logsumexp(scores, -1, keepdim=True)
    out = torch.matmul(torch.exp(scores - lse), value.float())
    return out.view(rows, heads, q_len, dim).to(query.dtype), lse.view(rows, heads, q_len)


@contextmanager
def _active(model: Any, cache: SharedHeadCache) -> Iterator[None]:
    """Within: the model's attention modules call `shared_head_attention`, which reads `cache`'s head."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION_NAME, shared_head_attention)
        _REGISTERED = True
    configs = {id(m.config): m.config for m in model.modules() if hasattr(getattr(m, "config", None),
                                                                          "_attn_implementation_internal")}
    before = {key: config._attn_implementation_internal for key, config in configs.items()}
    _ACTIVE.cache = cache
    for config in configs.values():
        config._attn_implementation_internal = ATTENTION_NAME
    try:
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation_internal = before[key]
        _ACTIVE.cache = None


@dataclass
class PromptState:
    """What reading one row's tail left behind: its keys and values per layer ([kv heads, tail, dim] each) and
    the last position's final hidden state. Enough to generate from that prompt again without reading it."""

    kv: list[tuple[Any, Any]]
    hidden: Any


@dataclass
class Row:
    """One prompt of the batch: its tokens after the shared head, and how its reply may go."""

    tail: list[int]                 # prompt tokens after the shared head (at least one)
    max_new_tokens: int
    temperature: float
    known: PromptState | None = None  # this tail already read (after this same head): it is not read again


def generate(
    lm: Any,
    head: Any,
    head_length: int,
    rows: Sequence[Row],
    *,
    stop_ids: Sequence[int],
    processors: Sequence[Callable[[Any, Any], Any]] = (),
    done: Callable[[int, list[int]], bool] | None = None,
    keep_scores: bool = False,
    chunk: int = 256,
    seed: int | None = None,
    remember: Callable[[int, PromptState], None] | None = None,
) -> tuple[list[list[int]], list[list[Any]] | None]:
    """Generate a reply per row; returns each row's new token ids (with its stop token, if one ended it) and,
    with `keep_scores`, each row's scores per step after `processors` (for logprobs).

    `head`: the shared head's KV cache (batch 1, `head_length` positions; None with 0). `processors`: called as
    `processor(ids, scores)` with every row's tokens so far [rows, steps] and scores [rows, vocab] (rows that
    have left hold their last token and zero scores); the caller's grammar and per-row temperature. `done(row,
    ids)`: a row's own stop rule (a complete JSON reply). A row at temperature 0 takes the best token; others
    sample from the processed scores (the caller divides by the temperature, as `generate` would).
    Rows with a `known` prompt state skip reading their tail; `remember(row, state)` receives the state of each
    tail this call reads, to pass back as `known` for the same prompt later (a retry of a rejected reply).
    """
    import torch

    model = lm.model
    device = lm.device
    dtype = model.get_input_embeddings().weight.dtype   # the activations' dtype (int8 models: bf16)
    backbone = getattr(model, model.base_model_prefix)
    lm_head = model.get_output_embeddings()
    n = len(rows)
    width = max(len(row.tail) for row in rows)
    longest = max(row.max_new_tokens for row in rows)
    pads = torch.tensor([width - len(row.tail) for row in rows], device=device)
    columns = torch.arange(width + longest, device=device)
    # -inf where a row has padding: the tail's left padding is never attended to (a padding query sees itself,
    # so its softmax is defined; its output is never used)
    padded = columns.unsqueeze(0) < pads.unsqueeze(1)                                   # [rows, width + longest]
    positions = (head_length + columns.unsqueeze(0) - pads.unsqueeze(1)).clamp(min=head_length)
    if seed is not None:
        torch.manual_seed(seed)
    stop = set(int(i) for i in stop_ids)
    replies: list[list[int]] = [[] for _ in rows]
    scores_out: list[list[Any]] | None = [[] for _ in rows] if keep_scores else None
    live = list(range(n))
    last_tokens = torch.zeros(n, dtype=torch.long)
    seen = torch.zeros((n, 0), dtype=torch.long)   # each row's tokens so far, for the processors
    fresh = [i for i, row in enumerate(rows) if row.known is None]
    with torch.inference_mode():
        read: SharedHeadCache | None = None
        hidden_read = None
        if fresh:
            read = SharedHeadCache(head, len(fresh), max(len(rows[i].tail) for i in fresh) + longest)
            with _active(model, read):
                hidden_read = _read_tails(backbone, read, [rows[i].tail for i in fresh], head_length, chunk, dtype,
                                          device)
            if remember is not None:
                for j, i in enumerate(fresh):
                    remember(i, read.state(j, len(rows[i].tail), hidden_read[j]))
        if len(fresh) == n:
            cache, hidden = read, hidden_read
        else:
            cache, hidden = _assemble(head, rows, fresh, read, hidden_read, width, longest)
        assert cache is not None and hidden is not None
        logits = lm_head(hidden.contiguous()).float()
        with _active(model, cache):
            for step in range(longest):
                scores = torch.zeros((n, logits.shape[-1]), dtype=torch.float32, device=device)
                scores[live] = logits
                for processor in processors:
                    scores = processor(seen, scores)
                chosen = scores[live].argmax(-1)
                sampled = [i for i, row in enumerate(live) if rows[row].temperature > 0]
                if sampled:
                    probs = torch.softmax(scores[[live[i] for i in sampled]], dim=-1)
                    chosen[sampled] = torch.multinomial(probs, 1).squeeze(-1)
                still: list[int] = []
                for i, row in enumerate(live):
                    token = int(chosen[i])
                    replies[row].append(token)
                    last_tokens[row] = token
                    if scores_out is not None:
                        scores_out[row].append(scores[row].clone())
                    finished = (token in stop or len(replies[row]) >= rows[row].max_new_tokens
                                or (done is not None and done(row, replies[row])))
                    if not finished:
                        still.append(i)
                seen = torch.cat([seen, last_tokens.unsqueeze(1)], dim=1)
                if not still:
                    break
                if len(still) < len(live):
                    keep = torch.tensor(still, dtype=torch.long, device=device)
                    cache.keep_rows(keep)
                    padded, positions, chosen = padded[keep], positions[keep], chosen[keep]
                    live = [live[i] for i in still]
                column = width + step
                mask = torch.zeros((len(live), 1, 1, column + 1), dtype=dtype, device=device)
                mask.masked_fill_(padded[:, None, None, : column + 1], float("-inf"))
                hidden = backbone(input_ids=chosen.unsqueeze(1), attention_mask=mask,
                                  position_ids=positions[:, column : column + 1], past_key_values=cache,
                                  use_cache=True).last_hidden_state
                logits = lm_head(hidden[:, -1].contiguous()).float()
    return replies, scores_out


def _read_tails(backbone: Any, cache: SharedHeadCache, tails: Sequence[Sequence[int]], head_length: int,
                chunk: int, dtype: Any, device: Any) -> Any:
    """Run `tails` (left-padded to the longest) through the model after the shared head, `chunk` positions per
    forward pass, into `cache`; returns the last position's final hidden state per row [rows, hidden]."""
    import torch

    width = max(len(tail) for tail in tails)
    pads = torch.tensor([width - len(tail) for tail in tails], device=device)
    ids = torch.zeros((len(tails), width), dtype=torch.long)
    for index, tail in enumerate(tails):
        ids[index, width - len(tail):] = torch.tensor(list(tail), dtype=torch.long)
    ids = ids.to(device)
    columns = torch.arange(width, device=device)
    padded = columns.unsqueeze(0) < pads.unsqueeze(1)
    positions = (head_length + columns.unsqueeze(0) - pads.unsqueeze(1)).clamp(min=head_length)
    hidden = None
    for first in range(0, width, chunk or width):
        last = min(first + (chunk or width), width)
        span = torch.arange(first, last, device=device)
        causal = columns[:last].unsqueeze(0) <= span.unsqueeze(1)                     # [q, keys]
        allowed = causal & (~padded[:, None, :last] | (columns[:last] == span.unsqueeze(1)))
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))
        hidden = backbone(input_ids=ids[:, first:last], attention_mask=mask.unsqueeze(1),
                          position_ids=positions[:, first:last], past_key_values=cache,
                          use_cache=True).last_hidden_state
    assert hidden is not None
    return hidden[:, -1]


def _assemble(head: Any, rows: Sequence[Row], fresh: list[int], read: SharedHeadCache | None, hidden_read: Any,
              width: int, longest: int) -> tuple[SharedHeadCache, Any]:
    """The batch's cache and last hidden states from the tails just read (`read`, rows `fresh`) and the rows'
    known states, each row's tail right-aligned at column `width` as in a batch read together."""

    sample = rows[next(i for i, row in enumerate(rows) if row.known is not None)].known
    assert sample is not None
    layers = len(sample.kv)
    kv_heads, _, dim = sample.kv[0][0].shape
    cache = SharedHeadCache(head, len(rows), width + longest)
    like = sample.kv[0][0]
    # zeros, not empty: a row's padding columns are masked, and a masked key must still be a finite number
    cache.keys = [like.new_zeros((len(rows), kv_heads, width + longest, dim)) for _ in range(layers)]
    cache.values = [like.new_zeros((len(rows), kv_heads, width + longest, dim)) for _ in range(layers)]
    cache.lengths = [width] * layers
    hidden = sample.hidden.new_empty((len(rows), sample.hidden.shape[-1]))
    if read is not None:
        read_width = max(len(rows[i].tail) for i in fresh)
        for targets, sources in ((cache.keys, read.keys), (cache.values, read.values)):
            for target, source in zip(targets, sources, strict=True):
                target[fresh, :, width - read_width : width] = source[:, :, :read_width]
        hidden[fresh] = hidden_read
    for i, row in enumerate(rows):
        if row.known is not None:
            size = len(row.tail)
            for layer, (keys, values) in enumerate(row.known.kv):
                cache.keys[layer][i, :, width - size : width] = keys
                cache.values[layer][i, :, width - size : width] = values
            hidden[i] = row.known.hidden
    return cache, hidden
