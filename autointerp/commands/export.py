"""`autointerp export`: one row per feature as parquet (schema: docs/parquet-schema.md) or Neuronpedia JSONL."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write the feature catalog (labels, scores, statistics, top contexts) as parquet or Neuronpedia JSONL",
        description="One row per feature of one SAE, written by DuckDB. Features without a label are included "
        "(label NULL, explanation_status says why). Schema: docs/parquet-schema.md.",
    )
    parser.add_argument("--db", required=True, help="workspace DuckDB file")
    parser.add_argument("--sae-name", help="which SAE (needed when the workspace holds several)")
    parser.add_argument("--out", required=True, help="output file: .parquet, or .jsonl for --format neuronpedia")
    parser.add_argument("--format", choices=["parquet", "neuronpedia"], default="parquet",
                        help="parquet (default) or neuronpedia (JSON Lines, one feature per line)")
    parser.add_argument("--explainer-model", "--source", dest="explainer_model",
                        help="export labels by this explainer, or imported under this --source "
                        "(default: the most complete set)")
    parser.add_argument("--n-contexts", type=int, default=10, help="top contexts per feature (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autointerp.errors import UserError
    from autointerp.report.export import FORMATS, export_catalog
    from autointerp.report.writing import prepare_output
    from autointerp.store import Store

    if args.n_contexts < 0:
        raise UserError("--n-contexts must be >= 0", "pass e.g. 10")
    out = prepare_output(args.out, FORMATS[args.format])
    with Store(args.db, read_only=True) as store:
        result = export_catalog(store, args.sae_name, out, args.format, args.explainer_model, args.n_contexts)
    scorers = ", ".join(result.scorers) or "none"
    print(f"export: {result.path} ({result.n_rows} features, scorers: {scorers})")
    return 0
