"""Collect on many processes/GPUs/machines with torch.distributed, launched by torchrun:

    torchrun --standalone --nproc-per-node 8 -m autointerp.collect.distributed --model M --hook layers.15 \\
        --sae SAE_DIR --corpus data.jsonl --db run.duckdb
    (equivalently: torchrun ... -m autointerp collect --distributed ...)

Every rank streams the same (deterministic) context stream and runs the model on batches
index % world_size == rank, so each batch is computed exactly as a single process would compute it.
The pass-1 states then merge exactly: statistics by all-reduce (sum / max), selections by all-gather
of the int64 keys followed by the same top-k (keys are unique per feature and context, so the
result does not depend on which rank saw what). Rank 0 alone opens the store, runs pass 2 and
writes; backend gloo on CPU, nccl on CUDA (each rank uses cuda:LOCAL_RANK).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import torch
import torch.distributed as dist

from autointerp.collect.state import CollectState
from autointerp.errors import UserError


def merge_states(state: CollectState) -> None:
    """In place on every rank: `state` becomes the merge of all ranks' states."""
    stats = state.stats
    counts = torch.tensor([stats.n_tokens, state.n_contexts], dtype=torch.int64, device=stats.firing_count.device)
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


def _broadcast(value: object) -> object:
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_distributed(args: argparse.Namespace) -> int:
    from autointerp.collect.config import sae_fingerprint
    from autointerp.collect.pass1 import run_pass1
    from autointerp.collect.run import _check_existing, load_inputs, new_state, write_run
    from autointerp.commands.collect import config_from_args
    from autointerp.corpus import ContextStream
    from autointerp.store import Store

    if "RANK" not in os.environ:
        raise UserError("--distributed needs to run under torchrun", "torchrun --nproc-per-node N -m autointerp collect --distributed ...")
    config = config_from_args(args)
    cuda = config.device.startswith("cuda")
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        config.device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
    rank, world = dist.get_rank(), dist.get_world_size()
    config.progress = config.progress and rank == 0
    store = Store(args.db) if rank == 0 else None
    try:
        start = time.perf_counter()
        fingerprint = sae_fingerprint(config.sae)
        config_hash = config.config_hash(fingerprint)
        decision: tuple[str, object] = ("run", None)
        if store is not None:
            try:
                done, replace = _check_existing(config, store, config_hash)
                decision = ("skip", None) if done is not None else ("run", replace)
            except UserError as exc:
                decision = ("error", (exc.problem, exc.hint))
        kind, payload = _broadcast(decision)  # type: ignore[misc]
        if kind == "error":
            raise UserError(*payload)  # type: ignore[misc]
        if kind == "skip":
            if rank == 0:
                print(f"{config.name}: already collected with this config; nothing to do (--overwrite to redo)")
            return 0
        lm, point, sae = load_inputs(config, None, None)
        stream = ContextStream(config.corpus_spec(), lm.tokenizer)
        state = new_state(config, sae, lm.device)
        pass1_start = time.perf_counter()
        run_pass1(lm, point, sae, stream, state, config.batch_size, shard=(rank, world), progress=config.progress)
        merge_states(state)
        pass1_seconds = time.perf_counter() - pass1_start
        if store is not None:
            outcome = write_run(config, store, lm, point, sae, stream, state, config_hash, fingerprint,
                                payload, start, pass1_seconds)  # type: ignore[arg-type]
            for line in outcome.summary.lines():
                print(line)
            print(f"({world} ranks)")
        return 0  # no final barrier: other ranks are done after the merge; pass 2 may outlast a timeout
    finally:
        if store is not None:
            store.close()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    from autointerp.commands.collect import add_collect_arguments

    parser = argparse.ArgumentParser(prog="autointerp.collect.distributed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_collect_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_distributed(args)
    except UserError as exc:
        print(f"autointerp collect (distributed): error: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
