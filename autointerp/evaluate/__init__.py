"""SAE-level metrics (L0, FVE, MSE, dead/dense fractions, CE loss recovered) and the per-feature output view.

Public API:
- `compute_sae_metrics(lm, point, sae, make_batches, MetricOptions(...))`: metrics from token batches.
- `feature_output_view(lm, W_dec, top_k)`: promoted / suppressed tokens per decoder direction.
- `evaluate_sae(store, run, lm, sae, contexts, EvaluateOptions(...))`: both, on a collected run, stored
  with `Store.put_sae_metrics` and `Store.put_feature_logits`.
- `contexts_of_test_split(store, run, tokenizer)`: the run's test-split contexts, re-created from its corpus.
- `batches_from_token_lists`, `TokenBatch`: feeding any token ids to the metric functions.
"""

from __future__ import annotations

from autointerp.evaluate.batches import TokenBatch, batches_from_token_lists, limit_tokens
from autointerp.evaluate.ce_loss import CELossStats, ce_loss_stats
from autointerp.evaluate.output_view import feature_output_view
from autointerp.evaluate.reconstruction import ReconstructionStats, reconstruction_stats
from autointerp.evaluate.sae_metrics import DENSE_THRESHOLD, MetricOptions, MetricResult, compute_sae_metrics
from autointerp.evaluate.stage import EvaluateOptions, EvaluationResult, evaluate_sae
from autointerp.evaluate.test_split import check_test_split, contexts_of_test_split, corpus_spec_of_run

__all__ = [
    "DENSE_THRESHOLD",
    "CELossStats",
    "EvaluateOptions",
    "EvaluationResult",
    "MetricOptions",
    "MetricResult",
    "ReconstructionStats",
    "TokenBatch",
    "batches_from_token_lists",
    "ce_loss_stats",
    "check_test_split",
    "compute_sae_metrics",
    "contexts_of_test_split",
    "corpus_spec_of_run",
    "evaluate_sae",
    "feature_output_view",
    "limit_tokens",
    "reconstruction_stats",
]
