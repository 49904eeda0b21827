"""`autointerp` command line. Each subcommand lives in `autointerp/commands/<name>.py` and exposes
`register(subparsers)`; heavy imports (torch, transformers) happen inside the handlers so that
`autointerp --help` and bad-argument errors are instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from autointerp import __version__
from autointerp.errors import UserError

COMMAND_MODULES = [
    "train_sae",
    "collect",
    "evaluate",
    "explain",
    "import_labels",
    "score",
    "report",
    "compare",
    "export",
    "run",
    "demo",
    "serve",
    "convert",
    "bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autointerp",
        description="Label and score sparse-autoencoder features with LLMs (DuckDB is the store of record).",
    )
    parser.add_argument("--version", action="version", version=f"autointerp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module_name = f"autointerp.commands.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a command not built yet in this checkout
            if exc.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # one line per HTTP request drowns the progress bars
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"autointerp {args.command}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"autointerp {args.command}: interrupted; finished items are saved, rerun to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
