"""The SAE every loader returns: one small torch module covering the common architectures.

Conventions follow SAELens: `encode(x) = act(((norm(x) - b_dec) @ W_enc) + b_enc)` (the `b_dec`
subtraction only when `apply_b_dec_to_input`), `decode(f) = unnorm(f @ W_dec + b_dec)`. Input
normalisation is applied inside `encode` and undone in `decode`, so callers always pass raw hook
activations. Loaders fold format quirks (decoder-norm rescaling, fine-tuning scaling factors, fixed
normalisation scalars) into the weights, so this module only has to know the plain forms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

Architecture = Literal["relu", "jumprelu", "topk"]
ARCHITECTURES: tuple[str, ...] = ("relu", "jumprelu", "topk")

# 'none'; 'constant_norm_rescale' (each input scaled so that ||x|| = sqrt(d_in), undone on decode);
# 'expected_average_only_in' (x times the fixed `norm_scaling_factor`; without a factor it is a no-op,
# as in SAELens, which folds the factor into the weights at the end of training); 'layer_norm'
# (x - mean over d_in, divided by its std + 1e-5; undone on decode).
NORMALIZATIONS: tuple[str, ...] = ("none", "constant_norm_rescale", "expected_average_only_in", "layer_norm")
_LAYER_NORM_EPS = 1e-5


@dataclass
class SAEConfig:
    architecture: Architecture
    d_in: int
    d_sae: int
    k: int | None = None  # TopK only
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"  # one of NORMALIZATIONS
    norm_scaling_factor: float | None = None  # for 'expected_average_only_in'
    hook_name: str | None = None  # informational: where the SAE was trained
    model_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # format, source cfg keys worth keeping

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; expected one of {ARCHITECTURES}")
        if self.normalize_activations in (None, False):
            self.normalize_activations = "none"
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"unsupported normalize_activations={self.normalize_activations!r}")
        if self.architecture == "topk":
            if not self.k or self.k < 1:
                raise ValueError("a TopK SAE needs k >= 1")
            if self.k > self.d_sae:
                raise ValueError(f"k={self.k} is larger than the number of latents d_sae={self.d_sae}")

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

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    # --- normalisation -------------------------------------------------------------
    def _normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, Any]]:
        """(normalised x, (scale, shift)) such that x_norm = (x - shift) * scale."""
        mode = self.cfg.normalize_activations
        if mode == "none":
            return x, (1.0, 0.0)
        if mode == "expected_average_only_in":
            scale = 1.0 if self.cfg.norm_scaling_factor is None else float(self.cfg.norm_scaling_factor)
            return x * scale, (scale, 0.0)
        if mode == "constant_norm_rescale":
            scale = (self.cfg.d_in**0.5) / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            return x * scale, (scale, 0.0)
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            std = (x - mu).std(dim=-1, keepdim=True)
            scale = 1.0 / (std + _LAYER_NORM_EPS)
            return (x - mu) * scale, (scale, mu)
        raise ValueError(f"unsupported normalize_activations={mode!r}")

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations [..., d_sae] for raw hook activations [..., d_in]."""
        x, _ = self._normalize(x.to(self.W_enc.dtype))
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        # addmm adds the bias inside the GEMM: one pass over the [tokens, d_sae] output instead of two,
        # and one rounding in low precision (half the encoder time of `x @ W_enc + b_enc` in bf16 on CPU)
        flat = x.reshape(-1, x.shape[-1])
        return torch.addmm(self.b_enc, flat, self.W_enc).view(*x.shape[:-1], self.d_sae)

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        """The architecture's nonlinearity applied to pre-activations (SAELens semantics)."""
        arch = self.cfg.architecture
        if arch == "relu":
            return torch.relu(pre)
        if arch == "jumprelu":
            # SAELens: relu(pre) where pre > relu(threshold); identical to pre * (pre > threshold)
            # whenever the threshold is positive, and never negative otherwise.
            return torch.relu(pre) * (pre > torch.relu(self.threshold)).to(pre.dtype)
        if arch == "topk":
            values, indices = torch.topk(pre, self.cfg.k, dim=-1)  # type: ignore[arg-type]
            out = torch.zeros_like(pre)
            return out.scatter_(-1, indices, torch.relu(values))
        raise ValueError(f"unknown architecture {arch!r}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations [..., d_sae] (>= 0) for raw hook activations [..., d_in]."""
        return self.activation(self.pre_acts(x))

    def decode(self, latents: torch.Tensor, x_for_norm: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction in the raw activation space.

        Per-input normalisations ('constant_norm_rescale', 'layer_norm') can only be undone with the
        input they were computed from, so those need `x_for_norm`.
        """
        recon = latents.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        mode = self.cfg.normalize_activations
        if mode == "none":
            return recon
        if mode in ("constant_norm_rescale", "layer_norm"):
            if x_for_norm is None:
                raise ValueError(f"decode needs x_for_norm to undo normalize_activations={mode}")
            _, (scale, shift) = self._normalize(x_for_norm.to(self.W_dec.dtype))
        else:
            _, (scale, shift) = self._normalize(recon)
        return recon / scale + shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x_for_norm=x)
