"""Keep freed tensor buffers in the process heap instead of handing them back to the OS (glibc only).

Why: every forward pass allocates the same few hundred MB of activations and frees them. glibc serves
blocks above its mmap threshold (a few MB) with fresh `mmap`s and unmaps them on free, so each batch
touches its buffers as new pages: ~75,000 page faults per batch of SmolLM2 at 2,300 tokens, 15-20 % of
the bare forward time on CPU. Raising the mmap and trim thresholds makes freed blocks reusable by the
next batch. Peak RSS is unchanged (it is the per-batch working set either way) and still independent of
corpus size; the setting is process-wide and harmless for the rest of a collect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to 32 MB (glibc's maximum mmap threshold; every per-layer activation of a 4,096-token batch of
# a small model) come from the heap; larger ones (the [tokens, d_sae] encoder output) are still mapped and
# unmapped, so the heap cannot fragment into a high-water mark that grows with the number of batch shapes
# seen (with a 1 GB threshold, peak RSS at ctx 256 grew 63 % from 32k to 131k tokens).
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 128 << 20


def keep_freed_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds; True when applied (False off Linux/glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not applied:
        log.debug("mallopt refused the thresholds; freed buffers go back to the OS as before")
    return applied


#: oneDNN (the CPU kernels behind bf16 matmuls) keeps every primitive it has built, 1,024 by default, each
#: with its own buffers, keyed by input shape. Collect's batch shapes come from a bounded ladder, but the
#: ladder still has ~4 x ctx_len / 8 shapes and attention adds its own per-length kernels: peak RSS of a
#: ctx-256 collect grew 1,419 -> 1,688 MB from 65k to 1M tokens with the default, and stayed flat with 4
#: (1,376 -> 1,381 MB) at the same tokens/s. Four holds one batch's distinct linear shapes (576->576,
#: 576->192, 576->1536, 1536->576 for SmolLM2), so a batch re-creates its kernels once, not per layer.
KERNEL_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
COLLECT_KERNEL_CACHE = 4


def bound_kernel_cache() -> bool:
    """Cap oneDNN's primitive cache for a process that only collects; True when this set it.

    oneDNN reads the variable once, when it builds its first primitive, so this must run before the
    first matmul and affects the whole process. It is therefore only called where the process does
    nothing else (`autointerp collect` run as its own command, the benchmark's collect child), never
    inside a pipeline that runs an embedded LLM afterwards: an LLM decode step needs ~5 kernel shapes
    at once, and a cache of 4 would rebuild each of them every step. A value the user set is kept."""
    if KERNEL_CACHE_ENV in os.environ:
        return False
    os.environ[KERNEL_CACHE_ENV] = str(COLLECT_KERNEL_CACHE)
    return True
