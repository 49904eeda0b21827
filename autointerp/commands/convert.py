"""`autointerp convert`: write a GGUF (or any local) model as a Hugging Face directory vLLM can serve."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="write a GGUF model (e.g. smollm2) as a Hugging Face directory (safetensors + tokenizer)",
        description="De-quantize a GGUF model with transformers and save it as a Hugging Face directory "
        "(safetensors, config, tokenizer with its chat template), e.g. for `autointerp serve` / vLLM, "
        "which cannot read GGUF.",
    )
    parser.add_argument("--model", required=True, help="built-in name (smollm2), a .gguf file, or a model directory")
    parser.add_argument(
        "--out",
        default=None,
        help="output directory (default: the cache, ~/.cache/autointerp/models/..., reused by `autointerp serve`)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the saved weights; float32 keeps the de-quantized GGUF exact (default)",
    )
    parser.add_argument("--force", action="store_true", help="replace --out if it already exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autointerp.models.convert import cached_hf_dir, convert_to_hf

    if args.out is None:
        out = cached_hf_dir(args.model, dtype=args.dtype)
    else:
        out = convert_to_hf(args.model, args.out, dtype=args.dtype, overwrite=args.force)
    print(out)
    return 0
