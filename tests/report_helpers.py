"""Synthetic workspaces for the report/compare/export tests, written only through the Store API.

Feature f fires on token "w{f}" with strength f-dependent; the corpus and one label contain planted
HTML/JS so the tests can check escaping. Scores, SAE metrics and the output view are included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from autointerp.hashing import short_hash
from autointerp.store import Store

XSS = "<script>alert(1)</script>"
ATTR = '"onload="alert(2)'
PWN = "<img src=x onerror=\"document.title='pwned'\">"  # would change the title if it were ever parsed as HTML
XSS_LABEL = f"label with {XSS} and {ATTR} and {PWN}"


def build_store(
    path: Path,
    sae_name: str = "sae-a",
    n_features: int = 24,
    n_dead: int = 2,
    n_dense: int = 1,
    score_shift: float = 0.0,
    seed: int = 0,
    explainers: tuple[str, ...] = ("explainer-x",),
    metrics: dict[str, float] | None = None,
    with_logits: bool = True,
    with_traces: bool = True,
    n_contexts: int = 80,
    ctx_len: int = 16,
    sae_path: str = "/tmp/sae",
) -> str:
    """Write one complete synthetic run; returns its run_id."""
    rng = np.random.default_rng(seed)
    vocab = [f" w{i}" for i in range(n_features)] + [" the", " a", "\n", XSS, ATTR, PWN, " of"]
    store = Store(path)
    try:
        corpus_id = short_hash({"corpus": seed, "n": n_contexts, "v": len(vocab)})
        token_ids = rng.integers(0, len(vocab), size=(n_contexts, ctx_len))
        token_ids[0, 3] = vocab.index(XSS)
        token_ids[0, 4] = vocab.index(ATTR)
        token_ids[0, 5] = vocab.index(PWN)
        doc_of = np.arange(n_contexts) // 4
        n_docs = int(doc_of.max()) + 1
        doc_split = np.where(np.arange(n_docs) % 5 == 1, "test", "explain")
        store.add_corpus(
            {"corpus_id": corpus_id, "source": "synthetic", "tokenizer": "words", "ctx_len": ctx_len,
             "split_seed": seed, "test_fraction": 0.2, "n_documents": n_docs, "n_contexts": n_contexts,
             "n_tokens": n_contexts * ctx_len},
            pd.DataFrame({"doc_id": np.arange(n_docs), "doc_key": [f"k{d}" for d in range(n_docs)],
                          "split": doc_split, "n_tokens": 4 * ctx_len, "title": [f"doc {d}" for d in range(n_docs)]}),
        )
        store.add_contexts(pd.DataFrame({
            "corpus_id": corpus_id, "context_id": np.arange(n_contexts), "doc_id": doc_of,
            "split": doc_split[doc_of], "token_ids": [r.tolist() for r in token_ids],
            "tokens": [[vocab[t] for t in r] for r in token_ids],
        }))
        run_id = short_hash({"run": sae_name, "seed": seed})
        with store.transaction():
            store.begin_run({
                "run_id": run_id, "sae_name": sae_name, "model": "tiny-lm", "hook": "blocks.2.hook_resid_post",
                "sae_path": sae_path, "sae_architecture": "topk", "d_in": 8, "d_sae": n_features,
                "corpus_id": corpus_id, "config": {"k": 4}, "config_hash": "cfg", "versions": {"autointerp": "t"},
            })
            feats, examples = [], []
            for f in range(n_features):
                dead = f >= n_features - n_dead
                acts = np.where(token_ids == f, 1.0 + (f % 5), 0.0)
                if f == 0:  # feature 0 fires on the planted script token too, so its top context shows it
                    acts = acts + np.where(token_ids == vocab.index(XSS), 7.0, 0.0)
                if f < n_dense:
                    acts = acts + (rng.random(acts.shape) < 0.5) * 0.3
                if dead:
                    acts = np.zeros_like(acts)
                acts[:, 0] = 0.0
                fired = acts[acts > 0]
                feats.append({
                    "run_id": run_id, "feature_id": f, "firing_count": int(fired.size),
                    "density": fired.size / acts.size, "max_activation": float(acts.max()),
                    "mean_activation": float(fired.mean()) if fired.size else None,
                    "hist_counts": np.histogram(fired, bins=4)[0].tolist() if fired.size else [0] * 4,
                    "hist_edges": (np.histogram(fired, bins=4)[1].tolist() if fired.size else [0.0] * 5),
                })
                if dead:
                    continue
                ctx_max = acts.max(axis=1)
                for split in ("explain", "test"):
                    in_split = np.flatnonzero((doc_split[doc_of] == split) & (ctx_max > 0))
                    order = in_split[np.argsort(-ctx_max[in_split], kind="stable")]
                    chosen = {"top": order[:5], "random": rng.permutation(in_split)[:8]}
                    non = np.flatnonzero((doc_split[doc_of] == split) & (ctx_max == 0))[:2]
                    chosen["nonactivating"] = non
                    for kind, ids in chosen.items():
                        for rank, cid in enumerate(ids):
                            examples.append({
                                "run_id": run_id, "feature_id": f, "split": split, "kind": kind, "rank": rank,
                                "context_id": int(cid), "max_activation": float(ctx_max[cid]),
                                "activations": acts[cid].astype(np.float32).tolist(),
                            })
            store.add_features(pd.DataFrame(feats))
            store.add_examples(pd.DataFrame(examples))
            store.finish_run(run_id, n_contexts * ctx_len)
        for e_i, explainer in enumerate(explainers):
            for f in range(n_features - n_dead):
                eid = short_hash({"run": run_id, "f": f, "m": explainer})
                failed = f == 5
                store.put_explanation({
                    "explanation_id": eid, "run_id": run_id, "feature_id": f, "explainer_model": explainer,
                    "prompt_name": "explain", "prompt_hash": "ph", "config_hash": "ch", "config": {},
                    "status": "parse_error" if failed else "ok",
                    "explanation": None if failed else (XSS_LABEL if f == 0 else f"the word w{f}"),
                    "raw_text": "x", "error": "could not parse <b>JSON</b>" if failed else None, "attempts": 1,
                })
                if failed:
                    continue
                base = float(np.clip(0.55 + score_shift + 0.05 * e_i + rng.normal(0, 0.15), -1, 1))
                test_ex = [e for e in examples if e["feature_id"] == f and e["split"] == "test"][:3]
                details = {"n_tokens": 48}
                if with_traces:
                    details["examples"] = [
                        {"context_id": e["context_id"], "kind": e["kind"], "true": e["activations"],
                         "simulated": [min(10.0, a * 2) for a in e["activations"]]} for e in test_ex
                    ]
                for scorer, value, chance in (("simulation", base, 0.0),
                                              ("detection", float(np.clip(base + 0.2, 0, 1)), 0.5)):
                    undefined = scorer == "simulation" and f == 7
                    store.put_score({
                        "score_id": short_hash({"e": eid, "s": scorer}), "explanation_id": eid, "run_id": run_id,
                        "feature_id": f, "scorer": scorer, "scorer_model": "sim-model", "prompt_hash": "sp",
                        "config_hash": "sc", "config": {}, "status": "undefined" if undefined else "ok",
                        "score": None if undefined else value, "chance": chance,
                        "details": details if scorer == "simulation" else {"n": 10},
                    })
        if metrics is not None:
            store.put_sae_metrics(run_id, metrics)
        if with_logits:
            rows = []
            for f in range(n_features):
                for direction, sign in (("promote", 1), ("suppress", -1)):
                    for rank in range(3):
                        tok = XSS if (f == 0 and rank == 0) else f" t{f}_{rank}"
                        rows.append({"feature_id": f, "direction": direction, "rank": rank, "token_id": rank,
                                     "token": tok, "value": sign * (3.0 - rank)})
            store.put_feature_logits(run_id, pd.DataFrame(rows))
        return run_id
    finally:
        store.close()
