"""Settings written once: a config dataclass's fields become its command-line flags.

Each field is declared with `option(default, "help")`, so its name, type, default, help text and
whether it enters the config hash live on one line; `add_arguments` turns the fields into argparse
flags and `from_args` reads them back. A new setting is then one line in the dataclass, and the CLI,
the TOML pipeline (which goes through the CLI) and the Python API cannot disagree on a default.

Flag rules: `--field-name` (or the field's `flag`); `bool` fields are switches: `--name` for a field
that defaults to False, `--no-name` for one that defaults to True; `X | None` takes an X; a field
without a default is a required flag; `choices` (or a `Literal[...]` type) limits the values. The help
says the default unless it is None or a switch (then the help text says what None means).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, Field
from typing import Any

_KEY = "autointerp"  # our entry in a field's metadata


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    hashed: bool = True,
    flag: str | None = None,
    aliases: Sequence[str] = (),
    choices: Sequence[Any] | None = None,
    cli: bool = True,
    off_help: str | None = None,
) -> Any:
    """A dataclass field with its CLI flag. `hashed=False`: the setting changes how a run goes (speed,
    logging, retries), not what it stores, so it stays out of the config hash and a rerun that only
    changes it is not new work. `cli=False`: a Python-only setting, no flag. `off_help`: the help of a
    `--no-name` switch (default: "no " + help)."""
    meta = {
        _KEY: {
            "help": help,
            "hashed": hashed,
            "flag": flag,
            "aliases": tuple(aliases),
            "choices": tuple(choices) if choices is not None else None,
            "cli": cli,
            "off_help": off_help,
        }
    }
    return dataclasses.field(default=default, metadata=meta)


def _meta(f: Field) -> dict[str, Any]:
    return f.metadata.get(
        _KEY,
        {
            "help": "",
            "hashed": True,
            "flag": None,
            "aliases": (),
            "choices": None,
            "cli": True,
            "off_help": None,
        },
    )


def is_hashed(f: Field) -> bool:
    return bool(_meta(f)["hashed"])


def hashed_values(config: Any) -> dict[str, Any]:
    """The config's hashed fields by name, in field order (what a config hash is computed over)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if is_hashed(f)}


def _value_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(the type argparse converts to, the Literal choices or None) of a field's resolved annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"option type {annotation} is not X or X | None")
        return _value_type(args[0])
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        return type(values[0]), values
    return annotation, None


@dataclasses.dataclass(frozen=True)
class Flag:
    """One field's flag: the option strings and the keyword arguments of `add_argument`."""

    field: str
    names: tuple[str, ...]
    kwargs: dict[str, Any]


def flags(cls: type) -> list[Flag]:
    """The flags of a config dataclass, in field order (fields with `cli=False` have none)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = _meta(f)
        if not meta["cli"] or not f.init:
            continue
        kind, literal = _value_type(hints[f.name])
        default = f.default
        help_text = meta["help"].replace("%", "%%")
        dashed = f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name}
        if kind is bool:
            negate = default is True
            name = meta["flag"] or (f"--no-{dashed}" if negate else f"--{dashed}")
            kwargs.update(
                action="store_false" if negate else "store_true",
                help=(meta.get("off_help") or f"no {meta['help']}").replace("%", "%%")
                if negate
                else help_text,
            )
        else:
            name = meta["flag"] or f"--{dashed}"
            kwargs.update(type=kind, help=help_text, metavar=name.lstrip("-").replace("-", "_").upper())
            if default is MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = default
                if default is not None:
                    kwargs["help"] = f"{help_text} (default %(default)s)".lstrip()
            choices = meta["choices"] or literal
            if choices is not None:
                kwargs["choices"] = list(choices)
        out.append(Flag(f.name, (name, *meta["aliases"]), kwargs))
    return out


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type) -> None:
    """Add every flag of `cls` to `parser` (or an argument group)."""
    for flag in flags(cls):
        parser.add_argument(*flag.names, **flag.kwargs)


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """`cls` built from the parsed flags (fields without a flag keep their defaults)."""
    values = {flag.field: getattr(args, flag.field) for flag in flags(cls)}
    values.update(overrides)
    return cls(**values)
