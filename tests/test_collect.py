"""collect: streaming selection against brute force, merging, memory, and real end-to-end runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autointerp.collect import CollectConfig, collect, run_collect
from autointerp.collect.encode import BatchCodes, encode_batch
from autointerp.collect.keys import (
    random_key_contexts,
    random_keys,
    top_key_contexts,
    top_key_values,
    top_keys,
)
from autointerp.collect.selection import select
from autointerp.collect.state import CollectState
from autointerp.collect.stats import HIST_BINS, histogram_edges
from autointerp.collect.topk import KeyTopK
from autointerp.errors import UserError
from autointerp.store import Store
from tests.collect_helpers import (
    TINY_LAYERS,
    build_collected_store,
    make_random_sae,
    make_sae_dir,
    make_tiny_model_dir,
)

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- synthetic data
def synthetic_batches(n_contexts: int, d: int, batch: int, seed: int, density: float = 0.3):
    """Per-context max activations [n, d] (with exact ties and zeros), split ids, in batches."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(n_contexts, d, generator=gen)
    values = torch.where(torch.rand(n_contexts, d, generator=gen) < density, values, torch.zeros(()))
    values[3] = values[5]  # exact ties between two contexts
    splits = (torch.rand(n_contexts, generator=gen) < 0.3).long()
    out = []
    for start in range(0, n_contexts, batch):
        maxima = values[start : start + batch]
        rows, feats = maxima.nonzero(as_tuple=True)
        codes = BatchCodes(maxima, feats, maxima[rows, feats], n_tokens=int(maxima.shape[0]) * 7)
        out.append((codes, torch.arange(start, start + maxima.shape[0]), splits[start : start + batch]))
    return values, splits, out


def brute_top(values: torch.Tensor, splits: torch.Tensor, split: int, k: int) -> list[list[tuple[float, int]]]:
    result = []
    for f in range(values.shape[1]):
        items = [(float(values[c, f]), c) for c in range(values.shape[0]) if splits[c] == split and values[c, f] > 0]
        items.sort(key=lambda t: (-t[0], t[1]))
        result.append(items[:k])
    return result


def state_top(state: CollectState, split: int) -> list[list[tuple[float, int]]]:
    keys = state.top[split].sorted_keys()
    vals, ctxs = top_key_values(keys), top_key_contexts(keys)
    return [[(float(vals[f, j]), int(ctxs[f, j])) for j in range(keys.shape[1]) if keys[f, j] >= 0]
            for f in range(keys.shape[0])]


def fill(state: CollectState, batches) -> CollectState:
    for codes, ids, splits in batches:
        state.update(codes, ids, splits)
    return state


# --------------------------------------------------------------------------- keys and top-k
def test_top_keys_order_like_values_then_lower_context() -> None:
    values = torch.tensor([[0.5, 0.0, 3.0], [0.5, 1e-30, 2.0]])
    keys = top_keys(values, torch.tensor([7, 2]))
    assert keys[0, 1] == -1 and keys[1, 1] > 0  # zero never qualifies, a tiny positive does
    assert keys[1, 0] > keys[0, 0]  # equal values: lower context id first
    assert keys[0, 2] > keys[1, 2]
    assert torch.equal(top_key_values(keys), torch.tensor([[0.5, 0.0, 3.0], [0.5, 1e-30, 2.0]]))
    assert top_key_contexts(keys[:, 0]).tolist() == [7, 2]


def test_key_topk_matches_brute_force_in_any_batch_order() -> None:
    gen = torch.Generator().manual_seed(0)
    rows, n, k = 40, 500, 7
    keys = torch.randperm(10**6, generator=gen)[: rows * n].view(rows, n).long()
    keys[keys % 3 == 0] = -1
    expected = torch.sort(keys, dim=1, descending=True).values[:, :k]
    for order_seed in range(3):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(order_seed))
        holder = KeyTopK(rows, k)
        for start in range(0, n, 37):
            holder.update(keys[:, order[start : start + 37]])
        assert torch.equal(holder.sorted_keys(), expected)


def test_state_top_and_stats_match_brute_force_and_merge_exactly() -> None:
    d, k = 12, 5
    values, splits, batches = synthetic_batches(90, d, batch=8, seed=1)
    state = fill(CollectState(d, k, 4, 16, seed=0), batches)
    for split in (0, 1):
        assert state_top(state, split) == brute_top(values, splits, split, k)
    # statistics (entries here are the per-context maxima themselves)
    fired = values > 0
    assert torch.equal(state.stats.firing_count, fired.sum(0))
    assert torch.allclose(state.stats.total, values.double().sum(0))
    assert torch.equal(state.stats.max, values.amax(0))
    edges = histogram_edges()
    for f in range(d):
        expected, _ = np.histogram(values[:, f][fired[:, f]].numpy(), bins=np.append(edges[:-1], np.inf))
        assert state.stats.hist[f].tolist() == expected.tolist()
    assert state.stats.hist.shape == (d, HIST_BINS) and state.stats.n_tokens == 90 * 7
    # two halves merged (in either order) equal the single stream
    for first, second in ((batches[::2], batches[1::2]), (batches[1::2], batches[::2])):
        a = fill(CollectState(d, k, 4, 16, seed=0), first)
        a.merge(fill(CollectState(d, k, 4, 16, seed=0), second))
        for x, y in zip(a.key_tensors(), state.key_tensors(), strict=True):
            assert torch.equal(x.sort(dim=1).values, y.sort(dim=1).values)
        assert torch.equal(a.stats.hist, state.stats.hist) and torch.equal(a.stats.max, state.stats.max)
        assert torch.equal(a.stats.firing_count, state.stats.firing_count)


def test_random_sample_is_a_uniform_sample_of_activating_contexts() -> None:
    from autointerp.collect.keys import feature_salts

    d, n, k = 3, 20, 5
    maxima = torch.zeros(n, d)
    maxima[:, 0] = 1.0                 # feature 0 fires everywhere
    maxima[::2, 1] = torch.arange(1, 11, dtype=torch.float32)  # feature 1 on even contexts only
    counts = np.zeros((d, n))
    for seed in range(400):
        holder = KeyTopK(d, k)
        for start in (0, 7, 13):       # in three uneven batches
            ids = torch.arange(start, {0: 7, 7: 13, 13: n}[start])
            holder.update(random_keys(maxima[ids] > 0, ids, feature_salts(d, seed), seed).T)
        for f in range(d):
            chosen = random_key_contexts(holder.keys[f][holder.keys[f] >= 0])
            counts[f, chosen.numpy()] += 1
    assert counts[2].sum() == 0  # a feature that never fires has no sample
    assert counts[1, 1::2].sum() == 0 and set(np.nonzero(counts[1])[0]) == set(range(0, n, 2))
    # feature 0: each context chosen with probability k/n = 0.25 (400 trials: sd ~ 8.7)
    assert np.all(np.abs(counts[0] - 100) < 45)
    assert np.all(np.abs(counts[1, ::2] - 200) < 50)  # 5 of 10 activating contexts: p = 0.5


def test_random_keys_are_reproducible_and_order_independent() -> None:
    fired = torch.ones(4, 6, dtype=torch.bool)
    salts = torch.arange(6) * 7919
    a = random_keys(fired, torch.tensor([0, 1, 2, 3]), salts, 5)
    b = random_keys(fired[[2, 0, 3, 1]], torch.tensor([2, 0, 3, 1]), salts, 5)
    assert torch.equal(a[[2, 0, 3, 1]], b)
    assert not torch.equal(a, random_keys(fired, torch.tensor([0, 1, 2, 3]), salts, 6))


def test_state_memory_does_not_depend_on_number_of_batches() -> None:
    def size(state: CollectState) -> int:
        tensors = state.key_tensors() + [state.stats.firing_count, state.stats.total, state.stats.max, state.stats.hist]
        return sum(t.numel() * t.element_size() for t in tensors)

    d = 64
    _, _, few = synthetic_batches(16, d, batch=8, seed=2)
    _, _, many = synthetic_batches(4000, d, batch=8, seed=2)
    small = fill(CollectState(d, 10, 10, 20, seed=0), few)
    large = fill(CollectState(d, 10, 10, 20, seed=0), many)
    assert size(small) == size(large)
    assert all(a.shape == b.shape for a, b in zip(small.key_tensors(), large.key_tensors(), strict=True))


def test_selection_ranks_and_sample() -> None:
    d = 6
    values, splits, batches = synthetic_batches(60, d, batch=10, seed=3)
    state = fill(CollectState(d, 4, 3, 10, seed=0), batches)
    sel = select(state)
    assert np.all(np.diff(sel.context) >= 0)
    for split in (0, 1):
        expected = brute_top(values, splits, split, 4)
        for f in range(d):
            mask = (sel.feature == f) & (sel.split == split) & (sel.kind == 0)
            got = sorted(zip(sel.rank[mask], sel.context[mask], strict=True))
            assert [c for _, c in got] == [c for _, c in expected[f]]
        assert len(sel.samples[split]) == min(10, int((splits == split).sum()))
        assert set(sel.samples[split].tolist()) <= set(torch.nonzero(splits == split).squeeze(1).tolist())


# --------------------------------------------------------------------------- encoding
@pytest.mark.parametrize("architecture", ["topk", "relu", "jumprelu"])
def test_encode_batch_matches_dense_sae_encode(architecture: str) -> None:
    sae = make_random_sae(16, 40, architecture, k=4, seed=1)
    hidden = torch.randn(3, 9, 16, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[:, 0] = False
    valid[2, 6:] = False
    codes = encode_batch(sae, hidden, valid)
    dense = sae.encode(hidden) * valid[..., None]
    assert torch.allclose(codes.context_max, dense.amax(dim=1))
    assert codes.n_tokens == int(valid.sum())
    expected = torch.zeros(40)
    expected.index_add_(0, codes.features, codes.values)
    assert torch.allclose(expected, dense.sum(dim=(0, 1)), atol=1e-5)
    assert torch.equal(torch.bincount(codes.features, minlength=40), (dense > 0).sum(dim=(0, 1)))


# --------------------------------------------------------------------------- end to end (tiny model)
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    return build_collected_store(tmp_path_factory.mktemp("collected"), model_dir=tiny_model_dir, tokens=3000, d_sae=96)


def recompute(lm, sae, hook: str, token_ids: list[int], feature: int) -> np.ndarray:
    from autointerp.models import activations_at_hook, parse_hook

    hidden = activations_at_hook(lm, parse_hook(hook), torch.tensor([token_ids]))
    acts = sae.encode(hidden)[0, :, feature].float()
    acts[0] = 0.0
    return acts.numpy()


def test_end_to_end_store_contents(collected) -> None:
    from autointerp.models import load_model
    from autointerp.sae import load_sae

    with Store(collected.db_path, read_only=True) as store:
        run = store.resolve_run(None)
        assert run.run_id == collected.run_id and run.status == "complete" and run.d_sae == 96
        features = store.features(run.run_id)
        examples = store.examples(run.run_id)
        contexts = store.query_df("SELECT * FROM contexts")
        documents = store.documents(run.corpus_id)
        corpus = store.corpus(run.corpus_id)
    assert len(features) == 96 and 3000 - 8 < corpus["n_tokens"] == run.n_tokens <= 3000  # min_ctx_tokens=8
    # no document in both splits; contexts only where examples refer to them
    assert documents.groupby("doc_id")["split"].nunique().max() == 1
    doc_split = dict(zip(documents["doc_id"], documents["split"], strict=True))
    assert all(doc_split[d] == s for d, s in zip(contexts["doc_id"], contexts["split"], strict=True))
    assert (examples["split"] == examples["doc_id"].map(doc_split)).all()
    assert set(contexts["context_id"]) == set(examples["context_id"])
    # counts: per feature and split at most k of each kind, ranks 0..n-1
    sizes = examples.groupby(["feature_id", "split", "kind"]).size()
    assert sizes.xs("top", level="kind").max() <= 10 and sizes.xs("nonactivating", level="kind").max() <= 5
    for _, group in examples.groupby(["feature_id", "split", "kind"]):
        assert sorted(group["rank"]) == list(range(len(group)))
    top = examples[examples["kind"] == "top"].sort_values(["feature_id", "split", "rank"])
    for _, group in top.groupby(["feature_id", "split"]):
        assert np.all(np.diff(group["max_activation"].to_numpy()) <= 1e-6)
    assert (examples[examples["kind"] != "nonactivating"]["max_activation"] > 0).all()
    # activations equal a recomputation; max activation and length agree
    lm = load_model(str(collected.model_dir))
    sae = load_sae(collected.sae_dir)
    sample = examples.groupby("kind").head(15)
    for row in sample.itertuples():
        expected = recompute(lm, sae, run.hook, list(row.token_ids), row.feature_id)
        got = np.asarray(row.activations)
        assert len(got) == len(row.token_ids) == len(row.tokens)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        assert abs(row.max_activation - got.max()) < 1e-6
        if row.kind == "nonactivating":
            assert expected.max() == 0.0
    # feature statistics: the top example of a feature is its overall max
    best = top.groupby("feature_id")["max_activation"].max()
    stats = features.set_index("feature_id")
    np.testing.assert_allclose(stats.loc[best.index, "max_activation"], best, rtol=1e-5)
    assert ((stats["firing_count"] > 0) == (stats["max_activation"] > 0)).all()
    assert all(len(h) == HIST_BINS and len(e) == HIST_BINS + 1 for h, e in zip(stats["hist_counts"], stats["hist_edges"], strict=True))
    assert (stats["hist_counts"].map(sum) == stats["firing_count"]).all()


def tiny_config(model_dir: Path, sae_dir: Path, **overrides) -> CollectConfig:
    values = dict(model=str(model_dir), hook=f"layers.{TINY_LAYERS - 1}", sae=str(sae_dir), corpus="wiki",
                  sae_name="s", tokens=1500, top_k=5, random_k=5, nonactivating_k=3, ctx_len=32,
                  min_ctx_tokens=8, batch_size=8, progress=False)
    values.update(overrides)
    return CollectConfig(**values)


def table_counts(db: Path) -> dict[str, int]:
    with Store(db, read_only=True) as store:
        return {t: int(store.query_df(f"SELECT count(*) AS n FROM {t}")["n"][0])
                for t in ("runs", "corpora", "documents", "contexts", "features", "examples")}


def test_rerun_is_skipped_other_config_errors_overwrite_replaces(tmp_path: Path, tiny_model_dir: Path) -> None:
    sae_dir = make_sae_dir(tmp_path / "sae", d_sae=32)
    db = tmp_path / "w.duckdb"
    config = tiny_config(tiny_model_dir, sae_dir)
    with Store(db) as store:
        first = run_collect(config, store)
    counts = table_counts(db)
    with Store(db) as store:
        second = run_collect(config, store)
        assert second.summary.skipped and second.run.run_id == first.run.run_id
    assert table_counts(db) == counts
    with Store(db) as store, pytest.raises(UserError, match="different config"):
        collect(tiny_config(tiny_model_dir, sae_dir, top_k=3), store)
    assert table_counts(db) == counts
    with Store(db) as store:
        third = collect(tiny_config(tiny_model_dir, sae_dir, top_k=3, overwrite=True), store)
        assert third.run_id != first.run.run_id and [r.run_id for r in store.runs()] == [third.run_id]
        kinds = store.examples(third.run_id, kinds=["top"])
        assert kinds.groupby(["feature_id", "split"]).size().max() <= 3


def test_crash_mid_run_leaves_no_run_and_stale_running_row_is_cleaned(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sae_dir = make_sae_dir(tmp_path / "sae", d_sae=32)
    db = tmp_path / "w.duckdb"

    def boom(self, rows):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Store, "add_features_arrow", boom)  # fails after examples were written
    with Store(db) as store, pytest.raises(RuntimeError, match="disk full"):
        collect(tiny_config(tiny_model_dir, sae_dir), store)
    assert table_counts(db) == dict.fromkeys(("runs", "corpora", "documents", "contexts", "features", "examples"), 0)
    monkeypatch.undo()
    with Store(db) as store:  # a 'running' row committed by some crashed process
        store.begin_run({"run_id": "stale", "sae_name": "s", "model": "m", "hook": "layers.1", "sae_path": "x",
                         "sae_architecture": "topk", "d_in": 64, "d_sae": 32, "corpus_id": "c", "config": {},
                         "config_hash": "h", "versions": {}})
        assert store.runs() == [] and store.run_by_name("s") is None  # readers ignore incomplete runs
        run = collect(tiny_config(tiny_model_dir, sae_dir), store)
        assert run.status == "complete" and [r.run_id for r in store.stale_runs()] == []


def test_cli_collect_and_bad_input(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from autointerp.cli import main

    sae_dir = make_sae_dir(tmp_path / "sae", d_sae=32)
    db = tmp_path / "cli.duckdb"
    base = ["collect", "--model", str(tiny_model_dir), "--sae", str(sae_dir), "--db", str(db), "--tokens", "800",
            "--ctx-len", "32", "--top-k", "4", "--random-k", "4", "--nonactivating-k", "2", "--no-progress"]
    assert main([*base, "--hook", "layers.1"]) == 0
    out = capsys.readouterr().out
    assert " tokens in " in out and " alive + " in out and " dense " in out
    assert main([*base, "--hook", "layers.9", "--sae-name", "h"]) == 2
    assert "layers 0..1" in capsys.readouterr().err
    wide = make_sae_dir(tmp_path / "wide", d_in=80, d_sae=16)
    assert main([*base, "--hook", "layers.1", "--sae", str(wide), "--sae-name", "wide"]) == 2
    assert "d_in=80" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    assert main([*base, "--hook", "layers.1", "--corpus", str(empty), "--sae-name", "e"]) == 2
    assert "no contexts" in capsys.readouterr().err
    assert table_counts(db)["runs"] == 1


# --------------------------------------------------------------------------- distributed (issue 6, 13.3)
def _distributed_inputs(tmp_path: Path, tiny_model_dir: Path) -> tuple[list[str], dict[str, str], Path]:
    """Collect args, env, and a single-process reference workspace (recomputing pass 2, no spill)."""
    sae_dir = make_sae_dir(tmp_path / "sae", d_sae=48)
    common = ["--model", str(tiny_model_dir), "--hook", "layers.1", "--sae", str(sae_dir), "--tokens", "2500",
              "--ctx-len", "32", "--top-k", "6", "--random-k", "6", "--nonactivating-k", "3", "--batch-size", "8",
              "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    single = tmp_path / "single.duckdb"
    subprocess.run([sys.executable, "-m", "autointerp", "collect", *common, "--db", str(single), "--spill-gb", "0"],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=600)
    return common, env, single


def _torchrun(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(2 ranks)" in result.stdout
    assert not list(tmp_path.glob(".autointerp-spill-*"))  # rank 0 deleted the shared spill folder
    return result


def _assert_same_run(single: Path, multi: Path) -> None:
    with Store(single, read_only=True) as a, Store(multi, read_only=True) as b:
        ra, rb = a.resolve_run(None), b.resolve_run(None)
        assert ra.run_id == rb.run_id and ra.n_tokens == rb.n_tokens > 2400
        ea, eb = a.examples(ra.run_id), b.examples(rb.run_id)
        assert len(ea) == len(eb) > 0
        keys = ["feature_id", "split", "kind", "rank", "context_id"]
        assert ea[keys].equals(eb[keys])
        np.testing.assert_allclose(np.concatenate(ea["activations"].to_numpy()),
                                   np.concatenate(eb["activations"].to_numpy()), rtol=1e-5, atol=1e-6)
        fa, fb = a.features(ra.run_id), b.features(rb.run_id)
        for column in ("firing_count", "max_activation", "density"):
            assert fa[column].equals(fb[column])
        np.testing.assert_allclose(fa["mean_activation"], fb["mean_activation"], rtol=1e-12)
        assert [list(h) for h in fa["hist_counts"]] == [list(h) for h in fb["hist_counts"]]
        ca = a.query_df("SELECT * FROM contexts ORDER BY context_id")
        cb = b.query_df("SELECT * FROM contexts ORDER BY context_id")
        assert ca["context_id"].equals(cb["context_id"])


def test_distributed_two_ranks_equal_single_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Two gloo ranks through `autointerp collect --distributed` (the same run_collect, sharded): pass 2 reads
    both ranks' spilled codes (--spill-gb is honoured) and the store equals a single-process recomputing run."""
    common, env, single = _distributed_inputs(tmp_path, tiny_model_dir)
    multi = tmp_path / "multi.duckdb"
    result = _torchrun(tmp_path, env, "-m", "autointerp", "collect", "--distributed", *common, "--db", str(multi))
    assert "spilled (2 part(s))" in result.stderr
    _assert_same_run(single, multi)


@pytest.mark.slow  # a second torchrun launch (~30 s on 2 busy cores)
def test_distributed_spill_over_its_limit_recomputes_and_still_equals_single_process(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """--spill-gb bounds all ranks' parts together: a tiny limit makes the ranks stop spilling, the writer
    learns it and recomputes pass 2 (module entry point `-m autointerp.collect.distributed`)."""
    common, env, single = _distributed_inputs(tmp_path, tiny_model_dir)
    multi = tmp_path / "multi.duckdb"
    result = _torchrun(tmp_path, env, "-m", "autointerp.collect.distributed", *common, "--spill-gb", "1e-6",
                       "--db", str(multi))
    assert "passed the spill limit" in result.stderr and "spilled (" not in result.stderr
    _assert_same_run(single, multi)


def test_spilled_codes_equal_recomputation_and_limit_falls_back(
    tmp_path: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="autointerp.collect.spill")
    sae_dir = make_sae_dir(tmp_path / "sae", d_sae=40, architecture="jumprelu")
    frames = {}
    for name, spill_gb in (("spill", 20.0), ("recompute", 0.0), ("over-limit", 1e-6)):
        caplog.clear()
        with Store(tmp_path / f"{name}.duckdb") as store:
            run = collect(tiny_config(tiny_model_dir, sae_dir, spill_gb=spill_gb), store)
            frames[name] = store.examples(run.run_id)
            assert not list(tmp_path.glob(".autointerp-spill-*"))  # the spill is deleted
            assert ("passed the spill limit" in caplog.text) == (name == "over-limit")
    keys = ["feature_id", "split", "kind", "rank", "context_id"]
    for name in ("recompute", "over-limit"):
        assert frames[name][keys].equals(frames["spill"][keys])
        np.testing.assert_allclose(np.concatenate(frames[name]["activations"].to_numpy()),
                                   np.concatenate(frames["spill"]["activations"].to_numpy()), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- real model (slow)
@pytest.mark.slow
def test_end_to_end_real_smollm2(tmp_path: Path, smollm2) -> None:
    """A few thousand wiki tokens through SmolLM2-135M layer 15 and a random 2k-latent TopK SAE."""
    from autointerp.models import activations_at_hook, parse_hook

    sae = make_random_sae(smollm2.hidden_size, 2048, "topk", k=16, seed=0)
    config = CollectConfig(model="smollm2", hook="layers.15", sae="random-topk-2048", sae_name="real", tokens=3000,
                           top_k=8, random_k=8, nonactivating_k=4, batch_size=16, progress=False)
    db = tmp_path / "real.duckdb"
    with Store(db) as store:
        outcome = run_collect(config, store, lm=smollm2, sae=sae)
        assert outcome.summary.alive > 500 and outcome.summary.n_tokens > 2900  # random SAE: many dead
        run = store.resolve_run("real")
        examples = store.examples(run.run_id)
        features = store.features(run.run_id)
    assert set(examples["kind"]) == {"top", "random", "nonactivating"} and set(examples["split"]) == {"explain", "test"}
    sample = examples.groupby(["kind", "split"]).head(6)
    ids = [list(t) for t in sample["token_ids"]]
    for row, token_ids in zip(sample.itertuples(), ids, strict=True):
        hidden = activations_at_hook(smollm2, parse_hook("layers.15"), torch.tensor([token_ids]))
        expected = sae.encode(hidden)[0, :, row.feature_id].float().numpy()
        expected[0] = 0.0
        np.testing.assert_allclose(np.asarray(row.activations), expected, rtol=1e-3, atol=1e-4)
    assert (features["firing_count"] > 0).sum() == outcome.summary.alive
    with Store(db) as store:  # a rerun with the same config is skipped
        assert run_collect(config, store, lm=smollm2, sae=sae).summary.skipped
