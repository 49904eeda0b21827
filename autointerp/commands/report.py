"""`autointerp report`: a self-contained HTML monosemanticity report (+ Markdown summary) for one SAE."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write one self-contained HTML report (and a .md summary beside it) for one SAE",
        description="Reads a workspace and writes an HTML report that needs no network to view: score "
        "distributions, thresholds, density plots, dead/dense counts, and a searchable feature table whose "
        "rows open per-feature cards. A Markdown summary with the same stem is written beside it.",
    )
    parser.add_argument("--db", required=True, help="workspace DuckDB file")
    parser.add_argument("--sae-name", help="which SAE (needed when the workspace holds several)")
    parser.add_argument("--out", help="output .html (default reports/<sae-name>.html)")
    parser.add_argument("--explainer-model", "--source", dest="explainer_model",
                        help="show labels by this explainer, or imported under this --source "
                        "(default: the most complete set)")
    parser.add_argument("--max-cards", type=int, default=1000,
                        help="features with a full card (labelled first, then most active); default 1000")
    parser.add_argument("--n-top", type=int, default=8, help="top contexts per card (default 8)")
    parser.add_argument("--dense-threshold", type=float, default=0.1,
                        help="density above which a feature counts as dense (default 0.1)")
    parser.add_argument("--threshold", action="append", metavar="SCORER=VALUE",
                        help="'good feature' threshold per scorer (defaults: simulation 0.5, detection/fuzzing/"
                        "embedding 0.75); repeatable")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autointerp.errors import UserError
    from autointerp.report.data import parse_thresholds
    from autointerp.report.feature_report import ReportOptions, build_report
    from autointerp.report.writing import prepare_output
    from autointerp.store import Store

    if args.max_cards < 0 or args.n_top < 0:
        raise UserError("--max-cards and --n-top must be >= 0", "pass a non-negative number")
    if not 0 < args.dense_threshold <= 1:
        raise UserError(f"--dense-threshold {args.dense_threshold} is not in (0, 1]", "pass e.g. 0.1")
    options = ReportOptions(max_cards=args.max_cards, n_top=args.n_top, dense_threshold=args.dense_threshold,
                            thresholds=parse_thresholds(args.threshold), explainer_model=args.explainer_model)
    with Store(args.db, read_only=True) as store:
        run_info = store.resolve_run(args.sae_name)
        safe_name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in run_info.sae_name).lstrip(".")
        out = prepare_output(args.out or Path("reports") / f"{safe_name or 'sae'}.html", (".html", ".htm"))
        result = build_report(store, run_info.sae_name, out, options)
    print(f"report: {result.html_path} ({result.n_features} features, {result.n_cards} cards)")
    print(f"summary: {result.markdown_path}")
    return 0
