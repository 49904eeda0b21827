"""Run several stages from one config (a TOML file or a dict), through the same CLI handlers.

Each stage section becomes the argument list of its subcommand (`[collect] top_k = 50` ->
`autointerp collect --top-k 50`), so a config file accepts exactly what the CLI accepts, validated
by the same code, and there is one way to call a stage. Top-level keys (`db`, `sae_name`, ...) are
passed to every stage that accepts them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from autointerp.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Stages in the order they run; a config runs the ones it has a section for.
STAGE_ORDER = ["train_sae", "collect", "evaluate", "explain", "score", "report", "export", "compare"]
#: Top-level keys shared by stages (only passed to stages whose parser knows the option).
SHARED_KEYS = ["db", "sae_name", "device", "dtype"]


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found", "pass a TOML file, e.g. data/example.toml")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML: {exc}", "fix the file (see data/example.toml)") from exc


def to_argv(stage: str, options: Mapping[str, Any], flags: set[str] | None = None) -> list[str]:
    """`{"top_k": 50, "overwrite": True, "scorers": ["a", "b"]}` -> `--top-k 50 --overwrite --scorers a,b`.

    A setting that defaults to true has a `--no-...` switch (see `autointerp.options`): with the stage's
    `flags` known, `progress = false` becomes `--no-progress` instead of being dropped."""
    argv = [stage.replace("_", "-")]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is False and flags is not None and "--no-" + flag[2:] in flags:
            argv.append("--no-" + flag[2:])
            continue
        if key == "skip_if_exists" or value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def stage_argvs(config: Mapping[str, Any], known_flags: Callable[[str], set[str]]) -> list[list[str]]:
    """The argument lists to run, in stage order; unknown sections are an error (a typo must not be skipped)."""
    unknown = [k for k, v in config.items() if isinstance(v, Mapping) and k not in STAGE_ORDER]
    if unknown:
        raise UserError(f"unknown config section(s): {', '.join(unknown)}", f"sections are: {', '.join(STAGE_ORDER)}")
    argvs = []
    for stage in STAGE_ORDER:
        section = config.get(stage)
        if section is None:
            continue
        options = {k: config[k] for k in SHARED_KEYS if k in config and k not in section}
        flags = known_flags(stage)
        options = {k: v for k, v in options.items() if "--" + k.replace("_", "-") in flags}
        options.update(section)
        if stage == "train_sae" and section.get("skip_if_exists", True) and _sae_exists(section.get("out")):
            print(f"[run] train-sae: {section['out']} already exists, reusing it", flush=True)
            continue
        argvs.append(to_argv(stage, options, flags))
    return argvs


def _sae_exists(out: str | None) -> bool:
    return bool(out) and (Path(out) / "cfg.json").is_file()


#: Exit code of a stage that finished but stored some items as failures (bad input exits 2).
PARTIAL_FAILURE = 1


def run_config(config: Mapping[str, Any]) -> int:
    """Run each configured stage through the CLI.

    A stage that stops on bad input (exit 2, or anything but 0/1) stops the run. A stage that finished
    with some items stored as failures (exit 1: e.g. labels that did not parse) does not: later stages
    work on what succeeded, and the run exits 1 at the end so scripts can tell.
    """
    from autointerp.cli import build_parser, main

    parser = build_parser()

    def known_flags(stage: str) -> set[str]:
        sub = parser.commands.get(stage.replace("_", "-"))
        if sub is None:
            raise UserError(f"stage {stage!r} is not available in this install", "remove its section")
        return sub.flags

    partial = []
    for argv in stage_argvs(config, known_flags):
        started = time.perf_counter()
        print(f"\n[run] autointerp {' '.join(argv)}", flush=True)
        code = main(argv)
        if code == PARTIAL_FAILURE:
            partial.append(argv[0])
            print(f"[run] {argv[0]}: some items failed (stored with their status); continuing", file=sys.stderr)
        elif code != 0:
            print(f"[run] stage {argv[0]} failed (exit {code}); later stages not run", file=sys.stderr)
            return code
        print(f"[run] {argv[0]} done in {time.perf_counter() - started:.1f} s", flush=True)
    if partial:
        print(f"[run] finished; stages with failed items: {', '.join(partial)} (see the report)", flush=True)
        return PARTIAL_FAILURE
    return 0
