"""`autointerp compare`: explanation scores of several SAEs side by side, with bootstrap CIs and tests."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare SAEs' explanation scores (bootstrap 95 %% CIs, significance) beside L0/FVE/CE loss",
        description="Reads one or more workspaces and writes an HTML comparison plus .csv (per scorer and SAE), "
        "-pairs.csv (pairwise differences) and .md beside it. Different SAEs are compared unpaired; two "
        "explanation sets of the same SAE run are compared paired by feature id.",
    )
    parser.add_argument("--db", action="append", required=True, help="workspace DuckDB file (repeatable)")
    parser.add_argument("--sae-names", help="comma-separated SAE names to include (default: all completed runs)")
    parser.add_argument("--out", default="reports/compare.html", help="output .html (default reports/compare.html)")
    parser.add_argument("--threshold", action="append", metavar="SCORER=VALUE",
                        help="'good feature' threshold per scorer (defaults: simulation 0.5, detection/fuzzing/"
                        "embedding 0.75); repeatable")
    parser.add_argument("--all-explainers", action="store_true",
                        help="one arm per explanation set (explainer/prompt) instead of the most complete per SAE")
    parser.add_argument("--explainer-model", "--source", dest="explainer_model",
                        help="use labels by this explainer model (or imported under this --source) in every SAE")
    parser.add_argument("--no-match", dest="match", action="store_false",
                        help="skip matching features across SAEs at the same model/hook by decoder cosine "
                        "(it reads each SAE's weights from the path recorded at collect time)")
    parser.add_argument("--match-threshold", type=float, default=None,
                        help="decoder cosine at which a feature 'exists in both' SAEs (default 0.7)")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--n-perm", type=int, default=2000, help="permutations for p-values (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for resampling (default 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autointerp.errors import UserError
    from autointerp.report.compare import CompareOptions, build_compare
    from autointerp.report.data import parse_thresholds
    from autointerp.report.writing import prepare_output

    if args.n_boot < 100 or args.n_perm < 100:
        raise UserError("--n-boot and --n-perm must be at least 100", "use the default 2000")
    if args.match_threshold is not None and not 0.0 < args.match_threshold <= 1.0:
        raise UserError(f"--match-threshold {args.match_threshold} is not a cosine in (0, 1]", "use e.g. 0.7 or 0.9")
    names = [n.strip() for n in args.sae_names.split(",") if n.strip()] if args.sae_names else None
    out = prepare_output(args.out, (".html", ".htm"))
    options = CompareOptions(thresholds=parse_thresholds(args.threshold), n_boot=args.n_boot, n_perm=args.n_perm,
                             seed=args.seed, all_explainers=args.all_explainers,
                             explainer_model=args.explainer_model, match=args.match,
                             **({} if args.match_threshold is None else {"match_threshold": args.match_threshold}))
    result = build_compare(args.db, names, out, options)
    n_sig = int(result.pairs["significant"].sum()) if not result.pairs.empty else 0
    print(f"compare: {result.html_path} ({result.summary['sae'].nunique() if not result.summary.empty else 0} "
          f"SAE arm(s), {len(result.pairs)} pairwise test(s), {n_sig} significant)")
    print(f"tables: {result.csv_path}, {result.pairs_csv_path}, {result.markdown_path}")
    if result.matching is not None:
        for m in result.matching.pairs.itertuples():
            print(f"matched {m.a} vs {m.b}: {m.n_in_both} of {m.d_sae_a} features of {m.a} exist in both "
                  f"(cosine >= {m.threshold:g}); {m.n_new_in_b} of {m.d_sae_b} in {m.b} are new")
        for reason in result.matching.skipped:
            print(f"matching skipped: {reason}")
        print(f"matches: {result.matches_csv_path}")
    return 0
