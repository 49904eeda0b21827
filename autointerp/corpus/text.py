"""Plain-text corpora: one document per blank-line-separated block of a file.

Read line by line in binary so a huge file is never held in memory and a bad byte can be reported with
its exact byte offset.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from autointerp.corpus.decoding import EncodingErrors, decode_utf8


def iter_text_blocks(path: Path, errors: EncodingErrors = "strict") -> Iterator[str]:
    """Blocks of text separated by one or more blank lines (lines holding only whitespace)."""
    block: list[str] = []
    offset = 0
    with path.open("rb") as handle:
        for raw in handle:
            line = decode_utf8(raw, path, offset, errors)
            offset += len(raw)
            if line.strip():
                block.append(line)
            elif block:
                yield "".join(block).strip()
                block = []
    if block:
        yield "".join(block).strip()


def read_text_file(path: Path, errors: EncodingErrors = "strict") -> str:
    """A whole file as one document (used for a directory of .txt files)."""
    return decode_utf8(path.read_bytes(), path, 0, errors).strip()
