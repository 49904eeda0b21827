"""Collect on many processes/GPUs/machines with torch.distributed, launched by torchrun:

    torchrun --standalone --nproc-per-node 8 -m autointerp collect --distributed --model M --hook layers.15 \\
        --sae SAE_DIR --corpus data.jsonl --db run.duckdb
    (equivalently: torchrun ... -m autointerp.collect.distributed --model M ...)

Every rank runs the same `run_collect` as a single process, with a `TorchShard`: it streams the same
(deterministic) context stream and runs the model on batches index % world_size == rank, so each batch
is computed exactly as a single process would compute it. The pass-1 states then merge exactly:
statistics by all-reduce (sum / max), selections by all-gather of the int64 keys followed by the same
top-k (keys are unique per feature and context, so the result does not depend on which rank saw what).
Rank 0 alone opens the store, runs pass 2 and writes; with --spill-gb every rank spills its codes into
rank 0's spill folder when it can see it (one machine, or a shared filesystem). Backend gloo on CPU,
nccl on CUDA (each rank uses cuda:LOCAL_RANK).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from autointerp.collect.config import CollectConfig
from autointerp.collect.run import run_collect
from autointerp.collect.shard import Shard
from autointerp.collect.state import CollectState
from autointerp.errors import UserError


def merge_states(state: CollectState) -> None:
    """In place on every rank: `state` becomes the merge of all ranks' states."""
    stats = state.stats
    counts = torch.tensor(
        [stats.n_tokens, state.n_contexts], dtype=torch.int64, device=stats.firing_count.device
    )
    for tensor in (stats.firing_count, stats.total, stats.hist, counts):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    dist.all_reduce(stats.max, op=dist.ReduceOp.MAX)
    stats.n_tokens, state.n_contexts = int(counts[0]), int(counts[1])
    world = dist.get_world_size()
    for holder in state.top + state.random + state.sample:
        gathered = [torch.empty_like(holder.keys) for _ in range(world)]
        dist.all_gather(gathered, holder.keys.contiguous())
        holder.keys = torch.full_like(holder.keys, -1)
        holder.update(torch.cat(gathered, dim=1))


class TorchShard(Shard):
    """One rank of a torch.distributed process group (initialised by the caller)."""

    def share(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def merge(self, state: CollectState) -> None:
        merge_states(state)


def run_distributed(config: CollectConfig, db: str | Path) -> int:
    """This process's rank of a torchrun collect into `db` (written by rank 0)."""
    from autointerp.collect.run import preflight
    from autointerp.store import Store

    if "RANK" not in os.environ:
        raise UserError(
            "--distributed needs to run under torchrun",
            "torchrun --nproc-per-node N -m autointerp collect --distributed ...",
        )
    cuda = config.device.startswith("cuda")
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        config = dataclasses.replace(config, device=f"cuda:{local_rank}")
    preflight(config)  # bad input stops every rank before the group forms and before --db is created
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
    shard = TorchShard(dist.get_rank(), dist.get_world_size())
    config = dataclasses.replace(config, progress=config.progress and shard.writes)
    store = Store(db) if shard.writes else None
    try:
        outcome = run_collect(config, store, shard=shard)
        if outcome.summary is not None:
            for line in outcome.summary.lines():
                print(line)
            print(shard.describe())
        return 0  # no final barrier: other ranks are done after the merge; pass 2 may outlast a timeout
    finally:
        if store is not None:
            store.close()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    from autointerp.options import add_arguments

    parser = argparse.ArgumentParser(
        prog="autointerp.collect.distributed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, CollectConfig)
    parser.add_argument("--db", required=True, help="workspace DuckDB file (written by rank 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )  # as `autointerp`'s CLI
    try:
        from autointerp.options import from_args

        return run_distributed(from_args(CollectConfig, args), args.db)
    except UserError as exc:
        print(f"autointerp collect (distributed): error: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
