"""`autointerp convert`: the GGUF written out as a Hugging Face directory loads back with transformers
and gives the same logits as the GGUF itself (slow: loads the real SmolLM2 twice)."""

from __future__ import annotations

import json

import pytest
import torch

from autointerp.cli import main
from autointerp.models import load_model, load_tokenizer
from autointerp.models.convert import MARKER_FILE, is_converted_dir


@pytest.mark.slow
def test_converted_smollm2_loads_back_with_the_same_logits(tmp_path, monkeypatch):
    # The reference reads the GGUF itself, not autointerp's cached conversion of it.
    monkeypatch.setenv("AUTOINTERP_NO_MODEL_CACHE", "1")
    smollm2 = load_model("smollm2")
    out = tmp_path / "smollm2-hf"
    assert main(["convert", "--model", "smollm2", "--out", str(out)]) == 0
    assert is_converted_dir(out)
    assert not list(tmp_path.glob(".*partial*")), "the staging directory was left behind"
    assert (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert json.loads((out / MARKER_FILE).read_text())["source"] == "smollm2"
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"

    tokenizer = load_tokenizer(str(out))
    assert tokenizer.chat_template, "the chat template must survive (vLLM's /chat/completions needs it)"
    messages = [{"role": "user", "content": "Hi"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == smollm2.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = "The capital of France is Paris, and the capital of Italy is Rome."
    ids = smollm2.tokenizer(text, return_tensors="pt").input_ids
    assert tokenizer(text, return_tensors="pt").input_ids.tolist() == ids.tolist()

    converted = load_model(str(out))
    with torch.inference_mode():
        expected = smollm2.model(input_ids=ids).logits
        got = converted.model(input_ids=ids).logits
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    # Writing over a finished conversion needs --force; with it, the directory is replaced whole.
    assert main(["convert", "--model", "smollm2", "--out", str(out)]) == 2
    assert is_converted_dir(out)


def _untied_model(head_from_embedding: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        if head_from_embedding:  # two quantizations of one matrix: the same values plus ~5 % noise
            embedding = model.get_input_embeddings().weight
            model.get_output_embeddings().weight.copy_(embedding + 0.05 * embedding.std() * torch.randn_like(embedding))
    return model


def test_two_quantized_copies_of_a_tied_embedding_are_written_as_one(tmp_path):
    from transformers import LlamaForCausalLM

    from autointerp.models.convert import tie_quantized_copies

    model = _untied_model(head_from_embedding=True)
    head = model.get_output_embeddings().weight.detach().clone()
    distance = tie_quantized_copies(model)
    assert distance is not None and distance < 0.1
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight, head), "the head's (more precise) copy is kept"
    model.save_pretrained(tmp_path / "tied")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "tied")
    assert reloaded.config.tie_word_embeddings
    assert reloaded.get_input_embeddings().weight.data_ptr() == reloaded.get_output_embeddings().weight.data_ptr()
    assert torch.equal(reloaded.get_output_embeddings().weight, head)


def test_a_genuinely_untied_head_stays_its_own_matrix():
    from autointerp.models.convert import tie_quantized_copies

    model = _untied_model(head_from_embedding=False)
    distance = tie_quantized_copies(model)
    assert distance is not None and distance > 1.0
    assert model.get_input_embeddings().weight is not model.get_output_embeddings().weight
    assert not model.config.tie_word_embeddings
