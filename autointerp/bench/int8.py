"""The embedded LLM's int8 weight products against bf16, at the shipped Qwen models' layer shapes.

What `autointerp.models.int8` decides from: for each weight shape (Qwen2.5 0.5B and 1.5B MLP and attention
matrices) and number of rows (1-8: decoding one position per prompt; 64-2,048: reading prompts), the time of
the bf16 product, of torch's int8 weight-only kernel, and of dequantizing then multiplying in bf16, each as a
ratio to bf16 measured in the same run, plus the int8 output's relative error. Random weights of the real
shapes (the timing does not depend on the values). Run: `python -m autointerp.bench.int8 [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

#: (name, in_features, out_features): the largest and a small matrix of each shipped Qwen model.
SHAPES = [("qwen0.5b mlp up", 896, 4864), ("qwen0.5b mlp down", 4864, 896),
          ("qwen1.5b mlp up", 1536, 8960), ("qwen1.5b attn q", 1536, 1536)]
ROWS = [1, 4, 8, 64, 512, 2048]


def _ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1000 * (time.perf_counter() - started) / repeats


def main(argv: Sequence[str] | None = None) -> int:
    import torch
    from torch.nn import functional as F

    from autointerp.models.int8 import INT8_KERNEL_ROWS, Int8Linear, quantize_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per product")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"int8 kernel used up to {INT8_KERNEL_ROWS} rows; times are ms, ratios to bf16 (< 1: faster)")
    print(f"{'shape':22s} {'rows':>5s} {'bf16':>8s} {'int8 kernel':>12s} {'dequant+bf16':>13s} {'layer':>7s} {'rel err':>8s}")
    for name, k, n in SHAPES:
        weight = torch.randn(n, k, dtype=torch.bfloat16) * 0.02
        q, scales = quantize_rows(weight)
        layer = Int8Linear(q, scales, None)
        for rows in ROWS:
            x = torch.randn(rows, k, dtype=torch.bfloat16)
            bf16 = _ms(lambda: F.linear(x, weight), args.repeats)  # noqa: B023 - called before the next iteration
            kernel = _ms(lambda: torch._weight_int8pack_mm(x, q, scales), args.repeats)  # noqa: B023
            dequant = _ms(lambda: F.linear(x, layer.dequantized(torch.bfloat16)), args.repeats)  # noqa: B023
            chosen = _ms(lambda: layer(x), args.repeats)  # noqa: B023
            reference = F.linear(x, weight).float()
            error = float((layer(x).float() - reference).norm() / reference.norm())
            print(f"{name:22s} {rows:5d} {bf16:8.2f} {kernel / bf16:12.2f} {dequant / bf16:13.2f} "
                  f"{chosen / bf16:7.2f} {error:8.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
