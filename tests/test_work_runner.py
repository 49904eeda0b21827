"""The shared LLM work runner (`autointerp.llm.runner`): statuses, failures as rows, paced group commits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from autointerp.llm.runner import Outcome, run_items


def _run(n: int, delay_s: float, interval_s: float, monkeypatch: pytest.MonkeyPatch, fail_on: int = -1):
    import autointerp.llm.runner as runner_module

    monkeypatch.setattr(runner_module, "COMMIT_INTERVAL_S", interval_s)
    written: list[list[dict[str, Any]]] = []

    async def process(i: int) -> Outcome:
        await asyncio.sleep(delay_s * (i % 5))
        if i == fail_on:
            raise ValueError(f"item {i} is broken")
        return Outcome("ok", {"id": i})

    def fail(i: int, exc: BaseException) -> Outcome:
        return Outcome("exception", {"id": i, "error": str(exc)})

    chunks = [list(range(start, min(start + 7, n))) for start in range(0, n, 7)]
    started = time.perf_counter()
    stats = asyncio.run(
        run_items(chunks, process, fail, written.append, window=8, total=n, name="t", progress=False)
    )
    return stats, written, time.perf_counter() - started


def test_every_item_is_written_once_and_a_raising_item_becomes_its_failure_row(monkeypatch) -> None:
    stats, written, _ = _run(40, 0.002, 0.05, monkeypatch, fail_on=13)
    ids = [row["id"] for batch in written for row in batch]
    assert sorted(ids) == list(range(40))
    assert stats.n_items == 40 and stats.statuses == {"ok": 39, "exception": 1} and stats.n_exceptions == 1
    failed = [row for batch in written for row in batch if row["id"] == 13]
    assert failed == [{"id": 13, "error": "item 13 is broken"}]
    assert stats.commits == len(written)


def test_commits_are_paced_not_one_per_reply(monkeypatch) -> None:
    # ~300 replies spread over ~0.3 s: an unpaced writer commits (almost) once per reply; paced at 0.1 s, a few.
    stats, written, wall = _run(300, 0.004, 0.1, monkeypatch)
    assert sum(len(b) for b in written) == 300
    assert stats.commits <= wall / 0.1 + 2, (stats.commits, wall)
    assert stats.commits >= 2  # still committing while the run goes, not once at the end


def test_closing_flushes_at_once_instead_of_waiting_out_the_interval(monkeypatch) -> None:
    stats, written, wall = _run(3, 0.0, 30.0, monkeypatch)
    assert sum(len(b) for b in written) == 3
    assert wall < 5.0, wall  # the 30 s pacing wait was cut short by close()
