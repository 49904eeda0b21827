"""`autointerp collect`: run a base LM + SAE over a corpus and store per-feature examples and stats.

A thin wrapper over `autointerp.collect.run_collect`; see that package for what is stored and why.
Under torchrun, pass `--distributed` (or use `python -m autointerp.collect.distributed`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_collect_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `collect` (also of `python -m autointerp.collect.distributed`): every `CollectConfig`
    field's flag, generated from the dataclass, plus the workspace."""
    from autointerp.collect.config import CollectConfig
    from autointerp.options import add_arguments

    add_arguments(parser, CollectConfig)
    parser.add_argument("--db", required=True, help="workspace DuckDB file, e.g. run.duckdb")


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


def config_from_args(args: argparse.Namespace):  # -> CollectConfig
    from autointerp.collect.config import CollectConfig
    from autointerp.options import from_args

    return from_args(CollectConfig, args)


def _handle(args: argparse.Namespace) -> int:
    if args.distributed:
        from autointerp.collect.distributed import run_distributed

        return run_distributed(config_from_args(args), args.db)
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
