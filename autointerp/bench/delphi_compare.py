"""Collect vs delphi's `LatentCache`, one after the other in one process, same SAE and same tokens.

Run it with a Python that has delphi (not a dependency of this package, and not run in CI):

    python3 -m venv --system-site-packages /work/venvs/delphi
    /work/venvs/delphi/bin/pip install --no-deps eai-delphi eai-sparsify   # + the few imports it needs
    PYTHONPATH=. /work/venvs/delphi/bin/python -m autointerp.bench.delphi_compare --ctx-len 256

Both get SmolLM2 (bf16), hook layers.15, one random sparsify-format TopK SAE (576 -> 16,384, k = 32)
written to disk once, and the wiki tokens of our context stream: delphi as those tokens concatenated
(documents joined by EOS) in rows of ctx_len, which is how delphi is fed pre-tokenised data; collect as
its own contexts. delphi: `LatentCache.run` + statistics + `save_splits`; collect: the whole `run_collect`
(both passes and every DuckDB write). Printed: wall seconds of each and delphi / collect.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autointerp.bench.delphi_compare")
    parser.add_argument("--ctx-len", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--batch-tokens", type=int, default=4096, help="tokens per batch for both")
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        from delphi.latents import LatentCache
        from delphi.sparse_coders.load_sparsify import resolve_path, sae_dense_latents
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError as exc:
        print(
            f"delphi_compare: delphi is not importable here ({exc}); fix: run it with a Python that has "
            "`pip install --no-deps eai-delphi eai-sparsify` and its few imports (see this module's docstring)",
            file=sys.stderr,
        )
        return 2
    import torch

    from autointerp.collect import CollectConfig, run_collect
    from autointerp.corpus import ContextStream, CorpusSpec
    from autointerp.models import load_model
    from autointerp.store import Store

    torch.set_num_threads(args.threads)
    lm = load_model("smollm2", device="cpu", dtype="bfloat16")
    batch_size = max(1, args.batch_tokens // args.ctx_len)
    with tempfile.TemporaryDirectory() as tmp:
        sae_dir = Path(tmp) / "sae"
        torch.manual_seed(0)
        coder = SparseCoder(lm.hidden_size, SparseCoderConfig(num_latents=args.d_sae, k=args.k))
        coder.save_to_disk(sae_dir)
        coder = coder.to(torch.bfloat16).eval()
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
        load = os.getloadavg()

        path = ".".join(resolve_path(lm.model, "layers.15".split(".")) or ["model", "layers", "15"])
        start = time.perf_counter()
        cache = LatentCache(lm.model, {path: partial(sae_dense_latents, sae=coder)}, batch_size=batch_size)
        cache.run(rows * args.ctx_len, tokens)
        cache.generate_statistics_cache()
        cache.save_splits(n_splits=5, save_dir=Path(tmp) / "delphi")
        delphi_s = time.perf_counter() - start

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
            outcome = run_collect(config, store, lm=lm)
        ours_s = time.perf_counter() - start
    summary = outcome.summary
    print(
        f"ctx {args.ctx_len} x batch {batch_size}, {args.tokens:,} tokens, {args.threads} threads, "
        f"d_sae {args.d_sae} k {args.k}, load before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    print(
        f"delphi LatentCache.run + statistics + save_splits: {delphi_s:.1f} s ({rows * args.ctx_len / delphi_s:,.0f} tok/s)"
    )
    print(
        f"autointerp collect: {ours_s:.1f} s ({summary.n_tokens / ours_s:,.0f} tok/s; pass 1 "
        f"{summary.pass1_seconds:.1f} s, pass 2 {summary.pass2_seconds:.1f} s)"
    )
    print(f"delphi / collect wall time: {delphi_s / ours_s:.2f}x  (goal >= 2.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
