"""Collect vs delphi's `LatentCache`: same SAE, same tokens, same machine, one run prints the ratio.

Run it with a Python that has delphi (not a dependency of this package, and not run in CI):

    python3 -m venv --system-site-packages /work/venvs/delphi
    /work/venvs/delphi/bin/pip install --no-deps eai-delphi eai-sparsify   # + the few imports it needs
    PYTHONPATH=. /work/venvs/delphi/bin/python -m autointerp.bench.delphi_compare --ctx-len 256

Both get SmolLM2 (bf16), hook layers.15, one random sparsify-format TopK SAE (576 -> 16,384, k = 32)
written to disk once, and the wiki tokens of our context stream: delphi as those tokens concatenated
(documents joined by EOS) in rows of ctx_len, which is how delphi is fed pre-tokenised data; collect as
its own contexts. delphi: `LatentCache.run` + statistics + `save_splits`; collect: the whole `run_collect`
(both passes and every DuckDB write). Each side runs in its own child process, so each peak RSS is its
own; `--repeats N` alternates them N times (delphi, collect, delphi, ...) and reports medians, so the
ratio holds up under other load on the machine. Timing starts after the model is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

_MISSING = (
    "delphi_compare: delphi is not importable here ({exc}); fix: run it with a Python that has "
    "`pip install --no-deps eai-delphi eai-sparsify` and its few imports (see this module's docstring)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autointerp.bench.delphi_compare")
    parser.add_argument("--ctx-len", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--batch-tokens", type=int, default=4096, help="tokens per batch for both")
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="alternate delphi and collect this many times")
    parser.add_argument("--child", choices=["delphi", "collect"], help=argparse.SUPPRESS)
    parser.add_argument("--sae-dir", help=argparse.SUPPRESS)
    return parser


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(args: argparse.Namespace) -> dict[str, float]:
    """One side, in this process, after loading the model: its wall seconds, tokens and peak RSS."""
    import torch

    from autointerp.kernel_cache import COLLECT_KERNEL_CACHE_ENTRIES, bound_kernel_caches
    from autointerp.models import load_model

    if args.child == "collect":
        # as `autointerp collect` does, before this process's first matmul
        bound_kernel_caches(COLLECT_KERNEL_CACHE_ENTRIES)
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2", device="cpu", dtype="bfloat16")
    batch_size = max(1, args.batch_tokens // args.ctx_len)
    sae_dir = Path(args.sae_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if args.child == "delphi":
            from delphi.latents import LatentCache
            from delphi.sparse_coders.load_sparsify import resolve_path, sae_dense_latents
            from sparsify import SparseCoder

            from autointerp.corpus import ContextStream, CorpusSpec

            coder = SparseCoder.load_from_disk(sae_dir).to(torch.bfloat16).eval()
            contexts = list(
                ContextStream(CorpusSpec("wiki", ctx_len=args.ctx_len, max_tokens=args.tokens), lm.tokenizer)
            )
            flat: list[int] = []
            for previous, context in zip([None, *contexts], contexts, strict=False):
                if previous is not None and previous.doc_id != context.doc_id:
                    flat.append(lm.tokenizer.eos_token_id)
                flat.extend(context.token_ids)
            rows = len(flat) // args.ctx_len
            tokens = torch.tensor(flat[: rows * args.ctx_len]).view(rows, args.ctx_len)
            path = ".".join(resolve_path(lm.model, "layers.15".split(".")) or ["model", "layers", "15"])
            start = time.perf_counter()
            cache = LatentCache(
                lm.model, {path: partial(sae_dense_latents, sae=coder)}, batch_size=batch_size
            )
            cache.run(rows * args.ctx_len, tokens)
            cache.generate_statistics_cache()
            cache.save_splits(n_splits=5, save_dir=Path(tmp) / "delphi")
            seconds = time.perf_counter() - start
            return {
                "wall_s": seconds,
                "tokens": rows * args.ctx_len,
                "rss_mb": _peak_rss_mb(),
                "batch": batch_size,
            }
        from autointerp.collect import CollectConfig, run_collect
        from autointerp.store import Store

        start = time.perf_counter()
        config = CollectConfig(
            model="smollm2",
            hook="layers.15",
            sae=str(sae_dir),
            corpus="wiki",
            tokens=args.tokens,
            ctx_len=args.ctx_len,
            dtype="bfloat16",
            batch_size=batch_size,
            threads=args.threads,
            progress=False,
        )
        with Store(Path(tmp) / "run.duckdb") as store:
            summary = run_collect(config, store, lm=lm).summary
        seconds = time.perf_counter() - start
        return {
            "wall_s": seconds,
            "tokens": summary.n_tokens,
            "rss_mb": _peak_rss_mb(),
            "batch": batch_size,
            "pass1_s": summary.pass1_seconds,
            "pass2_s": summary.pass2_seconds,
        }


def _run_side(args: argparse.Namespace, side: str, sae_dir: Path) -> dict[str, float]:
    command = [
        sys.executable,
        "-m",
        "autointerp.bench.delphi_compare",
        "--child",
        side,
        "--sae-dir",
        str(sae_dir),
        "--ctx-len",
        str(args.ctx_len),
        "--tokens",
        str(args.tokens),
        "--batch-tokens",
        str(args.batch_tokens),
        "--d-sae",
        str(args.d_sae),
        "--k",
        str(args.k),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import delphi.latents  # noqa: F401
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError as exc:
        print(_MISSING.format(exc=exc), file=sys.stderr)
        return 2
    if args.child:
        print(json.dumps(_child(args)))
        return 0
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        sae_dir = Path(tmp) / "sae"
        torch.manual_seed(0)
        SparseCoder(576, SparseCoderConfig(num_latents=args.d_sae, k=args.k)).save_to_disk(sae_dir)
        load = os.getloadavg()
        runs: dict[str, list[dict[str, float]]] = {"delphi": [], "collect": []}
        for _ in range(args.repeats):
            for side in runs:
                runs[side].append(_run_side(args, side, sae_dir))
    delphi_s = statistics.median(r["wall_s"] for r in runs["delphi"])
    ours_s = statistics.median(r["wall_s"] for r in runs["collect"])
    ours = min(runs["collect"], key=lambda r: abs(r["wall_s"] - ours_s))
    batch = int(runs["delphi"][0]["batch"])
    print(
        f"ctx {args.ctx_len} x batch {batch}, {args.tokens:,} tokens, {args.threads} threads, d_sae {args.d_sae} "
        f"k {args.k}, {args.repeats} alternating repeats (medians), load before {load[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f}"
    )
    delphi_tokens = runs["delphi"][0]["tokens"]
    print(
        f"delphi LatentCache.run + statistics + save_splits: {delphi_s:.1f} s ({delphi_tokens / delphi_s:,.0f} tok/s), "
        f"peak RSS {max(r['rss_mb'] for r in runs['delphi']):,.0f} MB"
    )
    print(
        f"autointerp collect: {ours_s:.1f} s ({ours['tokens'] / ours_s:,.0f} tok/s; pass 1 {ours['pass1_s']:.1f} s, "
        f"pass 2 + writes {ours['wall_s'] - ours['pass1_s']:.1f} s = {1 - ours['pass1_s'] / ours['wall_s']:.1%}), "
        f"peak RSS {max(r['rss_mb'] for r in runs['collect']):,.0f} MB"
    )
    print(
        f"all runs, wall s: delphi {[round(r['wall_s'], 1) for r in runs['delphi']]}, "
        f"collect {[round(r['wall_s'], 1) for r in runs['collect']]}"
    )
    print(f"delphi / collect wall time: {delphi_s / ours_s:.2f}x  (goal >= 2.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
