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
Goals (issue 2): ratio <= 1.15; peak RSS growth between the two sizes <= 10 %.
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

RATIO_GOAL = 1.15
RSS_GROWTH_GOAL = 0.10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("collect", help="collect time / bare forward time, and peak RSS, at two sizes")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--hook", default="layers.15")
    parser.add_argument("--d-sae", type=int, default=16384, help="latents of the random TopK SAE")
    parser.add_argument("--k", type=int, default=32, help="TopK k of the random SAE")
    parser.add_argument("--sizes", default="50000,200000", help="comma-separated corpus sizes in tokens")
    parser.add_argument("--batch-size", type=int, default=32)
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


def run_child(args: argparse.Namespace) -> dict[str, float]:
    """One size, in this process: returns the measurements."""
    import resource

    import torch

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
        )
        with Store(Path(tmp) / "bench.duckdb") as store, RssSampler() as sampler:
            outcome = run_collect(config, store, lm=lm, sae=sae, measure_baseline=True, on_phase=sampler.mark)
        db_bytes = (Path(tmp) / "bench.duckdb").stat().st_size
    timing = outcome.pass1
    assert timing is not None
    from autointerp.models import parse_hook

    floor = encoder_floor(lm, parse_hook(args.hook, lm.n_layers), sae, args.batch_size)
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


def _handle(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results = []
    for size in sizes:
        command = [sys.executable, "-m", "autointerp.bench.collect", "--child", "--tokens", str(size),
                   "--model", args.model, "--hook", args.hook, "--d-sae", str(args.d_sae), "--k", str(args.k),
                   "--batch-size", str(args.batch_size), "--device", args.device, "--dtype", args.dtype]
        print(f"collect benchmark: {size:,} tokens ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return done.returncode
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["wall_s"] = time.perf_counter() - started
        results.append(result)
    print(f"model {args.model} {args.hook}, random TopK SAE d_sae={args.d_sae} k={args.k}, "
          f"batch {args.batch_size} x 64 tokens, {args.device} {args.dtype}, {results[0]['threads']} threads")
    header = (f"{'tokens':>8} {'bare fwd s':>10} {'pass1 s':>8} {'pass1/fwd':>9} {'enc floor':>9} {'pass2 s':>8} "
              f"{'collect s':>9} {'total/fwd':>9} {'RSS loaded':>10} {'RSS pass1':>9} {'RSS pass2':>9} "
              f"{'examples':>9} {'db MB':>6}")
    print(header)
    for r in results:
        print(f"{r['tokens']:>8,} {r['baseline_s']:>10.1f} {r['pass1_s']:>8.1f} {r['pass1_ratio']:>9.3f} "
              f"{r['encoder_floor']:>9.3f} {r['pass2_s']:>8.1f} {r['collect_s']:>9.1f} {r['total_ratio']:>9.3f} "
              f"{r['rss_loaded_mb']:>8.0f}MB {r['rss_pass1_peak_mb']:>7.0f}MB {r['rss_pass2_peak_mb']:>7.0f}MB "
              f"{r['examples']:>9,} {r['db_mb']:>6.0f}")
    print("enc floor = 1 + SAE encoder matmul / bare forward on one batch: what encoding alone costs")
    worst_pass1 = max(r["pass1_ratio"] for r in results)
    print(f"pass-1 ratio (collect step / bare forward): worst {worst_pass1:.3f}  goal <= {RATIO_GOAL}  "
          f"{'OK' if worst_pass1 <= RATIO_GOAL else 'MISSED'}")
    worst_total = max(r["total_ratio"] for r in results)
    print(f"total ratio (whole collect incl. pass 2 and writes / bare forward): worst {worst_total:.3f}  "
          f"goal <= {RATIO_GOAL}  {'OK' if worst_total <= RATIO_GOAL else 'MISSED'}")
    if len(results) >= 2:
        for key, label in (("rss_collect_peak_mb", "peak RSS"), ("rss_pass1_peak_mb", "pass-1 peak RSS")):
            growth = results[-1][key] / results[0][key] - 1
            print(f"{label} growth {results[0]['tokens']:,} -> {results[-1]['tokens']:,} tokens: {growth:+.1%}  "
                  f"goal <= {RSS_GROWTH_GOAL:.0%}  {'OK' if growth <= RSS_GROWTH_GOAL else 'MISSED'}")
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
    args = parser.parse_args(argv)
    print(json.dumps(run_child(args), default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
