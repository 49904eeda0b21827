"""The embedded backend's explain batches generated with the shared head stored once, against `model.generate`.

What `autointerp.llm.shared_head` is for, measured on real explain prompts: the same batch (one feature per
row, the workspace's features picked by `--features`) goes through both paths in alternation within one
process, `--repeats` times each after one warm-up of each, so both see the same machine state; it prints the
median seconds per batch of each path, their ratio (< 1: the shared head is faster), the completion tokens,
and how many replies are the same text (bf16 rounds the two paths' attention differently, so a greedy reply
can differ; a float32 model replies the same, see tests/test_shared_head.py).

Run: `python -m autointerp.bench.shared_head --db WS [--llm local:smollm2] [--features middle:8] [--repeats 3]`.
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


def _batch(client: Any, messages: list[Any], max_tokens: int) -> tuple[float, list[Any]]:
    from autointerp.explain.schema import EXPLANATION_SCHEMA

    async def run() -> list[Any]:
        return list(await asyncio.gather(*[client.chat(m, json_schema=EXPLANATION_SCHEMA, max_tokens=max_tokens)
                                           for m in messages]))

    started = time.perf_counter()
    results = asyncio.run(run())
    return time.perf_counter() - started, results


def main(argv: Sequence[str] | None = None) -> int:
    from autointerp.explain.config import ExplainConfig
    from autointerp.llm.local_client import LocalClient

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="a workspace written by `autointerp collect` (the demo's)")
    parser.add_argument("--sae-name", default=None, help="which SAE of the workspace")
    parser.add_argument("--llm", default="local:smollm2", help="local:MODEL")
    parser.add_argument("--llm-weights", choices=WEIGHT_FORMATS, default="auto")
    parser.add_argument("--features", default="middle:8", help="the features, one per row of the batch")
    parser.add_argument("--prompt", default="explain_v3", help="explain template")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per path")
    args = parser.parse_args(argv)
    if not args.llm.startswith("local:"):
        parser.error("--llm must be local:MODEL (the embedded backend)")
    messages = _messages(args.db, args.sae_name, args.features, args.prompt)
    client = LocalClient(args.llm.removeprefix("local:"), weights=args.llm_weights, max_batch_size=len(messages))
    max_tokens = ExplainConfig().max_tokens
    times: dict[bool, list[float]] = {True: [], False: []}
    replies: dict[bool, list[Any]] = {}
    for repeat in range(args.repeats + 1):
        for shared in (True, False):
            client.shared_head = shared
            seconds, results = _batch(client, messages, max_tokens)
            if repeat:  # the first round warms up both paths (prefix cache, grammar, kernels)
                times[shared].append(seconds)
            replies[shared] = results
    fast, plain = statistics.median(times[True]), statistics.median(times[False])
    same = sum(a.text == b.text for a, b in zip(replies[True], replies[False], strict=True))
    print(f"{client.model_name}, {len(messages)} explain prompts per batch, median of {args.repeats} alternating batches")
    for shared, label in ((False, "model.generate"), (True, "shared head")):
        tokens = sum(r.completion_tokens for r in replies[shared])
        print(f"  {label:>14}: {statistics.median(times[shared]):6.2f} s per batch "
              f"({', '.join(f'{t:.2f}' for t in times[shared])}), {tokens} completion tokens")
    print(f"  ratio shared head / model.generate: {fast / plain:.2f}; {same} of {len(messages)} replies the same text")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
