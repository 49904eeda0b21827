"""The explain/test split, by document.

A document's split is a pure function of (seed, its content hash, test fraction): stable across runs,
across `--tokens` limits and across reorderings of the source, and duplicates of a text can never
straddle the two splits. Explain examples and test examples therefore never share a document.
"""

from __future__ import annotations

import hashlib

SPLITS: tuple[str, str] = ("explain", "test")
EXPLAIN, TEST = SPLITS


def document_split(doc_key: str, seed: int, test_fraction: float) -> str:
    digest = hashlib.sha256(f"{seed}|{doc_key}".encode()).digest()
    uniform = int.from_bytes(digest[:8], "big") / 2**64
    return TEST if uniform < test_fraction else EXPLAIN
