"""Parquet corpora: a text column, read in record batches (never the whole file at once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from autointerp.errors import UserError

TITLE_COLUMNS = ("title", "name", "id")
_BATCH_ROWS = 1024


def iter_parquet_records(path: Path, text_field: str = "text") -> Iterator[tuple[str, str | None]]:
    """(text, title) per row; rows whose text is null are skipped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path} is not a readable parquet file: {exc}", "check the file, or convert it") from exc
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise UserError(
            f"{path} has no column {text_field!r} (columns: {columns})",
            "name the column holding the text with --text-field COLUMN",
        )
    field_type = parquet.schema_arrow.field(text_field).type
    if not (pa.types.is_string(field_type) or pa.types.is_large_string(field_type)):
        raise UserError(
            f"{path}: column {text_field!r} has type {field_type}, not string",
            "point --text-field at the column holding the document text",
        )
    title_column = next((c for c in TITLE_COLUMNS if c in columns and c != text_field), None)
    wanted = [text_field] + ([title_column] if title_column else [])
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=wanted):
        texts = batch.column(text_field).to_pylist()
        titles = batch.column(title_column).to_pylist() if title_column else [None] * len(texts)
        for text, title in zip(texts, titles, strict=True):
            if text is not None:
                yield text, None if title is None else str(title)
