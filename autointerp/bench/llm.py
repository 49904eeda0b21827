"""`autointerp bench llm`: does the explain stage keep an LLM server busy, and how many tokens does it spend?

Against the built-in test server (`FakeOpenAIServer`: answers after L seconds, at most C requests in
service) the server's capacity is exactly C / L requests per second, so achieved features/s divided by
C / L is the stage's efficiency (goal >= 0.9); the server runs in its own process, like a real one, so
it does not share this process's GIL. Against a real server (`--llm URL`) there is no known capacity:
the benchmark prints features/s at each `--concurrency` level instead.

Scoring plugs in through `--stages explain,simulation` when `autointerp.score.score_features` exists.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.llm.base import WEIGHT_FORMATS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "llm",
        help="LLM-stage throughput vs server capacity, and tokens per feature",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--latency", type=float, default=0.2, help="test server: seconds per request (L)")
    parser.add_argument("--capacity", type=int, default=64, help="test server: requests in service at once (C)")
    parser.add_argument("--n-features", type=int, default=None,
                        help="features to explain (default: 1280 with the test server, 48 per level with --llm)")
    parser.add_argument("--db", default=None,
                        help="benchmark on a copy of this workspace instead of a synthetic one (the file is not changed)")
    parser.add_argument("--sae-name", default=None, help="with --db: which SAE")
    parser.add_argument("--llm", default=None, help="a real OpenAI-compatible base URL instead of the test server")
    parser.add_argument("--llm-model", default=None, help="with --llm: the served model name")
    parser.add_argument("--tokenizer", default=None,
                        help="with --llm: the served model's tokenizer (smollm2, a directory), so simulation reads "
                             "prompt logprobs instead of falling back to JSON")
    parser.add_argument("--concurrency", default=None,
                        help="client concurrency; comma list to sweep (default: C with the test server, 1,8,32 with --llm)")
    parser.add_argument("--stages", default="explain", help="explain, or explain,simulation (needs autointerp.score)")
    parser.add_argument("--features", default=None,
                        help="which features (a feature spec, e.g. middle:12 as the demo labels; default top:N)")
    parser.add_argument("--prompt", default=None,
                        help="explain template (default: explain's own default; the demo uses explain_v3)")
    parser.add_argument("--llm-weights", choices=WEIGHT_FORMATS, default=None,
                        help="with --llm local:MODEL: how the embedded model keeps its decoder weights (default auto)")
    parser.add_argument("--in-process-server", action="store_true",
                        help="run the test server as a thread of this process (measures a GIL-shared setup)")
    parser.add_argument("--compare-prefix-cache", action="store_true",
                        help="with --llm local:MODEL: run each level without, then with the prefix cache, on the same "
                             "features, and print the ratio (one run, so the machine's load hits both alike)")
    parser.add_argument("--print-labels", action="store_true", help="print every label of each level")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the figures as JSON here")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from autointerp.commands.explain import quiet_http_logs

    quiet_http_logs(args)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - {"explain", "simulation"}
    if unknown or "explain" not in stages:
        raise UserError(f"--stages {args.stages!r}: unknown or missing stage", "use explain or explain,simulation")
    if "simulation" in stages:
        _score_features()  # fail before any work when scoring is not available
    levels = _concurrency_levels(args)
    n_features = args.n_features or (48 if args.llm else 1280)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="autointerp-bench-") as tmp:
        base_db = Path(tmp) / "base.duckdb"
        sae_name = _prepare_store(args, base_db, n_features)
        for level in levels:
            db = Path(tmp) / f"c{level}.duckdb"
            shutil.copyfile(base_db, db)
            if args.llm and args.compare_prefix_cache:
                for prefix in (False, True):
                    shutil.copyfile(base_db, db)
                    result = _bench_once(db, sae_name, args.llm, args.llm_model, level, n_features, stages,
                                         args.tokenizer, prefix_cache=prefix, features_spec=args.features,
                                         prompt=args.prompt, weights=args.llm_weights)
                    results.append(result)
                off, on = results[-2]["explain"]["wall_s"], results[-1]["explain"]["wall_s"]
                results[-1]["speedup_vs_no_prefix_cache"] = off / on if on > 0 else 0.0
            elif args.llm:
                results.append(_bench_once(db, sae_name, args.llm, args.llm_model, level, n_features, stages,
                                           args.tokenizer, features_spec=args.features, prompt=args.prompt,
                                           weights=args.llm_weights))
            else:
                with _test_server(args) as url:
                    result = _bench_once(db, sae_name, url, None, level, n_features, stages)
                with _test_server(args) as url:
                    result["client_only_per_s"], result["client_only_cpu_ms"] = _client_ceiling(url, level, n_features)
                capacity = args.capacity / args.latency
                result["server_capacity_per_s"] = capacity
                result["efficiency"] = result["explain"]["features_per_s"] / capacity
                result["client_only_efficiency"] = result["client_only_per_s"] / capacity
                results.append(result)
    _print(results, args)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
    return 0


def _concurrency_levels(args: argparse.Namespace) -> list[int]:
    text = args.concurrency or ("1,8,32" if args.llm else str(args.capacity))
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise UserError(f"--concurrency {text!r} is not a comma list of integers", "use e.g. --concurrency 1,8,32") from exc
    if not levels or min(levels) < 1:
        raise UserError(f"--concurrency {text!r}: levels must be >= 1", "use e.g. --concurrency 1,8,32")
    return levels


def _prepare_store(args: argparse.Namespace, path: Path, n_features: int) -> str:
    """A workspace to benchmark on: a copy of --db, or a synthetic run with a few dead features."""
    from autointerp.store import Store
    from autointerp.testing.synthetic import build_synthetic_store

    if args.db:
        source = Path(args.db)
        if not source.is_file():
            raise UserError(f"--db {source} does not exist", "give a workspace written by `autointerp collect`")
        shutil.copyfile(source, path)
        wal = source.with_name(source.name + ".wal")
        if wal.exists():
            shutil.copyfile(wal, path.with_name(path.name + ".wal"))
        with Store(path) as store:
            run = store.resolve_run(args.sae_name)
            store.delete_llm_results(run.run_id)  # the copy's labels and scores would be skipped as done
            return run.sae_name
    run = build_synthetic_store(path, n_features=n_features + 5, n_dead=5, n_contexts=max(1200, n_features * 2))
    return run.sae_name


class _test_server:
    """The test server in a child process (default) or a thread; yields its base URL."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.server: Any = None

    def __enter__(self) -> str:
        from autointerp.testing.testserver import FakeOpenAIServer

        if self.args.in_process_server:
            self.server = FakeOpenAIServer(latency_s=self.args.latency, capacity=self.args.capacity).start()
            return self.server.base_url
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autointerp.testing.testserver", "--port", str(port),
             "--latency", str(self.args.latency), "--capacity", str(self.args.capacity)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return f"http://127.0.0.1:{port}/v1"
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("the test server process did not start")

    def cpu_s(self) -> float:
        """CPU seconds the server process has used so far (Linux /proc; 0.0 for an in-process server or
        where /proc is missing, so the figure reads as unknown rather than failing the bench)."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.kill()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _client_ceiling(url: str, concurrency: int, n: int) -> tuple[float, float]:
    """Requests/s of the bare LLM client (same prompt size, no store, no prompt building).

    Returns (requests/s, CPU ms of this process per request). Separates the stage's own overhead from the client layer's: if this is also far below C/L, the
    bottleneck is the HTTP client (or this machine's CPU), not explain.
    """
    from autointerp.explain.schema import EXPLANATION_SCHEMA
    from autointerp.llm import make_client

    messages = [{"role": "system", "content": "s" * 400}, {"role": "user", "content": "u" * 1700}]

    async def go() -> tuple[float, float]:
        client = make_client(url, None, concurrency=concurrency)
        try:
            await client.check()
            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*[client.chat(messages, json_schema=EXPLANATION_SCHEMA, max_tokens=96)
                                   for _ in range(n)])
            return n / (time.perf_counter() - started), 1000 * (time.process_time() - cpu) / n
        finally:
            await client.aclose()

    return asyncio.run(go())


def _score_features() -> Any:
    try:
        from autointerp.score import ascore_features
    except ImportError as exc:
        raise UserError(
            "--stages simulation needs autointerp.score.ascore_features, which this install lacks",
            "run with --stages explain",
        ) from exc
    return ascore_features


def _bench_once(db: Path, sae_name: str, url: str, model: str | None, concurrency: int, n_features: int,
                stages: list[str], tokenizer: str | None = None, prefix_cache: bool | None = None,
                features_spec: str | None = None, prompt: str | None = None,
                weights: str | None = None) -> dict[str, Any]:
    from autointerp.explain.config import ExplainConfig
    from autointerp.explain.run import explain
    from autointerp.llm import make_client
    from autointerp.selection import parse_feature_spec
    from autointerp.store import Store

    result: dict[str, Any] = {"concurrency": concurrency, "url": url}
    with Store(db) as store:
        run = store.resolve_run(sae_name)
        live = store.explainable_feature_ids(run.run_id)
        features = parse_feature_spec(features_spec or f"top:{n_features}", store.features(run.run_id), live)
        client = make_client(url, model, concurrency=concurrency, tokenizer_spec=tokenizer, weights=weights)
        if prefix_cache is False:
            client.prefix_cache = None  # type: ignore[attr-defined]  # the local client's baseline
        result["prefix_cache"] = getattr(client, "prefix_cache", None) is not None

        async def go() -> None:
            try:
                await client.check()
                cpu = time.process_time()
                config = ExplainConfig() if prompt is None else ExplainConfig(prompt=prompt)
                summary = await explain(store, run, client, config, features, progress=False)
                cpu = time.process_time() - cpu
                result["explain"] = _figures(summary.n_attempted, summary.n_failed, summary.wall_s,
                                             summary.prompt_tokens, summary.completion_tokens)
                result["explain"]["cpu_ms_per_feature"] = 1000 * cpu / max(summary.n_attempted, 1)
                result["explain"]["quality"], result["explain"]["labels"] = _labels(store, summary, features)
                result["model"] = summary.model
                if "simulation" in stages:
                    result["simulation"] = await _bench_simulation(store, run, client, features)
                cache = getattr(client, "prefix_cache", None)
                if cache is not None:
                    result["prefix"] = {"computed_tokens": cache.stats.computed_tokens,
                                        "reused_tokens": cache.stats.reused_tokens}
                result["peak_rss_mb"] = _peak_rss_mb()
            finally:
                await client.aclose()

        asyncio.run(go())
    return result


def _labels(store: Any, summary: Any, features: list[int]) -> tuple[str, list[str]]:
    """The label-quality line of this explain pass and its labels (failures as their status), by feature."""
    quality, rows = summary.label_quality(store, features)
    labels = [f"{f}: {label!r}" if status == "ok" else f"{f}: [{status}]"
              for f, status, label in zip(rows["feature_id"], rows["status"], rows["explanation"], strict=True)]
    return quality, labels


async def _bench_simulation(store: Any, run: Any, client: Any, features: list[int]) -> dict[str, Any]:
    """Runs the simulation scorer on the fresh labels."""
    ascore_features = _score_features()
    started = time.perf_counter()
    summary = await ascore_features(store, run, client, ["simulation"], None, features, progress=False)
    wall = time.perf_counter() - started
    frame = store.scores(run.run_id, "simulation")
    n = len(frame)
    failed = int((~frame["status"].isin(["ok", "undefined"])).sum()) if n else 0
    return {**_figures(n, failed, wall, int(frame["prompt_tokens"].fillna(0).sum()),
                       int(frame["completion_tokens"].fillna(0).sum())), "summary": str(summary)}


def _peak_rss_mb() -> float:
    """This process's peak RSS so far (the embedded model lives here), in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _figures(n: int, failed: int, wall_s: float, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "features": n, "failed": failed, "wall_s": wall_s,
        "features_per_s": n / wall_s if wall_s > 0 else 0.0,
        "prompt_tokens_per_feature": prompt_tokens / max(n, 1),
        "completion_tokens_per_feature": completion_tokens / max(n, 1),
    }


def _print(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    for result in results:
        ex = result["explain"]
        head = f"concurrency {result['concurrency']:>3}: explain {ex['features']} features in {ex['wall_s']:.2f} s = " \
               f"{ex['features_per_s']:.1f} features/s ({ex['failed']} failed)"
        if "efficiency" in result:
            head += (f"; server capacity C/L = {args.capacity}/{args.latency:g} s = "
                     f"{result['server_capacity_per_s']:.1f}/s; efficiency {result['efficiency']:.3f} (goal >= 0.9)")
        print(head)
        if "client_only_per_s" in result:
            print(f"  bare LLM client, same number of requests: {result['client_only_per_s']:.1f} requests/s "
                  f"(efficiency {result['client_only_efficiency']:.3f}); explain reaches "
                  f"{ex['features_per_s'] / result['client_only_per_s']:.2f} of the bare client")
            print(f"  CPU of this process: explain {ex['cpu_ms_per_feature']:.1f} ms/feature, bare client "
                  f"{result['client_only_cpu_ms']:.1f} ms/request (one free core sustains "
                  f"{1000 / ex['cpu_ms_per_feature']:.0f} features/s; C/L needs <= {1000 / result['server_capacity_per_s']:.1f} ms)")
        print(f"  explain tokens per feature: {ex['prompt_tokens_per_feature']:.0f} prompt + "
              f"{ex['completion_tokens_per_feature']:.0f} completion; "
              f"{ex['wall_s'] / max(ex['features'], 1):.2f} s per feature")
        if "quality" in ex:
            print(f"  {ex['quality']}")
            if args.print_labels:
                for label in ex["labels"]:
                    print(f"    {label}")
        if "prefix_cache" in result and args.llm:
            line = f"  prefix cache {'on' if result['prefix_cache'] else 'off'}"
            if "prefix" in result:
                pre = result["prefix"]
                total = pre["computed_tokens"] + pre["reused_tokens"]
                line += (f": {pre['reused_tokens']} of {total} prompt tokens reused "
                         f"({100 * pre['reused_tokens'] / max(total, 1):.0f} %)")
            if "speedup_vs_no_prefix_cache" in result:
                line += f"; explain wall time off/on = {result['speedup_vs_no_prefix_cache']:.2f}x"
            print(line)
        if "peak_rss_mb" in result:
            print(f"  peak RSS so far: {result['peak_rss_mb']:.0f} MB")
        if "simulation" in result:
            sim = result["simulation"]
            print(f"  simulation: {sim['features']} features in {sim['wall_s']:.2f} s = "
                  f"{sim['wall_s'] / max(sim['features'], 1):.2f} s per feature; "
                  f"tokens per feature: {sim['prompt_tokens_per_feature']:.0f} prompt + "
                  f"{sim['completion_tokens_per_feature']:.0f} completion")
    if not args.llm:
        print("  (test-server token counts are len(text)/4 estimates; use --llm with a real server for real counts)")
