"""The CPU kernel caches are bounded (autointerp/kernel_cache.py): memory stays flat as new input shapes arrive."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from autointerp.kernel_cache import KERNEL_CACHE_ENTRIES, KERNEL_CACHE_VARS

# Runs in a fresh process (the caches read their variables at the process's first matmul): bf16 products with
# 300 row counts, as an embedded LLM meets one per prompt length; prints the growth of the C heap in use, MB.
SCRIPT = """
import ctypes, sys
import torch
import torch.nn.functional as F
if sys.argv[1] == "client":  # what a library caller gets: constructing the client bounds the caches
    from autointerp.llm.local_client import LocalClient
    LocalClient("smollm2")
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
weight = torch.randn(896, 896, dtype=torch.bfloat16)
F.linear(torch.randn(100, 896, dtype=torch.bfloat16), weight)
before = libc.mallinfo2().uordblks
for rows in range(101, 401):
    F.linear(torch.randn(rows, 896, dtype=torch.bfloat16), weight)
print((libc.mallinfo2().uordblks - before) / 2**20)
"""


def _heap_growth_mb(mode: str, env: dict[str, str]) -> float:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return float(done.stdout.split()[-1])


def test_constructing_the_local_client_bounds_the_kernel_caches() -> None:
    try:
        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018 - glibc 2.33+: the heap's bytes in use
    except (OSError, AttributeError):
        pytest.skip("needs glibc's mallinfo2 to read the heap in use")
    env = {name: value for name, value in os.environ.items() if name not in KERNEL_CACHE_VARS}
    unbounded = _heap_growth_mb("bare", {**env, **dict.fromkeys(KERNEL_CACHE_VARS, "1024")})
    if unbounded < 30:
        pytest.skip(f"this CPU's bf16 products do not go through oneDNN's caches (+{unbounded:.1f} MB for 300 shapes)")
    bounded = _heap_growth_mb("client", env)
    # KERNEL_CACHE_ENTRIES entries of ~0.3-0.6 MB each, against ~0.5 MB per shape (~150 MB) unbounded
    assert bounded < KERNEL_CACHE_ENTRIES, (bounded, unbounded)
