"""Int8 weight-only linear layers for the embedded LLM (`--llm local:...`): half the memory of bf16 weights.

Why: on a laptop the embedded explainer's peak memory is mostly its weights (qwen1.5b: 3.1 GB in bf16 of a
~4.3 GB peak). The decoder's linear layers hold ~85 % of them; stored as int8 with one scale per output row
(symmetric, round to nearest), they take half the bytes. The shipped GGUFs are 4-6-bit quantizations already,
so the extra rounding is small: ~0.4 % of a row's largest weight, a relative output error of ~1 % on random
inputs, well inside the difference between the GGUF's own quant types.

How each product is computed (`python -m autointerp.bench.int8`: Qwen shapes on 2 Zen 4 cores, bf16
activations, times as ratios to the bf16 product in the same run, weights warm in the CPU cache):
- a few rows (decoding: one position per prompt) go to torch's int8 weight-only kernel
  (`torch._weight_int8pack_mm`), which reads half the bytes: 0.3-1.3x the bf16 time up to 8 rows;
- more rows (reading a prompt) dequantize the weight for that one product and use the bf16 matmul: the
  kernel takes 2.2-3.1x the bf16 time there, dequantize + bf16 1.05-1.3x at 512-2,048 rows. The dequantized
  copy lives for one product, so only one matrix exists in bf16 at a time.

Loading: the quantized weights are written once per model into the cache (`int8_checkpoint`) and loaded from
there into a model built without weights, so the process never holds the float weights at all: quantizing a
loaded model instead touched every page of the memory-mapped bf16 file, which then stayed resident beside the
int8 copy (qwen0.5b: 1.58 GB after quantizing against 0.57 GB before).

The token embedding and the output head stay as they are: the head is one vocabulary-wide matrix that the
likelihood scorers multiply by dozens of positions at a time, where dequantizing 150k rows per call would cost
more than the product; Qwen ties it to the embedding, so it is one bf16 matrix either way.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: Rows (positions x prompts) up to which the int8 kernel is used; above, the weight is dequantized per product.
#: Up to 8 rows the kernel is about as fast as bf16 or faster (Qwen shapes), at 64 it is 2-3x slower.
INT8_KERNEL_ROWS = 8
#: Part of the cache file's name: bumped when what `write_int8_checkpoint` writes changes.
INT8_FORMAT_VERSION = 1
#: Weight rows quantized at a time: bounds the float32 temporaries while quantizing a large matrix.
_QUANT_CHUNK_ROWS = 4096


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (int8 [out, in], scales [out] in the weight's dtype); w ~= q * scale."""
    out = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scales = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    for first in range(0, weight.shape[0], _QUANT_CHUNK_ROWS):
        rows = weight[first : first + _QUANT_CHUNK_ROWS].float()
        scale = rows.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        out[first : first + _QUANT_CHUNK_ROWS] = torch.round(rows / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        scales[first : first + _QUANT_CHUNK_ROWS] = scale
    return out, scales.to(weight.dtype)


class Int8Linear(nn.Module):
    """`nn.Linear` with an int8 weight and one scale per output feature (see the module docstring)."""

    def __init__(self, weight_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight_int8", weight_int8)
        self.register_buffer("scales", scales)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        weight_int8, scales = quantize_rows(linear.weight.detach())
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        return cls(weight_int8, scales, bias)

    def dequantized(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight as floats (one transient copy): `int8 * scale`, in one pass."""
        weight = self.weight_int8 * self.scales[:, None]
        return weight if dtype is None else weight.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        fused = (flat.shape[0] <= INT8_KERNEL_ROWS and flat.device.type == "cpu"
                 and flat.dtype == self.scales.dtype)
        if fused:
            out = torch._weight_int8pack_mm(flat.contiguous(), self.weight_int8, self.scales)
            if self.bias is not None:
                out = out + self.bias
        else:
            out = F.linear(flat, self.dequantized(flat.dtype), self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def _empty_model(directory: Path, dtype: torch.dtype) -> Any:
    """The model of `directory`'s config with its parameters on the meta device (no memory; buffers are real)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _decoder_linear_names(model: Any) -> list[str]:
    """Qualified names of the `nn.Linear` modules inside the decoder layers (what gets quantized)."""
    from autointerp.models import decoder_layers

    inside = {id(m) for m in decoder_layers(model).modules()}
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and id(module) in inside]


def int8_checkpoint(directory: Path, dtype: torch.dtype, cache: Path) -> Path:
    """The int8 weights of the HF model in `directory`, written into `cache` on first use and reused after.

    Keyed by the weight files (path, size, mtime), the scales' dtype and `INT8_FORMAT_VERSION`, so a changed
    model or format is quantized again. Written to a temporary name and renamed: a crash leaves no half file.
    """
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors weights in {directory}")
    digest = hashlib.sha256(f"int8 v{INT8_FORMAT_VERSION} {dtype}\n".encode())
    for path in shards:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}\n".encode())
    target = cache / f"{directory.name}-int8-{digest.hexdigest()[:12]}.safetensors"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        write_int8_checkpoint(directory, shards, dtype, target)
    return target


def write_int8_checkpoint(directory: Path, shards: list[Path], dtype: torch.dtype, target: Path) -> None:
    """Quantize the decoder's linear weights of the safetensors `shards`, one tensor at a time, into `target`."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    names = set(_decoder_linear_names(_empty_model(directory, dtype)))
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as reader:
            for key in reader.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                tensor = reader.get_tensor(key)
                module, _, leaf = key.rpartition(".")
                if module in names and leaf == "weight":
                    tensors[f"{module}.weight_int8"], tensors[f"{module}.scales"] = quantize_rows(tensor.to(dtype))
                else:
                    tensors[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
                del tensor
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    save_file(tensors, str(partial), metadata={"autointerp": json.dumps({"int8_format": INT8_FORMAT_VERSION})})
    os.replace(partial, target)


def load_int8_model(directory: Path, dtype: torch.dtype, checkpoint: Path) -> Any:
    """The causal LM of HF directory `directory` with the int8 decoder weights of `checkpoint` (`int8_checkpoint`)."""
    from safetensors.torch import load_file
    from transformers import GenerationConfig

    model = _empty_model(directory, dtype)
    for name in _decoder_linear_names(model):
        parent_name, _, child = name.rpartition(".")
        linear = model.get_submodule(name)
        with torch.device("meta"):
            empty = Int8Linear(torch.empty(linear.out_features, linear.in_features, dtype=torch.int8),
                               torch.empty(linear.out_features, dtype=dtype),
                               torch.empty(linear.out_features, dtype=dtype) if linear.bias is not None else None)
        setattr(model.get_submodule(parent_name), child, empty)
    model.load_state_dict(load_file(str(checkpoint)), strict=False, assign=True)
    model.tie_weights()  # a tied head points at the loaded embedding again (assign replaced the parameter)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise ValueError(f"int8 checkpoint {checkpoint} lacks {len(left)} tensors, e.g. {left[:3]}: "
                         f"delete it to have it written again")
    if (directory / "generation_config.json").is_file():  # else the defaults derived from the config stay
        model.generation_config = GenerationConfig.from_pretrained(str(directory), local_files_only=True)
    return model
