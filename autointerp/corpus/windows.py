"""Cutting documents into fixed-length token windows (contexts) that never cross documents.

Choices, and why:
- No BOS token is added: a context is `ctx_len` consecutive tokens of one document. Position 0 of a
  context is the model's attention sink whatever the token is, so it is excluded from statistics and
  examples anyway (see the collect stage).
- A document is cut into consecutive windows of `ctx_len` tokens. The last, shorter window is kept
  when it has at least `min_ctx_tokens` tokens (and is shorter in the store; collect right-pads it for
  the forward pass, which a causal model never lets influence the real tokens), otherwise dropped.
  So a short document is usable when it has at least `min_ctx_tokens` tokens, and a long one simply
  yields several windows.
- `max_tokens` caps the tokens that end up in contexts; documents are tokenised in small chunks and
  reading stops as soon as the cap is reached, so a 200k-token run does not tokenise the whole corpus.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from autointerp.corpus.decoding import ENCODING_ERRORS
from autointerp.corpus.documents import Document
from autointerp.corpus.sources import iter_documents
from autointerp.corpus.split import document_split
from autointerp.errors import UserError

_DOCS_PER_TOKENIZER_CALL = 32
_MAX_CHARS_PER_TOKEN = 32  # for cutting a huge document before tokenising it under a token cap


@dataclass(frozen=True)
class CorpusSpec:
    """Everything that decides which contexts a corpus yields (hashed into the corpus id)."""

    source: str
    ctx_len: int = 64
    min_ctx_tokens: int = 16
    max_tokens: int | None = None
    test_fraction: float = 0.2
    split_seed: int = 0
    text_field: str = "text"
    encoding_errors: str = "strict"

    def __post_init__(self) -> None:
        if self.ctx_len < 2:
            raise UserError(f"--ctx-len {self.ctx_len} is too short", "use at least 2 (default 64)")
        if not 1 <= self.min_ctx_tokens <= self.ctx_len:
            raise UserError(
                f"min_ctx_tokens {self.min_ctx_tokens} must be between 1 and ctx_len {self.ctx_len}",
                "lower it, or raise --ctx-len",
            )
        if self.max_tokens is not None and self.max_tokens < self.min_ctx_tokens:
            raise UserError(f"--tokens {self.max_tokens} is too small", f"use at least {self.min_ctx_tokens}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise UserError(f"--test-fraction {self.test_fraction} is out of range", "use a value in [0, 1), e.g. 0.2")
        if self.encoding_errors not in ENCODING_ERRORS:
            raise UserError(f"--encoding-errors {self.encoding_errors!r}", f"use one of {ENCODING_ERRORS}")


@dataclass(frozen=True)
class Context:
    context_id: int          # index of the window in the whole stream (0, 1, 2, ...)
    doc_id: int
    split: str
    token_ids: list[int]     # 1..ctx_len tokens


@dataclass(frozen=True)
class DocumentRecord:
    doc_id: int
    doc_key: str
    split: str
    n_tokens: int            # tokens of this document that are in contexts
    title: str | None


@dataclass
class ContextStream:
    """Iterating yields the contexts; afterwards `documents`, `n_tokens`, `n_contexts` describe them.

    Iterating again restarts from the beginning and yields exactly the same contexts (collect's second
    pass relies on this to find its selected contexts without keeping the corpus in memory).
    """

    spec: CorpusSpec
    tokenizer: Any
    documents: list[DocumentRecord] = field(default_factory=list)
    n_tokens: int = 0
    n_contexts: int = 0
    n_documents_read: int = 0

    def __iter__(self) -> Iterator[Context]:
        self.documents, self.n_tokens, self.n_contexts, self.n_documents_read = [], 0, 0, 0
        yield from self._contexts()
        if self.n_contexts == 0:
            raise UserError(
                f"corpus {self.spec.source!r} yielded no contexts ({self.n_documents_read} documents read; "
                f"a document needs at least {self.spec.min_ctx_tokens} tokens)",
                "check that the corpus holds text (and --text-field names the right field), "
                "or lower the minimum window length",
            )

    def _contexts(self) -> Iterator[Context]:
        spec = self.spec
        chunk: list[Document] = []
        for doc in iter_documents(spec.source, spec.text_field, spec.encoding_errors):  # type: ignore[arg-type]
            self.n_documents_read += 1
            chunk.append(doc)
            if len(chunk) == _DOCS_PER_TOKENIZER_CALL:
                yield from self._windows_of(chunk)
                chunk = []
                if self._full():
                    return
        if chunk:
            yield from self._windows_of(chunk)

    def _full(self) -> bool:
        cap = self.spec.max_tokens
        return cap is not None and cap - self.n_tokens < self.spec.min_ctx_tokens

    def _windows_of(self, docs: list[Document]) -> Iterator[Context]:
        spec = self.spec
        texts = [doc.text for doc in docs]
        cut = [False] * len(docs)
        if spec.max_tokens is not None:
            budget_chars = (spec.max_tokens - self.n_tokens) * _MAX_CHARS_PER_TOKEN
            for i, text in enumerate(texts):
                if len(text) > budget_chars:
                    texts[i], cut[i] = text[:budget_chars], True
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        for doc, ids, was_cut in zip(docs, encoded, cut, strict=True):
            if self._full():
                return
            if was_cut:
                ids = ids[:-1]  # the last token may be half a word cut in the middle
            split = document_split(doc.doc_key, spec.split_seed, spec.test_fraction)
            used = 0
            for start in range(0, len(ids), spec.ctx_len):
                window = ids[start : start + spec.ctx_len]
                if spec.max_tokens is not None:
                    window = window[: spec.max_tokens - self.n_tokens]
                if len(window) < spec.min_ctx_tokens:
                    break
                yield Context(self.n_contexts, doc.doc_id, split, list(window))
                self.n_contexts += 1
                self.n_tokens += len(window)
                used += len(window)
            if used:
                self.documents.append(DocumentRecord(doc.doc_id, doc.doc_key, split, used, doc.title))


class TokenDecoder:
    """Each token id decoded alone (for display and prompts), cached per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_ids: list[int]) -> list[str]:
        out = []
        for token_id in token_ids:
            text = self._cache.get(token_id)
            if text is None:
                text = self.tokenizer.decode([token_id])
                self._cache[token_id] = text
            out.append(text)
        return out
