"""The unit every corpus loader yields: one document with a stable identity.

`doc_id` is the document's position in the source (stable as long as the source is unchanged);
`doc_key` is a hash of its text, so the explain/test split does not move when documents are added,
removed or reordered, and two copies of the same text always land in the same split.
"""

from __future__ import annotations

from dataclasses import dataclass

from autointerp.hashing import short_hash


@dataclass(frozen=True)
class Document:
    doc_id: int
    text: str
    title: str | None = None

    @property
    def doc_key(self) -> str:
        return document_key(self.text)


def document_key(text: str) -> str:
    """Content hash of a document (whitespace at the ends ignored)."""
    return short_hash(text.strip(), length=16)
