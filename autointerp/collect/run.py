"""`collect(config, store)`: the whole stage, from corpus to a committed run in the store.

Pass 1 streams the corpus into O(d_sae x k) state (and spills its sparse codes to a temporary file
while that stays under `spill_gb`); pass 2 reads back, or recomputes, the selected contexts and
writes corpus, documents, contexts, examples and features under a run row that stays 'running'
until the last write (see `write_run`): readers only ever see complete runs, and a failed run is
removed. Reruns: same name and same config
hash -> skipped; same name, other config -> UserError unless `overwrite`; a 'running' row left by
a dead process is removed first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from autointerp.collect.config import CollectConfig, sae_fingerprint
from autointerp.collect.pass1 import Pass1Timing, run_pass1
from autointerp.collect.pass2 import Sink, run_pass2
from autointerp.collect.rows import feature_table
from autointerp.collect.selection import select
from autointerp.collect.shard import Shard
from autointerp.collect.spill import CodeSpill, SpillReader
from autointerp.collect.spill_owner import remove_orphaned_spills
from autointerp.collect.state import CollectState
from autointerp.collect.summary import CollectSummary
from autointerp.collect.writer import ChunkedWriter
from autointerp.corpus import ContextStream, corpus_id, tokenizer_identity
from autointerp.errors import UserError
from autointerp.hashing import short_hash
from autointerp.models import HookPoint, LoadedModel, load_model, parse_hook
from autointerp.sae.base import SAE
from autointerp.store import RunInfo, Store

log = logging.getLogger(__name__)

DUCKDB_MEMORY_LIMIT = "128MB"  # while writing; see collect/writer.py


@dataclass
class CollectOutcome:
    """What a collect did. `run` and `summary` are None only on a rank that does not write."""

    run: RunInfo | None
    summary: CollectSummary | None
    pass1: Pass1Timing | None = None


def collect(config: CollectConfig, store: Store, lm: LoadedModel | None = None, sae: SAE | None = None) -> RunInfo:
    """Run collect (or skip it when this exact run is already stored); returns the stored run."""
    run = run_collect(config, store, lm=lm, sae=sae).run
    assert run is not None  # one process always writes
    return run


def versions() -> dict[str, str]:
    import duckdb
    import transformers

    from autointerp import __version__

    return {"autointerp": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "duckdb": duckdb.__version__}


def _check_existing(config: CollectConfig, store: Store, config_hash: str) -> tuple[RunInfo | None, str | None]:
    """(an identical complete run to return, or None; the run_id to replace inside the write, or None)."""
    for stale in store.stale_runs():
        log.warning("removing incomplete run %r (%s) left by a process that did not finish", stale.sae_name, stale.run_id)
        store.delete_run(stale.run_id)
        store.prune_corpus(stale.corpus_id)
    existing = store.run_by_name(config.name)
    if existing is None:
        return None, None
    if existing.config_hash == config_hash and not config.overwrite:
        return existing, None
    if not config.overwrite:
        raise UserError(
            f"{store.path} already holds an SAE named {config.name!r} collected with a different config "
            f"(stored config hash {existing.config_hash}, this one {config_hash})",
            "pass --overwrite to replace it (its explanations and scores are deleted too), "
            "or choose another --sae-name",
        )
    return None, existing.run_id


def preflight(config: CollectConfig, check_sae_files: bool = True) -> None:
    """Every check that needs neither the model nor the workspace: hook name, SAE files, corpus path and its
    first document. Run before the model loads (seconds to minutes) and before --db is created, so bad input
    fails fast and leaves nothing behind. What needs the model (layer range, d_in) is checked after it loads.
    `check_sae_files` is False when the caller hands in a loaded SAE (tests, benchmarks): there are no files."""
    from autointerp.corpus import BUILTIN_CORPORA, iter_documents, source_identity
    from autointerp.sae import detect_format

    parse_hook(config.hook)
    if check_sae_files:
        detect_format(config.sae)
    source_identity(config.corpus)
    if config.corpus not in BUILTIN_CORPORA and next(iter_documents(config.corpus, config.text_field, config.encoding_errors), None) is None:  # type: ignore[arg-type]
        raise UserError(
            f"corpus {config.corpus!r} has no documents, so there are no contexts to collect",
            "point --corpus at a file or directory with text in it",
        )


def load_inputs(config: CollectConfig, lm: LoadedModel | None, sae: SAE | None) -> tuple[LoadedModel, HookPoint, SAE]:
    from autointerp.sae import check_sae_matches, load_sae

    if lm is None:
        lm = load_model(config.model, device=config.device, dtype=config.dtype)
    point = parse_hook(config.hook, lm.n_layers)
    if sae is None:
        sae = load_sae(config.sae, device=str(lm.device), dtype=lm.dtype)
    check_sae_matches(sae, lm.hidden_size, config.hook)
    return lm, point, sae


def new_state(config: CollectConfig, sae: SAE, device: torch.device) -> CollectState:
    return CollectState(sae.d_sae, config.top_k, config.random_k, config.global_sample_size, config.seed, device)


def run_collect(
    config: CollectConfig,
    store: Store | None,
    lm: LoadedModel | None = None,
    sae: SAE | None = None,
    measure_baseline: bool = False,
    on_phase: Callable[[str], None] | None = None,
    shard: Shard | None = None,
) -> CollectOutcome:
    """`collect` with its summary and timings: the one collect path, for one process or one rank of many.

    `shard` (default: the whole run here) says which batches this process takes and how its pass-1
    state merges with the others' (see `shard`); only the writing process needs `store` and returns a
    run and a summary. `measure_baseline` also times a bare forward per batch (for `bench collect`);
    `on_phase` is called with 'pass1' and 'pass2' as each pass starts."""
    shard = shard or Shard()
    if shard.writes and store is None:
        raise ValueError("the writing process of a collect needs the store")
    start = time.perf_counter()
    preflight(config, check_sae_files=sae is None)
    fingerprint = sae_fingerprint(config.sae)
    config_hash = config.config_hash(fingerprint)
    decision, error = _decide(config, store, config_hash) if shard.writes else (("run", None), None)
    kind, payload = shard.share(decision)  # every rank runs, skips or stops together
    if error is not None:
        raise error
    if kind == "error":
        raise UserError(*payload)
    if kind == "skip":
        log.info("%s is already collected with this config (run %s); skipping", config.name, payload.run_id)
        summary = CollectSummary(config.name, payload.d_sae, 0, 0, 0, config.dense_threshold, payload.n_tokens or 0,
                                 0, 0, 0, 0, 0.0, 0.0, 0.0, skipped=True)
        return CollectOutcome(payload, summary)
    if config.threads is not None or shard.world == 1:  # under torchrun: torchrun's OMP_NUM_THREADS per rank
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
    lm, point, sae = load_inputs(config, lm, sae)
    spec = config.corpus_spec()
    stream = ContextStream(spec, lm.tokenizer)
    state = new_state(config, sae, lm.device)
    spill = _open_spill(config, store, shard)
    try:
        if on_phase is not None:
            on_phase("pass1")
        pass1_start = time.perf_counter()
        timing = run_pass1(lm, point, sae, stream, state, config.batch_size, shard=(shard.rank, shard.world),
                           progress=config.progress, measure_baseline=measure_baseline, spill=spill)
        shard.merge(state)
        pass1_seconds = time.perf_counter() - pass1_start
        if spill is not None:
            spill.close()  # flushed before the writer reads this part
        spilled = shard.gather(spill is not None and spill.active)
        if not shard.writes:
            return CollectOutcome(None, None, timing)
        assert store is not None
        reader = None
        if spill is not None and all(spilled):
            reader = spill.reader(sae.d_sae, parts=shard.world)
            log.info("pass 2 reads the SAE codes that pass 1 spilled (%d part(s)) instead of rerunning the model",
                     shard.world)
        elif spill is not None:
            log.info("a rank did not spill all its SAE codes; pass 2 recomputes the selected contexts")
        if on_phase is not None:
            on_phase("pass2")
        try:
            outcome = write_run(config, store, lm, point, sae, stream, state, config_hash, fingerprint,
                                replace_run_id=payload, start=start, pass1_seconds=pass1_seconds, spill=reader)
        finally:
            if reader is not None:
                reader.close()
    finally:
        if spill is not None:
            spill.cleanup()
    outcome.pass1 = timing
    return outcome


def _decide(
    config: CollectConfig, store: Store, config_hash: str
) -> tuple[tuple[str, Any], UserError | None]:
    """The writer's decision, in a form every rank can receive: ('skip', stored run), ('run', run_id to
    replace or None) or ('error', (problem, hint)), plus the error itself to raise here."""
    remove_orphaned_spills(store.path.parent)
    try:
        done, replace_run_id = _check_existing(config, store, config_hash)
    except UserError as exc:
        return ("error", (exc.problem, exc.hint)), exc
    return (("skip", done) if done is not None else ("run", replace_run_id)), None


def _open_spill(config: CollectConfig, store: Store | None, shard: Shard) -> CodeSpill | None:
    """The writer creates (and owns) the spill folder next to the workspace; every other rank writes its
    part into it when it can see it (same machine or a shared filesystem), else pass 2 recomputes.
    --spill-gb bounds all ranks' parts together."""
    if config.spill_gb <= 0:
        return None
    limit = int(config.spill_gb * 2**30 / shard.world)
    spill = CodeSpill(store.path.parent, limit) if store is not None and shard.writes else None
    directory = shard.share(str(spill.directory) if spill is not None else None)
    if spill is None and directory is not None:
        if Path(directory).is_dir():
            spill = CodeSpill(None, limit, part=shard.rank, directory=Path(directory))
        else:
            log.info("rank %d cannot see the spill folder %s (another machine?); pass 2 recomputes instead",
                     shard.rank, directory)
    return spill


def write_run(
    config: CollectConfig,
    store: Store,
    lm: LoadedModel,
    point: HookPoint,
    sae: SAE,
    stream: ContextStream,
    state: CollectState,
    config_hash: str,
    fingerprint: Any,
    replace_run_id: str | None,
    start: float,
    pass1_seconds: float,
    spill: SpillReader | None = None,
) -> CollectOutcome:
    """Pass 2 and every write of the run (only the writing process of a sharded run does this).

    The run row is committed first with status 'running', then corpus, contexts and examples in
    chunked transactions, then features and the status 'complete' in a final one. Any exception
    deletes the partial run; a process killed outright leaves a 'running' row that readers ignore and
    the next collect on this workspace removes.
    """
    spec = stream.spec
    documents = list(stream.documents)
    n_tokens, n_contexts = stream.n_tokens, stream.n_contexts
    cid = corpus_id(spec, tokenizer_identity(lm.tokenizer))
    run_id = short_hash({"sae_name": config.name, "config_hash": config_hash})
    selection = select(state)
    with store.transaction():
        if replace_run_id is not None:
            store.delete_run_rows(replace_run_id)
        store.begin_run(
            {
                "run_id": run_id,
                "sae_name": config.name,
                "model": config.model,
                "hook": point.name,
                "sae_path": config.sae,
                "sae_architecture": sae.cfg.architecture,
                "d_in": sae.d_in,
                "d_sae": sae.d_sae,
                "corpus_id": cid,
                "config": {**config.to_dict(), "sae_fingerprint": fingerprint},
                "config_hash": config_hash,
                "versions": versions(),
            }
        )
    try:
        with store.memory_limit(DUCKDB_MEMORY_LIMIT):
            with store.transaction():
                store.add_corpus(
                    {
                        "corpus_id": cid,
                        "source": spec.source,
                        "tokenizer": tokenizer_identity(lm.tokenizer),
                        "ctx_len": spec.ctx_len,
                        "split_seed": spec.split_seed,
                        "test_fraction": spec.test_fraction,
                        "n_documents": len(documents),
                        "n_contexts": n_contexts,
                        "n_tokens": n_tokens,
                    },
                    pd.DataFrame(
                        {
                            "doc_id": [d.doc_id for d in documents],
                            "doc_key": [d.doc_key for d in documents],
                            "split": [d.split for d in documents],
                            "n_tokens": [d.n_tokens for d in documents],
                            "title": [d.title for d in documents],
                        }
                    ),
                )
            writer = ChunkedWriter(store)
            try:
                result = run_pass2(
                    lm, point, sae, ContextStream(spec, lm.tokenizer), selection, run_id, cid, config.batch_size,
                    config.nonactivating_k, Sink(writer.add_examples, writer.add_contexts), ctx_len=spec.ctx_len,
                    progress=config.progress, spill=spill,
                )
                writer.drain()
                with store.transaction():
                    writer.flush_into_open_transaction()
                    store.add_features_arrow(feature_table(run_id, state.stats))
                    store.finish_run(run_id, n_tokens)
            finally:
                writer.close()  # before the cleanup below: no chunk may land after the partial run is deleted
    except BaseException:
        log.error("collect of %s failed; removing its partial run", config.name)
        store.delete_run(run_id)
        store.prune_corpus(cid)
        raise
    run = store.run_by_name(config.name)
    assert run is not None
    summary = CollectSummary.from_stats(
        state.stats,
        config.dense_threshold,
        sae_name=config.name,
        n_tokens=n_tokens,
        n_contexts=n_contexts,
        n_documents=len(documents),
        n_examples=result.n_examples,
        seconds=time.perf_counter() - start,
        pass1_seconds=pass1_seconds,
        pass2_seconds=result.seconds,
    )
    return CollectOutcome(run, summary)
