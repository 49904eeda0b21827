"""`autointerp collect`: run a base LM + SAE over a corpus and store per-feature examples and stats.

A thin wrapper over `autointerp.collect.run_collect`; see that package for what is stored and why.
Under torchrun, pass `--distributed` (or use `python -m autointerp.collect.distributed`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_collect_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `collect` (shared with `python -m autointerp.collect.distributed`)."""
    parser.add_argument("--model", required=True, help="HF model dir, .gguf file, or built-in name (smollm2)")
    parser.add_argument("--hook", required=True, help="hook point, e.g. layers.15 (residual after layer 15)")
    parser.add_argument("--sae", required=True, help="SAE directory (SAELens or sparsify format)")
    parser.add_argument("--corpus", default="wiki",
                        help="'wiki' (built in), a .txt/.jsonl/.parquet file, or a directory of them (default wiki)")
    parser.add_argument("--db", required=True, help="workspace DuckDB file, e.g. run.duckdb")
    parser.add_argument("--sae-name", help="name of this SAE in the workspace (default: the SAE directory name)")
    parser.add_argument("--tokens", type=int, help="read at most this many corpus tokens (default: all)")
    parser.add_argument("--top-k", type=int, default=50, help="top-activating examples per feature and split")
    parser.add_argument("--random-k", type=int, default=50, help="random activating examples per feature and split")
    parser.add_argument("--nonactivating-k", type=int, default=50, help="non-activating examples per feature and split")
    parser.add_argument("--ctx-len", type=int, default=64, help="tokens per context (default 64)")
    parser.add_argument("--min-ctx-tokens", type=int, default=16,
                        help="shortest context kept: shorter documents and document tails are dropped (default 16)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of documents in the test split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of the random samples")
    parser.add_argument("--text-field", default="text", help="JSONL field / parquet column holding the text")
    parser.add_argument("--encoding-errors", choices=["strict", "replace"], default="strict",
                        help="what to do with bytes that are not UTF-8 (default: stop with an error)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batch-size", type=int, default=32, help="contexts per forward pass (default 32)")
    parser.add_argument("--dense-threshold", type=float, default=0.01,
                        help="features firing on more than this fraction of tokens are reported dense (0.01)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an SAE of the same name collected with a different config")
    parser.add_argument("--spill-gb", type=float, default=20.0,
                        help="disk (next to --db) for pass 1's sparse SAE codes, so pass 2 need not rerun the "
                        "model; past this size pass 2 recomputes instead; 0 = always recompute (default 20)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="run a model + SAE over a corpus; store top/random/non-activating examples and feature stats",
        description="One streaming pass (memory O(features x k), flat in corpus size) keeps, per feature and "
        "split, the top-k contexts, a uniform sample of activating contexts and statistics; a second pass "
        "recomputes per-token activations of the selected contexts. The run is written to --db in chunked "
        "commits under a run row marked 'running' and becomes 'complete' in the last commit; other commands "
        "read only complete runs, a failure removes the partial run, and after a kill rerunning the same "
        "command removes what was left and collects again. Documents are split into explain/test sets by a "
        "hash of their text.",
    )
    add_collect_arguments(parser)
    parser.add_argument("--distributed", action="store_true",
                        help="run as one rank of a torchrun job (torchrun --nproc-per-node N -m autointerp ...)")
    parser.set_defaults(func=_handle)


def config_from_args(args: argparse.Namespace):  # -> CollectConfig (import kept inside for fast --help)
    from autointerp.collect import CollectConfig

    return CollectConfig(
        model=args.model,
        hook=args.hook,
        sae=args.sae,
        corpus=args.corpus,
        sae_name=args.sae_name,
        tokens=args.tokens,
        top_k=args.top_k,
        random_k=args.random_k,
        nonactivating_k=args.nonactivating_k,
        ctx_len=args.ctx_len,
        min_ctx_tokens=args.min_ctx_tokens,
        test_fraction=args.test_fraction,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        text_field=args.text_field,
        encoding_errors=args.encoding_errors,
        dense_threshold=args.dense_threshold,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        spill_gb=args.spill_gb,
        threads=args.threads,
    )


def _handle(args: argparse.Namespace) -> int:
    if args.distributed:
        from autointerp.collect.distributed import run_distributed

        return run_distributed(args)
    from autointerp.collect import run_collect
    from autointerp.collect.run import preflight
    from autointerp.errors import UserError
    from autointerp.store import Store

    config = config_from_args(args)
    preflight(config)  # before the workspace file exists and before the model loads
    db = Path(args.db)
    created = not db.exists()
    try:
        with Store(db) as store:
            outcome = run_collect(config, store)
    except UserError:
        if created:  # bad input found after the model loaded: do not leave an empty workspace behind
            for path in (db, db.with_name(db.name + ".wal")):
                path.unlink(missing_ok=True)
        raise
    for line in outcome.summary.lines():
        print(line)
    return 0
