"""The prompt's own-token logprobs for a set of prompts: what the likelihood scorers read.

`intruder_likelihood` and `detection_likelihood` both ask many teacher-forced prompts for the logprob of
each prompt token at some positions (`top_n` 0) and must turn any failed or incomplete reply into the
feature's failure status, never a number. That asking and checking lives here once; each scorer keeps its
own prompts and arithmetic.
"""

from __future__ import annotations

import asyncio
from typing import Any

from autointerp.llm.base import LLMClient, LogprobsResult, Status
from autointerp.score.base import ScoreOutcome


async def own_token_logprobs(
    client: LLMClient,
    requests: list[tuple[list[int], list[int]]],
    details: dict[str, Any],
    no_logprobs_fix: str,
) -> tuple[list[list[float]] | ScoreOutcome, dict[str, Any]]:
    """Per request (prompt ids, positions), the prompt tokens' own logprobs at those positions, and the usage
    (prompt tokens, summed latency). When any request failed or a reply lacks what was asked, the first item
    is the feature's failure outcome instead (with `details` and the usage); `no_logprobs_fix` is appended to
    errors that mean the backend gives no prompt logprobs."""
    results: list[LogprobsResult] = await asyncio.gather(
        *[client.prompt_logprobs(ids, positions, top_n=0) for ids, positions in requests]
    )
    usage = {
        "prompt_tokens": sum(r.prompt_tokens or len(ids) for r, (ids, _) in zip(results, requests, strict=True)),
        "latency_s": sum(r.latency_s for r in results),
    }
    failed = [r for r in results if not r.ok]
    if failed:
        fix = f"; {no_logprobs_fix}" if failed[0].status is Status.NO_LOGPROBS else ""
        return ScoreOutcome(failed[0].status, error=f"{len(failed)}/{len(results)} prompt-logprob requests "
                            f"failed: {failed[0].error}{fix}", details=details, **usage), usage
    for result, (_, positions) in zip(results, requests, strict=True):
        if len(result.actual) != len(positions):
            return ScoreOutcome(Status.SERVER_ERROR, error=f"asked the prompt's own logprobs at {len(positions)} "
                                f"positions, got {len(result.actual)}", details=details, **usage), usage
        if any(a is None for a in result.actual):
            return ScoreOutcome(Status.NO_LOGPROBS, error="the server sent prompt logprobs without the prompt's "
                                f"own tokens (vLLM sends them); {no_logprobs_fix}", details=details, **usage), usage
    return [[float(a) for a in r.actual if a is not None] for r in results], usage
