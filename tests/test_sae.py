"""SAE loaders (SAELens, sparsify), save_saelens round trips, errors, and train-sae.

Encodings are checked against a reference written here in numpy from the formats' published
definitions, not against autointerp's own code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from autointerp.errors import UserError
from autointerp.sae import (
    SAE,
    SAEConfig,
    check_sae_matches,
    detect_format,
    load_sae,
    register_loader,
    registered_loaders,
    save_saelens,
)

D_IN, D_SAE = 12, 40
RNG = np.random.default_rng(0)


# --- writing SAE directories ----------------------------------------------------------------------


def random_weights(d_in: int = D_IN, d_sae: int = D_SAE, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32),
        "b_enc": rng.normal(scale=0.3, size=d_sae).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
        "b_dec": rng.normal(size=d_in).astype(np.float32),
    }


def write_saelens(directory: Path, cfg: dict, tensors: dict[str, np.ndarray]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(directory / "sae_weights.safetensors"))
    return directory


def write_sparsify(directory: Path, cfg: dict, tensors: dict[str, np.ndarray]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(directory / "sae.safetensors"))
    return directory


def v6_cfg(architecture: str, **extra) -> dict:
    return {
        "architecture": architecture,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": "toy",
            "hook_name": "blocks.3.hook_resid_post",
            "sae_lens_version": "6.5.0",
        },
        **extra,
    }


def v5_cfg(activation: str, **extra) -> dict:
    return {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "toy",
        "hook_point": "blocks.3.hook_resid_post",
        "hook_point_layer": 3,
        "activation_fn_str": activation,
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",
        "sae_lens_training_version": "3.1.0",
        **extra,
    }


# --- the reference, in numpy ---------------------------------------------------------------------


def ref_normalize(x: np.ndarray, mode: str, factor: float | None = None):
    """(x_normalised, undo) per SAELens."""
    if mode == "constant_norm_rescale":
        coeff = np.sqrt(x.shape[-1]) / np.linalg.norm(x, axis=-1, keepdims=True)
        return x * coeff, lambda y: y / coeff
    if mode == "layer_norm":
        mu = x.mean(-1, keepdims=True)
        std = (x - mu).std(-1, ddof=1, keepdims=True)
        return (x - mu) / (std + 1e-5), lambda y: y * std + mu
    if mode == "expected_average_only_in" and factor is not None:
        return x * factor, lambda y: y / factor
    return x, lambda y: y


def ref_encode(x, w, arch, k=None, apply_b_dec=True, mode="none", factor=None):
    xn, _ = ref_normalize(x.astype(np.float64), mode, factor)
    if apply_b_dec:
        xn = xn - w["b_dec"]
    pre = xn @ w["W_enc"].astype(np.float64) + w["b_enc"]
    if arch == "relu":
        return np.maximum(pre, 0)
    if arch == "jumprelu":
        return np.where(pre > w["threshold"], pre, 0.0)
    out = np.zeros_like(pre)
    for row, p in zip(out.reshape(-1, pre.shape[-1]), pre.reshape(-1, pre.shape[-1]), strict=True):
        top = np.argsort(-p)[:k]
        row[top] = np.maximum(p[top], 0)
    return out


def ref_decode(f, w, x, mode="none", factor=None):
    _, undo = ref_normalize(x.astype(np.float64), mode, factor)
    return undo(f @ w["W_dec"].astype(np.float64) + w["b_dec"])


def inputs(n: int = 7, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, D_IN)) * 3 + 1).astype(np.float32)


def encode(sae: SAE, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return sae.encode(torch.from_numpy(x)).double().numpy()


def forward(sae: SAE, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return sae(torch.from_numpy(x)).double().numpy()


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# --- SAELens --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["v6", "v5"])
def test_saelens_relu(tmp_path, layout):
    w = random_weights()
    cfg = v6_cfg("standard") if layout == "v6" else v5_cfg("relu")
    sae = load_sae(write_saelens(tmp_path / "sae", cfg, w))
    x = inputs()
    f = ref_encode(x, w, "relu")
    assert (f > 0).any() and (f == 0).any()
    assert_close(encode(sae, x), f)
    assert_close(forward(sae, x), ref_decode(f, w, x))
    assert sae.cfg.architecture == "relu" and sae.cfg.hook_name == "blocks.3.hook_resid_post"
    assert sae.cfg.model_name == "toy" and detect_format(tmp_path / "sae") == "saelens"


def test_saelens_relu_without_b_dec_on_input(tmp_path):
    w = random_weights()
    sae = load_sae(write_saelens(tmp_path / "sae", v6_cfg("standard", apply_b_dec_to_input=False), w))
    x = inputs()
    assert_close(encode(sae, x), ref_encode(x, w, "relu", apply_b_dec=False))
    assert not np.allclose(encode(sae, x), ref_encode(x, w, "relu", apply_b_dec=True))


@pytest.mark.parametrize("stored", ["threshold", "log_threshold"])
def test_saelens_jumprelu(tmp_path, stored):
    w = random_weights()
    threshold = np.abs(RNG.normal(scale=2.0, size=D_SAE)).astype(np.float32)
    tensors = dict(
        w, **({"threshold": threshold} if stored == "threshold" else {"log_threshold": np.log(threshold)})
    )
    sae = load_sae(write_saelens(tmp_path / "sae", v6_cfg("jumprelu"), tensors))
    x = inputs()
    f = ref_encode(x, dict(w, threshold=threshold), "jumprelu")
    relu_only = ref_encode(x, w, "relu")
    assert (f != relu_only).any(), "thresholds must cut some positive activations"
    assert_close(encode(sae, x), f)
    assert_close(forward(sae, x), ref_decode(f, w, x))


@pytest.mark.parametrize("layout", ["v6", "v5_kwargs", "v5_renamed"])
def test_saelens_topk(tmp_path, layout):
    w = random_weights()
    cfg = {
        "v6": v6_cfg("topk", k=5),
        "v5_kwargs": v5_cfg("topk", activation_fn_kwargs={"k": 5}),
        "v5_renamed": {
            **{k: v for k, v in v5_cfg("x").items() if k != "activation_fn_str"},
            "activation_fn": "topk",
            "activation_fn_kwargs": {"k": 5},
        },
    }[layout]
    sae = load_sae(write_saelens(tmp_path / "sae", cfg, w))
    x = inputs()
    f = ref_encode(x, w, "topk", k=5)
    assert ((f > 0).sum(-1) <= 5).all() and (f > 0).sum() > 0
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 5
    assert_close(encode(sae, x), f)
    assert_close(forward(sae, x), ref_decode(f, w, x))


def test_saelens_topk_rescale_acts_by_decoder_norm(tmp_path):
    w = random_weights()
    w["W_dec"] *= RNG.uniform(0.2, 3.0, size=(D_SAE, 1)).astype(np.float32)
    sae = load_sae(write_saelens(tmp_path / "sae", v6_cfg("topk", k=4, rescale_acts_by_decoder_norm=True), w))
    x = inputs()
    norms = np.linalg.norm(w["W_dec"].astype(np.float64), axis=1)
    pre = (x - w["b_dec"]) @ w["W_enc"].astype(np.float64) + w["b_enc"]
    scaled = pre * norms
    f = np.zeros_like(scaled)
    for row, p in zip(f, scaled, strict=True):
        top = np.argsort(-p)[:4]
        row[top] = np.maximum(p[top], 0)
    recon = (f / norms) @ w["W_dec"] + w["b_dec"]
    assert_close(forward(sae, x), recon)
    assert_close((encode(sae, x) > 0).astype(float), (f > 0).astype(float))


def test_saelens_finetuning_scaling_factor(tmp_path):
    w = random_weights()
    scaling = RNG.uniform(0.5, 2.0, size=D_SAE).astype(np.float32)
    sae = load_sae(
        write_saelens(
            tmp_path / "sae", v5_cfg("relu", finetuning_scaling_factor=True), dict(w, scaling_factor=scaling)
        )
    )
    x = inputs()
    f = ref_encode(x, w, "relu")
    assert_close(forward(sae, x), (f * scaling) @ w["W_dec"] + w["b_dec"])


@pytest.mark.parametrize(
    ("mode", "cfg_value", "factor"),
    [
        ("constant_norm_rescale", "constant_norm_rescale", None),
        ("layer_norm", "layer_norm", None),
        ("expected_average_only_in", "expected_average_only_in", 0.37),
        ("none", "expected_average_only_in", None),  # no factor: SAELens folded it at training time
        ("none", True, None),  # SAELens < 3 stored a bool
        ("none", None, None),
    ],
)
@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_saelens_normalization(tmp_path, mode, cfg_value, factor, arch):
    w = random_weights()
    extra = {"normalize_activations": cfg_value}
    if factor is not None:
        extra["norm_scaling_factor"] = factor
    cfg = v6_cfg("standard", **extra) if arch == "relu" else v6_cfg("topk", k=6, **extra)
    sae = load_sae(write_saelens(tmp_path / "sae", cfg, w))
    x = inputs() * 20
    f = ref_encode(x, w, arch, k=6, mode=mode, factor=factor)
    assert_close(encode(sae, x), f)
    assert_close(forward(sae, x), ref_decode(f, w, x, mode=mode, factor=factor))


# --- sparsify -------------------------------------------------------------------------------------


def sparsify_weights(seed: int = 3, d_in: int = D_IN, d_sae: int = D_SAE) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "encoder.weight": rng.normal(size=(d_sae, d_in)).astype(np.float32),
        "encoder.bias": rng.normal(scale=0.3, size=d_sae).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
        "b_dec": rng.normal(size=d_in).astype(np.float32),
    }


def ref_sparsify(x: np.ndarray, w: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """sparsify: top-k of relu((x - b_dec) @ encoder.weight.T + encoder.bias); decode sums W_dec rows + b_dec."""
    pre = np.maximum((x.astype(np.float64) - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"], 0)
    dense = np.zeros_like(pre)
    for row, p in zip(dense, pre, strict=True):
        top = np.argsort(-p)[:k]
        row[top] = p[top]
    return dense, dense @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize(
    "cfg",
    [
        {
            "expansion_factor": 32,
            "normalize_decoder": True,
            "num_latents": D_SAE,
            "k": 6,
            "multi_topk": False,
            "skip_connection": False,
            "d_in": D_IN,
        },
        {"expansion_factor": D_SAE // 4, "normalize_decoder": True, "num_latents": 0, "k": 6, "d_in": D_IN},
        {"num_latents": D_SAE, "k": 6},  # older exports: no d_in (inferred from the encoder)
    ],
    ids=["num_latents", "expansion_factor", "no_d_in"],
)
def test_sparsify_topk(tmp_path, cfg):
    w = sparsify_weights()
    # expansion_factor case: d_sae must equal d_in * factor
    if cfg.get("num_latents") == 0:
        w = sparsify_weights(d_sae=D_IN * cfg["expansion_factor"])
    directory = write_sparsify(tmp_path / "layers.7", cfg, w)
    sae = load_sae(directory)
    x = inputs()
    f, recon = ref_sparsify(x, w, 6)
    assert_close(encode(sae, x), f)
    assert_close(forward(sae, x), recon)
    assert sae.cfg.k == 6 and sae.cfg.hook_name == "layers.7" and detect_format(directory) == "sparsify"


def test_sparsify_bfloat16_weights_load(tmp_path):
    from safetensors.torch import save_file as save_torch

    w = sparsify_weights()
    directory = tmp_path / "sae"
    directory.mkdir()
    (directory / "cfg.json").write_text(json.dumps({"num_latents": D_SAE, "k": 4, "d_in": D_IN}))
    save_torch(
        {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in w.items()}, str(directory / "sae.safetensors")
    )
    sae = load_sae(directory)
    assert sae.W_enc.dtype == torch.float32
    rounded = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in w.items()}
    assert_close(encode(sae, inputs()), ref_sparsify(inputs(), rounded, 4)[0])


# --- device, dtype, registry ----------------------------------------------------------------------


def test_load_sae_dtype_eval_and_file_path(tmp_path):
    directory = write_saelens(tmp_path / "sae", v6_cfg("topk", k=3), random_weights())
    sae = load_sae(directory / "sae_weights.safetensors", dtype="bfloat16")  # a file inside the dir works too
    assert sae.W_enc.dtype == torch.bfloat16 and not sae.training
    assert all(not p.requires_grad for p in sae.parameters())
    assert encode(sae, inputs()).shape == (7, D_SAE)


def test_register_loader_adds_a_format(tmp_path):
    from autointerp import sae as sae_module

    def detect(directory: Path) -> bool:
        return (directory / "toy.json").is_file()

    def load(directory: Path) -> SAE:
        spec = json.loads((directory / "toy.json").read_text())
        return SAE(SAEConfig("relu", spec["d_in"], spec["d_sae"]))

    saved = list(sae_module._LOADERS)
    try:
        register_loader("toy", detect, load)
        assert "toy" in registered_loaders()
        (tmp_path / "toy.json").write_text(json.dumps({"d_in": 3, "d_sae": 5}))
        loaded = load_sae(tmp_path)
        assert loaded.d_sae == 5 and loaded.cfg.extra["format"] == "toy"
    finally:
        sae_module._LOADERS[:] = saved
    assert "toy" not in registered_loaders()


# --- save_saelens round trip ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "mode", "factor"),
    [
        ("relu", "none", None),
        ("jumprelu", "none", None),
        ("topk", "none", None),
        ("topk", "constant_norm_rescale", None),
        ("relu", "layer_norm", None),
        ("topk", "expected_average_only_in", 0.25),
    ],
)
def test_save_saelens_round_trip(tmp_path, arch, mode, factor):
    torch.manual_seed(0)
    cfg = SAEConfig(
        arch,
        D_IN,
        D_SAE,
        k=5 if arch == "topk" else None,
        apply_b_dec_to_input=arch != "relu",
        normalize_activations=mode,
        norm_scaling_factor=factor,
        hook_name="layers.3",
        model_name="toy",
    )
    sae = SAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
        if arch == "jumprelu":
            sae.threshold.abs_()
    out = save_saelens(sae, tmp_path / "out")
    cfg_json = json.loads((out / "cfg.json").read_text())
    assert cfg_json["architecture"] == {"relu": "standard"}.get(arch, arch)
    assert cfg_json["metadata"]["hook_name"] == "layers.3"
    assert cfg_json["metadata"]["sae_lens_version"].startswith("6.")
    if arch == "topk":
        assert cfg_json["k"] == 5
    if factor is not None:  # folded into the weights: SAELens applies no runtime scale for this mode
        assert cfg_json["normalize_activations"] == "none"
    assert not list(out.glob(".*tmp"))
    loaded = load_sae(out)
    x = inputs() * 4
    assert_close(encode(loaded, x), encode(sae, x))
    assert_close(forward(loaded, x), forward(sae, x))


# --- errors --------------------------------------------------------------------------------------


def expect_user_error(path, *needles: str, **kwargs) -> UserError:
    with pytest.raises(UserError) as info:
        load_sae(path, **kwargs)
    message = info.value.message
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert info.value.hint, "every SAE error must say how to fix it"
    return info.value


def test_error_missing_directory(tmp_path):
    expect_user_error(tmp_path / "nope", "does not exist", "train-sae")


def test_error_missing_cfg(tmp_path):
    directory = tmp_path / "sae"
    write_saelens(directory, v6_cfg("standard"), random_weights())
    (directory / "cfg.json").unlink()
    expect_user_error(directory, "no cfg.json")


def test_error_missing_weights(tmp_path):
    directory = tmp_path / "sae"
    directory.mkdir()
    (directory / "cfg.json").write_text(json.dumps(v6_cfg("standard")))
    (directory / "weights.pt").write_bytes(b"x")
    expect_user_error(
        directory, "no weights file", "sae_weights.safetensors", "sae.safetensors", "weights.pt"
    )


def test_error_empty_directory(tmp_path):
    expect_user_error(tmp_path, "no cfg.json", "sae_weights.safetensors")


def test_error_directory_of_saes_names_them(tmp_path):
    write_sparsify(tmp_path / "layers.3", {"num_latents": D_SAE, "k": 3}, sparsify_weights())
    write_sparsify(tmp_path / "layers.5", {"num_latents": D_SAE, "k": 3}, sparsify_weights())
    expect_user_error(tmp_path, "several SAEs", "layers.3")


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]"])
def test_error_corrupt_cfg(tmp_path, content):
    directory = write_saelens(tmp_path / "sae", v6_cfg("standard"), random_weights())
    (directory / "cfg.json").write_bytes(content)
    expect_user_error(directory, "cfg.json")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_error_corrupt_safetensors(tmp_path, damage, fmt):
    if fmt == "saelens":
        directory = write_saelens(tmp_path / "sae", v6_cfg("standard"), random_weights())
        weights = directory / "sae_weights.safetensors"
    else:
        directory = write_sparsify(tmp_path / "sae", {"num_latents": D_SAE, "k": 3}, sparsify_weights())
        weights = directory / "sae.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x13" * 500, "empty": b""}[damage])
    expect_user_error(directory, "cannot read SAE weights", weights.name, "corrupt")


@pytest.mark.parametrize("architecture", ["gated", "matryoshka_batchtopk", "transcoder"])
def test_error_unknown_architecture(tmp_path, architecture):
    directory = write_saelens(tmp_path / "sae", v6_cfg(architecture), random_weights())
    expect_user_error(directory, repr(architecture), "not supported", "jumprelu")


def test_error_topk_without_k(tmp_path):
    expect_user_error(write_saelens(tmp_path / "a", v6_cfg("topk"), random_weights()), "needs k")
    expect_user_error(write_sparsify(tmp_path / "b", {"num_latents": D_SAE}, sparsify_weights()), "needs k")


def test_error_unsupported_normalization(tmp_path):
    directory = write_saelens(
        tmp_path / "sae", v6_cfg("standard", normalize_activations="whitening"), random_weights()
    )
    expect_user_error(directory, "whitening", "not supported")


def test_error_weight_shapes_inconsistent_with_cfg(tmp_path):
    w = random_weights()
    cfg = dict(v6_cfg("standard"), d_sae=D_SAE + 1)
    expect_user_error(
        write_saelens(tmp_path / "a", cfg, w), "W_enc", f"[{D_IN}, {D_SAE}]", f"[{D_IN}, {D_SAE + 1}]"
    )
    w_bad = dict(w, W_dec=w["W_dec"][:, :-1].copy())
    expect_user_error(write_saelens(tmp_path / "b", v6_cfg("standard"), w_bad), "W_dec")
    expect_user_error(
        write_saelens(tmp_path / "c", v6_cfg("standard"), {k: v for k, v in w.items() if k != "b_enc"}),
        "no tensor 'b_enc'",
    )
    expect_user_error(write_saelens(tmp_path / "d", v6_cfg("jumprelu"), w), "threshold")
    sparsify_cfg = {"num_latents": D_SAE * 2, "k": 3, "d_in": D_IN}
    expect_user_error(
        write_sparsify(tmp_path / "e", sparsify_cfg, sparsify_weights()), "encoder.weight", "num_latents"
    )
    expect_user_error(
        write_sparsify(tmp_path / "f", {"k": 3, "d_in": D_IN + 1}, sparsify_weights()), "encoder.weight"
    )


def test_error_sparsify_unsupported_variants(tmp_path):
    w = sparsify_weights()
    expect_user_error(
        write_sparsify(tmp_path / "a", {"num_latents": D_SAE, "k": 3, "transcode": True}, w), "transcoder"
    )
    expect_user_error(
        write_sparsify(tmp_path / "b", {"num_latents": D_SAE, "k": 3, "activation": "groupmax"}, w),
        "groupmax",
    )
    skip = dict(w, W_skip=np.zeros((D_IN, D_IN), np.float32))
    expect_user_error(write_sparsify(tmp_path / "c", {"num_latents": D_SAE, "k": 3}, skip), "skip connection")


def test_error_hook_z_sae(tmp_path):
    cfg = dict(v6_cfg("standard"), reshape_activations="hook_z")
    expect_user_error(write_saelens(tmp_path / "sae", cfg, random_weights()), "hook_z")


def test_error_bad_device_or_dtype(tmp_path):
    directory = write_saelens(tmp_path / "sae", v6_cfg("standard"), random_weights())
    expect_user_error(directory, "dtype", dtype="float33")
    if not torch.cuda.is_available():
        expect_user_error(directory, "CUDA", device="cuda")


def test_check_sae_matches(tmp_path, caplog):
    sae = load_sae(write_saelens(tmp_path / "sae", v6_cfg("standard"), random_weights()))
    check_sae_matches(sae, D_IN, "layers.3")  # same place under two naming schemes: silent
    assert "trained at" not in caplog.text
    with pytest.raises(UserError) as info:
        check_sae_matches(sae, 576, "layers.15")
    message = info.value.message
    assert f"d_in={D_IN}" in message and "576" in message and "layers.15" in message
    assert "model_name=toy" in message and info.value.hint
    with caplog.at_level("WARNING"):
        check_sae_matches(sae, D_IN, "layers.5")
    assert "trained at blocks.3.hook_resid_post" in caplog.text


# --- training --------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Small matrices run far faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sparse_code_stream(n_tokens: int, d: int = 32, atoms: int = 96, active: int = 3, seed: int = 2):
    """Activations that are sparse sums of fixed unit directions plus a large shared offset."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    offset = torch.randn(d, generator=g) * 3
    for _ in range(n_tokens // 1000):
        idx = torch.rand(1000, atoms, generator=g).topk(active, dim=1).indices
        coef = torch.zeros(1000, atoms).scatter_(1, idx, torch.rand(1000, active, generator=g) * 4 + 1)
        yield coef @ dictionary + offset


def test_fit_topk_sae_learns_sparse_codes(one_thread):
    from autointerp.sae.train import TrainConfig, fit_topk_sae

    cfg = TrainConfig(tokens=60_000, latents=192, k=4, batch_size=128, buffer_tokens=8192, eval_tokens=2000)
    sae, stats = fit_topk_sae(sparse_code_stream(70_000), cfg, model_name="toy", hook_name="layers.1")
    assert stats.tokens == 60_000 and stats.steps == 469
    assert stats.fve > 0.8 and stats.fve > stats.initial_fve + 0.3, stats
    assert stats.l0 <= 4 and stats.dead_fraction < 0.5
    # the saved SAE reads raw activations (the training-time input scale is folded in)
    x = torch.cat(list(sparse_code_stream(2000, seed=2)))
    with torch.no_grad():
        recon = sae(x)
    fve = 1 - float((recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fve > 0.8
    assert torch.allclose(sae.W_dec.norm(dim=1) * stats.input_scale, torch.ones(192), atol=1e-4)


def test_fit_topk_sae_too_few_tokens_is_a_user_error(one_thread):
    from autointerp.sae.train import TrainConfig, fit_topk_sae

    with pytest.raises(UserError, match="gave only"):
        fit_topk_sae(sparse_code_stream(1000), TrainConfig(tokens=50_000, latents=64, k=4))


def test_train_config_validation():
    from autointerp.sae.train import TrainConfig

    with pytest.raises(UserError, match="--k"):
        TrainConfig(latents=16, k=32).validate()
    with pytest.raises(UserError, match="--tokens"):
        TrainConfig(tokens=10).validate()


def test_train_sae_cli_bad_arguments(capsys):
    from autointerp.cli import main

    assert main(["train-sae", "--out", "/tmp/unused-sae", "--k", "0"]) == 2
    assert "--k must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_train_sae_on_real_smollm2(smollm2, tmp_path, one_thread):
    """train_topk_sae end to end on the real model (a few thousand tokens), output loads back."""
    from autointerp.sae.train import TRAINING_JSON, TrainConfig, train_topk_sae

    cfg = TrainConfig(
        model="smollm2",
        hook="layers.15",
        tokens=8000,
        latents=512,
        k=16,
        batch_size=64,
        eval_tokens=1000,
        buffer_tokens=4096,
    )
    result = train_topk_sae(cfg, tmp_path / "sae", progress=False, lm=smollm2)
    assert result.tokens == 8000 and result.steps == 125
    assert result.fve > result.initial_fve + 0.15 and result.fve > 0.35, result
    info = json.loads((tmp_path / "sae" / TRAINING_JSON).read_text())
    assert 0 <= result.massive_fraction < 0.05 and result.fve_typical > result.initial_fve - 0.2
    for key in ("tokens", "steps", "fve", "fve_typical", "fvu", "dead_fraction", "seconds"):
        assert key in info
    sae = load_sae(tmp_path / "sae")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == 16 and sae.d_in == smollm2.hidden_size
    assert sae.cfg.hook_name == "layers.15" and sae.cfg.model_name == "smollm2"
    check_sae_matches(sae, smollm2.hidden_size, "layers.15")
    with pytest.raises(UserError, match="already exists"):
        train_topk_sae(cfg, tmp_path / "sae", progress=False, lm=smollm2)


@pytest.mark.slow
def test_train_sae_cli_on_tiny_random_model(smollm2, tmp_path, capsys):
    """The CLI on a 2-layer random Llama (with SmolLM2's tokenizer): prints FVE, writes a loadable SAE."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from autointerp.cli import main

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2.tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model_dir = tmp_path / "tiny"
    LlamaForCausalLM(config).save_pretrained(model_dir)
    smollm2.tokenizer.save_pretrained(model_dir)
    out = tmp_path / "sae"
    code = main(
        [
            "train-sae",
            "--model",
            str(model_dir),
            "--hook",
            "layers.1",
            "--tokens",
            "6000",
            "--latents",
            "128",
            "--k",
            "8",
            "--out",
            str(out),
            "--no-progress",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "fraction of variance explained" in printed
    info = json.loads((out / "training.json").read_text())
    assert info["tokens"] == 6000 and info["fve"] > info["initial_fve"]
    assert load_sae(out).d_in == 48
    assert (
        main(["train-sae", "--model", str(model_dir), "--hook", "layers.9", "--out", str(tmp_path / "x")])
        == 2
    )


def test_train_sae_cli_several_k_needs_a_k_placeholder(capsys):
    from autointerp.cli import main

    assert main(["train-sae", "--out", "/tmp/unused-sae", "--k", "16,64"]) == 2
    assert "has no {k}" in capsys.readouterr().err
    assert main(["train-sae", "--out", "/tmp/unused-sae-{k}", "--k", "16,x"]) == 2
    assert "not an integer" in capsys.readouterr().err


@pytest.mark.slow
def test_train_saes_share_one_model_pass_and_match_separate_training(smollm2, tmp_path, one_thread):
    """train-sae --k 4,8: the k=8 SAE trained on the replayed tape equals one trained alone; the tape is removed."""
    from autointerp.cli import main

    common = "--model smollm2 --hook layers.3 --tokens 3000 --latents 64 --no-progress".split()
    assert main(["train-sae", *common, "--k", "4,8", "--out", str(tmp_path / "both" / "sae-k{k}")]) == 0
    assert main(["train-sae", *common, "--k", "8", "--out", str(tmp_path / "alone")]) == 0
    together, alone = load_sae(tmp_path / "both" / "sae-k8"), load_sae(tmp_path / "alone")
    assert together.cfg.k == 8 and load_sae(tmp_path / "both" / "sae-k4").cfg.k == 4
    assert torch.equal(together.W_dec, alone.W_dec) and torch.equal(together.W_enc, alone.W_enc)
    first = json.loads((tmp_path / "both" / "sae-k4" / "training.json").read_text())
    replayed = json.loads((tmp_path / "both" / "sae-k8" / "training.json").read_text())
    assert first["seconds_model"] > 0 and replayed["seconds_model"] == 0
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["sae-k4", "sae-k8"]
