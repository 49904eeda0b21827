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


def _begin_run(store: Store, run_id: str, sae_name: str, corpus_id: str, n_features: int, seed: int) -> None:
    """The run row of a synthetic store (inside the caller's transaction)."""
    store.begin_run(
        {
            "run_id": run_id,
            "sae_name": sae_name,
            "model": "synthetic",
            "hook": "layers.0",
            "sae_path": "synthetic",
            "sae_architecture": "relu",
            "d_in": 8,
            "d_sae": n_features,
            "corpus_id": corpus_id,
            "config": {"seed": seed},
            "config_hash": short_hash({"seed": seed}),
            "versions": {"autointerp": "synthetic"},
        }
    )


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
            "corpus_id": corpus_id,
            "source": "synthetic",
            "tokenizer": "synthetic-words",
            "ctx_len": ctx_len,
            "split_seed": seed,
            "test_fraction": 0.2,
            "n_documents": n_docs,
            "n_contexts": n_contexts,
            "n_tokens": n_contexts * ctx_len,
        }
        documents = pd.DataFrame(
            {
                "doc_id": np.arange(n_docs),
                "doc_key": [short_hash(f"doc{d}") for d in range(n_docs)],
                "split": doc_split,
                "n_tokens": np.bincount(doc_of_context, minlength=n_docs) * ctx_len,
                "title": [f"Document {d}" for d in range(n_docs)],
            }
        )
        store.add_corpus(corpus, documents)
        store.add_contexts(
            pd.DataFrame(
                {
                    "corpus_id": corpus_id,
                    "context_id": np.arange(n_contexts),
                    "doc_id": doc_of_context,
                    "split": doc_split[doc_of_context],
                    "token_ids": [row.tolist() for row in token_ids],
                    "tokens": [[vocab[t] for t in row] for row in token_ids],
                }
            )
        )
        strength = rng.uniform(0.5, 1.0, size=(n_contexts, ctx_len))
        run_id = short_hash({"synthetic-run": sae_name, "corpus": corpus_id})
        feature_rows, example_rows = [], []
        for feature in range(n_features):
            live = feature < n_features - n_dead
            acts = (
                np.where(token_ids == feature % len(vocab), strength * (1 + feature % 7), 0.0)
                if live
                else np.zeros((n_contexts, ctx_len))
            )
            acts[:, 0] = 0.0  # the attention sink is never counted
            fired = acts[acts > 0]
            feature_rows.append(
                {
                    "run_id": run_id,
                    "feature_id": feature,
                    "firing_count": int(fired.size),
                    "density": fired.size / acts.size,
                    "max_activation": float(acts.max()),
                    "mean_activation": float(fired.mean()) if fired.size else None,
                    "hist_counts": np.histogram(fired, bins=8)[0].tolist() if fired.size else [0] * 8,
                    "hist_edges": (
                        np.histogram(fired, bins=8)[1] if fired.size else np.linspace(0, 1, 9)
                    ).tolist(),
                }
            )
            peak = acts.max(axis=1)
            for split in ("explain", "test"):
                in_split = np.flatnonzero((doc_split[doc_of_context] == split) & (peak > 0))
                top = in_split[np.argsort(-peak[in_split], kind="stable")][:n_top]
                sample = rng.permutation(in_split)[:n_random]
                quiet = np.flatnonzero((doc_split[doc_of_context] == split) & (peak == 0))[:n_top]
                for kind, chosen in (("top", top), ("random", sample), ("nonactivating", quiet)):
                    for rank, ctx in enumerate(chosen):
                        example_rows.append(
                            {
                                "run_id": run_id,
                                "feature_id": feature,
                                "split": split,
                                "kind": kind,
                                "rank": rank,
                                "context_id": int(ctx),
                                "max_activation": float(peak[ctx]),
                                "activations": acts[ctx].astype(np.float32).tolist(),
                            }
                        )
        with store.transaction():
            _begin_run(store, run_id, sae_name, corpus_id, n_features, seed)
            store.add_features(pd.DataFrame(feature_rows))
            store.add_examples(pd.DataFrame(example_rows))
        store.finish_run(run_id, n_contexts * ctx_len)
        run = store.run_by_name(sae_name)
        assert run is not None
        return run
    finally:
        store.close()


#: Filler words of the dictionary-scale store: never a feature's trigger, so a context fires only its feature.
_FILLER = [f" {w}" for w in _WORDS]


def _list_array(values: np.ndarray, pa_type: object) -> object:
    """A (rows, width) numpy array as an Arrow list column without a Python object per element."""
    import pyarrow as pa

    rows, width = values.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), type=pa_type))


def build_dictionary_store(
    path: str | Path,
    n_features: int,
    per_split: int = 4,
    ctx_len: int = 32,
    chunk: int = 4096,
    seed: int = 0,
    sae_name: str = "dictionary",
) -> RunInfo:
    """A synthetic run with `n_features` live features, written in chunks so its build is flat in memory.

    Feature f owns 2 * `per_split` contexts: `per_split` in an explain document and `per_split` in a test
    document (the split is by document). It fires on its own trigger token " f<f>" at 1-3 positions of each.
    Its top and random examples are its own contexts; its non-activating examples are the next feature's
    contexts of the same split. Scale benchmarks (`autointerp bench dictionary`) and their fast test use it.
    """
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    store = Store(path)
    try:
        existing = store.run_by_name(sae_name)
        if existing is not None:
            return existing
        per_feature = 2 * per_split
        n_contexts = n_features * per_feature
        corpus_id = short_hash({"dictionary": seed, "f": n_features, "k": per_split, "ctx": ctx_len})
        n_docs = 2 * n_features
        doc_split = np.tile(np.array(["explain", "test"]), n_features)
        store.add_corpus(
            {
                "corpus_id": corpus_id,
                "source": "synthetic-dictionary",
                "tokenizer": "synthetic-words",
                "ctx_len": ctx_len,
                "split_seed": seed,
                "test_fraction": 0.5,
                "n_documents": n_docs,
                "n_contexts": n_contexts,
                "n_tokens": n_contexts * ctx_len,
            },
            pd.DataFrame(
                {
                    "doc_id": np.arange(n_docs),
                    "doc_key": [f"d{d}" for d in range(n_docs)],
                    "split": doc_split,
                    "n_tokens": per_split * ctx_len,
                    "title": None,
                }
            ),
        )
        run_id = short_hash({"dictionary-run": sae_name, "corpus": corpus_id})
        with store.transaction():
            _begin_run(store, run_id, sae_name, corpus_id, n_features, seed)
            for start in range(0, n_features, chunk):
                feats = np.arange(start, min(start + chunk, n_features))
                n = len(feats) * per_feature
                context_ids = (feats[:, None] * per_feature + np.arange(per_feature)[None, :]).reshape(-1)
                owner = np.repeat(feats, per_feature)
                filler = rng.integers(0, len(_FILLER), size=(n, ctx_len))
                fires = (rng.random((n, ctx_len)) < 0.06) | (
                    np.arange(ctx_len)[None, :] == 1 + (context_ids[:, None] % (ctx_len - 1))
                )
                fires[:, 0] = False  # the attention sink never fires
                acts = np.where(
                    fires, rng.uniform(0.5, 1.0, size=(n, ctx_len)) * (1 + owner[:, None] % 7), 0.0
                )
                token_ids = np.where(fires, len(_FILLER) + owner[:, None], filler).astype(np.int32)
                vocab = np.array(_FILLER + [""], dtype=object)
                tokens = np.where(
                    fires,
                    np.char.add(" f", owner[:, None].astype(str)).astype(object),
                    vocab[np.minimum(filler, len(_FILLER))],
                )
                split = np.where(np.arange(n) % per_feature < per_split, "explain", "test")
                docs = 2 * owner + (split == "test")
                store.add_contexts_arrow(
                    pa.table(
                        {
                            "corpus_id": pa.array([corpus_id] * n),
                            "context_id": pa.array(context_ids, pa.int64()),
                            "doc_id": pa.array(docs, pa.int64()),
                            "split": pa.array(split),
                            "token_ids": _list_array(token_ids, pa.int32()),
                            "tokens": _list_array(tokens, pa.string()),
                        }
                    )
                )
                peak = acts.max(axis=1)
                fired = acts[acts > 0]
                store.add_features_arrow(
                    pa.table(
                        {
                            "run_id": pa.array([run_id] * len(feats)),
                            "feature_id": pa.array(feats, pa.int32()),
                            "firing_count": pa.array(
                                (acts > 0).reshape(len(feats), -1).sum(axis=1), pa.int64()
                            ),
                            "density": pa.array((acts > 0).reshape(len(feats), -1).mean(axis=1)),
                            "max_activation": pa.array(peak.reshape(len(feats), -1).max(axis=1)),
                            "mean_activation": pa.array(np.full(len(feats), float(fired.mean()))),
                            "hist_counts": _list_array(np.ones((len(feats), 8), dtype=np.int64), pa.int64()),
                            "hist_edges": _list_array(
                                np.tile(np.linspace(0, 7, 9), (len(feats), 1)), pa.float64()
                            ),
                        }
                    )
                )
                # examples: own contexts as 'top' (by peak) and 'random'; the next feature's as 'nonactivating'
                rows: dict[str, list[np.ndarray]] = {
                    k: [] for k in ("f", "split", "kind", "rank", "ctx", "row")
                }
                for s, split_name in enumerate(("explain", "test")):
                    own = np.arange(n).reshape(len(feats), per_feature)[
                        :, s * per_split : (s + 1) * per_split
                    ]
                    order = np.argsort(-peak[own], axis=1, kind="stable")
                    top = np.take_along_axis(own, order, axis=1)
                    other = np.roll(own, -1, axis=0)  # the next feature's contexts (in this chunk)
                    for kind, chosen in (("top", top), ("random", own), ("nonactivating", other)):
                        rows["f"].append(np.repeat(feats, per_split))
                        rows["split"].append(np.full(chosen.size, split_name, dtype=object))
                        rows["kind"].append(np.full(chosen.size, kind, dtype=object))
                        rows["rank"].append(np.tile(np.arange(per_split), len(feats)))
                        rows["ctx"].append(context_ids[chosen.reshape(-1)])
                        rows["row"].append(
                            chosen.reshape(-1) if kind != "nonactivating" else -1 - chosen.reshape(-1)
                        )
                row = np.concatenate(rows["row"])
                ex_acts = np.where(row[:, None] >= 0, acts[np.where(row >= 0, row, -1 - row)], 0.0).astype(
                    np.float32
                )
                store.add_examples_arrow(
                    pa.table(
                        {
                            "run_id": pa.array([run_id] * len(row)),
                            "feature_id": pa.array(np.concatenate(rows["f"]), pa.int32()),
                            "split": pa.array(np.concatenate(rows["split"])),
                            "kind": pa.array(np.concatenate(rows["kind"])),
                            "rank": pa.array(np.concatenate(rows["rank"]), pa.int32()),
                            "context_id": pa.array(np.concatenate(rows["ctx"]), pa.int64()),
                            "max_activation": pa.array(ex_acts.max(axis=1).astype(np.float64)),
                            "activations": _list_array(ex_acts, pa.float32()),
                        }
                    )
                )
        store.finish_run(run_id, n_contexts * ctx_len)
        run = store.run_by_name(sae_name)
        assert run is not None
        return run
    finally:
        store.close()
