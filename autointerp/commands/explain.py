"""`autointerp explain`: label every live feature of a collected SAE with an explainer LLM."""

from __future__ import annotations

import argparse
import asyncio


def register(subparsers: argparse._SubParsersAction) -> None:
    from autointerp.explain.config import ExplainConfig
    from autointerp.llm import add_llm_arguments
    from autointerp.options import add_arguments

    parser = subparsers.add_parser(
        "explain",
        help="write a label for every live feature (resumable)",
        description="Label each live feature from its explain-split examples. Rerunning skips features that "
        "already have a label for the same model, prompt and settings, and redoes items that failed on the "
        "server side (errors, timeouts); --retry-failed also redoes replies that did not parse.",
    )
    parser.add_argument("--db", required=True, help="workspace DuckDB file written by `autointerp collect`")
    parser.add_argument("--sae-name", default=None, help="which SAE in the workspace (needed when it holds several)")
    add_llm_arguments(parser)
    parser.add_argument("--features", default=None,
                        help="subset: ids and ranges (1,5,9 or 0-99), top:N (densest N), random:N or middle:N (seeded)")
    parser.add_argument("--retry-failed", action="store_true", help="also redo replies that did not parse/validate")
    add_arguments(parser, ExplainConfig)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=handle)


def config_from_args(args: argparse.Namespace):  # -> ExplainConfig
    from autointerp.errors import UserError
    from autointerp.explain.config import ExplainConfig
    from autointerp.options import from_args

    try:
        return from_args(ExplainConfig, args)
    except ValueError as exc:
        raise UserError(str(exc), "see `autointerp explain --help` for the allowed values") from exc


def quiet_http_logs(args: argparse.Namespace) -> None:
    """httpx logs every request at INFO; at hundreds of requests/s that buries the progress bar."""
    import logging

    if not getattr(args, "verbose", False):
        logging.getLogger("httpx").setLevel(logging.WARNING)


def handle(args: argparse.Namespace) -> int:
    from autointerp.explain.run import explain
    from autointerp.llm import client_from_args
    from autointerp.prompting import load_prompt
    from autointerp.selection import parse_feature_spec
    from autointerp.store import Store

    quiet_http_logs(args)
    config = config_from_args(args)
    load_prompt(config.prompt)  # a missing template is a UserError before anything starts
    with Store(args.db) as store:
        run = store.resolve_run(args.sae_name)
        live = store.explainable_feature_ids(run.run_id)
        feature_ids = parse_feature_spec(args.features, store.features(run.run_id), live, seed=args.seed)
        client = client_from_args(args)

        async def go():
            try:
                await client.check()  # server down: a UserError here, before any item is written
                return await explain(store, run, client, config, feature_ids, args.retry_failed,
                                     progress=not args.no_progress)
            finally:
                await client.aclose()

        summary = asyncio.run(go())
        print(summary.format())
        print("  " + summary.label_quality(store, feature_ids)[0])
    return 0 if summary.n_failed == 0 else 1
