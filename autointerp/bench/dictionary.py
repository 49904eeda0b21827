"""`autointerp bench dictionary`: every stage on a whole synthetic dictionary, through the test server.

For each size (default 16,384 and 65,536 live features) it builds a synthetic store
(`autointerp.testing.synthetic.build_dictionary_store`), starts the test server in its own process
(`--latency L --capacity C`: it can take C / L requests/s) and runs each stage in a FRESH child
process, so the peak RSS and CPU printed are that stage's alone:

- explain (the LLM explainer), capped at `--stage-seconds`;
- labels for every feature imported (`import-labels`), so scoring sees the whole dictionary even when
  explain was capped;
- score (`--scorers`, default detection, fuzzing, simulation) over those labels, capped likewise;
- report and export of the whole dictionary.

Per stage: items, items/s, requests/s against the server's capacity (from the server's own counter),
CPU ms per item, peak RSS, and seconds to the first reply. Memory that does not grow with the
dictionary shows as the same peak RSS at both sizes; the ratio is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from autointerp.errors import UserError

#: The set name the imported labels are stored under (what score, report and export read).
LABEL_SOURCE = "bench-labels"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dictionary",
        help="every stage on a whole synthetic dictionary: items/s, requests/s vs capacity, CPU, peak RSS",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sizes", default="16384,65536", help="live features per dictionary, comma list")
    parser.add_argument("--latency", type=float, default=0.2, help="test server: seconds per request (L)")
    parser.add_argument(
        "--capacity", type=int, default=256, help="test server: requests in service at once (C)"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="client concurrency (default: C)")
    parser.add_argument(
        "--scorers", default="detection,fuzzing,simulation", help="scorers of the score stage"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer for the client (e.g. smollm2), so simulation reads prompt logprobs",
    )
    parser.add_argument(
        "--stage-seconds",
        type=float,
        default=60.0,
        help="explain and score stop after this long (what finished is counted)",
    )
    parser.add_argument("--stages", default="explain,import,score,report,export", help="stages to run")
    parser.add_argument(
        "--workdir", default=None, help="keep the stores here (default: a temporary directory)"
    )
    parser.add_argument("--json", dest="json_path", default=None, help="also write the figures as JSON here")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from autointerp.bench.llm import _test_server

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError as exc:
        raise UserError(
            f"--sizes {args.sizes!r} is not a comma list of integers", "use e.g. --sizes 16384,65536"
        ) from exc
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - {"explain", "import", "score", "report", "export"}
    if unknown or not sizes or min(sizes) < 1:
        raise UserError(
            f"--stages {args.stages!r} / --sizes {args.sizes!r}: unknown stage or empty size list",
            "use e.g. --stages explain,import,score,report,export --sizes 16384,65536",
        )
    args.in_process_server = False
    concurrency = args.concurrency or args.capacity
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="autointerp-dict-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for size in sizes:
            db = workdir / f"dictionary-{size}.duckdb"
            started = time.perf_counter()
            sae_name = f"dictionary-{size}"
            # Built in a child: Linux carries a process's peak RSS over fork + exec, so a parent that built
            # the store itself would hand its own peak to every stage child's ru_maxrss.
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from autointerp.testing.synthetic import build_dictionary_store; "
                    "build_dictionary_store(sys.argv[1], int(sys.argv[2]), sae_name=sys.argv[3])",
                    str(db),
                    str(size),
                    sae_name,
                ],
                check=True,
            )
            result: dict[str, Any] = {"size": size, "build_s": time.perf_counter() - started, "stages": {}}
            server = _test_server(args)
            with server as url:
                for stage in stages:
                    before, server_cpu = _server_requests(url), server.cpu_s()
                    figures = _run_stage(stage, db, sae_name, url, concurrency, args, workdir, size)
                    figures["requests"] = _server_requests(url) - before
                    figures["server_cpu_s"] = server.cpu_s() - server_cpu
                    result["stages"][stage] = _rates(figures, args.capacity / args.latency)
                    print(_line(size, stage, result["stages"][stage]), flush=True)
            results.append(result)
    _print_flatness(results)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
    return 0


def _server_requests(url: str) -> int:
    """Requests the test server has answered so far (its /metrics counter)."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    match = re.search(r"^autointerp_testserver_requests_total (\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _run_stage(
    stage: str,
    db: Path,
    sae_name: str,
    url: str,
    concurrency: int,
    args: argparse.Namespace,
    workdir: Path,
    size: int,
) -> dict[str, Any]:
    """One stage in a fresh child; its peak RSS and CPU come from the kernel (wait4), its items from the child."""
    cli = [sys.executable, "-m", "autointerp"]
    if stage in ("explain", "score"):
        command = [
            sys.executable,
            "-m",
            "autointerp.bench.dictionary",
            stage,
            str(db),
            sae_name,
            url,
            str(concurrency),
            str(args.stage_seconds),
            args.scorers,
            args.tokenizer or "",
        ]
    elif stage == "import":
        labels = workdir / f"labels-{size}.csv"
        labels.write_text(
            "feature_id,label\n" + "".join(f"{f},fires on the word f{f}\n" for f in range(size))
        )
        command = [
            *cli,
            "import-labels",
            "--db",
            str(db),
            "--sae-name",
            sae_name,
            "--file",
            str(labels),
            "--source",
            LABEL_SOURCE,
        ]
    elif stage == "report":
        command = [
            *cli,
            "report",
            "--db",
            str(db),
            "--sae-name",
            sae_name,
            "--out",
            str(workdir / f"report-{size}.html"),
            "--source",
            LABEL_SOURCE,
        ]
    else:
        command = [
            *cli,
            "export",
            "--db",
            str(db),
            "--sae-name",
            sae_name,
            "--out",
            str(workdir / f"export-{size}.parquet"),
            "--source",
            LABEL_SOURCE,
        ]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    code = os.waitstatus_to_exitcode(status)
    figures: dict[str, Any] = {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "exit_code": code,
    }
    if stage in ("explain", "score"):
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"the {stage} child gave no figures (exit {code}): {err[-2000:]}")
        figures.update(json.loads(lines[-1]))
    else:
        if code != 0:
            raise RuntimeError(f"{stage} failed (exit {code}): {err[-2000:]}")
        figures["items"] = size
        figures["stage_wall_s"] = wall
    return figures


def _rates(f: dict[str, Any], capacity_per_s: float) -> dict[str, Any]:
    wall = f["stage_wall_s"]
    items = max(int(f["items"]), 0)
    f["items_per_s"] = items / wall if wall > 0 else 0.0
    f["requests_per_s"] = f["requests"] / wall if wall > 0 else 0.0
    f["capacity_per_s"] = capacity_per_s
    f["cpu_ms_per_item"] = 1000 * f["cpu_s"] / items if items else None
    # The server shares these cores: when its CPU per request is large, it (not the stage) is the limit.
    server_cpu = f.get("server_cpu_s")  # None: an in-process server (its CPU is the stage's)
    f["server_cpu_ms_per_request"] = 1000 * server_cpu / f["requests"] if f["requests"] and server_cpu else None
    f["client_cpu_ms_per_request"] = 1000 * f["cpu_s"] / f["requests"] if f["requests"] else None
    return f


def _line(size: int, stage: str, f: dict[str, Any]) -> str:
    cpu = "n/a" if f["cpu_ms_per_item"] is None else f"{f['cpu_ms_per_item']:.2f}"
    first = f.get("first_reply_s")
    first_text = "" if first is None else f", first reply {first:.2f} s"
    capped = " (capped)" if f.get("capped") else ""
    server = f.get("server_cpu_ms_per_request")
    requests = (
        f", {f['requests_per_s']:.0f} req/s of {f['capacity_per_s']:.0f} (CPU per request: client "
        f"{f['client_cpu_ms_per_request']:.2f} ms, server {'n/a' if server is None else f'{server:.2f} ms'})"
        if f["requests"]
        else ""
    )
    return (
        f"{size:>6} {stage:<8} {f['items']:>7} items in {f['stage_wall_s']:.1f} s{capped}: "
        f"{f['items_per_s']:.1f} items/s{requests}, CPU {cpu} ms/item, peak RSS {f['peak_rss_mb']:.0f} MB"
        f"{first_text}"
    )


def _print_flatness(results: list[dict[str, Any]]) -> None:
    for result in results:  # the target: score keeps the server at least as busy as explain does
        stages = result["stages"]
        if "explain" in stages and "score" in stages and stages["explain"]["requests_per_s"] > 0:
            ratio = stages["score"]["requests_per_s"] / stages["explain"]["requests_per_s"]
            print(f"{result['size']:>6} score / explain requests/s = {ratio:.2f}")
    if len(results) < 2:
        return
    small, large = results[0], results[-1]
    print(f"peak RSS, {large['size']} vs {small['size']} features (1.00 = flat):")
    for stage, f in large["stages"].items():
        if stage in small["stages"]:
            ratio = f["peak_rss_mb"] / max(small["stages"][stage]["peak_rss_mb"], 1e-9)
            print(
                f"  {stage:<8} {small['stages'][stage]['peak_rss_mb']:.0f} MB -> {f['peak_rss_mb']:.0f} MB = {ratio:.2f}x"
            )


# ---------------------------------------------------------------------- the child (one LLM stage)


def _child(argv: list[str]) -> int:
    """`python -m autointerp.bench.dictionary STAGE DB SAE URL CONCURRENCY SECONDS SCORERS TOKENIZER`: run
    explain or score for at most SECONDS and print one JSON line of figures."""
    stage, db, sae_name, url, concurrency, seconds, scorers, tokenizer = argv
    from autointerp.llm import make_client
    from autointerp.store import Store

    first: list[float] = []
    started = time.perf_counter()

    def timed(method: Any) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await method(*args, **kwargs)
            if not first:
                first.append(time.perf_counter() - started)
            return result

        return call

    async def go(store: Store) -> tuple[int, bool]:
        client = make_client(url, None, concurrency=int(concurrency), tokenizer_spec=tokenizer or None)
        client.chat = timed(client.chat)  # type: ignore[method-assign]
        client.prompt_logprobs = timed(client.prompt_logprobs)  # type: ignore[method-assign]
        run = store.resolve_run(sae_name)
        try:
            await client.check()
            if stage == "explain":
                from autointerp.explain import explain

                work = explain(store, run, client, progress=False)
            else:
                from autointerp.score import ScoreConfig, ascore_features

                work = ascore_features(
                    store,
                    run,
                    client,
                    scorers.split(","),
                    ScoreConfig(explainer_model=LABEL_SOURCE),
                    progress=False,
                )
            try:
                await asyncio.wait_for(work, timeout=float(seconds))
                return run.run_id, False
            except TimeoutError:
                return run.run_id, True
        finally:
            await client.aclose()

    with Store(db) as store:
        before = store.row_counts()
        run_id, capped = asyncio.run(go(store))
        wall = time.perf_counter() - started
        after = store.row_counts()
    table = "explanations" if stage == "explain" else "scores"
    print(
        json.dumps(
            {
                "items": after[table] - before[table],
                "stage_wall_s": wall,
                "capped": capped,
                "first_reply_s": first[0] if first else None,
                "run_id": run_id,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
