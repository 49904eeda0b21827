"""Pass 2's writes: Arrow rows buffered and committed in large transactions on one background thread.

Why a thread: DuckDB ingests a chunk of ~500k example rows in about as long as pass 2 takes to build
the next one (profiled at 65k tokens, 16k latents: inserts 1.5 s of pass 2's 2.9 s), and its execute
releases the GIL, so building rows and inserting them overlap instead of adding up.

Why chunks: one transaction for everything would keep every uncommitted row in DuckDB's memory (about
40 MB per million sparse examples), so memory would grow with the selection; each commit costs a fixed
flush, so chunks are large (500k rows wrote 2.2 M examples twice as fast as 100k). At most one chunk
is being committed while the next is built: memory stays at two chunks.

Only the writer thread touches the store while a chunk is in flight (the store's lock serialises the
rest); `drain` waits for it, and must run before anything else writes or deletes the run, so that a
failed collect never leaves a late chunk behind its cleanup. Until the run is marked complete,
readers ignore it (only complete runs are listed).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from autointerp.store import Store

#: Examples per committed transaction.
CHUNK_ROWS = 500_000


class ChunkedWriter:
    """Sink for pass 2: `add_examples` / `add_contexts` buffer, a full buffer is committed in the background."""

    def __init__(self, store: Store, chunk_rows: int = CHUNK_ROWS) -> None:
        self.store = store
        self.chunk_rows = chunk_rows
        self.examples: list[pa.Table] = []
        self.contexts: list[pa.Table] = []
        self.pending = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collect-writer")
        self._in_flight: Future[None] | None = None

    def add_examples(self, rows: pa.Table) -> None:
        self.examples.append(rows)
        self.pending += rows.num_rows
        if self.pending >= self.chunk_rows:
            self.flush()

    def add_contexts(self, rows: pa.Table) -> None:
        self.contexts.append(rows)

    def flush(self) -> None:
        """Commit what is buffered in a transaction of its own, in the background."""
        chunk = self._take()
        self.drain()  # one chunk in flight at most; raises the previous chunk's error here
        self._in_flight = self._pool.submit(self._commit, chunk)

    def drain(self) -> None:
        """Wait for the chunk in flight; its exception, if any, is raised here."""
        future, self._in_flight = self._in_flight, None
        if future is not None:
            future.result()

    def flush_into_open_transaction(self) -> None:
        """The rest, inside the caller's transaction (the run's last one).

        Call `drain` first, outside that transaction: the chunk in flight needs the store's lock, which
        the caller's open transaction holds, so waiting for it in here would wait forever."""
        if self._in_flight is not None:
            raise RuntimeError("ChunkedWriter: drain() before opening the transaction (a chunk is in flight)")
        self._insert(self._take())

    def close(self) -> None:
        """Wait for the chunk in flight (keeping the first error) and stop the thread."""
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True)

    def _take(self) -> tuple[list[pa.Table], list[pa.Table]]:
        chunk = (self.contexts, self.examples)
        self.examples, self.contexts, self.pending = [], [], 0
        return chunk

    def _commit(self, chunk: tuple[list[pa.Table], list[pa.Table]]) -> None:
        with self.store.transaction():
            self._insert(chunk)

    def _insert(self, chunk: tuple[list[pa.Table], list[pa.Table]]) -> None:
        contexts, examples = chunk
        for table in contexts:  # contexts first: an example's context is in the store when it is
            self.store.add_contexts_arrow(table)
        for table in examples:
            self.store.add_examples_arrow(table)
