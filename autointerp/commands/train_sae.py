"""`autointerp train-sae`: train a small TopK SAE on a model's activations and save it in SAELens format."""

from __future__ import annotations

import argparse
from typing import Any

from autointerp.errors import UserError

_DEFAULTS = {
    "tokens": 300_000,
    "latents": 4608,
    "k": 32,
    "ctx_len": 64,
    "batch_size": 256,
    "model_batch_size": 32,
    "seed": 0,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-sae",
        help="train a small TopK SAE at a hook (SAELens format out)",
        description="Train a TopK SAE on activations at --hook (position 0 of every context is skipped) and "
        "write it to --out in SAELens format, with training.json (tokens, steps, FVE, dead fraction, seconds).",
    )
    parser.add_argument("--model", default="smollm2", help="HF model directory, .gguf file, or 'smollm2'")
    parser.add_argument(
        "--hook", default="layers.15", help="layers.N (residual after layer N), layers.N.mlp, layers.N.attn"
    )
    parser.add_argument(
        "--corpus",
        default="wiki",
        help="wiki (built in), or a .txt/.jsonl/.parquet file or directory (default: wiki)",
    )
    parser.add_argument(
        "--text-field", default="text", help="JSONL/parquet field holding the text (default: text)"
    )
    parser.add_argument(
        "--tokens", type=int, default=_DEFAULTS["tokens"], help="training tokens (default 300000)"
    )
    parser.add_argument("--latents", type=int, default=_DEFAULTS["latents"], help="SAE width (default 4608)")
    parser.add_argument(
        "--k",
        default=str(_DEFAULTS["k"]),
        help="active latents per token (default 32); several (16,64) train one SAE each on the "
        "same model pass, written to --out with {k} replaced",
    )
    parser.add_argument(
        "--out", required=True, help="output SAE directory (must not exist unless --overwrite)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=_DEFAULTS["batch_size"],
        help="tokens per optimiser step (default 256)",
    )
    parser.add_argument(
        "--model-batch-size",
        type=int,
        default=_DEFAULTS["model_batch_size"],
        help="contexts per model forward (default 32)",
    )
    parser.add_argument(
        "--ctx-len", type=int, default=_DEFAULTS["ctx_len"], help="context length in tokens (default 64)"
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="Adam learning rate (default 2e-3 * sqrt(4608 / latents))"
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from autointerp.sae.train import TrainConfig, train_topk_saes

    try:
        ks = [int(k) for k in str(args.k).split(",")]
    except ValueError:
        raise UserError(
            f"--k {args.k!r} is not an integer or a comma list", "e.g. --k 32 or --k 16,64"
        ) from None
    if len(ks) > 1 and "{k}" not in args.out:
        raise UserError(
            f"--k {args.k} trains {len(ks)} SAEs but --out {args.out!r} has no {{k}}",
            "put {k} in --out, e.g. --out sae-k{k}",
        )
    if len(set(ks)) != len(ks):
        raise UserError(f"--k {args.k} repeats a value", "list each k once")
    args.k = min(ks)
    for name in ("tokens", "latents", "k", "batch_size", "model_batch_size", "ctx_len"):
        if getattr(args, name) <= 0:
            raise UserError(
                f"--{name.replace('_', '-')} must be positive",
                f"e.g. --{name.replace('_', '-')} {_DEFAULTS[name]}",
            )
    cfg = TrainConfig(
        model=args.model,
        hook=args.hook,
        corpus=args.corpus,
        text_field=args.text_field,
        tokens=args.tokens,
        latents=args.latents,
        k=args.k,
        ctx_len=args.ctx_len,
        batch_size=args.batch_size,
        model_batch_size=args.model_batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )
    for k in ks:
        if not 1 <= k <= args.latents:
            raise UserError(f"--k {k} must be between 1 and --latents", "e.g. --k 32")
    cfgs = [replace(cfg, k=k) for k in ks]
    outs = [args.out.replace("{k}", str(k)) for k in ks]
    for cfg, result in zip(
        cfgs,
        train_topk_saes(cfgs, outs, overwrite=args.overwrite, progress=not args.no_progress),
        strict=True,
    ):
        _print_result(cfg, result)
    return 0


def _print_result(cfg: Any, result: Any) -> None:
    print(
        f"trained {cfg.latents} latents (k={cfg.k}) on {result.tokens} tokens in {result.steps} steps, "
        f"{result.seconds:.0f} s (model forward {result.seconds_model:.0f} s)\n"
        f"fraction of variance explained on {result.eval_tokens} held-out tokens: {result.fve:.3f} "
        f"(before training {result.initial_fve:.3f}); on ordinary tokens {result.fve_typical:.3f} "
        f"(without the {100 * result.massive_fraction:.2f}% massive-activation tokens, norm > 10x median)\n"
        f"L0 {result.l0:.1f}; dead latents {100 * result.dead_fraction:.1f}%\n"
        f"SAE written to {result.out_dir} (SAELens format; training.json beside it)"
    )
