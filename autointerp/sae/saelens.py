"""SAELens directories: `cfg.json` + `sae_weights.safetensors`.

Both cfg layouts are read:
- SAELens >= 6: `architecture` is 'standard' | 'jumprelu' | 'topk' (TopK with a top-level `k`), model
  and hook names under `metadata`.
- SAELens < 6: `architecture` 'standard' with `activation_fn_str` (or `activation_fn`) 'relu' | 'topk'
  and `activation_fn_kwargs: {k: ..}`; `hook_name`/`hook_point` and `model_name` at the top level;
  `normalize_activations` possibly a bool.

Quirks are folded into plain weights so `SAE` stays simple: `rescale_acts_by_decoder_norm` (TopK),
a `scaling_factor` tensor (`finetuning_scaling_factor`), `log_threshold` (old JumpReLU checkpoints).
`save` writes the SAELens 6 layout, which SAELens itself and this loader both read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from autointerp import __version__
from autointerp.errors import UserError
from autointerp.sae.base import NORMALIZATIONS, SAE, SAEConfig
from autointerp.sae.files import CFG_FILENAME, check_shape, int_field, read_cfg, read_tensors, require

WEIGHTS_FILENAME = "sae_weights.safetensors"
FORMAT = "saelens"
# The cfg layout `save` writes; SAELens reads configs older than 6.0 through a compatibility path.
SAELENS_CFG_VERSION = "6.0.0"

_SUPPORTED = "standard/relu, jumprelu, topk"


def detect(directory: Path) -> bool:
    return (directory / WEIGHTS_FILENAME).is_file()


def _architecture_and_k(cfg: dict[str, Any], path: Path) -> tuple[str, int | None]:
    raw = str(cfg.get("architecture") or "standard").lower()
    activation = str(cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu").lower()
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise UserError(f"{path}: activation_fn_kwargs={kwargs!r} is not an object", f"fix it in {path}")
    k = int_field(cfg, "k", path) or int_field(kwargs, "k", path)
    if raw in ("standard", "relu"):
        if activation == "relu":
            return "relu", None
        if activation == "topk":
            arch = "topk"
        else:
            raise UserError(
                f"{path}: activation function {activation!r} of a standard SAE is not supported",
                f"autointerp loads SAELens SAEs with architectures {_SUPPORTED}",
            )
    elif raw == "jumprelu":
        return "jumprelu", None
    elif raw == "topk":
        arch = "topk"
    else:
        raise UserError(
            f"{path}: SAELens architecture {raw!r} is not supported",
            f"supported architectures: {_SUPPORTED}; convert the SAE to one of them "
            "(BatchTopK SAEs are saved by SAELens as jumprelu for inference)",
        )
    if not k:
        raise UserError(
            f"{path}: a TopK SAE needs k, and cfg.json has neither 'k' nor 'activation_fn_kwargs.k'",
            'add "k": <latents active per token> to cfg.json',
        )
    return arch, k


def _normalization(cfg: dict[str, Any], path: Path) -> str:
    mode = cfg.get("normalize_activations")
    if mode is None or mode is False:
        return "none"
    if mode is True:  # SAELens < 3 stored a bool: True meant the April-2024 'expected_average_only_in'
        return "expected_average_only_in"
    if mode not in NORMALIZATIONS:
        raise UserError(
            f"{path}: normalize_activations={mode!r} is not supported",
            f"use one of {', '.join(NORMALIZATIONS)}",
        )
    return str(mode)


def load(directory: Path) -> SAE:
    cfg_path = directory / CFG_FILENAME
    weights_path = directory / WEIGHTS_FILENAME
    raw = read_cfg(directory, "SAELens")
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    hook_name = raw.get("hook_name") or raw.get("hook_point") or metadata.get("hook_name")
    if raw.get("reshape_activations") == "hook_z" or (
        isinstance(hook_name, str) and hook_name.endswith("hook_z")
    ):
        raise UserError(
            f"{cfg_path}: this SAE reads attention head outputs (hook_z), which autointerp does not hook",
            "use an SAE trained on the residual stream, MLP output or attention output",
        )
    arch, k = _architecture_and_k(raw, cfg_path)
    mode = _normalization(raw, cfg_path)
    tensors = read_tensors(weights_path)

    W_enc = require(tensors, "W_enc", weights_path)
    if W_enc.ndim != 2:
        raise UserError(
            f"SAE weight W_enc in {weights_path} has {W_enc.ndim} dims, expected 2", "re-export the SAE"
        )
    d_in = int_field(raw, "d_in", cfg_path) or W_enc.shape[0]
    d_sae = int_field(raw, "d_sae", cfg_path) or W_enc.shape[1]
    why = f"d_in={d_in}, d_sae={d_sae}"
    W_dec = require(tensors, "W_dec", weights_path)
    b_enc = require(tensors, "b_enc", weights_path)
    b_dec = require(tensors, "b_dec", weights_path)
    check_shape(W_enc, "W_enc", (d_in, d_sae), weights_path, why)
    check_shape(W_dec, "W_dec", (d_sae, d_in), weights_path, why)
    check_shape(b_enc, "b_enc", (d_sae,), weights_path, why)
    check_shape(b_dec, "b_dec", (d_in,), weights_path, why)

    scaling = tensors.get("scaling_factor", tensors.get("finetuning_scaling_factor"))
    if scaling is not None:  # decode used (f * scaling) @ W_dec: fold into the decoder rows
        check_shape(scaling, "scaling_factor", (d_sae,), weights_path, why)
        W_dec = W_dec * scaling[:, None]
    if arch == "topk" and raw.get("rescale_acts_by_decoder_norm"):
        # encode: topk(pre * ||W_dec||), decode: (f / ||W_dec||) @ W_dec. Folding the norms into W_enc,
        # b_enc and W_dec keeps both the top-k choice and the outputs exactly.
        norms = W_dec.norm(dim=-1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms.clamp_min(1e-12)[:, None]

    norm_factor = raw.get("norm_scaling_factor")
    if norm_factor is not None and not isinstance(norm_factor, (int, float)):
        raise UserError(
            f"{cfg_path}: norm_scaling_factor={norm_factor!r} is not a number", f"fix it in {cfg_path}"
        )
    cfg = SAEConfig(
        architecture=arch,  # type: ignore[arg-type]
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        normalize_activations=mode,
        norm_scaling_factor=float(norm_factor) if norm_factor is not None else None,
        hook_name=hook_name,
        model_name=raw.get("model_name") or metadata.get("model_name"),
        extra={"format": FORMAT, "path": str(directory)},
    )
    sae = SAE(cfg)
    state = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if arch == "jumprelu":
        if "threshold" in tensors:
            threshold = tensors["threshold"]
        elif "log_threshold" in tensors:
            threshold = tensors["log_threshold"].exp()
        else:
            raise UserError(
                f"JumpReLU SAE weights {weights_path} have neither 'threshold' nor 'log_threshold'",
                "re-export the SAE with its thresholds",
            )
        check_shape(threshold, "threshold", (d_sae,), weights_path, why)
        state["threshold"] = threshold
    sae.load_state_dict({name: tensor.contiguous() for name, tensor in state.items()})
    return sae


def save(sae: SAE, out_dir: str | Path) -> Path:
    """Write `sae` as a SAELens 6 directory; files are replaced atomically, so a crash leaves no mix."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    W_enc, b_enc = sae.W_enc.detach().float().cpu(), sae.b_enc.detach().float().cpu()
    W_dec, b_dec = sae.W_dec.detach().float().cpu(), sae.b_dec.detach().float().cpu()
    mode = cfg.normalize_activations
    if mode == "expected_average_only_in" and cfg.norm_scaling_factor is not None:
        # SAELens applies no runtime scale for this mode (it folds it at the end of training): fold it here.
        s = float(cfg.norm_scaling_factor)
        W_enc, W_dec, b_dec = W_enc * s, W_dec / s, b_dec / s
        mode = "none"
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if cfg.architecture == "jumprelu":
        tensors["threshold"] = sae.threshold.detach().float().cpu()
    cfg_json: dict[str, Any] = {
        "architecture": "standard" if cfg.architecture == "relu" else cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": mode,
        "reshape_activations": "none",
        "metadata": {
            "model_name": cfg.model_name,
            "hook_name": cfg.hook_name,
            "sae_lens_version": SAELENS_CFG_VERSION,
            "sae_lens_training_version": SAELENS_CFG_VERSION,
            "written_by": f"autointerp {__version__}",
        },
    }
    if cfg.architecture == "topk":
        cfg_json["k"] = cfg.k
        cfg_json["rescale_acts_by_decoder_norm"] = False
    weights_tmp = out / f".{WEIGHTS_FILENAME}.tmp"
    cfg_tmp = out / f".{CFG_FILENAME}.tmp"
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(weights_tmp))
    cfg_tmp.write_text(json.dumps(cfg_json, indent=2) + "\n", encoding="utf-8")
    os.replace(weights_tmp, out / WEIGHTS_FILENAME)
    os.replace(cfg_tmp, out / CFG_FILENAME)
    return out
