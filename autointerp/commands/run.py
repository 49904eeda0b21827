"""`autointerp run CONFIG.toml`: every configured stage from one file (see data/example.toml)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the stages configured in a TOML file",
        description="Run train-sae/collect/evaluate/explain/score/report/export from one TOML config. "
        "Each section takes the same options as the subcommand of that name.",
    )
    parser.add_argument("config", help="TOML config file, e.g. data/example.toml")
    parser.set_defaults(func=_handle)


def _handle(args: argparse.Namespace) -> int:
    from autointerp.pipeline import load_config, run_config

    return run_config(load_config(args.config))
