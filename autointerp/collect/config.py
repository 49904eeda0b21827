"""`CollectConfig`: every setting of a collect run, and which of them define its results."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autointerp.corpus import CorpusSpec
from autointerp.errors import UserError
from autointerp.hashing import short_hash

# Settings that change how fast a run goes but not what it stores; left out of the config hash.
_NOT_HASHED = ("device", "batch_size", "overwrite", "progress", "sae_name", "spill_gb", "threads")


@dataclass
class CollectConfig:
    model: str
    hook: str
    sae: str
    corpus: str = "wiki"
    sae_name: str | None = None
    tokens: int | None = None            # cap on corpus tokens (None: the whole corpus)
    top_k: int = 50
    random_k: int = 50
    nonactivating_k: int = 50
    sample_size: int | None = None       # global sample per split for non-activating examples (default 4x)
    ctx_len: int = 64
    min_ctx_tokens: int = 16
    test_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 32                 # contexts per forward pass
    text_field: str = "text"
    encoding_errors: str = "strict"
    dense_threshold: float = 0.01        # a feature firing on more than this fraction of tokens is 'dense'
    overwrite: bool = False
    progress: bool = True
    threads: int | None = None           # torch CPU threads (None: all cores); speed only, not hashed
    spill_gb: float = 20.0               # disk for pass 1's sparse codes (0: recompute in pass 2 instead)

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
        values = {k: v for k, v in self.to_dict().items() if k not in _NOT_HASHED}
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
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(directory.iterdir()) if p.is_file()]
