"""Reading SAE files with errors a user can act on (shared by the format modules).

Every failure here is a `UserError` that names the file and says what to do, because a corrupt
download or a wrong directory is the most common way an SAE fails to load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from autointerp.errors import UserError

CFG_FILENAME = "cfg.json"


def read_cfg(directory: Path, format_name: str) -> dict[str, Any]:
    """The parsed `cfg.json` of an SAE directory (must be a JSON object)."""
    path = directory / CFG_FILENAME
    if not path.is_file():
        raise UserError(
            f"{format_name} SAE directory {directory} has no {CFG_FILENAME}",
            f"copy the complete SAE directory ({CFG_FILENAME} next to the weights file); "
            "the config is needed to know the architecture and sizes",
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path} is not valid JSON ({exc})",
            "the file is corrupt or truncated; re-download or re-export the SAE",
        ) from exc
    if not isinstance(cfg, dict):
        raise UserError(
            f"{path} holds a JSON {type(cfg).__name__}, not an object", "re-export the SAE config"
        )
    return cfg


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on CPU, as float32."""
    if not path.is_file():
        raise UserError(f"SAE weights file {path} is missing", "copy the complete SAE directory")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"cannot read SAE weights {path}: {exc}",
            "the file is corrupt or truncated (or not a safetensors file); re-download or re-export the SAE",
        ) from exc
    return {name: tensor.to(torch.float32) for name, tensor in tensors.items()}


def require(tensors: dict[str, torch.Tensor], name: str, path: Path) -> torch.Tensor:
    if name not in tensors:
        raise UserError(
            f"SAE weights {path} have no tensor {name!r} (found: {', '.join(sorted(tensors)) or 'none'})",
            "the file does not match its cfg.json format; re-export the SAE",
        )
    return tensors[name]


def check_shape(tensor: torch.Tensor, name: str, expected: tuple[int, ...], path: Path, why: str) -> None:
    if tuple(tensor.shape) != expected:
        raise UserError(
            f"SAE weight {name} in {path} has shape {list(tensor.shape)}, but cfg.json implies {list(expected)} ({why})",
            "cfg.json and the weights file come from different SAEs, or the file is damaged; "
            "use the cfg.json that was saved with these weights",
        )


def int_field(cfg: dict[str, Any], key: str, path: Path) -> int | None:
    """An optional positive integer cfg field, with a clear error if it is something else."""
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{path}: {key}={value!r} is not a non-negative integer", f"fix {key} in {path}")
    return value
