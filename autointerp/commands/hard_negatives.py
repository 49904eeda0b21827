"""`autointerp hard-negatives`: store each feature's hard negatives (neighbours' top contexts it does not fire on)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from autointerp.collect.hard_negative_options import HardNegativeOptions

    d = HardNegativeOptions()
    parser = subparsers.add_parser(
        "hard-negatives",
        help="store hard negatives per feature (top contexts of decoder-cosine neighbours it does not fire on)",
        description="For each chosen feature, read the top contexts of its nearest features by decoder cosine, run "
        "the model and SAE over them, and store those on which the feature stays at 0 as example kind "
        "'hard_negative' (both splits). Then `score --negatives hard` scores against them. Rerunning replaces them.",
    )
    parser.add_argument("--db", required=True, help="workspace DuckDB file (after collect)")
    parser.add_argument("--sae-name", default=None, help="which SAE in the workspace (needed when it holds several)")
    parser.add_argument("--features", default=None,
                        help="ids and ranges (1,5,9 or 0-99), top:N, random:N or middle:N (default: the labelled features)")
    parser.add_argument("--neighbours", type=int, default=d.n_neighbours,
                        help="nearest features whose top contexts are candidates (default %(default)s)")
    parser.add_argument("--per-feature", type=int, default=d.per_feature,
                        help="hard negatives kept per feature and split (default %(default)s)")
    parser.add_argument("--neighbour-top", type=int, default=d.neighbour_top,
                        help="top contexts read per neighbour (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="contexts per forward (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random:N / middle:N selections")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model and SAE dtype")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from autointerp.collect.hard_negatives import HardNegativeOptions, find_hard_negatives
    from autointerp.errors import UserError
    from autointerp.models import load_model
    from autointerp.sae import check_sae_matches, load_sae
    from autointerp.selection import parse_feature_spec
    from autointerp.store import Store

    for name in ("neighbours", "per_feature", "neighbour_top", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1", f"e.g. --{name.replace('_', '-')} 8")
    options = HardNegativeOptions(n_neighbours=args.neighbours, per_feature=args.per_feature,
                                  neighbour_top=args.neighbour_top, batch_size=args.batch_size)
    with Store(args.db) as store:
        run = store.resolve_run(args.sae_name)
        labelled = sorted({int(f) for f in store.explanations(run.run_id, status="ok")["feature_id"]})
        if args.features:
            feature_ids = parse_feature_spec(args.features, store.features(run.run_id), store.alive_feature_ids(
                run.run_id), seed=args.seed)
        elif labelled:
            feature_ids = labelled
        else:
            raise UserError("no labelled features to find hard negatives for",
                            "pass --features (e.g. middle:24), or run `autointerp explain` first")
        lm = load_model(run.model, args.device, args.dtype)
        sae = load_sae(run.sae_path, args.device, args.dtype)
        check_sae_matches(sae, lm.hidden_size, run.hook)
        summary = find_hard_negatives(store, run, lm, sae, feature_ids, options)
    print(summary.format())
    return 0
