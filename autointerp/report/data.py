"""Everything the report, compare and export commands read, gathered from the Store in one place.

No SQL here: all reads are Store methods. This module picks which explanation set to show (one label
per feature), turns rows into plain records, and knows the layout of the scorers' `details` JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from autointerp.errors import UserError
from autointerp.store import RunInfo, Store
from autointerp.store.sets import is_null_model, null_set_key

# Default "good feature" thresholds per scorer, used for "fraction above threshold". Simulation is a
# Pearson correlation (0.5 is a common "well explained" cut); detection/fuzzing are balanced accuracies
# with chance 0.5 (chat answers or the likelihood judge's top-n), so 0.75 is halfway to perfect; embedding is an
# AUC (chance 0.5), same reasoning. The intruder scorers' accuracy (chat answer or likelihood judge) has chance
# 1/(n+1) (0.2 by default): 0.6 is halfway to perfect.
DEFAULT_THRESHOLDS: dict[str, float] = {"simulation": 0.5, "detection": 0.75, "detection_likelihood": 0.75,
                                        "fuzzing": 0.75, "embedding": 0.75, "intruder": 0.6,
                                        "intruder_likelihood": 0.6}
FALLBACK_THRESHOLD = 0.5
DEFAULT_DENSE_THRESHOLD = 0.1  # a feature firing on more than 10 % of tokens is "dense" (SAEBench's cut)


def threshold_for(scorer: str, overrides: dict[str, float] | None = None) -> float:
    """The "good feature" cut of a scorer; 'detection:hard' (hard negatives) uses detection's."""
    for name in (scorer, scorer.split(":")[0]):
        if overrides and name in overrides:
            return overrides[name]
    return DEFAULT_THRESHOLDS.get(scorer, DEFAULT_THRESHOLDS.get(scorer.split(":")[0], FALLBACK_THRESHOLD))


def parse_thresholds(items: list[str] | None) -> dict[str, float]:
    """`--threshold simulation=0.4` items -> {'simulation': 0.4}."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"bad --threshold {item!r}", "write SCORER=VALUE, e.g. --threshold simulation=0.5") from None
    return out


@dataclass(frozen=True)
class ExplanationSet:
    """One (explainer model, prompt, config) combination: one explanation per feature."""

    explainer_model: str
    prompt_name: str
    prompt_hash: str
    config_hash: str
    n: int
    n_ok: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.explainer_model, self.prompt_hash, self.config_hash)

    @property
    def name(self) -> str:
        return f"{self.explainer_model} / {self.prompt_name}@{self.prompt_hash[:8]}"


def explanation_sets(store: Store, run_id: str) -> list[ExplanationSet]:
    """The run's label sets (explainer's and imported ones), without the shuffled-label null sets: those are
    a baseline of a set, never a set to show or compare on their own."""
    frame = store.explanation_sets(run_id)
    return [
        ExplanationSet(r["explainer_model"], r["prompt_name"], r["prompt_hash"], r["config_hash"], int(r["n"]),
                       int(r["n_ok"]))
        for r in frame.to_dict("records") if not is_null_model(str(r["explainer_model"]))
    ]


def choose_explanation_set(store: Store, run_id: str, explainer_model: str | None = None) -> ExplanationSet | None:
    """The set with the most successful explanations (optionally of one explainer model); None if none."""
    sets = explanation_sets(store, run_id)
    if explainer_model is not None:
        matching = [s for s in sets if s.explainer_model == explainer_model]
        if not matching:
            have = ", ".join(sorted({s.explainer_model for s in sets})) or "none"
            raise UserError(
                f"no explanations by explainer model {explainer_model!r} in this run (have: {have})",
                "pass one of those to --explainer-model (or --source for imported labels), or run "
                "`autointerp explain` with that model",
            )
        sets = matching
    return sets[0] if sets else None


@dataclass
class RunData:
    """One SAE run with its chosen explanation set, scores, metrics and output view."""

    run: RunInfo
    db_path: str
    features: pd.DataFrame
    explanation_set: ExplanationSet | None
    all_sets: list[ExplanationSet]
    explanations: pd.DataFrame  # one row per explained feature (of the chosen set)
    scores: pd.DataFrame  # newest row per (feature, scorer) for those explanations
    metrics: dict[str, float | None]
    logits: pd.DataFrame
    scorers: list[str] = field(default_factory=list)
    #: Scores of the shuffled-label null set of the chosen set (same columns as `scores`; empty if none).
    null_scores: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: Scorers in `scores` that read no label (intruder): read against chance, never against shuffled labels.
    label_free_scorers: list[str] = field(default_factory=list)

    def chance(self, scorer: str) -> float | None:
        """The chance level stored with the scorer's ok scores (their median), None when none is stored."""
        s = self.scores
        values = s[(s["scorer"] == scorer) & (s["status"] == "ok")]["chance"].dropna()
        return float(values.median()) if len(values) else None

    def ok_scores(self, scorer: str) -> pd.DataFrame:
        """feature_id, score for the scorer's successful scores."""
        s = self.scores
        ok = s[(s["scorer"] == scorer) & (s["status"] == "ok") & s["score"].notna()]
        return ok[["feature_id", "score"]].reset_index(drop=True)

    def status_counts(self, scorer: str) -> dict[str, int]:
        s = self.scores[self.scores["scorer"] == scorer]
        return {str(k): int(v) for k, v in s["status"].value_counts().sort_index().items()}


def load_run(store: Store, sae_name: str | None, explainer_model: str | None = None,
             explanation_set: ExplanationSet | None = None) -> RunData:
    """Read one run's report data; `explanation_set` overrides the default choice."""
    run = store.resolve_run(sae_name)
    chosen = explanation_set or choose_explanation_set(store, run.run_id, explainer_model)
    null_scores = pd.DataFrame()
    if chosen is not None:
        explanations = store.set_explanations(run.run_id, *chosen.key)
        scores = store.set_scores(run.run_id, *chosen.key)
        null_scores = store.set_scores(run.run_id, *null_set_key(chosen.key))
    else:
        explanations = pd.DataFrame(columns=["feature_id", "explanation_id", "status", "explanation", "error"])
        scores = pd.DataFrame(columns=["feature_id", "scorer", "status", "score", "chance", "details", "error",
                                       "scorer_model"])
    label_free = store.label_free_scores(run.run_id)
    if not label_free.empty:
        scores = label_free if scores.empty else pd.concat([scores, label_free], ignore_index=True)
    scorers = sorted(scores["scorer"].dropna().unique().tolist()) if not scores.empty else []
    return RunData(
        run=run,
        db_path=str(store.path),
        features=store.features(run.run_id),
        explanation_set=chosen,
        all_sets=explanation_sets(store, run.run_id),
        explanations=explanations,
        scores=scores,
        metrics=store.sae_metrics(run.run_id),
        logits=store.feature_logits(run.run_id),
        scorers=scorers,
        null_scores=null_scores,
        label_free_scorers=sorted(set(label_free["scorer"])) if not label_free.empty else [],
    )


def parse_details(value: Any) -> dict[str, Any]:
    """The scores.details JSON as a dict ({} when missing or not an object)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    return value if isinstance(value, dict) else {}


_TRUE_KEYS = ("true", "true_activations", "actual", "activations")
_SIM_KEYS = ("simulated", "simulated_activations", "predicted", "expected", "prediction")
_LIST_KEYS = ("examples", "predictions", "per_example", "contexts", "traces")


@dataclass(frozen=True)
class SimulationTrace:
    """True vs simulated per-token activations of one test context."""

    context_id: int | None
    kind: str | None
    true: list[float]
    simulated: list[float]
    tokens: list[str] | None


def simulation_traces(details: dict[str, Any]) -> list[SimulationTrace]:
    """Per-context true/simulated activations from a simulation score's details, if the scorer stored them.

    Accepts a list under one of `_LIST_KEYS` of objects holding a true and a simulated list (key names
    in `_TRUE_KEYS` / `_SIM_KEYS`), plus optional context_id, kind and tokens.
    """
    for list_key in _LIST_KEYS:
        items = details.get(list_key)
        if not isinstance(items, list):
            continue
        traces = []
        for item in items:
            if not isinstance(item, dict):
                continue
            true = next((item[k] for k in _TRUE_KEYS if isinstance(item.get(k), list)), None)
            sim = next((item[k] for k in _SIM_KEYS if isinstance(item.get(k), list)), None)
            if true is None or sim is None:
                continue
            cid = item.get("context_id")
            tokens = item.get("tokens") if isinstance(item.get("tokens"), list) else None
            traces.append(SimulationTrace(
                context_id=int(cid) if isinstance(cid, int | float) else None,
                kind=str(item["kind"]) if item.get("kind") is not None else None,
                true=[_num(v) for v in true],
                simulated=[_num(v) for v in sim],
                tokens=[str(t) for t in tokens] if tokens else None,
            ))
        if traces:
            return traces
    return []


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return 0.0
    return f if math.isfinite(f) else 0.0


def dead_dense(features: pd.DataFrame, dense_threshold: float) -> tuple[int, int]:
    """(number of dead features, number of dense features) from the per-feature statistics."""
    dead = int((features["firing_count"] == 0).sum())
    dense = int((features["density"] > dense_threshold).sum())
    return dead, dense


def as_float_list(values: Any) -> list[float]:
    if values is None:
        return []
    return [float(v) for v in np.asarray(values, dtype=float).tolist()]
