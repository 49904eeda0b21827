"""The explain stage: an explainer LLM writes one label per live feature (see `run.explain`)."""

from autointerp.explain.config import ExplainConfig
from autointerp.explain.run import ExplainSummary, explain, explain_sync, explanation_id
from autointerp.explain.schema import EXPLANATION_SCHEMA

__all__ = ["EXPLANATION_SCHEMA", "ExplainConfig", "ExplainSummary", "explain", "explain_sync", "explanation_id"]
