"""Loading SAEs from disk: one registry of format loaders, one `load_sae` entry point.

A loader is (name, detect, load): `detect(directory) -> bool` looks only at file names, `load(directory)
-> SAE` reads the files (CPU, float32) and raises `UserError` for anything wrong with them. `load_sae`
picks the first loader that detects the directory, then moves the SAE to the device and dtype asked for.
Built in: SAELens (`cfg.json` + `sae_weights.safetensors`) and EleutherAI sparsify (`cfg.json` +
`sae.safetensors`). Other formats plug in with `register_loader` without touching the callers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from autointerp.errors import UserError
from autointerp.sae import saelens, sparsify
from autointerp.sae.base import SAE, SAEConfig
from autointerp.sae.files import CFG_FILENAME

__all__ = [
    "SAE",
    "SAEConfig",
    "SAELoader",
    "check_sae_matches",
    "detect_format",
    "load_sae",
    "register_loader",
    "registered_loaders",
    "save_saelens",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SAELoader:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], SAE]
    weights_file: str | None = None  # named in the error when no loader recognises a directory


_LOADERS: list[SAELoader] = []


def register_loader(
    name: str, detect: Callable[[Path], bool], load: Callable[[Path], SAE], weights_file: str | None = None
) -> None:
    """Add (or replace, by name) a format loader; later registrations are tried after earlier ones."""
    for i, loader in enumerate(_LOADERS):
        if loader.name == name:
            _LOADERS[i] = SAELoader(name, detect, load, weights_file)
            return
    _LOADERS.append(SAELoader(name, detect, load, weights_file))


def registered_loaders() -> list[str]:
    return [loader.name for loader in _LOADERS]


register_loader(saelens.FORMAT, saelens.detect, saelens.load, saelens.WEIGHTS_FILENAME)
register_loader(sparsify.FORMAT, sparsify.detect, sparsify.load, sparsify.WEIGHTS_FILENAME)

_WEIGHT_FILE_NAMES = {CFG_FILENAME, saelens.WEIGHTS_FILENAME, sparsify.WEIGHTS_FILENAME}


def _resolve_directory(path: str | Path) -> Path:
    directory = Path(path).expanduser()
    if directory.is_file() and directory.name in _WEIGHT_FILE_NAMES:
        return directory.parent  # the user pointed at a file inside the SAE directory
    if not directory.exists():
        raise UserError(
            f"SAE directory {directory} does not exist",
            "pass the directory holding cfg.json and the weights (sae_weights.safetensors for SAELens, "
            "sae.safetensors for sparsify), or make one with `autointerp train-sae --out DIR`",
        )
    if not directory.is_dir():
        raise UserError(
            f"{directory} is a file, not an SAE directory",
            "pass the directory holding cfg.json and the weights file",
        )
    return directory


def _no_loader_error(directory: Path) -> UserError:
    expected = ", ".join(f"{lo.weights_file} ({lo.name})" for lo in _LOADERS if lo.weights_file)
    nested = sorted(p.parent.name for p in directory.glob(f"*/{CFG_FILENAME}"))
    if nested:
        return UserError(
            f"{directory} holds several SAEs in sub-directories, not one SAE",
            f"pass one of them, e.g. {directory / nested[0]} (found: {', '.join(nested[:8])})",
        )
    if not (directory / CFG_FILENAME).is_file():
        return UserError(
            f"{directory} has no {CFG_FILENAME} and no SAE weights file",
            f"an SAE directory holds {CFG_FILENAME} and one of: {expected}",
        )
    present = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != CFG_FILENAME)
    return UserError(
        f"{directory} has {CFG_FILENAME} but no weights file that autointerp knows "
        f"(files there: {', '.join(present) or 'none'})",
        f"expected one of: {expected}; copy the weights next to cfg.json, or convert the SAE to SAELens format",
    )


def detect_format(path: str | Path) -> str:
    """Name of the loader that would read `path` (UserError if none would)."""
    directory = _resolve_directory(path)
    for loader in _LOADERS:
        if loader.detect(directory):
            return loader.name
    raise _no_loader_error(directory)


def load_sae(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32
) -> SAE:
    """Load the SAE in directory `path` (any registered format), in eval mode with gradients off."""
    directory = _resolve_directory(path)
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise UserError(f"unknown dtype {dtype!r}", "use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device} asked for, but no CUDA GPU is visible", "use --device cpu")
    for loader in _LOADERS:
        if loader.detect(directory):
            sae = loader.load(directory)
            sae.cfg.extra.setdefault("format", loader.name)
            sae.to(device=device, dtype=dtype).eval()  # type: ignore[arg-type]
            sae.requires_grad_(False)
            return sae
    raise _no_loader_error(directory)


def save_saelens(sae: SAE, out_dir: str | Path) -> Path:
    """Write `sae` as a SAELens directory (cfg.json + sae_weights.safetensors); returns the directory."""
    return saelens.save(sae, out_dir)


def check_sae_matches(sae: SAE, hidden_size: int, hook: str) -> None:
    """UserError if the SAE cannot read the model's activations at `hook` (input width differs).

    A differing training hook name is only logged: names differ between tools for the same place.
    """
    where = []
    if sae.cfg.model_name:
        where.append(f"model_name={sae.cfg.model_name}")
    if sae.cfg.hook_name:
        where.append(f"hook_name={sae.cfg.hook_name}")
    trained = f" (its cfg.json says {', '.join(where)})" if where else ""
    if sae.d_in != hidden_size:
        raise UserError(
            f"the SAE reads vectors of width d_in={sae.d_in}, but the model's hidden size at {hook} is {hidden_size}",
            f"use an SAE trained on this model{trained}, or pass the --model it was trained on",
        )
    if sae.cfg.hook_name:
        from autointerp.models import parse_hook

        try:
            same = parse_hook(sae.cfg.hook_name) == parse_hook(hook)
        except UserError:
            return  # a hook naming scheme we do not know; nothing to compare
        if not same:
            log.warning("the SAE was trained at %s but is applied at %s", sae.cfg.hook_name, hook)
