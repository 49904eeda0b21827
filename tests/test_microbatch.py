"""The micro-batcher of the embedded backend: batches form from calls that arrive together, and the callers of
a long batch get time to react before the next one starts."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from autointerp.llm.microbatch import MicroBatcher


def _batcher(run_s: float, wait_s: float = 0.005, max_settle_s: float = 0.1, prefer=None,
             batches: list[list[int]] | None = None) -> MicroBatcher[int, int]:
    def run(items: list[int]) -> list[int]:
        if batches is not None:
            batches.append(list(items))
        time.sleep(run_s)
        return [item * 10 for item in items]

    return MicroBatcher(run, ThreadPoolExecutor(max_workers=1), max_batch_size=8, wait_s=wait_s,
                        max_settle_s=max_settle_s, prefer=prefer)


def _retry_and_next(batcher: MicroBatcher[int, int], next_after_s: float) -> list[int]:
    """Item 1 alone; once answered, its caller asks again after 20 ms (explain's retry, after rendering a chat
    template), while item 2 (the next feature) is submitted `next_after_s` after the start."""

    async def run() -> list[int]:
        async def retrying() -> int:
            first = await batcher.submit(1)
            await asyncio.sleep(0.02)
            return first + await batcher.submit(3)

        async def next_feature() -> int:
            await asyncio.sleep(next_after_s)
            return await batcher.submit(2)

        return list(await asyncio.gather(retrying(), next_feature()))

    return asyncio.run(run())


def test_a_caller_reacting_within_the_settle_window_joins_the_next_batch() -> None:
    batcher = _batcher(run_s=1.0)   # a 1 s batch: the next waits up to 50 ms for its callers
    assert _retry_and_next(batcher, next_after_s=0.2) == [40, 20]   # item 2 queued while item 1's batch runs
    assert batcher.batch_sizes == [1, 2]


def test_a_short_batch_keeps_the_short_window() -> None:
    batcher = _batcher(run_s=0.02)   # 20 ms batch: 5 ms window (1 ms settle), a 20 ms reaction misses it
    assert _retry_and_next(batcher, next_after_s=0.01) == [40, 20]
    assert batcher.batch_sizes == [1, 1, 1]


def test_with_more_calls_waiting_than_a_batch_takes_the_preferred_go_first() -> None:
    """20 calls waiting, batches of 8: a caller that asks again at once (explain's retry) is in the very next
    batch when `prefer` picks it (the embedded backend: a prompt whose read state it keeps), not behind the
    12 still waiting; without `prefer`, first come first served."""

    def run(prefer) -> list[list[int]]:
        batches: list[list[int]] = []
        batcher = _batcher(run_s=0.05, prefer=prefer, batches=batches)

        async def go() -> None:
            async def one(item: int) -> None:
                if await batcher.submit(item) == 30:   # item 3's caller asks again at once, as 103
                    await batcher.submit(103)

            await asyncio.gather(*[one(item) for item in range(20)])

        asyncio.run(go())
        return batches

    preferred = run(lambda item: item >= 100)
    assert preferred[0] == list(range(8)) and preferred[1][0] == 103 and preferred[1][1:] == list(range(8, 15))
    plain = run(None)
    assert plain[1] == list(range(8, 16)) and 103 in plain[2]
