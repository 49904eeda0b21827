"""`autointerp` command line. Each subcommand lives in `autointerp/commands/<name>.py` and exposes
`register(subparsers)`; heavy imports (torch, transformers) happen inside the handlers so that
`autointerp --help` and bad-argument errors are instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

from autointerp import __version__
from autointerp.errors import UserError

COMMAND_MODULES = [
    "train_sae",
    "collect",
    "evaluate",
    "hard_negatives",
    "match_features",
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


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that remembers its option strings and subcommands, through argparse's public
    API (`add_argument` returns the Action), so the TOML pipeline can ask which flags a stage takes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flags: set[str] = set()  # before argparse's __init__, which adds --help
        self.commands: dict[str, Parser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.flags.update(action.option_strings)
        return action

    def add_argument_group(self, *args: Any, **kwargs: Any) -> Any:
        group = super().add_argument_group(*args, **kwargs)
        add = group.add_argument

        def add_and_record(*a: Any, **k: Any) -> argparse.Action:
            action = add(*a, **k)
            self.flags.update(action.option_strings)
            return action

        group.add_argument = add_and_record  # type: ignore[method-assign]
        return group

    def add_subparsers(self, **kwargs: Any) -> Any:
        subparsers = super().add_subparsers(**kwargs)
        self.commands = subparsers.choices  # name -> Parser, filled by add_parser
        return subparsers


def build_parser() -> Parser:
    parser = Parser(
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
    # Before this process's first matmul. A process that only collects gets collect's smaller bound (a
    # pipeline calls main(argv) in one process and may run an LLM later).
    from autointerp.kernel_cache import (
        COLLECT_KERNEL_CACHE_ENTRIES,
        KERNEL_CACHE_ENTRIES,
        bound_kernel_caches,
    )

    bound_kernel_caches(COLLECT_KERNEL_CACHE_ENTRIES if argv is None and args.command == "collect" else
                        KERNEL_CACHE_ENTRIES)
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
