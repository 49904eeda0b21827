"""Are hard negatives harder? Planted features scored with their right labels against random and hard negatives.

Why: `score --negatives hard` is meant to make detection-style scores harder (a label that only says "this
kind of text" should no longer pass), but a claim of "harder" needs the same labels scored both ways on the
same features, paired, with a CI. Planted features (`planted.validity_features`, exact indicators over real
wiki text) have right labels by construction, so any drop comes from the negatives alone. A planted
feature has no decoder, so its neighbours are its siblings: the other planted features of the same kind
(token, token class, word class, span; e.g. female pronouns for male pronouns), the same role decoder
cosine plays for a real SAE. Its hard negatives are the siblings' top contexts on which it is 0 at every
position, stored as kind 'hard_negative' exactly as `autointerp hard-negatives` stores them. Each scorer's
table row gives the mean score against random and against hard negatives (bootstrap 95 % CIs) and the
paired difference hard - random (bootstrap CI, sign-flip p); "harder" when that CI lies below 0.

    python -m autointerp.testing.hard_negative_validity [--scorers embedding,detection] [--llm local:qwen0.5b]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from autointerp.collect.hard_negatives import HARD_NEGATIVE_KIND
from autointerp.store import Store
from autointerp.testing.planted import RIGHT, PlantedFeature
from autointerp.testing.tables import render_table


def sibling_order(features: Sequence[PlantedFeature], fid: int) -> list[int]:
    """The planted features of `fid`'s kind, nearest first: the following ones in list order, cyclically."""
    m = len(features)
    return [j for j in ((fid + s) % m for s in range(1, m)) if features[j].kind == features[fid].kind]


def write_hard_negatives(
    store: Store, run_id: str, features: Sequence[PlantedFeature], per_feature: int
) -> dict[int, int]:
    """Store each feature's hard negatives (both splits); returns feature id -> test hard negatives written.

    A candidate is a sibling's top context; it is kept only if the feature is 0 at every position of it
    (recomputed from the planted definition), and each context at most once per feature."""
    tops = store.examples(run_id, kinds=["top"])
    written: dict[int, int] = {}
    for fid, feature in enumerate(features):
        rows = []
        for split in ("explain", "test"):
            seen: set[int] = set()
            for sibling in sibling_order(features, fid):
                own = tops[(tops["feature_id"] == sibling) & (tops["split"] == split)].sort_values("rank")
                for rec in own.itertuples():
                    if len(seen) >= per_feature:
                        break
                    cid = int(rec.context_id)
                    if cid in seen or feature.activations(list(rec.token_ids), list(rec.tokens)).max() > 0:
                        continue
                    rows.append(
                        {
                            "run_id": run_id,
                            "feature_id": fid,
                            "split": split,
                            "kind": HARD_NEGATIVE_KIND,
                            "rank": len(seen),
                            "context_id": cid,
                            "max_activation": 0.0,
                            "activations": np.zeros(len(rec.token_ids), dtype=np.float32).tolist(),
                        }
                    )
                    seen.add(cid)
            if split == "test":
                written[fid] = len(seen)
        store.replace_examples(run_id, [fid], HARD_NEGATIVE_KIND, pd.DataFrame(rows))
    return written


@dataclass(frozen=True)
class HardnessRow:
    scorer: str
    n_pairs: int
    random_mean: float
    random_ci: tuple[float, float]
    hard_mean: float
    hard_ci: tuple[float, float]
    diff: float
    diff_ci: tuple[float, float]
    p_value: float

    @property
    def harder(self) -> bool:
        return self.diff_ci[1] < 0


def hardness_table(store: Store, run_id: str, scorers: Sequence[str], seed: int = 0) -> list[HardnessRow]:
    """Per scorer: the right labels' scores against random vs hard negatives, paired by feature."""
    from autointerp.report.stats import STATISTICS, bootstrap_ci, paired_difference

    frame = store.set_scores(run_id, RIGHT, "planted", "planted")
    frame = frame[frame["status"] == "ok"]
    rows = []
    for scorer in scorers:
        a = frame[frame["scorer"] == scorer][["feature_id", "score"]]
        b = frame[frame["scorer"] == f"{scorer}:hard"][["feature_id", "score"]]
        both = a.merge(b, on="feature_id", suffixes=("_random", "_hard"))
        if both.empty:
            continue
        r, h = both["score_random"].to_numpy(float), both["score_hard"].to_numpy(float)
        er, eh = (bootstrap_ci(x, STATISTICS["mean"], 2000, seed) for x in (r, h))
        d = paired_difference(h, r, seed=seed)
        rows.append(
            HardnessRow(
                scorer,
                len(both),
                er.value,
                (er.low, er.high),
                eh.value,
                (eh.low, eh.high),
                d.diff,
                (d.low, d.high),
                d.p_value,
            )
        )
    return rows


def format_hardness(rows: Sequence[HardnessRow], markdown: bool = False) -> str:
    head = [
        "scorer",
        "pairs",
        "random negatives [95 % CI]",
        "hard negatives [95 % CI]",
        "hard - random [95 % CI]",
        "p",
        "harder",
    ]
    body = [
        [
            r.scorer,
            str(r.n_pairs),
            f"{r.random_mean:.3f} [{r.random_ci[0]:.3f}, {r.random_ci[1]:.3f}]",
            f"{r.hard_mean:.3f} [{r.hard_ci[0]:.3f}, {r.hard_ci[1]:.3f}]",
            f"{r.diff:+.3f} [{r.diff_ci[0]:+.3f}, {r.diff_ci[1]:+.3f}]",
            f"{r.p_value:.4f}",
            "yes" if r.harder else "no (CI not below 0)",
        ]
        for r in rows
    ]
    return render_table(head, body, markdown)


def main(argv: list[str] | None = None) -> int:
    from autointerp.llm import add_llm_arguments, client_from_args
    from autointerp.models import load_tokenizer
    from autointerp.score.base import get_scorer_class
    from autointerp.score.config import ScoreConfig
    from autointerp.score.runner import ascore_features
    from autointerp.testing.planted import build_planted_store, validity_features, wiki_documents

    parser = argparse.ArgumentParser(
        prog="python -m autointerp.testing.hard_negative_validity", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--db", default=None, help="workspace to write (default: a temporary file)")
    parser.add_argument(
        "--scorers", default="embedding", help="comma-separated scorers (detection needs --llm)"
    )
    parser.add_argument("--n-docs", type=int, default=1500, help="wiki documents (half explain, half test)")
    parser.add_argument("--n-features", type=int, default=None, help="use only the first N planted features")
    parser.add_argument(
        "--n-test",
        type=int,
        default=5,
        help="activating test contexts per feature (and as many negatives of each kind)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    add_llm_arguments(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    features = validity_features()[: args.n_features]
    scorers = [s for s in args.scorers.split(",") if s]
    db = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="hard-negatives-")) / "planted.duckdb"
    client = client_from_args(args) if any(get_scorer_class(s).needs_client for s in scorers) else None
    config = dataclasses.replace(
        ScoreConfig(n_activating=args.n_test, n_top=min(2, args.n_test), seed=args.seed),
        explainer_model=RIGHT,
    )
    with Store(db) as store:
        info = store.run_by_name("planted")
        if info is None:
            docs = wiki_documents(load_tokenizer("smollm2"), args.n_docs)
            build_planted_store(store, docs, features, {RIGHT: [f.label for f in features]}, seed=args.seed)
            info = store.run_by_name("planted")
        assert info is not None
        written = write_hard_negatives(store, info.run_id, features, args.n_test)

        async def go() -> None:
            try:
                for negatives in ("random", "hard"):
                    chosen = dataclasses.replace(config, negatives=negatives)
                    await ascore_features(store, info, client, scorers, chosen, progress=False)
            finally:
                if client is not None:
                    await client.aclose()

        asyncio.run(go())
        rows = hardness_table(store, info.run_id, scorers, seed=args.seed)
    model = client.model_name if client else "no LLM"
    short = sum(1 for n in written.values() if n < args.n_test)
    print(
        f"{len(features)} planted features, right labels scored with {model} against random and hard negatives "
        f"(siblings' top contexts where the feature is 0; {short} feature(s) got fewer than {args.n_test} test "
        f"hard negatives); {args.n_test} activating test contexts per feature; db {db}; "
        f"{time.perf_counter() - started:.0f} s"
    )
    print(format_hardness(rows, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
