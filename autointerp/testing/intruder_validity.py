"""Validity of the intruder scorers: planted features (clean token sets) against random latents of a random SAE.

Why: the intruder scorers read no label, so the shuffled-label baseline says nothing about them; what they
must show is that coherent features score far above incoherent ones. Planted features fire exactly on a
token set (`planted.validity_features`, over real wiki text cut by SmolLM2's tokenizer); the random latents
are features of an SAE with random weights, collected by the real `collect` over the built-in wiki corpus
on SmolLM2's residual stream. Both are scored with each scorer asked (`--scorer`: `intruder`, the judge's
chat answer, and/or `intruder_likelihood`, its in-context likelihood gain) and the same settings; a table
per scorer gives each group's mean accuracy with its bootstrap 95 % CI, the chance level, the AUC, and the
difference planted - random (unpaired bootstrap CI, permutation p). It separates when that CI lies above 0
and planted's own CI lies above chance (`verdict`).

    python -m autointerp.testing.intruder_validity --llm local:smollm2 [--scorer intruder_likelihood]
        [--n-features 26] [--db PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from autointerp.report.stats import Difference
from autointerp.store import RunInfo, Store
from autointerp.testing.tables import render_table

RANDOM_SAE_NAME = "random-sae"


@dataclass(frozen=True)
class GroupResult:
    name: str
    n: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    chance: float | None
    auc_mean: float | None
    raw_mean: float | None
    statuses: str


def write_random_sae(directory: Path, d_in: int, d_sae: int, k: int, seed: int) -> Path:
    """A TopK SAE with random unit-norm directions (decoder = encoder transpose), in SAELens format."""
    from autointerp.sae import save_saelens
    from autointerp.sae.base import SAE, SAEConfig

    generator = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, k=k))
    with torch.no_grad():
        w = torch.randn(d_in, d_sae, generator=generator)
        sae.W_enc.copy_(w / w.norm(dim=0, keepdim=True))
        sae.W_dec.copy_(sae.W_enc.T)
    return save_saelens(sae.eval(), directory)


#: The scorers the harness checks, and what its second-to-last column shows for each (from details).
SCORERS = {
    "intruder": ("raw_accuracy", "raw answers' accuracy"),
    "intruder_likelihood": ("accuracy_all_tokens", "accuracy, all tokens scored"),
}


def intruder_scores(
    store: Store, run_id: str, model: str, ids: list[int], scorer: str = "intruder"
) -> pd.DataFrame:
    """This judge's scores by `scorer` of the features asked (a workspace may hold other judges' and sizes')."""
    scores = store.label_free_scores(run_id)
    keep = (scores["scorer"] == scorer) & (scores["scorer_model"] == model) & scores["feature_id"].isin(ids)
    return scores[keep]


def group_result(scores: pd.DataFrame, name: str, seed: int, extra: str = "raw_accuracy") -> GroupResult:
    """A group's mean accuracy with its CI; `extra` names the details field averaged into `raw_mean`."""
    from autointerp.report.stats import STATISTICS, bootstrap_ci

    ok = scores[scores["status"] == "ok"]
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(scores["status"].value_counts().items())) or "none"
    if ok.empty:
        return GroupResult(name, 0, None, None, None, None, None, None, statuses)
    est = bootstrap_ci(ok["score"].to_numpy(dtype=float), STATISTICS["mean"], 2000, seed)
    details = [json.loads(d) for d in ok["details"]]
    aucs = [a for d in details if isinstance(a := d.get("auc"), int | float)]
    raws = [r for d in details if isinstance(r := d.get(extra), int | float)]
    return GroupResult(
        name,
        len(ok),
        est.value,
        est.low,
        est.high,
        float(ok["chance"].mean()),
        float(np.mean(aucs)) if aucs else None,
        float(np.mean(raws)) if raws else None,
        statuses,
    )


def format_table(
    rows: list[GroupResult], diff: Difference, markdown: bool = False, extra: str = "raw answers' accuracy"
) -> str:
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    head = [
        "features",
        "n",
        "mean accuracy [95 % CI]",
        "chance",
        "mean AUC",
        extra,
        "statuses",
    ]
    body = [
        [
            r.name,
            str(r.n),
            f"{f(r.mean)} [{f(r.ci_low)}, {f(r.ci_high)}]",
            f(r.chance),
            f(r.auc_mean),
            f(r.raw_mean),
            r.statuses,
        ]
        for r in rows
    ]
    d = diff
    body.append(
        [
            "planted - random",
            "",
            f"{d.diff:+.3f} [{d.low:+.3f}, {d.high:+.3f}], p {d.p_value:.4f}",
            "",
            "",
            "",
            verdict(rows[0], d),
        ]
    )
    return render_table(head, body, markdown)


def verdict(planted: GroupResult, diff: Difference) -> str:
    """In words: does the scorer tell planted features from random latents?

    Both must hold: planted - random has a CI above 0, AND planted's own CI lies above chance. A gap that
    comes only from random latents scoring BELOW chance (a judge biased against some answer positions)
    is not the scorer recognising coherent features, and is not reported as separation."""
    if not diff.low > 0:  # also NaN (a group with no ok score)
        return "does not separate (CI of the difference includes 0)"
    if planted.ci_low is None or planted.chance is None or planted.ci_low <= planted.chance:
        return "does not separate: planted features are not above chance (the gap is random latents below it)"
    return "separates"


def collect_random_sae(db: Path, work: Path, tokens: int, d_sae: int, k: int, seed: int) -> None:
    from autointerp.cli import main as cli_main

    sae_dir = write_random_sae(work / "random-sae", 576, d_sae, k, seed)
    code = cli_main(
        [
            "collect",
            "--model",
            "smollm2",
            "--hook",
            "layers.15",
            "--sae",
            str(sae_dir),
            "--corpus",
            "wiki",
            "--tokens",
            str(tokens),
            "--ctx-len",
            "32",
            "--db",
            str(db),
            "--sae-name",
            RANDOM_SAE_NAME,
            "--no-progress",
            "--seed",
            str(seed),
        ]
    )
    if code != 0:
        raise SystemExit(f"collect of the random SAE failed with exit code {code}")


def random_latents(store: Store, run: RunInfo, n: int, seed: int, min_firing: int = 20) -> list[int]:
    features = store.features(run.run_id)
    live = features[features["firing_count"] >= min_firing]["feature_id"].astype(int).to_numpy()
    rng = np.random.default_rng(seed)
    return sorted(int(f) for f in rng.choice(live, size=min(n, len(live)), replace=False))


def main(argv: list[str] | None = None) -> int:
    from autointerp.llm import add_llm_arguments, client_from_args
    from autointerp.models import load_tokenizer
    from autointerp.report.stats import unpaired_difference
    from autointerp.score.config import ScoreConfig
    from autointerp.score.runner import ascore_features
    from autointerp.testing.planted import build_planted_store, validity_features, wiki_documents

    parser = argparse.ArgumentParser(
        prog="python -m autointerp.testing.intruder_validity", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--db", default=None, help="workspace to write (default: a temporary file)")
    parser.add_argument(
        "--n-features", type=int, default=26, help="planted features, and as many random latents"
    )
    parser.add_argument("--n-docs", type=int, default=800, help="wiki documents of the planted store")
    parser.add_argument("--tokens", type=int, default=40_000, help="wiki tokens collected for the random SAE")
    parser.add_argument("--d-sae", type=int, default=512, help="random SAE width")
    parser.add_argument("--k", type=int, default=16, help="random SAE TopK")
    parser.add_argument("--rounds", type=int, default=5, help="intruder questions per feature")
    parser.add_argument(
        "--scorer",
        default="intruder,intruder_likelihood",
        help="comma-separated: intruder (the judge's chat answer), intruder_likelihood (its in-context "
        "likelihood gain); default both, one table each",
    )
    parser.add_argument("--no-highlight", action="store_true", help="intruder: no token marks")
    parser.add_argument(
        "--no-debias", action="store_true", help="intruder: one order per question, no rotations"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true")
    add_llm_arguments(parser)
    args = parser.parse_args(argv)
    scorers = [s.strip() for s in args.scorer.split(",") if s.strip()]
    unknown = sorted(set(scorers) - set(SCORERS))
    if unknown or not scorers:
        parser.error(f"--scorer takes {', '.join(SCORERS)} (comma-separated), got {args.scorer!r}")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="intruder-validity-"))
    db = Path(args.db) if args.db else work / "intruder.duckdb"
    with Store(db) as store:
        planted = store.run_by_name("planted")
    if planted is None:
        tokenizer = load_tokenizer("smollm2")
        features = validity_features()[: args.n_features]
        with Store(db) as store:
            build_planted_store(
                store,
                wiki_documents(tokenizer, args.n_docs),
                features,
                {"planted:right": [f.label for f in features]},
                seed=args.seed,
            )
    with Store(db) as store:
        random_run = store.run_by_name(RANDOM_SAE_NAME)
    if random_run is None:
        collect_random_sae(db, work, args.tokens, args.d_sae, args.k, args.seed)
    config = ScoreConfig(
        n_activating=10,
        n_top=2,
        intruder_rounds=args.rounds,
        seed=args.seed,
        intruder_highlight=not args.no_highlight,
        intruder_debias=not args.no_debias,
    )
    client = client_from_args(args)
    with Store(db) as store:
        planted, random_run = store.run_by_name("planted"), store.run_by_name(RANDOM_SAE_NAME)
        assert planted is not None and random_run is not None
        planted_ids = [int(f) for f in store.features(planted.run_id)["feature_id"]][: args.n_features]
        random_ids = random_latents(store, random_run, len(planted_ids), args.seed)

        timings: dict[str, float] = {}

        async def go() -> None:
            try:
                for scorer in scorers:
                    began = time.perf_counter()
                    for run, ids in ((planted, planted_ids), (random_run, random_ids)):
                        await ascore_features(store, run, client, [scorer], config, ids, progress=False)
                    timings[scorer] = time.perf_counter() - began
            finally:
                await client.aclose()

        asyncio.run(go())
        tables = []
        for scorer in scorers:
            field, column = SCORERS[scorer]
            a = intruder_scores(store, planted.run_id, client.model_name, planted_ids, scorer)
            b = intruder_scores(store, random_run.run_id, client.model_name, random_ids, scorer)
            rows = [
                group_result(a, "planted", args.seed, field),
                group_result(b, "random SAE latents", args.seed, field),
            ]
            diff = unpaired_difference(
                a[a["status"] == "ok"]["score"].to_numpy(float),
                b[b["status"] == "ok"]["score"].to_numpy(float),
                seed=args.seed,
            )
            tables.append((scorer, rows, diff, column))

    print(
        f"{client.model_name}: {config.intruder_n_activating} activating + 1 intruder per question, "
        f"{args.rounds} questions per feature, highlight {'off' if args.no_highlight else 'on'}, debias "
        f"(intruder only) {'off' if args.no_debias else 'on'}; random SAE "
        f"{args.d_sae} latents k={args.k} on smollm2 layers.15 over {args.tokens} wiki tokens; db {db}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    for scorer, rows, diff, column in tables:
        print(f"\nscorer {scorer} ({timings.get(scorer, 0.0):.0f} s scoring):")
        print(format_table(rows, diff, markdown=args.markdown, extra=column))
    return 0


if __name__ == "__main__":
    sys.exit(main())
