"""`autointerp bench collect|llm|dictionary`: benchmarks that print ratios measured in one run.

Each benchmark module exposes `register(subparsers)`; they are separate so each stays readable alone.
"""

from __future__ import annotations

import argparse
import importlib

BENCH_MODULES = ["autointerp.bench.collect", "autointerp.bench.llm", "autointerp.bench.dictionary"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (collect overhead, LLM-stage throughput)")
    bench_sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    for module_name in BENCH_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # not built yet in this checkout
            if exc.name == module_name:
                continue
            raise
        module.register(bench_sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
