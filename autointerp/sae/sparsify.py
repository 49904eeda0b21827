"""EleutherAI sparsify directories: `cfg.json` + `sae.safetensors` (TopK SAEs).

Weights: `encoder.weight` [d_sae, d_in], `encoder.bias` [d_sae], `W_dec` [d_sae, d_in], `b_dec` [d_in].
cfg: `k`, `num_latents` (0 means "use expansion_factor") or `expansion_factor`, and usually `d_in`
(sparsify writes it; older exports may not, so it is inferred from the encoder then).
sparsify's encode is `topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias))` for autoencoders, which
is SAELens TopK with `apply_b_dec_to_input=True`.
"""

from __future__ import annotations

import re
from pathlib import Path

from autointerp.errors import UserError
from autointerp.sae.base import SAE, SAEConfig
from autointerp.sae.files import CFG_FILENAME, check_shape, int_field, read_cfg, read_tensors, require

WEIGHTS_FILENAME = "sae.safetensors"
FORMAT = "sparsify"


def detect(directory: Path) -> bool:
    return (directory / WEIGHTS_FILENAME).is_file()


def _hook_from_folder(directory: Path) -> str | None:
    """sparsify keeps one SAE per hookpoint folder named after the module (e.g. 'layers.15')."""
    match = re.fullmatch(r"(?:model\.)?layers[._](\d+)(\.mlp|\.self_attn|\.attn)?", directory.name)
    return f"layers.{match.group(1)}{match.group(2) or ''}" if match else None


def load(directory: Path) -> SAE:
    cfg_path = directory / CFG_FILENAME
    weights_path = directory / WEIGHTS_FILENAME
    raw = read_cfg(directory, "sparsify")
    activation = str(raw.get("activation", "topk")).lower()
    if activation != "topk":
        raise UserError(
            f"{cfg_path}: sparsify activation {activation!r} is not supported",
            "autointerp loads sparsify TopK SAEs (activation 'topk')",
        )
    if raw.get("transcode"):
        raise UserError(
            f"{cfg_path}: this is a sparsify transcoder (transcode=true), not an autoencoder",
            "autointerp labels SAE latents that read and reconstruct the same hook; use an SAE",
        )
    if raw.get("signed"):
        raise UserError(f"{cfg_path}: signed TopK (signed=true) is not supported", "use an unsigned TopK SAE")
    k = int_field(raw, "k", cfg_path)
    if not k:
        raise UserError(
            f"{cfg_path}: a sparsify TopK SAE needs k in cfg.json", 'add "k": <latents active per token>'
        )

    tensors = read_tensors(weights_path)
    if raw.get("skip_connection") or "W_skip" in tensors:
        raise UserError(
            f"{weights_path}: SAEs with a skip connection (W_skip) are not supported",
            "their latents do not carry the whole reconstruction; use an SAE trained without skip_connection",
        )
    encoder = require(tensors, "encoder.weight", weights_path)
    if encoder.ndim != 2:
        raise UserError(
            f"encoder.weight in {weights_path} has {encoder.ndim} dims, expected 2", "re-export the SAE"
        )
    d_in = int_field(raw, "d_in", cfg_path) or encoder.shape[1]
    num_latents = int_field(raw, "num_latents", cfg_path)
    expansion = int_field(raw, "expansion_factor", cfg_path)
    if num_latents:
        d_sae = num_latents
    elif expansion:
        d_sae = d_in * expansion
    else:
        d_sae = encoder.shape[0]
    why = f"d_in={d_in}, d_sae={d_sae} from " + (
        "num_latents" if num_latents else f"expansion_factor={expansion}" if expansion else "encoder.weight"
    )
    W_dec = require(tensors, "W_dec", weights_path)
    b_enc = require(tensors, "encoder.bias", weights_path)
    b_dec = require(tensors, "b_dec", weights_path)
    check_shape(encoder, "encoder.weight", (d_sae, d_in), weights_path, why)
    check_shape(b_enc, "encoder.bias", (d_sae,), weights_path, why)
    check_shape(W_dec, "W_dec", (d_sae, d_in), weights_path, why)
    check_shape(b_dec, "b_dec", (d_in,), weights_path, why)
    if k > d_sae:
        raise UserError(
            f"{cfg_path}: k={k} is larger than the number of latents ({d_sae})", "fix k in cfg.json"
        )

    cfg = SAEConfig(
        architecture="topk",
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        apply_b_dec_to_input=True,
        normalize_activations="none",
        hook_name=_hook_from_folder(directory),
        model_name=None,
        extra={"format": FORMAT, "path": str(directory)},
    )
    sae = SAE(cfg)
    sae.load_state_dict(
        {"W_enc": encoder.T.contiguous(), "b_enc": b_enc, "W_dec": W_dec.contiguous(), "b_dec": b_dec}
    )
    return sae
