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
