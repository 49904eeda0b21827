"""The evaluate stage on a collected run: metrics on the run's test-split contexts, plus the output view.

Everything is computed before anything is written, so a failure leaves the store as it was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from autointerp.evaluate.batches import TokenBatch, batches_from_token_lists
from autointerp.evaluate.output_view import feature_output_view
from autointerp.evaluate.sae_metrics import MetricOptions, compute_sae_metrics
from autointerp.models import LoadedModel, parse_hook
from autointerp.sae.base import SAE
from autointerp.store import RunInfo, Store


@dataclass
class EvaluateOptions:
    metrics: MetricOptions = field(default_factory=MetricOptions)
    batch_size: int = 16
    output_view: bool = True
    output_top_k: int = 10


@dataclass
class EvaluationResult:
    metrics: dict[str, float | None]
    details: dict[str, Any]
    feature_logits: pd.DataFrame | None


def evaluate_sae(
    store: Store,
    run: RunInfo,
    lm: LoadedModel,
    sae: SAE,
    contexts: Callable[[], Iterable[Sequence[int]]],
    options: EvaluateOptions,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> EvaluationResult:
    """Compute and store the SAE-level metrics (and output view) of `run`.

    `contexts()` yields the token ids of the contexts to evaluate (normally the run's test split, see
    `autointerp.evaluate.test_split`); it is called once per pass.
    """
    point = parse_hook(run.hook, lm.n_layers)
    metric_options = options.metrics
    if "dense_threshold" in run.config:  # agree with the run's collect summary on what "dense" means
        metric_options = dataclasses.replace(metric_options, dense_threshold=float(run.config["dense_threshold"]))
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0

    def make_batches() -> Iterator[TokenBatch]:
        return batches_from_token_lists(contexts(), options.batch_size, pad_id)

    result = compute_sae_metrics(lm, point, sae, make_batches, metric_options, store.features(run.run_id),
                                 progress)
    logits = None
    if options.output_view:
        on_chunk = progress("output view", sae.d_sae) if progress else None
        logits = feature_output_view(lm, sae.W_dec.detach(), options.output_top_k, on_chunk=on_chunk)
    store.put_sae_metrics(run.run_id, result.metrics, result.details)
    if logits is not None:
        store.put_feature_logits(run.run_id, logits)
    return EvaluationResult(metrics=result.metrics, details=result.details, feature_logits=logits)
