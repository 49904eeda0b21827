"""The embedded backend's explain batches, two ways in alternation within one process (`--compare`).

- `generate` (default): the batch generated with the shared head stored once (`autointerp.llm.shared_head`)
  against `model.generate`.
- `decode`: shared-head generation with a decoding step's attention over each row's tail as matmuls (the
  default) against torch's CPU flash kernel.
- `retry`: a batch that holds explain's retries of rejected labels (the same prompts, sampled at 0.7) beside new
  features, after the batch those prompts were first read in, with the client's kept prompt states
  (`LocalClient.prompt_states`) against none: with them a retry is not read again.

Measured on real explain prompts (the workspace's features picked by `--features`, one per row), `--repeats`
times each after one warm-up of each, so both see the same machine state; it prints the median seconds per
batch of each way, their ratio (< 1: the first is faster), the completion tokens, and how many replies are the
same text (bf16 rounds the two ways differently, so a greedy reply can differ; a float32 model replies the
same, see tests/test_shared_head.py).

Run: `python -m autointerp.bench.shared_head --db WS [--compare generate|decode|retry] [--llm local:smollm2]
[--features middle:8] [--repeats 3] [--retries 2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from autointerp.llm.base import WEIGHT_FORMATS


def _messages(db: str, sae_name: str | None, features_spec: str, prompt: str) -> list[Any]:
    from autointerp.explain.config import ExplainConfig
    from autointerp.explain.formatting import build_messages, select_examples
    from autointerp.prompting import load_prompt
    from autointerp.selection import parse_feature_spec
    from autointerp.store import Store

    config = ExplainConfig(prompt=prompt)
    template = load_prompt(prompt)
    with Store(db, read_only=True) as store:
        run = store.resolve_run(sae_name)
        live = store.explainable_feature_ids(run.run_id)
        features = parse_feature_spec(features_spec, store.features(run.run_id), live)
        groups = store.example_records(run.run_id, features, "explain", ["top", "random"])
    return [build_messages(template, select_examples(groups[f], config), config) for f in features]


def _batch(client: Any, messages: list[Any], max_tokens: int,
           temperatures: Sequence[float] | None = None) -> tuple[float, list[Any]]:
    from autointerp.explain.schema import EXPLANATION_SCHEMA

    temperatures = temperatures or [0.0] * len(messages)

    async def run() -> list[Any]:
        return list(await asyncio.gather(*[
            client.chat(m, json_schema=EXPLANATION_SCHEMA, max_tokens=max_tokens, temperature=t, seed=1 if t else 0)
            for m, t in zip(messages, temperatures, strict=True)]))

    started = time.perf_counter()
    results = asyncio.run(run())
    return time.perf_counter() - started, results


def main(argv: Sequence[str] | None = None) -> int:
    from autointerp.explain.config import ExplainConfig
    from autointerp.llm import shared_head
    from autointerp.llm.local_client import LocalClient
    from autointerp.llm.prefix_cache import PromptStates

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a workspace written by `autointerp collect` (the demo's)")
    parser.add_argument("--sae-name", default=None, help="which SAE of the workspace")
    parser.add_argument("--llm", default="local:smollm2", help="local:MODEL")
    parser.add_argument("--llm-weights", choices=WEIGHT_FORMATS, default="auto")
    parser.add_argument("--compare", choices=("generate", "decode", "retry"), default="generate",
                        help="what to compare (see above)")
    parser.add_argument("--features", default="middle:8",
                        help="the features, one per row of the batch (retry: the first batch, then the rest)")
    parser.add_argument("--prompt", default="explain_v3", help="explain template")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per way")
    parser.add_argument("--retries", type=int, default=2, help="retry: prompts of the first batch asked again")
    args = parser.parse_args(argv)
    if not args.llm.startswith("local:"):
        parser.error("--llm must be local:MODEL (the embedded backend)")
    messages = _messages(args.db, args.sae_name, args.features, args.prompt)
    max_tokens = ExplainConfig().max_tokens
    if args.compare == "retry":
        client = LocalClient(args.llm.removeprefix("local:"), weights=args.llm_weights)
        first, rest = messages[: client.concurrency], messages[client.concurrency :]
        if not rest or not 0 < args.retries <= len(first):
            parser.error(f"--compare retry needs more features than a batch ({client.concurrency}) and "
                         f"1 <= --retries <= {client.concurrency}")
        asked = rest + first[: args.retries]
        sampled = [0.0] * len(rest) + [0.7] * args.retries
        labels = ("kept prompt states", "none")

        def way(kept: bool) -> tuple[float, list[Any]]:
            client.prompt_states = PromptStates(client.concurrency)
            _batch(client, first, max_tokens)                         # the retried prompts' first read
            if not kept:
                client.prompt_states = PromptStates(0)
            return _batch(client, asked, max_tokens, sampled)
    else:
        # no kept prompt states: each timed batch reads its prompts, as a batch of new features does
        client = LocalClient(args.llm.removeprefix("local:"), weights=args.llm_weights, max_batch_size=len(messages),
                             prompt_states=0)
        labels = ("shared head", "model.generate") if args.compare == "generate" else ("decode matmuls", "flash")

        def way(first_way: bool) -> tuple[float, list[Any]]:
            if args.compare == "generate":
                client.shared_head = first_way
            else:
                shared_head.DECODE_ATTENTION = "matmul" if first_way else "flash"
            return _batch(client, messages, max_tokens)

    times: dict[bool, list[float]] = {True: [], False: []}
    replies: dict[bool, list[Any]] = {}
    for repeat in range(args.repeats + 1):
        for first_way in ((True, False) if repeat % 2 else (False, True)):
            seconds, results = way(first_way)
            if repeat:  # the first round warms up both ways (prefix cache, grammar, kernels)
                times[first_way].append(seconds)
            replies[first_way] = results
    shared_head.DECODE_ATTENTION = "matmul"
    fast, plain = statistics.median(times[True]), statistics.median(times[False])
    same = sum(a.text == b.text for a, b in zip(replies[True], replies[False], strict=True))
    n = len(replies[True])
    print(f"{client.model_name}, {n} explain prompts per batch, median of {args.repeats} alternating batches")
    for first_way, label in ((False, labels[1]), (True, labels[0])):
        tokens = sum(r.completion_tokens for r in replies[first_way])
        print(f"  {label:>18}: {statistics.median(times[first_way]):6.2f} s per batch "
              f"({', '.join(f'{t:.2f}' for t in times[first_way])}), {tokens} completion tokens")
    print(f"  ratio {labels[0]} / {labels[1]}: {fast / plain:.2f}; {same} of {n} replies the same text")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
