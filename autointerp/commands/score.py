"""`autointerp score`: score every explanation of a collected SAE on its held-out test split."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

ALL_SCORERS = "simulation,detection,fuzzing,embedding"


def register(subparsers: argparse._SubParsersAction) -> None:
    from autointerp.llm import add_llm_arguments
    from autointerp.options import add_arguments
    from autointerp.score.config import ScoreConfig
    from autointerp.score.null import DEFAULT_NULL_SAMPLE

    parser = subparsers.add_parser(
        "score",
        help="score explanations: simulation, detection, detection_likelihood, fuzzing, embedding; intruder, "
        "intruder_likelihood (no label) (resumable)",
        description="Score each ok explanation on test-split contexts (documents the explainer never saw). "
        "Rerunning skips scores already stored for the same explanation, scorer, model, prompt and settings; "
        "--retry-failed redoes failed ones. Refuses to run if a test context shares a document with an "
        "explain-split example. The intruder scorers (intruder, intruder_likelihood) read no label: they score each "
        "feature once "
        "(the --features given, labelled or not; else the labelled ones).",
    )
    parser.add_argument("--db", required=True, help="workspace DuckDB file (after collect and explain)")
    parser.add_argument("--sae-name", default=None, help="which SAE in the workspace (needed when it holds several)")
    parser.add_argument("--scorers", default=ALL_SCORERS, help="comma-separated (default %(default)s)")
    add_llm_arguments(parser)
    parser.add_argument("--features", default=None, help="subset: ids and ranges (1,5,9 or 0-99), top:N, random:N or middle:N")
    parser.add_argument("--retry-failed", action="store_true", help="redo scores stored with a failure status")
    add_arguments(parser, ScoreConfig)
    parser.add_argument("--null-sample", type=int, default=DEFAULT_NULL_SAMPLE,
                        help="features per label set scored again with a shuffled label (another feature's "
                        "label), the baseline every score is read against (default: all scored, up to "
                        "%(default)s); 0 turns it off")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=handle)


def config_from_args(args: argparse.Namespace):  # -> ScoreConfig
    from autointerp.options import from_args
    from autointerp.score.config import ScoreConfig

    return from_args(ScoreConfig, args, n_top=min(args.n_top, args.n_activating))


def handle(args: argparse.Namespace) -> int:
    from autointerp.errors import UserError
    from autointerp.llm import client_from_args
    from autointerp.score import ascore_features, get_scorer_class
    from autointerp.score.null import ensure_null_sets
    from autointerp.store import Store
    from autointerp.store.sets import NULL_MODEL

    scorers = [s.strip() for s in args.scorers.split(",") if s.strip()]
    if not scorers:
        raise UserError("--scorers is empty", f"pass e.g. --scorers {ALL_SCORERS}")
    needs_client = any(get_scorer_class(s).needs_client for s in scorers)  # unknown names fail here
    config = config_from_args(args)
    import logging

    if not getattr(args, "verbose", False):
        logging.getLogger("httpx").setLevel(logging.WARNING)
    with Store(args.db) as store:
        run = store.resolve_run(args.sae_name)
        feature_ids = None
        if args.features:
            from autointerp.selection import parse_feature_spec

            explained = sorted({int(f) for f in store.explanations(run.run_id, status="ok")["feature_id"]})
            feature_ids = parse_feature_spec(args.features, store.features(run.run_id), explained, seed=args.seed)
        client = client_from_args(args) if needs_client else None

        if args.null_sample < 0:
            raise UserError(f"--null-sample must be >= 0, got {args.null_sample}", "pass 0 to turn it off, or e.g. 200")
        null_sets = ensure_null_sets(store, run.run_id, args.null_sample, args.seed, config.explainer_model,
                                     config.explanation_prompt)
        null_config = dataclasses.replace(config, explainer_model=NULL_MODEL, explanation_prompt=None)

        async def go():
            try:
                summaries = [await ascore_features(store, run, client, scorers, config, feature_ids,
                                                   args.retry_failed, progress=not args.no_progress)]
                if null_sets:
                    summaries.append(await ascore_features(store, run, client, scorers, null_config, feature_ids,
                                                           args.retry_failed, progress=not args.no_progress))
                return summaries
            finally:
                if client is not None:
                    await client.aclose()

        summaries = asyncio.run(go())
    print(summaries[0].format())
    if len(summaries) > 1:
        n_null = sum(s.n_features for s in null_sets)
        print(f"null baseline ({n_null} feature(s) with a shuffled label; `autointerp report` compares them):")
        print("\n".join(summaries[1].format().splitlines()[1:]))
    failed = sum(n for summary in summaries for s in summary.scorers.values() for k, n in s.status_counts.items()
                 if k not in ("ok", "undefined"))
    return 0 if failed == 0 else 1
