"""Corpora: load documents (plain text, JSONL, parquet, the built-in `wiki`), cut them into
fixed-length contexts that never cross documents, and split them by document into explain/test.

Public API: `CorpusSpec`, `ContextStream` (iterate contexts; then read `.documents`), `Context`,
`DocumentRecord`, `Document`, `iter_documents`, `document_split`, `corpus_id`, `TokenDecoder`.
"""

from __future__ import annotations

from typing import Any

from autointerp.corpus.documents import Document, document_key
from autointerp.corpus.sources import BUILTIN_CORPORA, iter_documents, source_identity
from autointerp.corpus.split import EXPLAIN, SPLITS, TEST, document_split
from autointerp.corpus.windows import Context, ContextStream, CorpusSpec, DocumentRecord, TokenDecoder
from autointerp.hashing import short_hash

__all__ = [
    "BUILTIN_CORPORA",
    "EXPLAIN",
    "SPLITS",
    "TEST",
    "Context",
    "ContextStream",
    "CorpusSpec",
    "Document",
    "DocumentRecord",
    "TokenDecoder",
    "corpus_id",
    "document_key",
    "document_split",
    "iter_documents",
    "source_identity",
    "tokenizer_identity",
]


def tokenizer_identity(tokenizer: Any) -> str:
    """Name and vocabulary size: enough to tell two tokenizers apart in a corpus id."""
    return f"{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}|{len(tokenizer)}"


def corpus_id(spec: CorpusSpec, tokenizer_name: str) -> str:
    """Hash of everything that decides the contexts: source content identity, tokenizer, windowing, split."""
    return short_hash(
        {
            "source": spec.source,
            "identity": source_identity(spec.source),
            "tokenizer": tokenizer_name,
            "ctx_len": spec.ctx_len,
            "min_ctx_tokens": spec.min_ctx_tokens,
            "max_tokens": spec.max_tokens,
            "test_fraction": spec.test_fraction,
            "split_seed": spec.split_seed,
            "text_field": spec.text_field,
            "encoding_errors": spec.encoding_errors,
        }
    )
