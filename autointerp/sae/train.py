"""Train a small TopK SAE on a model's activations at one hook (the demo's SAE; none can be downloaded).

The recipe is the standard one for TopK SAEs (Gao et al. 2024; EleutherAI sparsify):
- inputs are scaled by one scalar so that E||x|| = sqrt(d_in) (learning rates then transfer across
  models); the scalar is folded into the weights before saving, so the saved SAE reads raw activations;
- decoder rows are kept at unit norm (the gradient component along each row is removed before the step,
  the rows are renormalised after it); the encoder starts as the decoder's transpose; `b_dec` starts at
  the geometric median of the first activations;
- Adam, short warm-up, linear decay to zero; loss = FVU + AuxK (dead latents, i.e. latents that have
  not fired for a while, predict the residual error, which brings them back to life);
- the decoder is applied sparsely (`embedding_bag` over the k active rows), which makes the SAE step
  cheap next to the model forward.
Activations stream through a bounded, shuffled buffer (memory does not grow with `tokens`); position 0
of every context (the attention sink, whose norm is ~100x the others) is never used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autointerp import __version__
from autointerp.errors import UserError
from autointerp.hashing import short_hash
from autointerp.sae.base import SAE, SAEConfig

log = logging.getLogger(__name__)

TRAINING_JSON = "training.json"
# Bump when a change to the recipe changes what a given TrainConfig produces (invalidates cached SAEs).
RECIPE_VERSION = 1


@dataclass
class TrainConfig:
    model: str = "smollm2"
    hook: str = "layers.15"
    corpus: str = "wiki"  # anything autointerp.corpus reads: wiki, .txt, .jsonl, .parquet, a directory
    text_field: str = "text"  # JSONL / parquet field holding the text
    tokens: int = 300_000  # activation vectors trained on (position 0 of each context not counted)
    latents: int = 4608
    k: int = 32
    ctx_len: int = 64
    batch_size: int = 256  # tokens per optimiser step (small: few tokens, so many steps)
    model_batch_size: int = 32  # contexts per model forward
    lr: float | None = None  # None: 2e-3 scaled by 1/sqrt(latents / 4608)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"  # model dtype; the SAE always trains in float32
    auxk_alpha: float = 1 / 32
    buffer_tokens: int = 65_536  # shuffle buffer; bounds memory at buffer_tokens * d_in floats
    eval_tokens: int = 8_192  # held out from training, for the final FVE and dead fraction

    def cache_key(self) -> str:
        """Stable key for caching a trained SAE directory: the config plus the recipe version."""
        return short_hash({"config": asdict(self), "recipe": RECIPE_VERSION})

    def resolved_lr(self) -> float:
        # 2e-3 at 4608 latents: on SmolLM2 layer 15 it beat 1e-3 by ~0.06 FVE at 144k tokens (3e-3 killed
        # 10% of the latents); wider SAEs take smaller steps, as in sparsify.
        return self.lr if self.lr is not None else 2e-3 / math.sqrt(self.latents / 4608)

    def validate(self) -> None:
        checks = [
            (self.tokens >= 1000, f"--tokens {self.tokens} is too few to train on", "use at least 1000"),
            (self.latents >= 1, f"--latents {self.latents} must be positive", "e.g. --latents 4608"),
            (1 <= self.k <= self.latents, f"--k {self.k} must be between 1 and --latents", "e.g. --k 32"),
            (self.ctx_len >= 2, f"--ctx-len {self.ctx_len} leaves no tokens after position 0", "use >= 2"),
            (self.batch_size >= 1 and self.model_batch_size >= 1, "batch sizes must be positive", "e.g. 512"),
            (self.lr is None or self.lr > 0, f"--lr {self.lr} must be positive", "e.g. --lr 1e-3"),
        ]
        for ok, problem, hint in checks:
            if not ok:
                raise UserError(problem, hint)


@dataclass
class TrainResult:
    out_dir: str
    tokens: int  # training tokens seen
    steps: int
    fve: float  # fraction of variance explained on held-out tokens (pooled; massive activations weigh in)
    fve_typical: float  # the same without massive-activation tokens (norm > 10x median): ordinary tokens
    massive_fraction: float  # fraction of held-out tokens that are massive activations
    initial_fve: float  # the same, before the first step (the gain is what training did)
    fvu: float
    dead_fraction: float  # latents that never fired on the held-out tokens
    train_dead_fraction: float  # latents that did not fire during the last `dead_window` training tokens
    l0: float
    seconds: float
    seconds_model: float  # of which model forwards
    eval_tokens: int
    input_scale: float
    lr: float
    config: dict[str, Any]
    cache_key: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- tokens -------------------------------------------------------------------------------------


def _shuffled_texts(cfg: TrainConfig, pool: int = 16384) -> Iterator[str]:
    """Document texts of the corpus in a seeded random order, holding at most `pool` documents.

    Shuffling matters: corpora are often sorted (the wiki corpus is alphabetical), and the first
    `tokens` tokens of a sorted corpus are a biased sample. The wiki corpus fits the pool whole.
    """
    from autointerp.corpus import iter_documents

    rng = random.Random(cfg.seed)
    held: list[str] = []
    for doc in iter_documents(cfg.corpus, cfg.text_field):
        if len(held) < pool:
            held.append(doc.text)
            continue
        i = rng.randrange(pool)
        yield held[i]
        held[i] = doc.text
    rng.shuffle(held)
    yield from held


def _windows(tokenizer: Any, texts: Iterator[str], ctx_len: int, min_tokens: int) -> Iterator[list[int]]:
    """Token windows as collect cuts them (autointerp.corpus): consecutive `ctx_len` tokens of one
    document, no BOS added, a last shorter window kept when it has at least `min_tokens` tokens."""
    batch: list[str] = []

    def cut(texts_: list[str]) -> Iterator[list[int]]:
        for ids in tokenizer(texts_, add_special_tokens=False)["input_ids"]:
            for start in range(0, len(ids), ctx_len):
                window = ids[start : start + ctx_len]
                if len(window) < max(2, min_tokens):
                    break
                yield window

    for text in texts:
        batch.append(text)
        if len(batch) == 32:
            yield from cut(batch)
            batch = []
    if batch:
        yield from cut(batch)


def _batches(
    windows: Iterator[list[int]], batch: int, pad_id: int, group: int = 16
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, attention_mask) batches, right-padded; windows are grouped by length to waste little on padding."""
    pending: list[list[int]] = []

    def flush(items: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        items.sort(key=len)
        for i in range(0, len(items), batch):
            chunk = items[i : i + batch]
            width = len(chunk[-1])
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, window in enumerate(chunk):
                ids[row, : len(window)] = torch.tensor(window)
                mask[row, : len(window)] = 1
            yield ids, mask

    for window in windows:
        pending.append(window)
        if len(pending) >= batch * group:
            yield from flush(pending)
            pending = []
    if pending:
        yield from flush(pending)


def activation_stream(lm: Any, point: Any, cfg: TrainConfig) -> Iterator[torch.Tensor]:
    """[n, d_in] float32 activations at the hook, positions >= 1 of each context only."""
    from autointerp.corpus import CorpusSpec
    from autointerp.models import activations_at_hook

    default_min = next(f.default for f in fields(CorpusSpec) if f.name == "min_ctx_tokens")
    min_tokens = min(cfg.ctx_len, int(default_min))  # type: ignore[arg-type]
    windows = _windows(lm.tokenizer, _shuffled_texts(cfg), cfg.ctx_len, min_tokens)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    for ids, mask in _batches(windows, cfg.model_batch_size, pad_id):
        acts = activations_at_hook(lm, point, ids, mask)
        keep = mask.bool().to(acts.device)
        keep[:, 0] = False
        yield acts[keep].to(torch.float32).clone()


def _take(stream: Iterator[torch.Tensor], n: int, carry: list[torch.Tensor]) -> torch.Tensor | None:
    """The next n rows of the stream (fewer at its end; None when exhausted); `carry` holds leftovers."""
    have = sum(t.shape[0] for t in carry)
    while have < n:
        nxt = next(stream, None)
        if nxt is None:
            break
        carry.append(nxt)
        have += nxt.shape[0]
    if have == 0:
        return None
    joined = torch.cat(carry)
    carry.clear()
    if joined.shape[0] > n:
        carry.append(joined[n:])
    return joined[:n]


# --- the SAE being trained ------------------------------------------------------------------------


def geometric_median(x: torch.Tensor, iters: int = 30) -> torch.Tensor:
    """Weiszfeld's algorithm; robust to the heavy-tailed norms of residual activations."""
    median = x.mean(dim=0)
    for _ in range(iters):
        weights = 1.0 / (x - median).norm(dim=1).clamp_min(1e-6)
        new = (weights[:, None] * x).sum(dim=0) / weights.sum()
        if (new - median).norm() < 1e-6 * median.norm().clamp_min(1e-6):
            return new
        median = new
    return median


class _TopKTrainer:
    """TopK SAE parameters in the scaled input space, with the training step."""

    def __init__(self, d_in: int, d_sae: int, k: int, b_dec_init: torch.Tensor, device: torch.device) -> None:
        self.d_in, self.d_sae, self.k = d_in, d_sae, k
        W_dec = torch.randn(d_sae, d_in, device=device)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = W_dec.requires_grad_(True)
        self.W_enc = W_dec.detach().T.clone().contiguous().requires_grad_(True)
        self.b_enc = torch.zeros(d_sae, device=device, requires_grad=True)
        self.b_dec = b_dec_init.clone().to(device).requires_grad_(True)
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")

    def loss(self, x: torch.Tensor, dead_window: int, auxk_alpha: float) -> tuple[torch.Tensor, float]:
        pre = self.pre_acts(x)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        values = torch.relu(values)
        recon = self.decode_sparse(values, indices) + self.b_dec
        error = x - recon
        total_variance = (x - x.mean(dim=0)).pow(2).sum()
        fvu = error.pow(2).sum() / total_variance
        loss = fvu
        with torch.no_grad():
            self.tokens_since_fired += x.shape[0]
            fired = indices[values > 0]
            self.tokens_since_fired[fired] = 0
        dead = self.tokens_since_fired > dead_window
        n_dead = int(dead.sum())
        if n_dead > 0 and auxk_alpha > 0:
            # AuxK (Gao et al. App. B.1): the top dead latents reconstruct what the live ones missed.
            k_aux = min(self.d_in // 2, n_dead)
            scale = min(n_dead / (self.d_in // 2), 1.0)
            aux_values, aux_indices = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False)
            error_hat = self.decode_sparse(torch.relu(aux_values), aux_indices)
            auxk = (error_hat - error.detach()).pow(2).sum() / total_variance
            loss = loss + auxk_alpha * scale * auxk
        return loss, float(fvu.detach())

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec

    @torch.no_grad()
    def renormalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def to_sae(self, scale: float, model: str | None, hook: str | None, extra: dict[str, Any]) -> SAE:
        """The SAE on raw activations: the input scale folded into W_enc, W_dec and b_dec."""
        sae = SAE(
            SAEConfig(
                architecture="topk",
                d_in=self.d_in,
                d_sae=self.d_sae,
                k=self.k,
                hook_name=hook,
                model_name=model,
                extra=extra,
            )
        )
        sae.load_state_dict(
            {
                "W_enc": (self.W_enc * scale).cpu(),
                "b_enc": self.b_enc.cpu(),
                "W_dec": (self.W_dec / scale).cpu(),
                "b_dec": (self.b_dec / scale).cpu(),
            }
        )
        return sae.eval().requires_grad_(False)


# A token whose activation norm exceeds this multiple of the median is a "massive activation" (a
# secondary attention sink, e.g. ~100x the median in SmolLM2 layer 15). A handful of them can hold most
# of the variance, which makes the pooled FVE look better than the SAE is on ordinary tokens.
MASSIVE_NORM_RATIO = 10.0


@dataclass
class Evaluation:
    fve: float  # pooled: 1 - sum ||x - x_hat||^2 / sum ||x - mean||^2
    fve_typical: float  # the same over tokens with norm <= MASSIVE_NORM_RATIO x median norm
    massive_fraction: float  # fraction of tokens left out of fve_typical
    dead_fraction: float  # latents that never fired
    l0: float


@torch.no_grad()
def _evaluate(sae: SAE, x: torch.Tensor) -> Evaluation:
    """Reconstruction quality of `sae` on raw activations x (float64 sums)."""
    sae_dev = next(sae.parameters()).device
    x = x.to(sae_dev)
    errors = torch.zeros(x.shape[0], dtype=torch.float64, device=sae_dev)
    fired, l0 = torch.zeros(sae.d_sae, dtype=torch.bool, device=sae_dev), 0.0
    for start in range(0, x.shape[0], 2048):
        chunk = x[start : start + 2048]
        latents = sae.encode(chunk)
        errors[start : start + 2048] = (sae.decode(latents) - chunk).double().pow(2).sum(dim=1)
        active = latents > 0
        fired |= active.any(dim=0)
        l0 += float(active.sum())
    x64 = x.double()

    def fve(rows: torch.Tensor) -> float:
        sub = x64[rows]
        return 1.0 - float(errors[rows].sum()) / float((sub - sub.mean(dim=0)).pow(2).sum())

    norms = x64.norm(dim=1)
    typical = norms <= MASSIVE_NORM_RATIO * norms.median()
    everything = torch.ones_like(typical)
    return Evaluation(
        fve=fve(everything),
        fve_typical=fve(typical),
        massive_fraction=1.0 - float(typical.double().mean()),
        dead_fraction=1.0 - float(fired.float().mean()),
        l0=l0 / x.shape[0],
    )


# --- fitting and the entry point -----------------------------------------------------------------


@dataclass
class FitStats:
    tokens: int
    steps: int
    fve: float
    fve_typical: float
    massive_fraction: float
    initial_fve: float
    dead_fraction: float
    train_dead_fraction: float
    l0: float
    eval_tokens: int
    input_scale: float
    lr: float


def fit_topk_sae(
    activations: Iterator[torch.Tensor],
    cfg: TrainConfig,
    device: torch.device | str = "cpu",
    progress: bool = False,
    model_name: str | None = None,
    hook_name: str | None = None,
) -> tuple[SAE, FitStats]:
    """Fit a TopK SAE to a stream of raw activation batches [n, d_in] (any n); no model involved.

    The first `eval_n` tokens are held out for the final FVE; the rest stream through a shuffled buffer.
    """
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    carry: list[torch.Tensor] = []
    eval_n = max(256, min(cfg.eval_tokens, cfg.tokens // 10))
    first = _take(activations, eval_n + min(cfg.buffer_tokens, cfg.tokens), carry)
    if first is None or first.shape[0] < eval_n + min(cfg.batch_size, 256):
        got = 0 if first is None else first.shape[0]
        raise UserError(
            f"corpus {cfg.corpus!r} gave only {got} tokens at ctx-len {cfg.ctx_len}",
            "use a larger corpus or fewer --tokens",
        )
    first = first[torch.randperm(first.shape[0], generator=gen)]
    eval_x, buffer = first[:eval_n], first[eval_n:]
    d_in = buffer.shape[1]
    scale = math.sqrt(d_in) / float(buffer.norm(dim=1).mean())
    b_dec_init = geometric_median(buffer[:4096].double() * scale).float()
    trainer = _TopKTrainer(d_in, cfg.latents, cfg.k, b_dec_init, device)
    initial_fve = _evaluate(trainer.to_sae(scale, model_name, hook_name, extra={}), eval_x).fve
    lr = cfg.resolved_lr()
    optimizer = torch.optim.Adam(trainer.params, lr=lr, betas=(0.9, 0.999))
    total_steps = max(1, math.ceil(cfg.tokens / cfg.batch_size))
    warmup = max(1, total_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
    dead_window = min(10_000_000, max(20 * cfg.batch_size, cfg.tokens // 10))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.tokens, unit="tok", desc="train-sae", mininterval=2.0)
    seen, steps, fvu_avg = 0, 0, float("nan")
    while seen < cfg.tokens and buffer is not None and buffer.shape[0] > 0:
        buffer = buffer[torch.randperm(buffer.shape[0], generator=gen)].to(device) * scale
        for start in range(0, buffer.shape[0], cfg.batch_size):
            x = buffer[start : start + min(cfg.batch_size, cfg.tokens - seen)]
            if x.shape[0] < 2:  # a variance needs two tokens; at most one token is left unused
                break
            loss, fvu = trainer.loss(x, dead_window, cfg.auxk_alpha)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trainer.project_decoder_grad()
            optimizer.step()
            schedule.step()
            trainer.renormalize_decoder()
            seen += x.shape[0]
            steps += 1
            fvu_avg = fvu if math.isnan(fvu_avg) else 0.95 * fvu_avg + 0.05 * fvu
            if bar is not None:
                bar.update(x.shape[0])
                if steps % 10 == 0:
                    bar.set_postfix(fve=f"{1 - fvu_avg:.3f}")
        remaining = cfg.tokens - seen
        buffer = _take(activations, min(cfg.buffer_tokens, remaining), carry) if remaining > 1 else None
    if bar is not None:
        bar.close()
    if seen < cfg.tokens - 1:
        log.warning("the corpus ran out after %d training tokens (asked for %d)", seen, cfg.tokens)

    train_dead = float((trainer.tokens_since_fired > dead_window).float().mean())
    sae = trainer.to_sae(scale, model_name, hook_name, extra={"trained_by": f"autointerp {__version__}"})
    final = _evaluate(sae, eval_x)
    stats = FitStats(
        tokens=seen,
        steps=steps,
        fve=final.fve,
        fve_typical=final.fve_typical,
        massive_fraction=final.massive_fraction,
        initial_fve=initial_fve,
        dead_fraction=final.dead_fraction,
        train_dead_fraction=train_dead,
        l0=final.l0,
        eval_tokens=int(eval_x.shape[0]),
        input_scale=scale,
        lr=lr,
    )
    return sae, stats


class _ActivationTape:
    """Records an activation stream to a scratch file so that several SAEs train on the same batches.

    WHY: the model forward is ~90 % of training time on a CPU; SAEs that differ only in k (a study's two
    arms) consume exactly the same batches in the same order, so the first fit runs the model and writes
    each batch here, and the later fits replay them from disk. Memory stays one batch; disk holds
    tokens x d_in float32 (1.1 GB at 500k tokens of d=576), deleted when training ends.
    """

    def __init__(self, live: Iterator[torch.Tensor], path: Path) -> None:
        self.live = live
        self.path = path
        self.shapes: list[tuple[int, int]] = []
        path.write_bytes(b"")

    def first(self) -> Iterator[torch.Tensor]:
        """The live stream, recorded as it is consumed."""
        with open(self.path, "ab") as out:
            for batch in self.live:
                out.write(batch.numpy().astype(np.float32, copy=False).tobytes())
                out.flush()
                self.shapes.append((int(batch.shape[0]), int(batch.shape[1])))
                yield batch

    def replay(self) -> Iterator[torch.Tensor]:
        """The recorded batches, in order, then whatever the live stream still has (recorded too)."""
        offset = 0
        for rows, cols in list(self.shapes):
            data = np.fromfile(self.path, dtype=np.float32, count=rows * cols, offset=offset)
            offset += data.nbytes
            yield torch.from_numpy(data.reshape(rows, cols))
        yield from self.first()


def train_topk_saes(
    cfgs: list[TrainConfig],
    out_dirs: list[str | Path],
    overwrite: bool = False,
    progress: bool = True,
    lm: Any | None = None,
) -> list[TrainResult]:
    """Train SAEs that differ only in k on one model pass (see `_ActivationTape`); same results as one by one.

    Each SAE equals what `train_topk_sae` would write for its config (same batches, same seed).
    """
    if len(cfgs) != len(out_dirs) or not cfgs:
        raise ValueError("one output directory per config")
    base = {**asdict(cfgs[0]), "k": None}
    if any({**asdict(c), "k": None} != base for c in cfgs):
        raise UserError("SAEs trained together must differ only in k", "train the others separately")
    if len(cfgs) == 1:
        return [train_topk_sae(cfgs[0], out_dirs[0], overwrite=overwrite, progress=progress, lm=lm)]
    outs = [Path(o) for o in out_dirs]
    if len(set(outs)) != len(outs):
        raise UserError("two SAEs would be written to the same --out", "put {k} in --out, e.g. sae-k{k}")
    for cfg, out in zip(cfgs, outs, strict=True):
        cfg.validate()
        _check_out(out, overwrite)
    from autointerp.models import load_model, parse_hook

    if lm is None:
        lm = load_model(cfgs[0].model, device=cfgs[0].device, dtype=cfgs[0].dtype)
    outs[0].parent.mkdir(parents=True, exist_ok=True)
    tape_path = outs[0].parent / f".activations-{os.getpid()}.f32"
    model_seconds = [0.0]
    tape = _ActivationTape(
        _timed_stream(lm, parse_hook(cfgs[0].hook, lm.n_layers), cfgs[0], model_seconds), tape_path
    )
    results = []
    try:
        for i, (cfg, out) in enumerate(zip(cfgs, outs, strict=True)):
            results.append(
                train_topk_sae(
                    cfg,
                    out,
                    overwrite=overwrite,
                    progress=progress,
                    lm=lm,
                    activations=tape.first() if i == 0 else tape.replay(),
                )
            )
            if i == 0:  # the first fit ran the model (inside the tape); the replays ran none
                results[0].seconds_model = round(model_seconds[0], 1)
                _write_training_json(results[0], outs[0])
    finally:
        tape_path.unlink(missing_ok=True)
    return results


def _write_training_json(result: TrainResult, out: Path) -> None:
    (out / TRAINING_JSON).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"{out} already exists and is not empty", "pass another --out, or --overwrite to replace it"
        )


def _timed_stream(lm: Any, point: Any, cfg: TrainConfig, seconds: list[float]) -> Iterator[torch.Tensor]:
    """activation_stream, adding the time spent in it to seconds[0]."""
    stream = activation_stream(lm, point, cfg)
    while True:
        t0 = time.perf_counter()
        batch = next(stream, None)
        seconds[0] += time.perf_counter() - t0
        if batch is None:
            return
        yield batch


def train_topk_sae(
    cfg: TrainConfig,
    out_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    lm: Any | None = None,
    activations: Iterator[torch.Tensor] | None = None,
) -> TrainResult:
    """Train a TopK SAE and write it to `out_dir` in SAELens format, with `training.json` beside it.

    Pure in the sense that matters for caching: the result depends only on `cfg` (and the software),
    and `out_dir` appears complete or not at all (written to a temporary sibling, then renamed).
    `lm`: an already loaded `LoadedModel` for `cfg.model` (saves loading it again).
    """
    from autointerp.models import load_model, parse_hook

    cfg.validate()
    out = Path(out_dir)
    _check_out(out, overwrite)
    from autointerp.corpus import source_identity

    source_identity(cfg.corpus)  # a missing corpus fails here, before the model is loaded
    started = time.perf_counter()
    if lm is None:
        lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    point = parse_hook(cfg.hook, lm.n_layers)
    model_seconds = [0.0]  # a replayed stream (`activations`) reads its batches from disk: 0 s of model
    stream = activations if activations is not None else _timed_stream(lm, point, cfg, model_seconds)
    sae, stats = fit_topk_sae(
        stream,
        cfg,
        device=lm.device,
        progress=progress,
        model_name=cfg.model,
        hook_name=point.name,
    )
    seconds = time.perf_counter() - started
    result = TrainResult(
        out_dir=str(out),
        tokens=stats.tokens,
        steps=stats.steps,
        fve=stats.fve,
        fve_typical=stats.fve_typical,
        massive_fraction=stats.massive_fraction,
        initial_fve=stats.initial_fve,
        fvu=1 - stats.fve,
        dead_fraction=stats.dead_fraction,
        train_dead_fraction=stats.train_dead_fraction,
        l0=stats.l0,
        seconds=round(seconds, 1),
        seconds_model=round(model_seconds[0], 1),
        eval_tokens=stats.eval_tokens,
        input_scale=stats.input_scale,
        lr=stats.lr,
        config=asdict(cfg),
        cache_key=cfg.cache_key(),
    )
    _write_atomically(sae, result, out)
    return result


def _write_atomically(sae: SAE, result: TrainResult, out: Path) -> None:
    from autointerp.sae import save_saelens

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_saelens(sae, tmp)
    (tmp / TRAINING_JSON).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
