"""Length-bucketed batching (issue 12): little padding, every context once, and the same store as
consecutive (unbucketed) batches whatever the bucketing buffer or batch size."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from autointerp.collect import CollectConfig, collect
from autointerp.collect import batches as batching
from autointerp.corpus import ContextStream, CorpusSpec
from autointerp.store import Store
from tests.collect_helpers import TINY_LAYERS, make_sae_dir, make_tiny_model_dir


@pytest.mark.parametrize("ctx_len", [64, 256, 1024])
def test_bucketed_batches_pad_under_five_percent_on_wiki(ctx_len: int) -> None:
    from autointerp.models import load_tokenizer

    stream = ContextStream(CorpusSpec("wiki", ctx_len=ctx_len, max_tokens=65536), load_tokenizer("smollm2"))
    contexts = list(stream)
    batch_size = 4096 // ctx_len
    real = padded = 0
    seen: list[int] = []
    for batch in batching.iter_batches(contexts, batch_size, 0, ctx_len):
        assert batch.n_padded <= batch_size * ctx_len  # the token budget of a batch
        real += batch.n_tokens
        padded += batch.n_padded
        seen.extend(batch.context_ids.tolist())
        for row, context in enumerate(batch.contexts):  # each row is exactly its context, once
            assert batch.input_ids[row, : len(context.token_ids)].tolist() == context.token_ids
            assert int(batch.valid[row].sum()) == len(context.token_ids) - 1
    assert sorted(seen) == [c.context_id for c in contexts]
    assert 1 - real / padded <= 0.05
    unbucketed = sum(b.n_padded for b in batching.iter_batches(contexts, batch_size, 0))
    assert padded < unbucketed  # consecutive batches pad more (wiki intros are short)


def _collect(tmp_path: Path, name: str, model_dir: Path, sae_dir: Path, **overrides) -> dict:
    values = dict(
        model=str(model_dir),
        hook=f"layers.{TINY_LAYERS - 1}",
        sae=str(sae_dir),
        corpus="wiki",
        sae_name="s",
        tokens=4000,
        top_k=5,
        random_k=5,
        nonactivating_k=3,
        ctx_len=64,
        min_ctx_tokens=8,
        batch_size=8,
        progress=False,
    )
    values.update(overrides)
    with Store(tmp_path / f"{name}.duckdb") as store:
        run = collect(CollectConfig(**values), store)
        return {
            "examples": store.examples(run.run_id),
            "features": store.features(run.run_id),
            "contexts": store.query_df(
                "SELECT context_id, doc_id, split, token_ids FROM contexts ORDER BY context_id"
            ),
            "documents": store.query_df("SELECT doc_id, split FROM documents ORDER BY doc_id"),
        }


def test_bucketed_store_equals_unbucketed_in_any_batch_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = make_tiny_model_dir(tmp_path / "model")
    sae_dir = make_sae_dir(tmp_path / "sae", d_sae=48)
    monkeypatch.setattr(batching, "BUFFER_BATCHES", 0)  # today's consecutive, unsorted batches
    stores = {"unbucketed": _collect(tmp_path, "unbucketed", model_dir, sae_dir)}
    monkeypatch.setattr(batching, "BUFFER_BATCHES", 32)
    stores["bucketed"] = _collect(tmp_path, "bucketed", model_dir, sae_dir)
    monkeypatch.setattr(batching, "BUFFER_BATCHES", 3)  # other buckets, other batches, other order
    stores["small buffer, recompute"] = _collect(
        tmp_path, "other", model_dir, sae_dir, batch_size=5, spill_gb=0
    )
    reference = stores["unbucketed"]
    keys = ["feature_id", "split", "kind", "rank", "context_id"]
    assert len(reference["examples"]) > 500
    for name, store in stores.items():
        ex = store["examples"].sort_values(keys, ignore_index=True)
        ref = reference["examples"].sort_values(keys, ignore_index=True)
        assert ex[keys].equals(ref[keys]), name
        np.testing.assert_allclose(
            np.concatenate(ex["activations"].to_numpy()),
            np.concatenate(ref["activations"].to_numpy()),
            rtol=1e-5,
            atol=1e-6,
        )
        np.testing.assert_allclose(ex["max_activation"], ref["max_activation"], rtol=1e-5, atol=1e-6)
        assert store["features"]["firing_count"].equals(reference["features"]["firing_count"]), name
        assert store["contexts"].equals(reference["contexts"]), name
        # splits by document: every context has its document's split
        split_of = dict(zip(store["documents"]["doc_id"], store["documents"]["split"], strict=True))
        assert all(
            split_of[d] == s
            for d, s in zip(store["contexts"]["doc_id"], store["contexts"]["split"], strict=True)
        )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_batch_buffers_are_reused_without_page_faults() -> None:
    """After `keep_freed_buffers`, allocating and freeing a forward-sized buffer again and again no
    longer maps fresh pages each time (each 16 MB buffer is 4,096 pages when it is mapped anew)."""
    import resource

    import torch

    from autointerp.collect.malloc import keep_freed_buffers

    def faults_of_twenty_buffers() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            torch.ones(4 * 2**20, dtype=torch.float32)  # 16 MB, touched, freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    assert keep_freed_buffers()
    faults_of_twenty_buffers()  # the first one may grow the heap
    assert faults_of_twenty_buffers() < 4096  # < one buffer's pages for all twenty


def test_batches_come_in_a_bounded_set_of_shapes_whatever_the_corpus_size() -> None:
    """The CPU kernels keep state per input shape (~2 MB of RSS each, measured): free-form cuts made
    almost every batch a new shape, so peak RSS grew with the corpus. Shapes now come from a small ladder."""
    from autointerp.corpus import Context

    rng = np.random.default_rng(0)
    ctx_len, batch_size = 256, 16
    contexts = [Context(i, i, "explain", [5] * int(n)) for i, n in enumerate(rng.integers(2, ctx_len + 1, 30_000))]
    shapes = set()
    for batch in batching.iter_batches(contexts, batch_size, 0, ctx_len):
        rows, width = batch.input_ids.shape
        assert rows * width <= batch_size * ctx_len and batch.rows <= rows
        assert width % batching.WIDTH_STEP == 0 or width == ctx_len
        assert not batch.input_ids[batch.rows :].ne(0).any()  # extra rows are all padding
        shapes.add((rows, width))
    # 30k contexts (~3.9 M tokens) in ~950 batches, yet at most ROW_STEPS row counts per width
    assert len(shapes) <= batching.ROW_STEPS * (ctx_len // batching.WIDTH_STEP)


def test_only_a_collect_only_process_gets_the_small_kernel_caches(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """`autointerp collect` as its own process caps the kernel caches at collect's size (peak RSS flat in corpus
    size); the same stage called by a pipeline (main(argv), an embedded LLM may follow in the process) gets the
    LLM-sized bound, and a value the user set is never overridden."""
    from autointerp import cli
    from autointerp.kernel_cache import COLLECT_KERNEL_CACHE_ENTRIES, KERNEL_CACHE_ENTRIES, KERNEL_CACHE_VARS

    argv = ["collect", "--model", "smollm2", "--hook", "layers.3", "--sae", str(tmp_path / "missing"),
            "--corpus", "wiki", "--db", str(tmp_path / "run.duckdb")]
    for name in KERNEL_CACHE_VARS:
        monkeypatch.setenv(name, "1024")  # records the original state, so teardown restores it
        monkeypatch.delenv(name)
    assert cli.main(argv) == 2  # the missing SAE stops it before any model loads
    assert [os.environ[name] for name in KERNEL_CACHE_VARS] == [str(KERNEL_CACHE_ENTRIES)] * 2
    for name in KERNEL_CACHE_VARS:
        monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "argv", ["autointerp", *argv])
    assert cli.main() == 2
    assert [os.environ[name] for name in KERNEL_CACHE_VARS] == [str(COLLECT_KERNEL_CACHE_ENTRIES)] * 2
    monkeypatch.setenv(KERNEL_CACHE_VARS[0], "512")
    monkeypatch.delenv(KERNEL_CACHE_VARS[1])
    assert cli.main() == 2
    assert os.environ[KERNEL_CACHE_VARS[0]] == "512"
    assert os.environ[KERNEL_CACHE_VARS[1]] == str(COLLECT_KERNEL_CACHE_ENTRIES)
    assert not (tmp_path / "run.duckdb").exists()
