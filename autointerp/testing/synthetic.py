"""A small synthetic workspace (corpus, contexts, one complete run, features, examples) built through the
`Store` API, for the LLM benchmark and tests that must not depend on running collect.

Feature i fires on one trigger word (with a strength that varies by occurrence), so every live
feature has a known right answer. The last `n_dead` features never fire (dead). Split is by document.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from autointerp.hashing import short_hash
from autointerp.store import RunInfo, Store

_WORDS = (
    "apple river stone cloud music paper garden window engine silver forest candle market doctor "
    "winter bridge violin harbor planet butter castle pencil desert rocket island ladder mirror "
    "orange tiger summer coffee lantern meadow rabbit thunder wallet yellow zebra anchor basket "
    "camera dragon feather glacier hammer jungle kettle lemon magnet needle ocean parrot quilt"
).split()


def build_synthetic_store(
    path: str | Path,
    n_features: int = 300,
    n_dead: int = 5,
    n_contexts: int = 1200,
    ctx_len: int = 32,
    n_top: int = 10,
    n_random: int = 20,
    seed: int = 0,
    sae_name: str = "synthetic",
) -> RunInfo:
    """Write a complete synthetic run into the workspace at `path` and return it (idempotent per name)."""
    rng = np.random.default_rng(seed)
    store = Store(path)
    try:
        existing = store.run_by_name(sae_name)
        if existing is not None:
            return existing
        vocab = [f" {w}" for w in _WORDS] + [f" w{i}" for i in range(max(0, n_features - len(_WORDS)))]
        token_ids = rng.integers(0, len(vocab), size=(n_contexts, ctx_len))
        n_docs = max(2, n_contexts // 4)
        doc_of_context = np.arange(n_contexts) // (n_contexts // n_docs)
        doc_of_context = np.minimum(doc_of_context, n_docs - 1)
        doc_split = np.where(rng.random(n_docs) < 0.2, "test", "explain")
        corpus_id = short_hash({"synthetic": seed, "n": n_contexts, "ctx": ctx_len, "f": n_features})
        corpus = {
            "corpus_id": corpus_id, "source": "synthetic", "tokenizer": "synthetic-words", "ctx_len": ctx_len,
            "split_seed": seed, "test_fraction": 0.2, "n_documents": n_docs, "n_contexts": n_contexts,
            "n_tokens": n_contexts * ctx_len,
        }
        documents = pd.DataFrame({
            "doc_id": np.arange(n_docs), "doc_key": [short_hash(f"doc{d}") for d in range(n_docs)],
            "split": doc_split, "n_tokens": np.bincount(doc_of_context, minlength=n_docs) * ctx_len,
            "title": [f"Document {d}" for d in range(n_docs)],
        })
        store.add_corpus(corpus, documents)
        store.add_contexts(pd.DataFrame({
            "corpus_id": corpus_id, "context_id": np.arange(n_contexts), "doc_id": doc_of_context,
            "split": doc_split[doc_of_context], "token_ids": [row.tolist() for row in token_ids],
            "tokens": [[vocab[t] for t in row] for row in token_ids],
        }))
        strength = rng.uniform(0.5, 1.0, size=(n_contexts, ctx_len))
        run_id = short_hash({"synthetic-run": sae_name, "corpus": corpus_id})
        feature_rows, example_rows = [], []
        for feature in range(n_features):
            live = feature < n_features - n_dead
            acts = np.where(token_ids == feature % len(vocab), strength * (1 + feature % 7), 0.0) if live else \
                np.zeros((n_contexts, ctx_len))
            acts[:, 0] = 0.0  # the attention sink is never counted
            fired = acts[acts > 0]
            feature_rows.append({
                "run_id": run_id, "feature_id": feature, "firing_count": int(fired.size),
                "density": fired.size / acts.size, "max_activation": float(acts.max()),
                "mean_activation": float(fired.mean()) if fired.size else None,
                "hist_counts": np.histogram(fired, bins=8)[0].tolist() if fired.size else [0] * 8,
                "hist_edges": (np.histogram(fired, bins=8)[1] if fired.size else np.linspace(0, 1, 9)).tolist(),
            })
            peak = acts.max(axis=1)
            for split in ("explain", "test"):
                in_split = np.flatnonzero((doc_split[doc_of_context] == split) & (peak > 0))
                top = in_split[np.argsort(-peak[in_split], kind="stable")][:n_top]
                sample = rng.permutation(in_split)[:n_random]
                quiet = np.flatnonzero((doc_split[doc_of_context] == split) & (peak == 0))[:n_top]
                for kind, chosen in (("top", top), ("random", sample), ("nonactivating", quiet)):
                    for rank, ctx in enumerate(chosen):
                        example_rows.append({
                            "run_id": run_id, "feature_id": feature, "split": split, "kind": kind,
                            "rank": rank, "context_id": int(ctx), "max_activation": float(peak[ctx]),
                            "activations": acts[ctx].astype(np.float32).tolist(),
                        })
        with store.transaction():
            store.begin_run({
                "run_id": run_id, "sae_name": sae_name, "model": "synthetic", "hook": "layers.0",
                "sae_path": "synthetic", "sae_architecture": "relu", "d_in": 8, "d_sae": n_features,
                "corpus_id": corpus_id, "config": {"seed": seed}, "config_hash": short_hash({"seed": seed}),
                "versions": {"autointerp": "synthetic"},
            })
            store.add_features(pd.DataFrame(feature_rows))
            store.add_examples(pd.DataFrame(example_rows))
        store.finish_run(run_id, n_contexts * ctx_len)
        run = store.run_by_name(sae_name)
        assert run is not None
        return run
    finally:
        store.close()
