"""`autointerp evaluate`: SAE-level metrics (L0, variance explained, CE loss recovered) and the output view."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="SAE metrics on the test split (L0, FVE, MSE, dead/dense, CE loss recovered) + output view",
        description="Stream the test split's contexts of a collected run through the model and the SAE and "
        "store L0, fraction of variance explained, MSE and dead/dense fractions; with --ce-tokens N also "
        "the next-token loss with the SAE spliced in at the hook against the clean and the ablated model "
        "(CE loss recovered; three full forward passes per batch). Also stores, per feature, the tokens "
        "its decoder direction promotes and suppresses through the unembedding (the output view). "
        "Position 0 of every context (the attention sink) is excluded from every metric.",
    )
    parser.add_argument("--db", required=True, help="workspace DuckDB file written by `autointerp collect`")
    parser.add_argument("--sae-name", default=None, help="which SAE in the workspace (needed when it holds several)")
    parser.add_argument("--tokens", type=int, default=50_000,
                        help="test-split tokens for L0 / FVE / MSE (default %(default)s)")
    parser.add_argument("--ce-tokens", type=int, default=0,
                        help="test-split tokens for CE loss recovered; 0 skips it (default %(default)s)")
    parser.add_argument("--ablation", choices=["zero", "mean"], default="zero",
                        help="the baseline for CE loss recovered: hook output set to zero or to its mean "
                        "over the evaluated tokens (default %(default)s)")
    parser.add_argument("--no-output-view", action="store_true", help="skip the per-feature output view")
    parser.add_argument("--output-top-k", type=int, default=10,
                        help="promoted and suppressed tokens kept per feature (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="model and SAE dtype; metrics are accumulated in float64 (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="contexts per forward pass (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=handle)


def _check_args(args: argparse.Namespace) -> None:
    from autointerp.errors import UserError

    if args.tokens < 1:
        raise UserError(f"--tokens {args.tokens} must be at least 1", "e.g. --tokens 50000")
    if args.ce_tokens < 0:
        raise UserError(f"--ce-tokens {args.ce_tokens} must be >= 0", "0 skips CE loss; e.g. --ce-tokens 10000")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1", "e.g. --batch-size 16")
    if args.output_top_k < 1:
        raise UserError(f"--output-top-k {args.output_top_k} must be at least 1", "e.g. --output-top-k 10")


def _progress_factory(enabled: bool, bars: list[Any]):
    from tqdm import tqdm

    def make(label: str, total: int):
        unit = "feat" if label == "output view" else "tok"
        bar = tqdm(total=total, desc=label, unit=unit, unit_scale=True, disable=not enabled, dynamic_ncols=True)
        bars.append(bar)
        return bar.update

    return make


def format_summary(sae_name: str, metrics: dict[str, float | None], n_logit_rows: int | None) -> str:
    order = ["n_eval_tokens", "l0", "fve", "mse", "dead_fraction", "dense_fraction", "ce_loss_clean",
             "ce_loss_sae", "ce_loss_zero_ablation", "ce_loss_mean_ablation", "ce_loss_recovered"]
    lines = [f"SAE {sae_name}:"]
    for name in order + sorted(set(metrics) - set(order)):
        if name not in metrics:
            continue
        value = metrics[name]
        text = "undefined" if value is None else (f"{int(value)}" if name == "n_eval_tokens" else f"{value:.4g}")
        lines.append(f"  {name:<24}{text}")
    if n_logit_rows is not None:
        lines.append(f"  output view: {n_logit_rows} rows stored (feature_logits)")
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    from autointerp.evaluate.sae_metrics import MetricOptions
    from autointerp.evaluate.stage import EvaluateOptions, evaluate_sae
    from autointerp.evaluate.test_split import check_test_split, contexts_of_test_split
    from autointerp.models import load_model
    from autointerp.sae import check_sae_matches, load_sae
    from autointerp.store import Store

    _check_args(args)
    options = EvaluateOptions(
        metrics=MetricOptions(tokens=args.tokens, ce_tokens=args.ce_tokens, ablation=args.ablation),
        batch_size=args.batch_size, output_view=not args.no_output_view, output_top_k=args.output_top_k,
    )
    with Store(args.db) as store:
        run = store.resolve_run(args.sae_name)
        check_test_split(store, run)  # no test split: an error before any model loads
        lm = load_model(run.model, args.device, args.dtype)
        contexts = contexts_of_test_split(store, run, lm.tokenizer)
        sae = load_sae(run.sae_path, args.device, args.dtype)
        check_sae_matches(sae, lm.hidden_size, run.hook)
        bars: list[Any] = []
        try:
            result = evaluate_sae(store, run, lm, sae, contexts, options,
                                  _progress_factory(not args.no_progress, bars))
        finally:
            for bar in bars:
                bar.close()
    n_rows = None if result.feature_logits is None else len(result.feature_logits)
    print(format_summary(run.sae_name, result.metrics, n_rows))
    return 0
