"""Output files are written whole or not at all (temporary file beside the target, then renamed)."""

from __future__ import annotations

import os
from pathlib import Path

from autointerp.errors import UserError


def prepare_output(path: str | Path, suffixes: tuple[str, ...]) -> Path:
    """Check an --out path (right suffix, not a directory) and create its parent directory."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise UserError(f"--out {out} should end in {' or '.join(suffixes)}",
                        f"give a file name such as reports/name{suffixes[0]}")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory", f"give a file name such as {out / ('name' + suffixes[0])}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out.parent}: {exc}", "choose a writable --out location") from exc
    return out


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
