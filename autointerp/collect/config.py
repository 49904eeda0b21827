"""`CollectConfig`: every setting of a collect run, and which of them define its results."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autointerp.corpus import CorpusSpec
from autointerp.errors import UserError
from autointerp.hashing import short_hash
from autointerp.options import hashed_values, option


@dataclass
class CollectConfig:
    """Every setting of `autointerp collect`; each field is also its CLI flag (see `autointerp.options`).

    `hashed=False` marks settings that change how fast a run goes or what it prints, not what it
    stores: they stay out of the config hash, so changing them does not make a stored run stale.
    """

    model: str = option(help="HF model dir, .gguf file, or built-in name (smollm2)")
    hook: str = option(help="hook point, e.g. layers.15 (residual after layer 15)")
    sae: str = option(help="SAE directory (SAELens or sparsify format)")
    corpus: str = option("wiki", "'wiki' (built in), a .txt/.jsonl/.parquet file, or a directory of them")
    sae_name: str | None = option(
        None, "name of this SAE in the workspace (default: the SAE directory name)", hashed=False
    )
    tokens: int | None = option(None, "read at most this many corpus tokens (default: all)")
    top_k: int = option(50, "top-activating examples per feature and split")
    random_k: int = option(50, "random activating examples per feature and split")
    nonactivating_k: int = option(50, "non-activating examples per feature and split")
    sample_size: int | None = option(
        None,
        "global random sample of contexts per split that non-activating "
        "examples are drawn from (default: 4 x --nonactivating-k, at least 16)",
    )
    ctx_len: int = option(64, "tokens per context")
    min_ctx_tokens: int = option(
        16, "shortest context kept: shorter documents and document tails are dropped"
    )
    test_fraction: float = option(0.2, "share of documents in the test split")
    seed: int = option(0, "seed of the split and of the random samples")
    device: str = option("cpu", "cpu or cuda", hashed=False)
    dtype: str = option("float32", "model and SAE dtype", choices=("float32", "bfloat16"))
    batch_size: int = option(32, "contexts per forward pass", hashed=False)
    text_field: str = option("text", "JSONL field / parquet column holding the text")
    encoding_errors: str = option(
        "strict",
        "bytes that are not UTF-8: stop with an error (strict) or replace them",
        choices=("strict", "replace"),
    )
    dense_threshold: float = option(
        0.01, "features firing on more than this fraction of tokens are reported dense"
    )
    overwrite: bool = option(
        False, "replace an SAE of the same name collected with a different config", hashed=False
    )
    progress: bool = option(True, "progress bar", hashed=False)
    threads: int | None = option(None, "torch CPU threads (default: all cores)", hashed=False)
    spill_gb: float = option(
        20.0,
        "disk (next to --db) for pass 1's sparse SAE codes, so pass 2 need not rerun "
        "the model; past this size pass 2 recomputes instead; 0 = always recompute",
        hashed=False,
    )

    def __post_init__(self) -> None:
        for name in ("top_k", "random_k", "nonactivating_k"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0", "use e.g. 50")
        if self.top_k + self.random_k == 0:
            raise UserError("--top-k and --random-k are both 0: nothing to collect", "use e.g. --top-k 50")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size} must be >= 1", "use e.g. 32")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads {self.threads} must be >= 1", "leave it out to use all cores")
        if self.tokens is not None and self.tokens <= 0:
            raise UserError(f"--tokens {self.tokens} must be positive", "use e.g. --tokens 200000")
        self.corpus_spec()  # validates the corpus settings

    @property
    def name(self) -> str:
        """The SAE's name in the workspace: --sae-name, else the SAE directory's name."""
        return self.sae_name or Path(self.sae).expanduser().resolve().name

    @property
    def global_sample_size(self) -> int:
        return self.sample_size if self.sample_size is not None else max(4 * self.nonactivating_k, 16)

    def corpus_spec(self) -> CorpusSpec:
        return CorpusSpec(
            source=self.corpus,
            ctx_len=self.ctx_len,
            min_ctx_tokens=min(self.min_ctx_tokens, self.ctx_len),
            max_tokens=self.tokens,
            test_fraction=self.test_fraction,
            split_seed=self.seed,
            text_field=self.text_field,
            encoding_errors=self.encoding_errors,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hashed(self, sae_fingerprint: Any = None) -> dict[str, Any]:
        values = hashed_values(self)
        values["sae_fingerprint"] = sae_fingerprint
        return values

    def config_hash(self, sae_fingerprint: Any = None) -> str:
        return short_hash(self.hashed(sae_fingerprint))


def sae_fingerprint(path: str) -> list[list[Any]]:
    """Names, sizes and mtimes of the SAE directory's files: a retrained SAE gets a new config hash."""
    directory = Path(path).expanduser()
    if directory.is_file():
        directory = directory.parent
    if not directory.is_dir():
        return []
    return [
        [p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(directory.iterdir()) if p.is_file()
    ]
