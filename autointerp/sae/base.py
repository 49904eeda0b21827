"""The SAE every loader returns: one small torch module covering the common architectures.

Conventions follow SAELens: `encode(x) = act(((x - b_dec) @ W_enc) + b_enc)` (the `b_dec` subtraction
only when `apply_b_dec_to_input`), `decode(f) = f @ W_dec + b_dec`. Input normalisation is applied
inside `encode`/undone in `decode` so callers always pass raw hook activations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

Architecture = Literal["relu", "jumprelu", "topk"]


@dataclass
class SAEConfig:
    architecture: Architecture
    d_in: int
    d_sae: int
    k: int | None = None                      # TopK only
    apply_b_dec_to_input: bool = True
    # 'none' | 'constant_norm_rescale' (scale x so that E||x|| = sqrt(d_in); scale estimated per batch)
    # | 'expected_average_only_in' (a fixed scalar from cfg, `norm_scaling_factor`) | 'layer_norm'
    normalize_activations: str = "none"
    norm_scaling_factor: float | None = None
    hook_name: str | None = None              # informational: where the SAE was trained
    model_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SAE(nn.Module):
    """Weights: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], threshold [d_sae] (JumpReLU)."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae))
        if cfg.architecture == "topk" and not cfg.k:
            raise ValueError("a TopK SAE needs k")

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    # --- normalisation -------------------------------------------------------------
    def _norm_scale(self, x: torch.Tensor) -> torch.Tensor | float:
        mode = self.cfg.normalize_activations
        if mode in ("none", None):
            return 1.0
        if mode == "expected_average_only_in":
            if self.cfg.norm_scaling_factor is None:
                raise ValueError("normalize_activations=expected_average_only_in needs norm_scaling_factor")
            return float(self.cfg.norm_scaling_factor)
        if mode == "constant_norm_rescale":
            return (self.cfg.d_in**0.5) / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        raise ValueError(f"unsupported normalize_activations={mode!r}")

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype) * self._norm_scale(x)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations [..., d_sae] (>= 0) for raw hook activations [..., d_in]."""
        pre = self.pre_acts(x)
        arch = self.cfg.architecture
        if arch == "relu":
            return torch.relu(pre)
        if arch == "jumprelu":
            return pre * (pre > self.threshold).to(pre.dtype)
        if arch == "topk":
            values, indices = torch.topk(pre, self.cfg.k, dim=-1)  # type: ignore[arg-type]
            out = torch.zeros_like(pre)
            return out.scatter_(-1, indices, torch.relu(values))
        raise ValueError(f"unknown architecture {arch!r}")

    def decode(self, latents: torch.Tensor, x_for_norm: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction in the raw activation space (undoes input scaling when `x_for_norm` is given)."""
        recon = latents @ self.W_dec + self.b_dec
        if self.cfg.normalize_activations not in ("none", None):
            if x_for_norm is None and self.cfg.normalize_activations == "constant_norm_rescale":
                raise ValueError("decode needs x_for_norm to undo constant_norm_rescale")
            recon = recon / self._norm_scale(x_for_norm if x_for_norm is not None else recon)
        return recon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x_for_norm=x)
