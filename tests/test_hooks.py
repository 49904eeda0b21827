"""Hook points at the token embeddings (SAELens `blocks.0.hook_resid_pre`, `hook_embed`, `embed`), on a real
tiny Llama: the activations read there are the embedding output, later `resid_pre` names equal the previous
layer's output, replacing the activations there changes the logits, and collect runs at the hook."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autointerp.errors import UserError
from autointerp.models import (
    HookPoint,
    activations_at_hook,
    load_model,
    logits_with_hook_replaced,
    parse_hook,
)
from tests.collect_helpers import TINY_HIDDEN, make_sae_dir, make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory):
    return load_model(str(make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")))


def test_embedding_hook_names_parse() -> None:
    assert parse_hook("embed") == parse_hook("hook_embed") == HookPoint(0, "embed")
    assert parse_hook("blocks.0.hook_resid_pre") == HookPoint(0, "resid_pre")
    assert parse_hook("blocks.3.hook_resid_pre") == parse_hook("layers.2")  # input of 3 = output of 2
    assert parse_hook("blocks.0.hook_resid_pre").name == "blocks.0.hook_resid_pre"
    with pytest.raises(UserError, match="embed"):
        parse_hook("hook_embedding")


def test_embedding_hooks_read_the_embedding_output(tiny_lm) -> None:
    ids = torch.tensor([tiny_lm.tokenizer.encode("The river Thames flows through London in 1900.")])
    expected = tiny_lm.model.get_input_embeddings()(ids)
    for name in ("embed", "hook_embed", "blocks.0.hook_resid_pre"):
        got = activations_at_hook(tiny_lm, parse_hook(name), ids)
        assert got.shape == (1, ids.shape[1], TINY_HIDDEN)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # resid_pre of layer 1 is the output of layer 0
    torch.testing.assert_close(
        activations_at_hook(tiny_lm, parse_hook("blocks.1.hook_resid_pre"), ids),
        activations_at_hook(tiny_lm, parse_hook("layers.0"), ids),
    )


@pytest.mark.parametrize("name", ["embed", "blocks.0.hook_resid_pre"])
def test_replacing_embedding_activations_changes_the_logits(tiny_lm, name: str) -> None:
    ids = torch.tensor([tiny_lm.tokenizer.encode("Paris is the capital of France.")])
    point = parse_hook(name)
    clean = logits_with_hook_replaced(tiny_lm, point, ids, None)
    same = logits_with_hook_replaced(tiny_lm, point, ids, lambda h: h.clone())
    torch.testing.assert_close(same, clean)
    zeroed = logits_with_hook_replaced(tiny_lm, point, ids, lambda h: torch.zeros_like(h))
    assert not torch.allclose(zeroed, clean)
    # zero embeddings everywhere: every position sees the same inputs, so all rows agree
    torch.testing.assert_close(zeroed[0, 1], zeroed[0, 2], rtol=1e-4, atol=1e-4)


def test_collect_at_the_embeddings(tmp_path: Path) -> None:
    from autointerp.collect import CollectConfig, collect
    from autointerp.store import Store

    model_dir = make_tiny_model_dir(tmp_path / "model")
    sae_dir = make_sae_dir(tmp_path / "sae", d_sae=32)
    config = CollectConfig(
        model=str(model_dir),
        hook="blocks.0.hook_resid_pre",
        sae=str(sae_dir),
        corpus="wiki",
        sae_name="embed-sae",
        tokens=1500,
        top_k=4,
        random_k=4,
        nonactivating_k=2,
        ctx_len=32,
        min_ctx_tokens=8,
        seed=0,
        batch_size=16,
        progress=False,
    )
    with Store(tmp_path / "run.duckdb") as store:
        run = collect(config, store)
        feats = store.features(run.run_id)
        assert run.hook == "blocks.0.hook_resid_pre"
        assert len(feats) == 32 and (feats["firing_count"] > 0).sum() > 16


def test_the_output_head_gets_a_contiguous_input(tiny_lm) -> None:
    """`generate` hands the head the last position as a strided view of the prefill's hidden states; on CPU a
    bf16 `linear` on such a view was as slow as the whole [batch, T, vocab] product (3.7 s / 2.1 GB for
    Qwen2.5-0.5B, 8 x 1,000 tokens), so `load_model` makes the head's input contiguous. Same logits."""
    head = tiny_lm.model.get_output_embeddings()
    seen: list[bool] = []
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    try:
        hidden = torch.randn(3, 7, TINY_HIDDEN)
        view = hidden[:, -1:]
        assert not view.is_contiguous()
        with torch.inference_mode():
            logits = head(view)
            expected = torch.nn.functional.linear(view.contiguous(), head.weight, head.bias)
        assert seen == [True]
        assert torch.equal(logits, expected)
    finally:
        handle.remove()
