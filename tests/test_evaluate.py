"""SAE-level metrics and the output view, checked against hand computations on a tiny random Llama."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from autointerp.evaluate import output_view as output_view_module
from autointerp.evaluate.batches import TokenBatch, batches_from_token_lists, limit_tokens
from autointerp.evaluate.ce_loss import ce_loss_stats, next_token_losses
from autointerp.evaluate.output_view import direction_logits_transform, feature_output_view
from autointerp.evaluate.reconstruction import ReconstructionStats, reconstruction_stats
from autointerp.evaluate.sae_metrics import MetricOptions, compute_sae_metrics
from autointerp.models import LoadedModel, activations_at_hook, load_model, parse_hook
from autointerp.sae.base import SAE, SAEConfig

VOCAB = 512
D_MODEL = 64
HOOK = "layers.0"


def _save_tiny_llama(directory: Path) -> Path:
    """A 2-layer Llama with random weights and a word-level tokenizer over VOCAB words ("w0" ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<eos>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 2)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.2, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a final-norm gain that is not all ones, so the output view must apply it
        model.model.norm.weight.copy_(torch.rand(D_MODEL) + 0.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(str(_save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))))


@pytest.fixture(scope="module")
def contexts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (int(n),), generator=gen).tolist() for n in [16] * 9 + [11, 7, 1]]


def identity_sae(d_in: int) -> SAE:
    """Width 2*d_in, W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x, an exact identity."""
    sae = SAE(SAEConfig(architecture="relu", d_in=d_in, d_sae=2 * d_in, apply_b_dec_to_input=False))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae.eval().requires_grad_(False)


def zero_sae(d_in: int) -> SAE:
    return SAE(SAEConfig(architecture="relu", d_in=d_in, d_sae=8)).eval().requires_grad_(False)


def random_relu_sae(d_in: int, d_sae: int = 96, seed: int = 3) -> SAE:
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(architecture="relu", d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / math.sqrt(d_in))
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.5 - 0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=gen) / math.sqrt(d_sae))
        sae.b_dec.copy_(torch.randn(d_in, generator=gen) * 0.1)
    return sae.eval().requires_grad_(False)


def make_batches(contexts: list[list[int]], batch_size: int = 4):
    return lambda: batches_from_token_lists(contexts, batch_size)


# ----------------------------------------------------------------------------- batches
def test_batches_pad_right_and_skip_contexts_with_nothing_to_count() -> None:
    batches = list(batches_from_token_lists([[1, 2, 3], [4], [5, 6]], batch_size=2, pad_token_id=0))
    assert len(batches) == 1  # [4] has only position 0, which never counts
    batch = batches[0]
    assert batch.input_ids.tolist() == [[1, 2, 3], [5, 6, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch.valid_mask().tolist() == [[False, True, True], [False, True, False]]


def test_limit_tokens_stops_after_whole_contexts() -> None:
    batches = batches_from_token_lists([[1] * 5] * 10, batch_size=4)  # 4 counted tokens per context
    kept = list(limit_tokens(batches, 9))
    assert [b.input_ids.shape[0] for b in kept] == [3]
    assert sum(b.n_valid for b in kept) == 12
    assert list(limit_tokens(batches_from_token_lists([[1] * 5] * 10, 4), 0)) == []


# ----------------------------------------------------------------------------- streaming statistics
def test_streamed_fve_and_mse_match_a_direct_computation_with_a_large_mean() -> None:
    """Chan's merge keeps the digits a naive sum of squares would lose when mean >> spread."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 8, generator=gen, dtype=torch.float64) * 0.01 + 1e4
    x_hat = x + torch.randn(1000, 8, generator=gen, dtype=torch.float64) * 0.001
    latents = torch.relu(torch.randn(1000, 5, generator=gen))
    stats = ReconstructionStats(d_in=8, d_sae=5)
    for start, stop in [(0, 1), (1, 300), (300, 301), (301, 1000)]:
        stats.update(x[start:stop], x_hat[start:stop], latents[start:stop])
    xn, xh = x.numpy(), x_hat.numpy()
    sse = ((xn - xh) ** 2).sum()
    variance = ((xn - xn.mean(axis=0)) ** 2).sum()
    assert stats.n_tokens == 1000
    assert stats.fve == pytest.approx(1 - sse / variance, rel=1e-9)
    assert stats.mse == pytest.approx(sse / 8000, rel=1e-9)
    assert stats.l0 == pytest.approx(float((latents > 0).sum()) / 1000)
    assert stats.firing_counts.tolist() == (latents > 0).sum(dim=0).tolist()


def test_constant_activations_have_no_fve() -> None:
    stats = ReconstructionStats(d_in=2, d_sae=1)
    stats.update(torch.ones(4, 2), torch.zeros(4, 2), torch.zeros(4, 1))
    assert stats.fve is None
    assert stats.mse == pytest.approx(1.0)


# ----------------------------------------------------------------------------- metrics on the tiny model
def test_l0_fve_mse_equal_a_brute_force_computation(tiny_lm: LoadedModel, contexts: list[list[int]]) -> None:
    point = parse_hook(HOOK)
    sae = random_relu_sae(D_MODEL)
    stats = reconstruction_stats(tiny_lm, point, sae, make_batches(contexts)())
    # brute force: one context at a time, no padding, positions 1.. only
    xs, counts = [], []
    for ctx in contexts:
        if len(ctx) < 2:
            continue
        acts = activations_at_hook(tiny_lm, point, torch.tensor([ctx]))[0, 1:]
        xs.append(acts)
        counts.append((sae.encode(acts) > 0).sum(dim=-1))
    x = torch.cat(xs).double()
    x_hat = sae(x.float()).double()
    n_tokens = sum(len(c) - 1 for c in contexts if len(c) >= 2)
    assert stats.n_tokens == x.shape[0] == n_tokens
    assert stats.l0 == pytest.approx(float(torch.cat(counts).double().mean()), rel=1e-12)
    assert 0 < stats.l0 < sae.d_sae
    sse = float(((x - x_hat) ** 2).sum())
    assert stats.fve == pytest.approx(1 - sse / float(((x - x.mean(0)) ** 2).sum()), rel=1e-4)
    assert stats.mse == pytest.approx(sse / x.numel(), rel=1e-4)


def test_identity_sae_explains_all_variance_and_recovers_all_loss(
    tiny_lm: LoadedModel, contexts: list[list[int]]
) -> None:
    result = compute_sae_metrics(
        tiny_lm, parse_hook(HOOK), identity_sae(D_MODEL), make_batches(contexts),
        MetricOptions(tokens=10_000, ce_tokens=10_000, ablation="zero"),
    )
    m = result.metrics
    assert m["fve"] == pytest.approx(1.0, abs=1e-6)
    assert m["mse"] == pytest.approx(0.0, abs=1e-10)
    assert m["l0"] == pytest.approx(D_MODEL, abs=0.01)  # every coordinate nonzero: one of the pair fires
    assert m["ce_loss_sae"] == pytest.approx(m["ce_loss_clean"], abs=1e-5)
    # a random model: ablation may raise or lower the loss, but the gap must be real so the ratio means something
    assert abs(m["ce_loss_zero_ablation"] - m["ce_loss_clean"]) > 0.05
    assert m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert m["n_eval_tokens"] == sum(len(c) - 1 for c in contexts if len(c) >= 2)
    assert m["dead_fraction"] == 0.0
    assert result.details["ce_loss_recovered"]["ablation"] == "zero"


def test_zero_sae_recovers_no_loss_against_zero_ablation(tiny_lm: LoadedModel, contexts: list[list[int]]) -> None:
    result = compute_sae_metrics(
        tiny_lm, parse_hook(HOOK), zero_sae(D_MODEL), make_batches(contexts),
        MetricOptions(tokens=10_000, ce_tokens=10_000, ablation="zero"),
    )
    m = result.metrics
    assert m["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-9)
    assert m["ce_loss_sae"] == pytest.approx(m["ce_loss_zero_ablation"], abs=1e-9)
    assert m["fve"] < 0  # predicting 0 is worse than predicting the mean
    assert m["l0"] == 0.0
    assert m["dead_fraction"] == 1.0
    assert m["dense_fraction"] == 0.0


def test_mean_ablation_uses_the_mean_activation(tiny_lm: LoadedModel, contexts: list[list[int]]) -> None:
    point = parse_hook(HOOK)
    sae = zero_sae(D_MODEL)  # reconstructs b_dec everywhere
    stats = reconstruction_stats(tiny_lm, point, sae, make_batches(contexts)())
    with torch.no_grad():
        sae.b_dec.copy_(stats.mean.float())  # so the SAE's output IS the mean ablation
    ce = ce_loss_stats(tiny_lm, point, sae, make_batches(contexts)(), "mean", stats.mean.float())
    metrics = ce.metrics()
    assert "ce_loss_mean_ablation" in metrics
    assert metrics["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6)


def test_ce_loss_counts_predictions_made_at_position_one_and_later() -> None:
    vocab = 3
    ids = torch.tensor([[0, 1, 2, 1], [2, 2, 0, 0]])
    batch = TokenBatch(ids, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    logits = torch.zeros(2, 4, vocab)
    logits[0, 1, 2] = 5.0  # position 1 predicts token 2 (correct), position 2 predicts token 1 (uniform)
    losses = next_token_losses(logits, batch)
    # counted: row 0 predictions at t=1 (target 2), t=2 (target 1); row 1 at t=1 (target 0); t=2 targets a pad
    assert losses.numel() == 3
    expected_first = -torch.log_softmax(torch.tensor([0.0, 0.0, 5.0]), 0)[2]
    assert float(losses[0]) == pytest.approx(float(expected_first), rel=1e-6)
    assert float(losses[1]) == pytest.approx(math.log(3), rel=1e-6)


def test_padding_does_not_change_the_metrics(tiny_lm: LoadedModel, contexts: list[list[int]]) -> None:
    point = parse_hook(HOOK)
    sae = random_relu_sae(D_MODEL)
    alone = reconstruction_stats(tiny_lm, point, sae, batches_from_token_lists(contexts, 1))
    padded = reconstruction_stats(tiny_lm, point, sae, batches_from_token_lists(contexts, 5))
    assert padded.n_tokens == alone.n_tokens
    assert padded.l0 == pytest.approx(alone.l0, rel=1e-9)
    assert padded.fve == pytest.approx(alone.fve, rel=1e-5)


def test_dead_and_dense_come_from_the_features_table_when_it_covers_every_latent(
    tiny_lm: LoadedModel, contexts: list[list[int]]
) -> None:
    sae = random_relu_sae(D_MODEL, d_sae=4)
    features = pd.DataFrame({"feature_id": range(4), "firing_count": [0, 5, 0, 100],
                             "density": [0.0, 0.01, 0.0, 0.5]})
    result = compute_sae_metrics(tiny_lm, parse_hook(HOOK), sae, make_batches(contexts),
                                 MetricOptions(tokens=50), features)
    assert result.metrics["dead_fraction"] == 0.5
    assert result.metrics["dense_fraction"] == 0.25
    assert result.details["dead_fraction"]["source"].startswith("features table")
    assert "ce_loss_recovered" not in result.metrics  # CE is opt-in
    partial = compute_sae_metrics(tiny_lm, parse_hook(HOOK), sae, make_batches(contexts),
                                  MetricOptions(tokens=50), features.head(2))
    assert partial.details["dead_fraction"]["source"].startswith("evaluated")
    assert 45 <= partial.metrics["n_eval_tokens"] < 65  # 50 tokens, rounded up to whole contexts


# ----------------------------------------------------------------------------- output view
def _largest_unembedding_row(lm: LoadedModel) -> tuple[int, torch.Tensor]:
    w_u = lm.model.get_output_embeddings().weight.detach().float()
    token = int(w_u.norm(dim=1).argmax())
    return token, w_u


def test_decoder_row_equal_to_a_token_unembedding_ranks_that_token_first(tiny_lm: LoadedModel) -> None:
    """With d = u_t / g, the logit of token j is u_t . u_j <= |u_t| |u_j| <= |u_t|^2 (t has the largest row)."""
    token, w_u = _largest_unembedding_row(tiny_lm)
    gain = tiny_lm.model.model.norm.weight.detach().float()
    w_dec = torch.randn(5, D_MODEL)
    w_dec[2] = w_u[token] / gain
    w_dec[4] = -w_u[token] / gain
    view = feature_output_view(tiny_lm, w_dec, top_k=10)
    assert len(view) == 5 * 2 * 10
    assert list(view.columns) == ["feature_id", "direction", "rank", "token_id", "token", "value"]
    first = view[view["rank"] == 0].set_index(["feature_id", "direction"])
    assert first.loc[(2, "promote"), "token_id"] == token
    assert first.loc[(2, "promote"), "token"] == tiny_lm.tokenizer.decode([token])
    assert first.loc[(2, "promote"), "value"] == pytest.approx(float(w_u[token] @ w_u[token]), rel=1e-5)
    assert first.loc[(4, "suppress"), "token_id"] == token
    assert first.loc[(4, "suppress"), "value"] == pytest.approx(-float(w_u[token] @ w_u[token]), rel=1e-5)
    promote = view[(view.feature_id == 0) & (view.direction == "promote")]["value"].to_numpy()
    suppress = view[(view.feature_id == 0) & (view.direction == "suppress")]["value"].to_numpy()
    assert np.all(np.diff(promote) <= 0) and np.all(np.diff(suppress) >= 0)


def test_output_view_applies_the_norm_gain_and_chunks_without_changing_results(
    tiny_lm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    w_u = tiny_lm.model.get_output_embeddings().weight.detach().float()
    gain = tiny_lm.model.model.norm.weight.detach().float()
    w_dec = torch.randn(7, D_MODEL, generator=torch.Generator().manual_seed(5))
    whole = feature_output_view(tiny_lm, w_dec, top_k=3)
    monkeypatch.setattr(output_view_module, "CHUNK_ELEMENTS", 2 * VOCAB)  # two features per chunk
    chunked = feature_output_view(tiny_lm, w_dec, top_k=3)
    pd.testing.assert_frame_equal(whole.drop(columns="value"), chunked.drop(columns="value"))
    assert chunked["value"].to_numpy() == pytest.approx(whole["value"].to_numpy(), rel=1e-5)
    brute = (w_dec * gain) @ w_u.T
    for f in range(7):
        top = torch.topk(brute[f], 3)
        rows = whole[(whole.feature_id == f) & (whole.direction == "promote")]
        assert rows["token_id"].tolist() == top.indices.tolist()
        assert rows["value"].to_numpy() == pytest.approx(top.values.double().numpy(), rel=1e-5)
    _, transform = direction_logits_transform(tiny_lm)
    assert torch.allclose(transform(w_dec), w_dec * gain)
    subset = feature_output_view(tiny_lm, w_dec, top_k=3, feature_ids=[6, 1])
    assert sorted(set(subset.feature_id)) == [1, 6]


# ----------------------------------------------------------------------------- end to end on a collected store
@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory):
    from collect_helpers import build_collected_store

    return build_collected_store(tmp_path_factory.mktemp("collected"), tokens=3000, d_sae=64, ctx_len=32)


def test_test_split_contexts_are_the_ones_collect_stored(collected) -> None:
    from autointerp.evaluate.test_split import contexts_of_test_split
    from autointerp.models import load_tokenizer
    from autointerp.store import Store

    with Store(collected.db_path, read_only=True) as store:
        run = store.resolve_run(None)
        contexts = contexts_of_test_split(store, run, load_tokenizer(str(collected.model_dir)))
        stored = store.query_df("SELECT split, token_ids FROM contexts WHERE corpus_id = ?", [run.corpus_id])
    recreated = {tuple(c) for c in contexts()}
    assert recreated
    stored_test = {tuple(ids) for ids in stored[stored.split == "test"]["token_ids"]}
    stored_explain = {tuple(ids) for ids in stored[stored.split == "explain"]["token_ids"]}
    assert stored_test and stored_test <= recreated
    assert not stored_explain & recreated


def test_evaluate_command_stores_metrics_and_output_view(collected, capsys: pytest.CaptureFixture[str]) -> None:
    from autointerp.cli import main
    from autointerp.store import Store

    code = main(["evaluate", "--db", str(collected.db_path), "--tokens", "400", "--ce-tokens", "200",
                 "--ablation", "mean", "--batch-size", "4", "--output-top-k", "5", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "ce_loss_recovered" in out and "output view: 640 rows" in out
    with Store(collected.db_path, read_only=True) as store:
        run = store.resolve_run(None)
        metrics = store.sae_metrics(run.run_id)
        logits = store.feature_logits(run.run_id)
        details = store.query_df("SELECT metric, details FROM sae_metrics WHERE run_id = ?", [run.run_id])
    expected = {"l0", "fve", "mse", "dead_fraction", "dense_fraction", "n_eval_tokens", "ce_loss_clean",
                "ce_loss_sae", "ce_loss_mean_ablation", "ce_loss_recovered"}
    assert expected <= set(metrics)
    assert 400 <= metrics["n_eval_tokens"] < 400 + 32
    assert 0 < metrics["l0"] <= 8  # a TopK SAE with k = 8
    assert metrics["mse"] > 0 and metrics["fve"] < 1
    assert 0 <= metrics["dead_fraction"] <= 1
    assert "features table" in dict(zip(details.metric, details.details, strict=True))["dead_fraction"]
    assert len(logits) == 64 * 2 * 5
    assert set(logits.direction) == {"promote", "suppress"}
    assert logits.groupby(["feature_id", "direction"]).size().eq(5).all()

    code = main(["evaluate", "--db", str(collected.db_path), "--tokens", "100", "--no-output-view",
                 "--no-progress"])
    assert code == 0
    with Store(collected.db_path, read_only=True) as store:
        assert store.sae_metrics(run.run_id)["n_eval_tokens"] < 200
        assert len(store.feature_logits(run.run_id)) == 64 * 2 * 5  # kept: the view was not recomputed


def test_evaluate_rejects_bad_arguments(collected, capsys: pytest.CaptureFixture[str]) -> None:
    from autointerp.cli import main

    assert main(["evaluate", "--db", str(collected.db_path), "--tokens", "0"]) == 2
    assert "--tokens 0 must be at least 1" in capsys.readouterr().err
    assert main(["evaluate", "--db", str(collected.db_path), "--sae-name", "nope"]) == 2
    assert "no completed SAE named 'nope'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the real SmolLM2 (slow)
@pytest.mark.slow
def test_identity_sae_on_smollm2_and_its_output_view(smollm2: LoadedModel) -> None:
    """On the real model (GGUF, tied embeddings, RMSNorm): exact identity -> FVE 1, CE recovered 1."""
    tokenizer = smollm2.tokenizer
    texts = ["The capital of France is Paris, and the capital of Italy is Rome.",
             "Photosynthesis converts light energy into chemical energy stored in glucose."]
    contexts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    d_model = smollm2.hidden_size
    result = compute_sae_metrics(smollm2, parse_hook("layers.15"), identity_sae(d_model), make_batches(contexts, 2),
                                 MetricOptions(tokens=1000, ce_tokens=1000))
    m = result.metrics
    assert m["fve"] == pytest.approx(1.0, abs=1e-5)
    assert m["ce_loss_zero_ablation"] - m["ce_loss_clean"] > 1.0  # deleting layer 15's residual hurts a lot
    assert m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert m["ce_loss_clean"] < 6  # a real LM on plain English

    token, w_u = _largest_unembedding_row(smollm2)
    gain = smollm2.model.model.norm.weight.detach().float()
    w_dec = torch.stack([w_u[token] / gain, -w_u[token] / gain])
    view = feature_output_view(smollm2, w_dec, top_k=5)
    first = view[view["rank"] == 0].set_index(["feature_id", "direction"])
    assert first.loc[(0, "promote"), "token_id"] == token
    assert first.loc[(1, "suppress"), "token_id"] == token
