"""The one LLM work runner every LLM stage (explain, score, what comes next) goes through.

Why it is shaped this way:
- Items are streamed from the store in chunks (`chunks` yields lists; each `next()` runs in a thread,
  one chunk prefetched ahead), so memory depends on the chunk size and the window, never on the
  dictionary's width.
- At most `window` items are in flight; the client's own concurrency limit decides how many requests
  reach the server. The window is a little larger than that limit so a free slot never waits for the
  store or for prompt building.
- Results go to ONE writer task that commits every row queued since its previous commit in one
  transaction, at most once per `COMMIT_INTERVAL_S`. A DuckDB upsert costs ~10-20 ms of CPU whatever its
  size (measured: 10 rows 19 ms, 300 rows 18 ms, 3,000 rows 144 ms); a writer that committed as fast as
  it could spent a whole thread on commits of a few rows each (0.45 ms of CPU per request at ~600
  requests/s) and took that CPU from the event loop and the server. A reply is durable within one
  interval of arriving; kill -9 loses only the items in flight or queued, and a rerun redoes them.
- Every item ends with a status. An exception raised while processing one item is turned into that
  item's failure row (`fail`) and recorded, never fatal to the others. Only a writer failure (the
  store itself) stops the run, after committing what it can.

The API is deliberately small: `run_items(chunks, process, fail, write, ...)` -> `RunStats`, and
`run_sync(coroutine)` for synchronous callers.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")

#: Extra items kept in flight beyond the client's concurrency, so the next request is ready when a slot frees.
WINDOW_SLACK = 16
#: The writer commits at most this often (seconds): what a kill -9 can lose of finished work, traded
#: against the per-commit cost (see the module doc).
COMMIT_INTERVAL_S = 0.5


@dataclass
class Outcome:
    """What processing one item gives: the row to store, its status and the tokens it spent."""

    status: str
    row: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 1


@dataclass
class RunStats:
    """What one `run_items` call did: counts per status, tokens, requests and timings."""

    name: str
    n_items: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    n_exceptions: int = 0
    wall_s: float = 0.0
    first_item_s: float | None = None  # from the start of the run to the first finished item
    commits: int = 0

    @property
    def items_per_s(self) -> float:
        return self.n_items / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    def format(self) -> str:
        first = "n/a" if self.first_item_s is None else f"{self.first_item_s:.2f} s"
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())) or "none"
        rate = (
            f", {self.requests_per_s:.1f} requests/s" if self.requests else ""
        )  # 0: the stage does not count them
        return (
            f"{self.name}: {self.n_items} item(s) in {self.wall_s:.1f} s ({self.items_per_s:.1f} items/s{rate}), "
            f"first after {first}; {counts}"
        )


class _Writer(Generic[R]):
    """One task that group-commits: every row queued since the last commit goes in the next one, and
    commits start at most `interval_s` apart (closing flushes at once)."""

    def __init__(
        self, write: Callable[[list[dict[str, Any]]], None], stats: RunStats, interval_s: float | None = None
    ) -> None:
        self.write, self.stats = write, stats
        self.interval_s = COMMIT_INTERVAL_S if interval_s is None else interval_s
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.closing = asyncio.Event()
        self.task = asyncio.create_task(self._loop())

    def put(self, row: dict[str, Any]) -> None:
        if self.task.done():  # the writer died: surface its error instead of queueing forever
            self.task.result()
        self.queue.put_nowait(row)

    async def close(self) -> None:
        if not self.task.done():
            self.closing.set()
            self.queue.put_nowait(None)
        await self.task

    async def _loop(self) -> None:
        while True:
            rows = [await self.queue.get()]
            while not self.queue.empty():
                rows.append(self.queue.get_nowait())
            batch = [r for r in rows if r is not None]
            started = time.perf_counter()
            if batch:
                await asyncio.to_thread(self.write, batch)
                self.stats.commits += 1
            if rows[-1] is None:
                return
            wait = self.interval_s - (time.perf_counter() - started)
            if wait > 0 and not self.closing.is_set():
                # pace the next commit; close() ends the wait at once (asyncio.wait does not raise on timeout)
                waiter = asyncio.ensure_future(self.closing.wait())
                await asyncio.wait({waiter}, timeout=wait)
                waiter.cancel()


def _next_chunk(iterator: Iterator[Sequence[T]]) -> Sequence[T] | None:
    return next(iterator, None)


def window_for(client: Any) -> int:
    """Items in flight for a client: twice its concurrency plus some slack (the client caps requests)."""
    concurrency = int(client.concurrency) if client is not None else 1
    return 2 * max(1, concurrency) + WINDOW_SLACK


async def run_items(
    chunks: Iterable[Sequence[T]],
    process: Callable[[T], Awaitable[Outcome]],
    fail: Callable[[T, BaseException], Outcome],
    write: Callable[[list[dict[str, Any]]], None],
    *,
    window: int,
    total: int | None = None,
    name: str = "items",
    progress: bool = True,
    on_outcome: Callable[[T, Outcome], None] | None = None,
) -> RunStats:
    """Process every item of `chunks` with at most `window` in flight; store each outcome's row via `write`.

    `chunks`: an iterable of item lists, read lazily (each step in a worker thread, one step ahead), e.g.
    one store query per 256 features. `process(item)`: the async work of one item, returning its
    `Outcome`. `fail(item, exc)`: the failure outcome for an item whose `process` raised (recorded, the
    run goes on). `write(rows)`: stores a group of rows in ONE transaction, run in a worker thread.
    `total`: items expected (for the progress bar). `on_outcome`: called on the loop for every outcome
    (stages count their own numbers there). Returns the run's statistics.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    stats = RunStats(name=name)
    started = time.perf_counter()
    bar = tqdm(total=total, unit="item", desc=name, disable=not progress or total == 0)
    slots = asyncio.Semaphore(window)
    tasks: set[asyncio.Task[None]] = set()
    writer: _Writer[Any] = _Writer(write, stats)
    last_postfix = 0.0

    def record(item: T, outcome: Outcome) -> None:
        nonlocal last_postfix
        stats.n_items += 1
        stats.statuses[outcome.status] += 1
        stats.prompt_tokens += outcome.prompt_tokens
        stats.completion_tokens += outcome.completion_tokens
        stats.requests += outcome.requests
        if stats.first_item_s is None:
            stats.first_item_s = time.perf_counter() - started
        writer.put(outcome.row)
        if on_outcome is not None:
            on_outcome(item, outcome)
        bar.update(1)
        now = time.perf_counter()
        if now - last_postfix > 0.5:
            last_postfix = now
            failed = stats.n_items - stats.statuses.get("ok", 0) - stats.statuses.get("undefined", 0)
            bar.set_postfix(
                failed=failed, req_s=f"{stats.requests / max(now - started, 1e-9):.0f}", refresh=False
            )

    async def one(item: T) -> None:
        try:
            try:
                outcome = await process(item)
            except Exception as exc:  # noqa: BLE001 -- one item's bug is that item's failure, not the run's
                stats.n_exceptions += 1
                exc.__traceback_text__ = traceback.format_exc(limit=6)  # type: ignore[attr-defined]
                outcome = fail(item, exc)
            record(item, outcome)
        finally:
            slots.release()

    iterator = iter(chunks)
    try:
        pending = asyncio.ensure_future(asyncio.to_thread(_next_chunk, iterator))
        while True:
            chunk = await pending
            if chunk is None:
                break
            pending = asyncio.ensure_future(asyncio.to_thread(_next_chunk, iterator))  # prefetch the next one
            for item in chunk:
                await slots.acquire()
                if writer.task.done():
                    writer.task.result()  # the store failed: stop feeding work
                task = asyncio.create_task(one(item))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*list(tasks))
        await writer.close()
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)
        if not writer.task.done():  # on an error, still commit what already arrived
            await writer.close()
        stats.wall_s = time.perf_counter() - started
        bar.close()
    return stats


def error_text(exc: BaseException) -> str:
    """The error text stored for an item whose processing raised: type, message and a short traceback."""
    trace = getattr(exc, "__traceback_text__", "")
    return f"{type(exc).__name__}: {exc}" + (f"\n{trace}" if trace else "")


def run_sync(coroutine: Coroutine[Any, Any, R]) -> R:
    """Run a stage's coroutine from synchronous code (scripts, notebooks without a loop).

    Inside a running event loop this refuses (await the async function instead) rather than returning
    a coroutine sometimes and a result other times.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise RuntimeError(
        "an event loop is already running here: await the async function (e.g. `await explain(...)`)"
    )
