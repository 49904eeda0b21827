"""Int8 weight-only layers of the embedded LLM: rounding bound, both product paths, in-place replacement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autointerp.models.int8 import INT8_KERNEL_ROWS, Int8Linear, quantize_rows


def test_rounding_error_is_at_most_half_a_step_per_row() -> None:
    torch.manual_seed(0)
    weight = torch.randn(300, 70) * torch.logspace(-3, 1, 300)[:, None]  # rows of very different scales
    weight[5] = 0.0  # an all-zero row must not divide by zero
    q, scales = quantize_rows(weight)
    assert q.dtype == torch.int8 and scales.shape == (300,)
    restored = q.float() * scales[:, None]
    assert torch.all((restored - weight).abs() <= scales[:, None] / 2 + 1e-7)
    assert torch.all(restored[5] == 0)
    # the largest weight of each row maps to +-127: the whole int8 range is used
    assert torch.all(q.abs().amax(dim=1)[torch.arange(300) != 5] == 127)


@pytest.mark.parametrize("rows", [1, INT8_KERNEL_ROWS, INT8_KERNEL_ROWS + 1, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_both_product_paths_match_the_float_layer(rows: int, bias: bool) -> None:
    """Few rows go to torch's int8 kernel, more to a dequantized bf16 product: both stay close to nn.Linear."""
    torch.manual_seed(1)
    linear = nn.Linear(96, 40, bias=bias).to(torch.bfloat16)
    x = torch.randn(rows, 3, 96, dtype=torch.bfloat16)[:, 0]  # a non-contiguous input, as sliced positions are
    expected = linear(x).float()
    int8 = Int8Linear.from_linear(linear)
    got = int8(x)
    assert got.shape == expected.shape and got.dtype == torch.bfloat16
    error = (got.float() - expected).norm() / expected.norm()
    assert error < 0.03, error
    # the same layer on the other path gives the same numbers up to bf16 rounding
    other = nn.functional.linear(x, int8.dequantized(torch.bfloat16), int8.bias)
    assert torch.allclose(got.float(), other.float(), atol=0.05, rtol=0.02)


def test_an_int8_model_loads_from_its_cached_checkpoint_and_predicts_like_the_full_one(tmp_path, monkeypatch) -> None:
    """load_model(weights='int8') writes the int8 checkpoint once, reuses it, and predicts close to the full model."""
    from collect_helpers import make_tiny_model_dir

    from autointerp.models import load_model

    monkeypatch.setenv("AUTOINTERP_CACHE_DIR", str(tmp_path / "cache"))
    directory = make_tiny_model_dir(tmp_path / "llama", hidden=64, layers=2)
    full = load_model(str(directory), dtype="bfloat16")
    int8 = load_model(str(directory), dtype="bfloat16", weights="int8")
    checkpoints = list((tmp_path / "cache" / "models").glob("*-int8-*.safetensors"))
    assert len(checkpoints) == 1
    written = checkpoints[0].stat().st_mtime_ns
    layers = [m for m in int8.model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 2 * 7 and all(m.weight_int8.dtype == torch.int8 for m in layers)  # q k v o gate up down
    assert not any(t.device.type == "meta" for t in [*int8.model.parameters(), *int8.model.buffers()])
    assert int8.model.get_output_embeddings().weight is int8.model.get_input_embeddings().weight
    ids = full.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = full.model(ids).logits.float()
        got = int8.model(ids).logits.float()
        generated = int8.model.generate(ids, max_new_tokens=8, do_sample=False)  # decoding: the int8 kernel path
    assert (got - expected).norm() / expected.norm() < 0.05
    assert generated.shape[0] == 1 and generated.shape[1] > ids.shape[1]

    again = load_model(str(directory), dtype="bfloat16", weights="int8")
    assert checkpoints[0].stat().st_mtime_ns == written  # reused, not rewritten
    with torch.inference_mode():
        assert torch.equal(again.model(ids).logits, int8.model(ids).logits)


def test_an_unknown_weight_format_is_one_clear_error() -> None:
    from autointerp.errors import UserError
    from autointerp.llm import make_client
    from autointerp.models import load_model

    with pytest.raises(UserError, match="unknown weight format"):
        make_client("local:smollm2", weights="int4")
    with pytest.raises(UserError, match="unknown weight format"):
        load_model("smollm2", weights="int4")


def test_an_unwritable_cache_falls_back_to_the_weights_as_loaded(tmp_path, monkeypatch, caplog) -> None:
    from collect_helpers import make_tiny_model_dir

    from autointerp.models import load_model

    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("AUTOINTERP_CACHE_DIR", str(blocked))
    directory = make_tiny_model_dir(tmp_path / "llama", hidden=64, layers=2)
    loaded = load_model(str(directory), dtype="bfloat16", weights="int8")
    assert not any(isinstance(m, Int8Linear) for m in loaded.model.modules())
    assert "could not write int8 weights" in caplog.text


def test_without_the_model_cache_the_default_is_the_weights_as_loaded(monkeypatch) -> None:
    from autointerp.models import llm_weights

    assert llm_weights("smollm2") == "int8"
    monkeypatch.setenv("AUTOINTERP_NO_MODEL_CACHE", "1")
    assert llm_weights("smollm2") == "full"
