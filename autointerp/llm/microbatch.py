"""Gathering concurrent async calls into one batch for a model that runs in a worker thread.

The stages fire many `chat` / `prompt_logprobs` calls at once (as they would at vLLM). An
in-process model is much faster on a padded batch than on one request at a time, and must run off
the event loop so the loop keeps serving. The batcher waits a few milliseconds after the first call
for others to arrive, then hands the batch to one worker thread (the model is used by one thread).

After a long batch it waits longer (a twentieth of that batch's time, at most `max_settle_s`): the callers
it just answered react with new calls (explain's retry of a rejected label, the next features once slots
free up), and a reaction that misses the window costs a batch of its own. On a CPU a batch takes seconds,
and the reaction milliseconds (explain's retry renders the chat template: ~7 ms, where the fixed 5 ms
window missed it in half the runs, costing SmolLM2 a ~1.5 s batch of one row in 12 demo features).

More calls can be waiting than a batch takes (the stages keep about twice the batch size in flight). Items
`prefer` picks go first, and callers that react at once (no I/O before their next call) are queued before the
next batch forms: the embedded backend prefers a prompt it has just read (explain's retry of a rejected
label), whose read state it keeps only for a batch or so; first come, first served would put the retry behind
~24 new features (SmolLM2, 48 demo features: none of 9 retries found its prompt's state).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    def __init__(
        self,
        run_batch: Callable[[list[Item]], list[Result]],
        executor: Executor,
        max_batch_size: int = 8,
        wait_s: float = 0.005,
        max_settle_s: float = 0.1,
        prefer: Callable[[Item], bool] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.prefer = prefer
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self.max_settle_s = max_settle_s
        self._settle_until = 0.0  # loop time until which the callers of the last batch may still react
        self.batch_sizes: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._queue is None:
            # A new event loop (e.g. a second asyncio.run): queues and tasks cannot cross loops.
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._work(self._queue))
        future: asyncio.Future[Result] = loop.create_future()
        await self._queue.put((item, future))
        return await future

    async def _work(self, queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]]) -> None:
        loop = asyncio.get_running_loop()
        pending: deque[tuple[Item, asyncio.Future[Result]]] = deque()   # taken from the queue, not yet batched
        while True:
            await asyncio.sleep(0)  # callers just answered that call again at once are queued before this batch
            while not queue.empty():
                pending.append(queue.get_nowait())
            if not pending:
                pending.append(await queue.get())
            deadline = max(loop.time() + self.wait_s, self._settle_until)
            while len(pending) < self.max_batch_size:
                if not queue.empty():
                    pending.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    pending.append(await asyncio.wait_for(queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            batch = self._take(pending)
            live = [(item, future) for item, future in batch if not future.cancelled()]
            if not live:
                continue
            self.batch_sizes.append(len(live))
            started = loop.time()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [item for item, _ in live])
            except Exception as exc:  # noqa: BLE001 - a bug or OOM in the model: every caller sees it
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            finally:
                ended = loop.time()
                self._settle_until = ended + min((ended - started) / 20, self.max_settle_s)
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def _take(self, pending: deque[tuple[Item, asyncio.Future[Result]]]) -> list[tuple[Item, asyncio.Future[Result]]]:
        """Up to `max_batch_size` of `pending` (removed from it): the ones `prefer` picks first, then in arrival
        order."""
        if self.prefer is None or len(pending) <= self.max_batch_size:
            return [pending.popleft() for _ in range(min(len(pending), self.max_batch_size))]
        preferred = [entry for entry in pending if self.prefer(entry[0])][: self.max_batch_size]
        chosen = {id(entry) for entry in preferred}
        rest = [entry for entry in pending if id(entry) not in chosen]
        batch = preferred + rest[: self.max_batch_size - len(preferred)]
        pending.clear()
        pending.extend(rest[self.max_batch_size - len(preferred) :])
        return batch
