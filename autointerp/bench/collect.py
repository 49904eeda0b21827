"""`autointerp bench collect`: collect overhead over a bare forward pass, and memory flatness.

For each corpus size a fresh subprocess (so its peak RSS is its own) loads the model, builds a random
TopK SAE of the model's width (16,384 latents by default), and runs the real `run_collect` on that
many wiki tokens with `measure_baseline`: before every pass-1 batch the same batch also goes through a
bare forward to the hook, timed separately. Interleaving makes the ratio robust to other load on the
machine. Reported per size:
  pass-1 ratio = (forward + SAE + selection updates) / bare forward, on the same batches;
  total ratio  = whole collect (tokenising, pass 1, pass 2, DuckDB writes) / bare forward;
  peak RSS sampled while collect runs, in pass 1 and in pass 2 (the model is loaded before);
  the encoder floor: 1 + SAE encoder matmul time / bare forward time on one batch.
Goals: padding <= 5 %, pass 2 share <= 10 %, peak RSS growth between the two sizes <= 10 % (issues 2, 12).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RSS_GROWTH_GOAL = 0.10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("collect", help="collect time / bare forward time, and peak RSS, at two sizes")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--hook", default="layers.15")
    parser.add_argument("--d-sae", type=int, default=16384, help="latents of the random TopK SAE")
    parser.add_argument("--k", type=int, default=32, help="TopK k of the random SAE")
    parser.add_argument("--sizes", default="50000,200000", help="comma-separated corpus sizes in tokens")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="contexts per batch at ctx 64; every ctx length gets batch-size x 64 tokens per batch")
    parser.add_argument("--ctx-lens", default="64,256", help="comma-separated context lengths")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (default all cores); a 1-thread run at the first size gives the scaling")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.set_defaults(func=_handle)


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak resident memory sampled every 50 ms in a background thread, per named phase."""

    def __init__(self) -> None:
        self.phase = "setup"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def mark(self, phase: str) -> None:
        self._sample()
        self.phase = phase

    def _sample(self) -> None:
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), _current_rss_bytes())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.05)

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def encoder_floor(lm, point, sae, batch_size: int, ctx_len: int = 64, repeats: int = 3) -> float:
    """1 + (SAE encoder matmul time / bare forward time) on one full batch, measured back to back: the
    ratio a collect that did nothing but encode would reach (the encoder is ~18 % of the forward FLOPs
    of SmolLM2-135M to layer 15 for 16k latents)."""
    import torch

    from autointerp.models import activations_at_hook

    ids = torch.randint(100, 10000, (batch_size, ctx_len), generator=torch.Generator().manual_seed(0))
    forward = encode = 0.0
    with torch.inference_mode():
        hidden = activations_at_hook(lm, point, ids)
        for _ in range(repeats):
            start = time.perf_counter()
            hidden = activations_at_hook(lm, point, ids)
            middle = time.perf_counter()
            sae.pre_acts(hidden.reshape(-1, hidden.shape[-1]))
            end = time.perf_counter()
            forward += middle - start
            encode += end - middle
    return 1 + encode / forward


def unpadded_forward_seconds(lm, point, config, batch_size: int) -> float:
    """A bare forward over exactly collect's real tokens, no padding: its contexts concatenated into
    rows of ctx_len (the denominator the issue asks for: what the tokens cost with zero waste)."""
    import torch

    from autointerp.corpus import ContextStream
    from autointerp.models import activations_at_hook

    flat = [t for c in ContextStream(config.corpus_spec(), lm.tokenizer) for t in c.token_ids]
    width = config.ctx_len
    seconds = 0.0
    with torch.inference_mode():
        for first in range(0, len(flat), width * batch_size):
            chunk = flat[first : first + width * batch_size]
            rows = [chunk[i : i + width] for i in range(0, len(chunk), width)]
            full = torch.tensor([r for r in rows if len(r) == width]) if len(rows[0]) == width else None
            start = time.perf_counter()
            if full is not None and len(full):
                activations_at_hook(lm, point, full)
            if len(rows[-1]) != width:
                activations_at_hook(lm, point, torch.tensor([rows[-1]]))
            seconds += time.perf_counter() - start
    return seconds


def run_child(args: argparse.Namespace) -> dict[str, float]:
    """One size, in this process: returns the measurements."""
    import resource

    from autointerp.kernel_cache import COLLECT_KERNEL_CACHE_ENTRIES, bound_kernel_caches

    # this child only collects, as `autointerp collect` does; before its first matmul
    bound_kernel_caches(COLLECT_KERNEL_CACHE_ENTRIES)
    import torch

    torch.set_num_threads(args.threads)
    from autointerp.collect import CollectConfig, run_collect
    from autointerp.models import load_model
    from autointerp.sae.base import SAE, SAEConfig
    from autointerp.store import Store

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    generator = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(architecture="topk", d_in=lm.hidden_size, d_sae=args.d_sae, k=args.k))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(lm.hidden_size, args.d_sae, generator=generator) / lm.hidden_size**0.5)
        sae.W_dec.copy_(sae.W_enc.T)
    sae = sae.to(device=lm.device, dtype=lm.dtype).eval().requires_grad_(False)
    rss_loaded = _current_rss_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        config = CollectConfig(
            model=args.model, hook=args.hook, sae=f"random-topk-{args.d_sae}", corpus="wiki", tokens=args.tokens,
            device=args.device, dtype=args.dtype, batch_size=args.batch_size, progress=False,
            ctx_len=args.ctx_len, threads=args.threads,
        )
        with Store(Path(tmp) / "bench.duckdb") as store, RssSampler() as sampler:
            outcome = run_collect(config, store, lm=lm, sae=sae, measure_baseline=True, on_phase=sampler.mark)
        db_bytes = (Path(tmp) / "bench.duckdb").stat().st_size
    timing = outcome.pass1
    assert timing is not None
    from autointerp.models import parse_hook

    point = parse_hook(args.hook, lm.n_layers)
    floor = encoder_floor(lm, point, sae, args.batch_size, args.ctx_len)
    unpadded_s = unpadded_forward_seconds(lm, point, config, args.batch_size)
    summary = outcome.summary
    collect_seconds = summary.seconds - timing.baseline_seconds
    return {
        "tokens": summary.n_tokens,
        "baseline_s": timing.baseline_seconds,
        "pass1_s": timing.step_seconds,
        "pass2_s": summary.pass2_seconds,
        "collect_s": collect_seconds,
        "pass1_ratio": timing.step_seconds / timing.baseline_seconds,
        "total_ratio": collect_seconds / timing.baseline_seconds,
        "unpadded_fwd_s": unpadded_s,
        "unpadded_ratio": collect_seconds / unpadded_s,
        "padding": timing.padding_fraction,
        "pass2_share": summary.pass2_seconds / collect_seconds,
        "ctx_len": args.ctx_len,
        "tokens_per_s": summary.n_tokens / collect_seconds,
        "rss_loaded_mb": rss_loaded / 2**20,
        "rss_collect_peak_mb": sampler.peak / 2**20,
        "rss_pass1_peak_mb": sampler.peaks.get("pass1", 0) / 2**20,
        "rss_pass2_peak_mb": sampler.peaks.get("pass2", 0) / 2**20,
        "encoder_floor": floor,
        "rss_process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "examples": summary.n_examples,
        "alive": summary.alive,
        "db_mb": db_bytes / 2**20,
        "threads": torch.get_num_threads(),
    }


def _child(args: argparse.Namespace, size: int, ctx_len: int, threads: int) -> dict | None:
    batch_size = max(1, args.batch_size * 64 // ctx_len)  # the same tokens per batch at every ctx_len
    command = [sys.executable, "-m", "autointerp.bench.collect", "--child", "--tokens", str(size),
               "--model", args.model, "--hook", args.hook, "--d-sae", str(args.d_sae), "--k", str(args.k),
               "--batch-size", str(batch_size), "--device", args.device, "--dtype", args.dtype,
               "--ctx-len", str(ctx_len), "--threads", str(threads)]
    print(f"collect benchmark: {size:,} tokens, ctx {ctx_len}, {threads} threads ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        return None
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    result["batch_size"] = batch_size
    return result


def _handle(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    ctx_lens = [int(s) for s in args.ctx_lens.split(",") if s.strip()]
    results = []
    for ctx_len in ctx_lens:
        for size in sizes:
            result = _child(args, size, ctx_len, args.threads)
            if result is None:
                return 1
            results.append(result)
    scaling = []
    if args.threads > 1:
        for ctx_len in ctx_lens:
            one = _child(args, sizes[0], ctx_len, 1)
            if one is None:
                return 1
            many = next(r for r in results if r["ctx_len"] == ctx_len and r["tokens"] == one["tokens"])
            scaling.append((ctx_len, one, many))
    print(f"model {args.model} {args.hook}, random TopK SAE d_sae={args.d_sae} k={args.k}, "
          f"{args.batch_size * 64} tokens per batch, {args.device} {args.dtype}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    header = (f"{'ctx':>5} {'tokens':>8} {'padding':>7} {'fwd s':>6} {'pass1 s':>7} {'pass1/fwd':>9} {'enc floor':>9} "
              f"{'pass2 s':>7} {'p2 share':>8} {'collect s':>9} {'/padded fwd':>11} {'/unpadded fwd':>13} "
              f"{'RSS pass1':>9} {'RSS peak':>8} {'examples':>9}")
    print(header)
    for r in results:
        print(f"{r['ctx_len']:>5} {r['tokens']:>8,} {r['padding']:>7.1%} {r['baseline_s']:>6.1f} {r['pass1_s']:>7.1f} "
              f"{r['pass1_ratio']:>9.3f} {r['encoder_floor']:>9.3f} {r['pass2_s']:>7.1f} {r['pass2_share']:>8.1%} "
              f"{r['collect_s']:>9.1f} {r['total_ratio']:>11.3f} {r['unpadded_ratio']:>13.3f} "
              f"{r['rss_pass1_peak_mb']:>7.0f}MB {r['rss_collect_peak_mb']:>6.0f}MB {r['examples']:>9,}")
    print("fwd = bare forward on the same padded batches, interleaved per batch; unpadded fwd = bare forward on "
          "the same real tokens packed with no padding; enc floor = 1 + SAE encoder matmul / bare forward")
    for ctx_len in ctx_lens:
        rows = [r for r in results if r["ctx_len"] == ctx_len]
        worst_pad = max(r["padding"] for r in rows)
        worst_p2 = max(r["pass2_share"] for r in rows)
        print(f"ctx {ctx_len}: padding worst {worst_pad:.1%} (goal <= 5%)  pass 2 share worst {worst_p2:.1%} "
              f"(goal <= 10%)")
        if len(rows) >= 2:
            small, large = rows[0], rows[-1]
            slope = (large["rss_collect_peak_mb"] - small["rss_collect_peak_mb"]) / (large["tokens"] - small["tokens"])
            growth = large["rss_collect_peak_mb"] / small["rss_collect_peak_mb"] - 1
            print(f"ctx {ctx_len}: peak RSS {small['tokens']:,} -> {large['tokens']:,} tokens: {growth:+.1%}, "
                  f"slope {slope * 1e6:.1f} MB per million tokens  goal growth <= {RSS_GROWTH_GOAL:.0%}  "
                  f"{'OK' if growth <= RSS_GROWTH_GOAL else 'MISSED'}")
    for ctx_len, one, many in scaling:
        print(f"ctx {ctx_len}: threads 1 -> {many['threads']}: {one['tokens_per_s']:,.0f} -> "
              f"{many['tokens_per_s']:,.0f} tokens/s ({many['tokens_per_s'] / one['tokens_per_s']:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autointerp.bench.collect")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, default=50000)
    for name, default in (("--model", "smollm2"), ("--hook", "layers.15"), ("--device", "cpu"), ("--dtype", "float32")):
        parser.add_argument(name, default=default)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ctx-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    print(json.dumps(run_child(args), default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
