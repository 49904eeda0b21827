"""`autointerp match-features`: the partners in SAE B of a feature sample of SAE A (decoder cosine).

WHY: two SAEs' seeded samples barely overlap once their decoders differ, so `compare` has few matched
pairs whose both sides were scored. Printing B's best matches of A's sample (as an id list `explain
--features` reads) lets a study label and score both sides of every matched pair.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "match-features",
        help="print the best decoder-cosine matches in SAE --to of a feature sample of SAE --from",
        description="Selects features of --from (like explain --features), finds each one's best match in --to "
        "by decoder cosine, and prints the matched --to ids (cosine >= --threshold) comma-separated on stdout, "
        "ready for `explain --features`. A summary goes to stderr.",
    )
    parser.add_argument("--db", required=True, help="workspace DuckDB file holding both SAEs (after collect)")
    parser.add_argument("--from", dest="source", required=True, help="SAE name whose features are sampled")
    parser.add_argument("--to", dest="target", required=True, help="SAE name whose matches are printed")
    parser.add_argument(
        "--features", required=True, help="features of --from: ids, ranges, top:N, random:N, middle:N"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of random:N / middle:N (default %(default)s)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decoder cosine a match needs (default: compare's --match-threshold default, 'exists in both')",
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    import sys

    from autointerp.errors import UserError
    from autointerp.report.matching import DEFAULT_MATCH_THRESHOLD
    from autointerp.sae import load_sae
    from autointerp.sae.matching import match_decoders
    from autointerp.selection import parse_feature_spec
    from autointerp.store import Store

    if args.threshold is None:  # resolved here: importing the default at parser build time would load torch
        args.threshold = DEFAULT_MATCH_THRESHOLD
    if not -1.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold {args.threshold} is not a cosine", "use a value in [-1, 1], e.g. 0.7")
    with Store(args.db) as store:
        a, b = store.resolve_run(args.source), store.resolve_run(args.target)
        if (a.model, a.hook) != (b.model, b.hook):
            raise UserError(
                f"{args.source} ({a.model} {a.hook}) and {args.target} ({b.model} {b.hook}) sit at "
                "different models/hooks",
                "match SAEs trained on the same model and hook",
            )
        ids = parse_feature_spec(
            args.features, store.features(a.run_id), store.alive_feature_ids(a.run_id), seed=args.seed
        )
    match = match_decoders(load_sae(a.sae_path).W_dec.detach(), load_sae(b.sae_path).W_dec.detach())
    partners = sorted({int(match.best_b[i]) for i in ids if match.cos_a[i] >= args.threshold})
    print(
        f"match-features: {len(partners)} of {len(ids)} {args.source} features have a {args.target} match at "
        f"cosine >= {args.threshold:g}",
        file=sys.stderr,
    )
    print(",".join(str(i) for i in partners))
    return 0
