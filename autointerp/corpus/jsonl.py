"""JSONL corpora: one JSON object per line, the document text in a field (`text` by default)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from autointerp.corpus.decoding import EncodingErrors, decode_utf8
from autointerp.errors import UserError

TITLE_FIELDS = ("title", "name", "id")


def iter_jsonl_records(
    path: Path, text_field: str = "text", errors: EncodingErrors = "strict"
) -> Iterator[tuple[str, str | None]]:
    """(text, title) for every non-empty line; a missing or non-string text field is a UserError."""
    offset = 0
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = decode_utf8(raw, path, offset, errors)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{path} line {line_no} is not valid JSON: {exc.msg} (column {exc.colno})",
                    "a JSONL corpus holds one JSON object per line; fix or remove that line",
                ) from exc
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise UserError(
                    f"{path} line {line_no} has no field {text_field!r} (it has: {keys})",
                    "name the field holding the text with --text-field FIELD",
                )
            text = record[text_field]
            if not isinstance(text, str):
                raise UserError(
                    f"{path} line {line_no}: field {text_field!r} is a {type(text).__name__}, not a string",
                    "point --text-field at a field holding the document text",
                )
            title = next((str(record[f]) for f in TITLE_FIELDS if f in record and f != text_field), None)
            yield text, title
