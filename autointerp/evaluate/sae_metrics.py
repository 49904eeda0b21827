"""All SAE-level metrics of one SAE from token batches: L0, FVE, MSE, dead/dense fractions, CE loss.

The reconstruction pass stops the model at the hook (cheap); the CE pass runs the whole model three
times per batch, so it is opt-in and sized separately (`ce_tokens`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from autointerp.evaluate.batches import TokenBatch, limit_tokens
from autointerp.evaluate.ce_loss import ABLATIONS, ce_loss_stats
from autointerp.evaluate.reconstruction import ReconstructionStats, reconstruction_stats
from autointerp.models import HookPoint, LoadedModel
from autointerp.sae.base import SAE

# A latent firing on more than this fraction of tokens is "dense"; the same default as collect's summary
# (a collect run's own `dense_threshold` is used when evaluating it, so the two always agree).
DENSE_THRESHOLD = 0.01


@dataclass
class MetricOptions:
    tokens: int = 50_000        # counted tokens (position >= 1) for L0 / FVE / MSE
    ce_tokens: int = 0          # counted tokens for CE loss recovered; 0 = skip (three full forwards per batch)
    ablation: str = "zero"      # 'zero' | 'mean' (mean activation over the reconstruction pass's tokens)
    dense_threshold: float = DENSE_THRESHOLD

    def check(self) -> None:
        if self.tokens < 1:
            raise ValueError("tokens must be >= 1")
        if self.ce_tokens < 0:
            raise ValueError("ce_tokens must be >= 0")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}")


@dataclass
class MetricResult:
    metrics: dict[str, float | None]
    details: dict[str, Any]      # per metric name: how it was computed (JSON-able), stored beside the value
    stats: ReconstructionStats


def dead_dense_fractions(
    d_sae: int, stats: ReconstructionStats, features: pd.DataFrame | None, dense_threshold: float = DENSE_THRESHOLD
) -> tuple[dict[str, float], dict[str, Any]]:
    """Dead (never fires) and dense (density > dense_threshold) fractions of the dictionary.

    Taken from the collect run's `features` table when it covers every latent: it counts firing over
    every collected token of both splits, a bigger sample than the evaluation pass, so fewer latents
    look dead by chance. Otherwise from the tokens evaluated here.
    """
    if features is not None and len(features) == d_sae:
        firing = torch.tensor(features["firing_count"].to_numpy(dtype="int64"))
        density = torch.tensor(features["density"].to_numpy(dtype="float64"))
        source = "features table (all collected tokens, both splits)"
    else:
        firing = stats.firing_counts
        density = firing.double() / max(stats.n_tokens, 1)
        source = f"evaluated test-split tokens ({stats.n_tokens})"
    metrics = {
        "dead_fraction": float((firing == 0).double().mean()),
        "dense_fraction": float((density > dense_threshold).double().mean()),
    }
    details = {
        "dead_fraction": {"source": source, "definition": "firing_count == 0"},
        "dense_fraction": {"source": source, "definition": f"density > {dense_threshold}"},
    }
    return metrics, details


def compute_sae_metrics(
    lm: LoadedModel,
    point: HookPoint,
    sae: SAE,
    make_batches: Callable[[], Iterator[TokenBatch]],
    options: MetricOptions,
    features: pd.DataFrame | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> MetricResult:
    """Metrics from batches of token ids; `make_batches()` is called once per pass (it must restart).

    `progress(label, total_tokens)` returns a per-batch callback (e.g. a tqdm bar's update).
    """
    options.check()
    recon_cb = progress("reconstruction", options.tokens) if progress else None
    stats = reconstruction_stats(lm, point, sae, limit_tokens(make_batches(), options.tokens), recon_cb)
    if stats.n_tokens == 0:
        raise ValueError("the batches held no tokens to evaluate (every context is shorter than 2 tokens?)")
    metrics = stats.metrics()
    counted = {"tokens": stats.n_tokens, "positions": "1.. (position 0, the attention sink, excluded)"}
    details: dict[str, Any] = {
        "l0": {**counted, "definition": "mean number of latents > 0 per token"},
        "fve": {**counted, "definition": "1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2, mean per dimension "
                "over the evaluated tokens", "total_variance": stats.total_variance,
                "sum_squared_error": stats.sum_squared_error},
        "mse": {**counted, "definition": "sum||x - x_hat||^2 / (tokens * d_in)"},
        "n_eval_tokens": counted,
    }
    dd_metrics, dd_details = dead_dense_fractions(sae.d_sae, stats, features, options.dense_threshold)
    metrics.update(dd_metrics)
    details.update(dd_details)

    if options.ce_tokens > 0:
        ce_cb = progress("CE loss", options.ce_tokens) if progress else None
        mean = stats.mean.float() if options.ablation == "mean" else None
        ce = ce_loss_stats(lm, point, sae, limit_tokens(make_batches(), options.ce_tokens),
                           options.ablation, mean, ce_cb)
        ce_metrics = ce.metrics()
        metrics.update(ce_metrics)
        about = {"tokens": ce.n_tokens, "ablation": options.ablation,
                 "positions": "predictions made at positions >= 1; position 0 keeps its original activation"}
        for name in ce_metrics:
            details[name] = dict(about)
        details["ce_loss_recovered"]["definition"] = "(L_ablated - L_sae) / (L_ablated - L_clean)"
        if ce_metrics["ce_loss_recovered"] is None:
            details["ce_loss_recovered"]["note"] = "ablated and clean losses are equal; the ratio is undefined"
    return MetricResult(metrics=metrics, details=details, stats=stats)
