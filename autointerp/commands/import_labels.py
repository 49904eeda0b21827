"""`autointerp import-labels`: store labels written elsewhere as an explanation set of their own."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-labels",
        help="import labels (CSV/JSONL/JSON/parquet, or a Neuronpedia export) as an explanation set",
        description="Reads feature_id + label columns (optional source), or Neuronpedia's index + description, "
        "checks every row against the SAE (unknown ids, empty labels, a feature labelled twice: one error naming "
        "the row, nothing written) and stores them as an explanation set that score, report, compare and "
        "export treat like the explainer's own; pick it with --source NAME (or --explainer-model NAME).",
    )
    parser.add_argument("--db", required=True, help="workspace DuckDB file (after collect)")
    parser.add_argument(
        "--sae-name", default=None, help="which SAE (needed when the workspace holds several)"
    )
    parser.add_argument("--file", required=True, help="label file: .csv, .jsonl, .json or .parquet")
    parser.add_argument(
        "--source",
        default=None,
        help="name of the set (default: the file's source column, else the file name)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autointerp.explain.imported import label_rows, read_label_file
    from autointerp.store import Store

    with Store(args.db) as store:
        info = store.resolve_run(args.sae_name)
        valid = {int(f) for f in store.features(info.run_id)["feature_id"]}
        labels = read_label_file(args.file, valid, args.source)
        sets = label_rows(info.run_id, labels, Path(args.file).name)
        with store.transaction():  # all sets or none
            for rows in sets.values():
                store.put_explanations(rows)
    for source, rows in sets.items():
        print(
            f"import-labels: {len(rows)} label(s) of SAE {info.sae_name!r} as set {source!r} "
            f"(score them with --source {source})"
        )
    return 0
