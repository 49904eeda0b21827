"""Bounding the CPU kernel caches torch keeps per input shape, process-wide.

Why: a bf16 matmul on the CPU goes through oneDNN, and two caches keep what it built for each input shape:
oneDNN's primitive cache (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`, 1,024 by default) and ideep's computation cache
above it (`LRU_CACHE_CAPACITY`, 1,024 by default). Each entry holds kernels and buffers, ~0.3-0.6 MB for a
small model's layer shapes, and an embedded LLM meets a new shape with nearly every prompt: the rows of a
prompt-logprob pass are that prompt's length. Measured (`F.linear` bf16 [n, 896] x [896, 896], n = 101..1,300,
glibc heap in use): +600 MB with the defaults, +275 MB with only oneDNN's cache at 8, +330 MB with only ideep's
at 16, flat (+9 MB) with both at 16. In qwen0.5b simulation the heap in use grew ~3 MB per forward pass with
the defaults (233 -> 434 MB over 76 passes) and stayed flat with prompts of one fixed length: memory grew with
the number of features scored. Both caches are bounded here; rebuilding an evicted entry costs about a
millisecond against forward passes of seconds.

Both variables are read when torch builds its first such kernel, so `bound_kernel_caches` must run before the
process's first matmul (the CLI calls it first thing; `LocalClient` too, for library callers, where it has no
effect when a matmul already ran). A value the user set is kept.
"""

from __future__ import annotations

import os

#: oneDNN's primitive cache, and ideep's cache of oneDNN computations (torch's bf16 / float matmuls on a CPU).
KERNEL_CACHE_VARS = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
#: Entries per cache for a process that runs models of several shapes (an embedded LLM, a pipeline): a prompt
#: pass uses ~4 linear shapes per row count, so 32 holds several batches' worth (bounded at ~20 MB).
KERNEL_CACHE_ENTRIES = 32
#: For a process that only collects: collect's batch shapes come from a bounded ladder, but the ladder still has
#: ~4 x ctx_len / 8 shapes; peak RSS of a ctx-256 collect grew 1,419 -> 1,688 MB from 65k to 1M tokens with the
#: default, and stayed flat with 4 (1,376 -> 1,381 MB) at the same tokens/s. Four holds one batch's distinct
#: linear shapes (576->576, 576->192, 576->1536, 1536->576 for SmolLM2), so a batch builds its kernels once,
#: not per layer. Too few for an LLM: a decoding step meets ~5 shapes at once and would rebuild each every step.
COLLECT_KERNEL_CACHE_ENTRIES = 4


def bound_kernel_caches(entries: int = KERNEL_CACHE_ENTRIES) -> list[str]:
    """Set each kernel-cache variable the environment lacks to `entries`; returns the names it set."""
    unset = [name for name in KERNEL_CACHE_VARS if name not in os.environ]
    for name in unset:
        os.environ[name] = str(entries)
    return unset
