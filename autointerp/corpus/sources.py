"""Which loader reads a `--corpus` argument, and the documents it yields.

`wiki` is the built-in corpus; a path ending in .jsonl/.ndjson is JSONL, .parquet is parquet, any
other file is plain text (one document per blank-line-separated block); a directory contributes
each .txt file as one document and each .jsonl/.ndjson/.parquet file's rows, in sorted path order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autointerp.corpus.decoding import EncodingErrors
from autointerp.corpus.documents import Document
from autointerp.corpus.jsonl import iter_jsonl_records
from autointerp.corpus.parquet import iter_parquet_records
from autointerp.corpus.text import iter_text_blocks, read_text_file
from autointerp.corpus.wiki import iter_wiki_records, wiki_data_path
from autointerp.errors import UserError

BUILTIN_CORPORA = ("wiki",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
DIRECTORY_SUFFIXES = (".txt", *JSONL_SUFFIXES, *PARQUET_SUFFIXES)


def _records_of_file(
    path: Path, text_field: str, errors: EncodingErrors, in_directory: bool
) -> Iterator[tuple[str, str | None]]:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from iter_jsonl_records(path, text_field, errors)
    elif suffix in PARQUET_SUFFIXES:
        yield from iter_parquet_records(path, text_field)
    elif in_directory:
        yield read_text_file(path, errors), path.stem
    else:
        for block in iter_text_blocks(path, errors):
            yield block, None


def _corpus_files(source: str) -> list[tuple[Path, bool]]:
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DIRECTORY_SUFFIXES)
        if not files:
            raise UserError(
                f"corpus directory {path} has no .txt, .jsonl or .parquet files",
                "put the documents there as .txt files (one document per file) or JSONL/parquet files",
            )
        return [(f, True) for f in files]
    if path.is_file():
        return [(path, False)]
    raise UserError(
        f"corpus {source!r} is neither a built-in corpus ({', '.join(BUILTIN_CORPORA)}) nor an existing file or directory",
        "pass --corpus wiki, or the path of a .txt, .jsonl or .parquet file or a directory of them",
    )


def iter_documents(source: str, text_field: str = "text", errors: EncodingErrors = "strict") -> Iterator[Document]:
    """Documents of `source` in a stable order; blank documents are skipped (they do not take an id)."""
    if source in BUILTIN_CORPORA:
        records: Iterator[tuple[str, str | None]] = iter_wiki_records()
    else:
        records = (
            record
            for path, in_directory in _corpus_files(source)
            for record in _records_of_file(path, text_field, errors, in_directory)
        )
    doc_id = 0
    for text, title in records:
        if text.strip():
            yield Document(doc_id=doc_id, text=text, title=title)
            doc_id += 1


def source_identity(source: str) -> dict[str, Any]:
    """What identifies a corpus source's content cheaply: name or resolved paths with sizes and mtimes."""
    if source in BUILTIN_CORPORA:
        path = wiki_data_path()
        stat = path.stat()
        return {"builtin": source, "size": stat.st_size}
    files = _corpus_files(source)
    return {
        "files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p, _ in files[:10000]],
        "n_files": len(files),
    }
