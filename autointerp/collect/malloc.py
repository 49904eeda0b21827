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
