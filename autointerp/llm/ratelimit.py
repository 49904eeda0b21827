"""An async token bucket: the requests-per-second and tokens-per-minute limits of hosted APIs.

A hosted API answers 429 when a client goes over its quota; pacing ourselves below it avoids
wasting attempts (and Retry-After stalls) in the first place. vLLM needs no limit.
"""

from __future__ import annotations

import asyncio
import time


class AsyncTokenBucket:
    """`rate` tokens per second, bursts up to `capacity`; `acquire(n)` waits until n are available.

    Callers are served in arrival order (one lock), so a large request is not starved by small ones.
    `refund(n)` (n may be negative) settles an estimate against the real cost afterwards; a
    negative balance simply makes the next callers wait longer.
    """

    def __init__(self, rate: float, capacity: float | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = float(rate)
        self.capacity = float(capacity if capacity is not None else max(rate, 1.0))
        self._tokens = self.capacity
        self._updated = time.monotonic()
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def acquire(self, amount: float = 1.0) -> None:
        # A request bigger than the bucket could never pass; let it through once the bucket is full.
        amount = min(float(amount), self.capacity)
        async with self._get_lock():
            while True:
                self._refill()
                if self._tokens >= amount:
                    self._tokens -= amount
                    return
                await asyncio.sleep((amount - self._tokens) / self.rate)

    def refund(self, amount: float) -> None:
        self._refill()
        self._tokens = min(self.capacity, self._tokens + amount)
