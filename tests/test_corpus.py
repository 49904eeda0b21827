"""Corpus loading, windowing and the by-document split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autointerp.corpus import (
    ContextStream,
    CorpusSpec,
    corpus_id,
    document_key,
    document_split,
    iter_documents,
)
from autointerp.errors import UserError


class WordTokenizer:
    """One token per whitespace-separated word (token id = a stable hash of the word)."""

    def __init__(self) -> None:
        self.calls = 0
        self.words_seen = 0
        self.vocab: dict[str, int] = {}

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        assert add_special_tokens is False
        self.calls += 1
        out = []
        for text in texts:
            words = text.split()
            self.words_seen += len(words)
            out.append([self.vocab.setdefault(w, len(self.vocab)) for w in words])
        return {"input_ids": out}

    def __len__(self) -> int:
        return 1000


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def contexts_of(spec: CorpusSpec, tokenizer=None):
    stream = ContextStream(spec, tokenizer or WordTokenizer())
    return list(stream), stream


# --------------------------------------------------------------------------- loaders
def test_plain_text_blocks_are_documents(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("first doc\nstill first\n\n\n  \nsecond doc\n\nthird\n", encoding="utf-8")
    docs = list(iter_documents(str(path)))
    assert [d.text for d in docs] == ["first doc\nstill first", "second doc", "third"]
    assert [d.doc_id for d in docs] == [0, 1, 2]
    assert docs[0].doc_key == document_key("first doc\nstill first")


def test_directory_of_txt_files_one_document_per_file(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("bee\n\nstill bee", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay", encoding="utf-8")
    (tmp_path / "ignored.bin").write_bytes(b"\xff\xfe")
    docs = list(iter_documents(str(tmp_path)))
    assert [(d.text, d.title) for d in docs] == [("ay", "a"), ("bee\n\nstill bee", "b")]


def test_jsonl_text_field_and_option(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    rows = [{"text": "alpha", "title": "A", "body": "x"}, {"text": "beta", "body": "y"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert [(d.text, d.title) for d in iter_documents(str(path))] == [("alpha", "A"), ("beta", None)]
    assert [d.text for d in iter_documents(str(path), text_field="body")] == ["x", "y"]


def test_jsonl_missing_field_names_line_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"content": "no text"}\n', encoding="utf-8")
    with pytest.raises(UserError) as info:
        list(iter_documents(str(path)))
    assert "line 2" in info.value.message and "'text'" in info.value.message
    assert "--text-field" in info.value.message and "content" in info.value.message


def test_jsonl_invalid_json_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        list(iter_documents(str(path)))


def test_parquet_column_and_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["one two", None, "three"], "title": ["t1", "t2", "t3"]}), path)
    docs = list(iter_documents(str(path), text_field="body"))
    assert [(d.text, d.title) for d in docs] == [("one two", "t1"), ("three", "t3")]
    with pytest.raises(UserError) as info:
        list(iter_documents(str(path)))
    assert "no column 'text'" in info.value.message and "body" in info.value.message


def test_non_utf8_names_file_and_byte_offset_and_replace_works(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes(b"good line\n\ncaf\xe9 au lait\n")
    with pytest.raises(UserError) as info:
        list(iter_documents(str(path)))
    message = info.value.message
    assert str(path) in message and "byte offset 14" in message and "--encoding-errors replace" in message
    docs = list(iter_documents(str(path), errors="replace"))
    assert docs[1].text == "caf\ufffd au lait"


def test_non_utf8_in_jsonl_reports_offset(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "bad \xff"}\n')
    with pytest.raises(UserError, match="byte offset 29"):
        list(iter_documents(str(path)))


def test_missing_source_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="neither a built-in corpus"):
        list(iter_documents(str(tmp_path / "nope.txt")))
    with pytest.raises(UserError, match="no .txt, .jsonl or .parquet"):
        list(iter_documents(str(tmp_path)))


def test_empty_corpus_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("\n\n   \n", encoding="utf-8")
    with pytest.raises(UserError, match="yielded no contexts"):
        contexts_of(CorpusSpec(str(path)))
    path.write_text("too short\n", encoding="utf-8")  # below min_ctx_tokens
    with pytest.raises(UserError, match="yielded no contexts"):
        contexts_of(CorpusSpec(str(path), min_ctx_tokens=4))


def test_wiki_corpus_loads_with_titles() -> None:
    docs = []
    for doc in iter_documents("wiki"):
        docs.append(doc)
        if len(docs) == 50:
            break
    assert len(docs) == 50 and all(d.text and d.title for d in docs)
    assert docs[0].doc_id == 0 and docs[49].doc_id == 49
    again = next(iter(iter_documents("wiki")))
    assert again.doc_key == docs[0].doc_key


# --------------------------------------------------------------------------- windows
def test_windows_never_cross_documents_and_tail_policy(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    # doc 0: 25 tokens -> windows 10, 10, 5 (tail >= 4 kept); doc 1: 12 -> 10 (+2 dropped); doc 2: 3 -> none
    path.write_text(f"{words(25, 'a')}\n\n{words(12, 'b')}\n\n{words(3, 'c')}\n", encoding="utf-8")
    tokenizer = WordTokenizer()
    contexts, stream = contexts_of(CorpusSpec(str(path), ctx_len=10, min_ctx_tokens=4), tokenizer)
    assert [(c.doc_id, len(c.token_ids)) for c in contexts] == [(0, 10), (0, 10), (0, 5), (1, 10)]
    assert [c.context_id for c in contexts] == [0, 1, 2, 3]
    doc_tokens = {0: [tokenizer.vocab[f"a{i}"] for i in range(25)], 1: [tokenizer.vocab[f"b{i}"] for i in range(12)]}
    for context in contexts:  # each context is a contiguous slice of exactly one document
        tokens = doc_tokens[context.doc_id]
        start = tokens.index(context.token_ids[0])
        assert tokens[start : start + len(context.token_ids)] == context.token_ids
    assert [(d.doc_id, d.n_tokens) for d in stream.documents] == [(0, 25), (1, 10)]
    assert stream.n_tokens == 35 and stream.n_contexts == 4
    assert all(c.split == {d.doc_id: d.split for d in stream.documents}[c.doc_id] for c in contexts)


def test_token_cap_is_exact_and_streaming(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(words(50, f"d{i}x") for i in range(2000)), encoding="utf-8")
    tokenizer = WordTokenizer()
    contexts, stream = contexts_of(CorpusSpec(str(path), ctx_len=16, min_ctx_tokens=4, max_tokens=1000), tokenizer)
    assert stream.n_tokens == sum(len(c.token_ids) for c in contexts) == 1000
    assert tokenizer.words_seen < 3 * 1000  # did not tokenise the 100k-token file


def test_huge_single_document_is_cut_before_tokenising(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text(words(200_000, "w"), encoding="utf-8")
    tokenizer = WordTokenizer()
    contexts, stream = contexts_of(CorpusSpec(str(tmp_path), ctx_len=64, max_tokens=500), tokenizer)
    assert stream.n_tokens == 500 and len({c.doc_id for c in contexts}) == 1
    assert tokenizer.words_seen < 500 * 40


def test_spec_validation() -> None:
    with pytest.raises(UserError):
        CorpusSpec("wiki", ctx_len=1)
    with pytest.raises(UserError):
        CorpusSpec("wiki", test_fraction=1.5)
    with pytest.raises(UserError):
        CorpusSpec("wiki", encoding_errors="ignore")


# --------------------------------------------------------------------------- split
def test_split_by_document_stable_and_near_fraction(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    texts = [words(20, f"doc{i}_") for i in range(600)]
    path.write_text("\n\n".join(texts), encoding="utf-8")
    spec = CorpusSpec(str(path), ctx_len=8, min_ctx_tokens=4, test_fraction=0.25, split_seed=3)
    contexts, stream = contexts_of(spec)
    splits_by_doc: dict[int, set[str]] = {}
    for context in contexts:
        splits_by_doc.setdefault(context.doc_id, set()).add(context.split)
    assert all(len(s) == 1 for s in splits_by_doc.values())  # no document in both splits
    counts = Counter(d.split for d in stream.documents)
    assert 0.18 < counts["test"] / len(stream.documents) < 0.32
    # stable across runs, and a document keeps its split when the corpus is reordered or capped
    again, _ = contexts_of(spec)
    assert [(c.doc_id, c.split) for c in again] == [(c.doc_id, c.split) for c in contexts]
    reordered = tmp_path / "r.txt"
    reordered.write_text("\n\n".join(reversed(texts)), encoding="utf-8")
    by_key = {document_key(t): document_split(document_key(t), 3, 0.25) for t in texts}
    _, stream_r = contexts_of(CorpusSpec(str(reordered), ctx_len=8, min_ctx_tokens=4, test_fraction=0.25, split_seed=3))
    assert all(by_key[d.doc_key] == d.split for d in stream_r.documents)
    # another seed gives another split
    other = [document_split(document_key(t), 4, 0.25) for t in texts]
    assert other != [by_key[document_key(t)] for t in texts]


def test_corpus_id_changes_with_settings(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("x y z", encoding="utf-8")
    base = corpus_id(CorpusSpec(str(path)), "tok")
    assert base == corpus_id(CorpusSpec(str(path)), "tok")
    assert base != corpus_id(CorpusSpec(str(path), ctx_len=32), "tok")
    assert base != corpus_id(CorpusSpec(str(path)), "other-tok")


def test_real_tokenizer_on_wiki() -> None:
    from autointerp.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    contexts, stream = contexts_of(CorpusSpec("wiki", ctx_len=64, max_tokens=3000), tokenizer)
    assert stream.n_tokens == 3000
    assert all(16 <= len(c.token_ids) <= 64 for c in contexts)
    assert {c.split for c in contexts} <= {"explain", "test"}
