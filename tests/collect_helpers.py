"""Build small but real collected stores quickly, for any test that needs one.

`build_collected_store(tmp_path)` writes a tiny random-weight Llama model (SmolLM2's tokenizer saved
beside it), a random SAE in SAELens format, and runs the real `collect` over a few thousand tokens of
the built-in wiki corpus into a DuckDB file. It takes a few seconds on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

TINY_HIDDEN = 64
TINY_LAYERS = 2


@dataclass
class CollectedStore:
    db_path: Path
    model_dir: Path
    sae_dir: Path
    sae_name: str
    run_id: str
    config: object           # the CollectConfig used


def make_tiny_model_dir(directory: Path, hidden: int = TINY_HIDDEN, layers: int = TINY_LAYERS, seed: int = 0) -> Path:
    """A random-weight LlamaForCausalLM (Hugging Face directory) with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from autointerp.models import load_tokenizer

    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    tokenizer = load_tokenizer("smollm2")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_random_sae(d_in: int, d_sae: int, architecture: str = "topk", k: int = 8, seed: int = 0):
    """An SAE with random encoder weights (every latent fires on something)."""
    from autointerp.sae.base import SAE, SAEConfig

    generator = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(architecture=architecture, d_in=d_in, d_sae=d_sae, k=k if architecture == "topk" else None))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=generator) / d_in**0.5)
        sae.W_dec.copy_(sae.W_enc.T)
        if architecture == "jumprelu":
            sae.threshold.copy_(0.01 * torch.rand(d_sae, generator=generator))
    return sae.eval().requires_grad_(False)


def make_sae_dir(directory: Path, d_in: int = TINY_HIDDEN, d_sae: int = 128, architecture: str = "topk",
                 k: int = 8, seed: int = 0) -> Path:
    from autointerp.sae import save_saelens

    return save_saelens(make_random_sae(d_in, d_sae, architecture, k, seed), directory)


def build_collected_store(
    tmp_path: Path,
    *,
    tokens: int = 4000,
    d_sae: int = 128,
    architecture: str = "topk",
    sae_name: str = "tiny",
    top_k: int = 10,
    random_k: int = 10,
    nonactivating_k: int = 5,
    ctx_len: int = 32,
    seed: int = 0,
    db_path: Path | None = None,
    model_dir: Path | None = None,
) -> CollectedStore:
    """A real collected DuckDB store: tiny random model (hook layers.1), random SAE, wiki text."""
    from autointerp.collect import CollectConfig, collect
    from autointerp.store import Store

    tmp_path = Path(tmp_path)
    model_dir = make_tiny_model_dir(model_dir or tmp_path / "tiny-model")
    sae_dir = make_sae_dir(tmp_path / f"sae-{sae_name}", d_sae=d_sae, architecture=architecture, seed=seed)
    db_path = db_path or tmp_path / "run.duckdb"
    config = CollectConfig(
        model=str(model_dir),
        hook=f"layers.{TINY_LAYERS - 1}",
        sae=str(sae_dir),
        corpus="wiki",
        sae_name=sae_name,
        tokens=tokens,
        top_k=top_k,
        random_k=random_k,
        nonactivating_k=nonactivating_k,
        ctx_len=ctx_len,
        min_ctx_tokens=8,
        seed=seed,
        batch_size=16,
        progress=False,
    )
    with Store(db_path) as store:
        run = collect(config, store)
    return CollectedStore(db_path, model_dir, sae_dir, sae_name, run.run_id, config)
