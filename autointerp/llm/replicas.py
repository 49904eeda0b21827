"""Spreading requests over several servers (vLLM replicas) and routing around a dead one.

Each request goes to the live replica with the fewest requests in flight (ties: round-robin),
which keeps every replica's batch full even when they differ in speed. A replica that refuses a
connection or answers 5xx is marked down for `down_s` seconds so the retry goes elsewhere; when
every replica is down we still pick the one that comes back first, so a single-server run keeps
retrying its server rather than failing at once.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass


@dataclass
class Replica:
    base_url: str
    in_flight: int = 0
    down_until: float = 0.0
    requests: int = 0
    failures: int = 0

    def is_up(self, now: float) -> bool:
        return now >= self.down_until


class ReplicaPool:
    def __init__(self, base_urls: list[str], down_s: float = 10.0) -> None:
        if not base_urls:
            raise ValueError("at least one base URL is needed")
        self.replicas = [Replica(url) for url in base_urls]
        self.down_s = down_s
        self._turn = itertools.count()

    def pick(self, avoid: Replica | None = None) -> Replica:
        """The replica for the next attempt; `avoid` (the one that just failed) only if nothing else is up."""
        now = time.monotonic()
        up = [r for r in self.replicas if r.is_up(now) and r is not avoid]
        if not up:
            up = [r for r in self.replicas if r.is_up(now)]
        if not up:
            return min(self.replicas, key=lambda r: r.down_until)
        start = next(self._turn) % len(self.replicas)
        order = {id(r): (i - start) % len(self.replicas) for i, r in enumerate(self.replicas)}
        return min(up, key=lambda r: (r.in_flight, order[id(r)]))

    def mark_down(self, replica: Replica) -> None:
        replica.failures += 1
        if len(self.replicas) > 1:
            replica.down_until = time.monotonic() + self.down_s

    def mark_ok(self, replica: Replica) -> None:
        replica.down_until = 0.0

    def another_is_up(self, replica: Replica) -> bool:
        now = time.monotonic()
        return any(r is not replica and r.is_up(now) for r in self.replicas)
