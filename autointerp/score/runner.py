"""`score_features`: score every ok explanation of a run with the chosen scorers, resumably.

Each (explanation, scorer, scorer model, prompt hash, config hash) has one `score_id`; a rerun
skips ids already stored (failed ones too, unless `retry_failed`). All items are submitted at once
as asyncio tasks, so a shared HTTP client keeps a vLLM batch full; each score is written to the store
the moment it completes, so an interrupted run loses only the items in flight.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from autointerp.errors import UserError
from autointerp.hashing import short_hash
from autointerp.llm.base import LLMClient, Status
from autointerp.score.base import FeatureToScore, ScoreOutcome, Scorer, get_scorer_class
from autointerp.score.config import ScoreConfig
from autointerp.score.contexts import check_no_leakage, feature_seed, select_test_contexts
from autointerp.store import RunInfo, Store
from autointerp.store.sets import is_null_model

DONE_STATUSES = {Status.OK.value, Status.UNDEFINED.value}


@dataclass
class ScorerSummary:
    """One scorer's results over the explanations this call covered (run now or earlier)."""

    scorer: str
    model: str
    n_items: int = 0
    n_skipped: int = 0             # already in the store before this call
    status_counts: dict[str, int] = field(default_factory=dict)
    mean_score: float | None = None
    chance: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ScoreSummary:
    run_id: str
    sae_name: str
    n_explanations: int
    scorers: dict[str, ScorerSummary]

    def format(self) -> str:
        lines = [f"scored {self.n_explanations} explanation(s) of SAE {self.sae_name!r}"]
        for s in self.scorers.values():
            mean = "n/a" if s.mean_score is None else f"{s.mean_score:.3f}"
            chance = "" if s.chance is None else f" (chance {s.chance:g})"
            counts = ", ".join(f"{k} {v}" for k, v in sorted(s.status_counts.items())) or "none"
            lines.append(
                f"  {s.scorer:<11} model {s.model}: mean {mean}{chance}; {counts}; "
                f"{s.n_skipped} already done; tokens {s.prompt_tokens} prompt + {s.completion_tokens} completion"
            )
        return "\n".join(lines)


def score_id(explanation_id: str, scorer: str, model: str, prompt_hash: str, config_hash: str) -> str:
    return short_hash([explanation_id, scorer, model, prompt_hash, config_hash])


def resolve(store: Store, run: str | None) -> RunInfo:
    """A run by SAE name or run id (None: the only run in the workspace)."""
    if run is not None:
        for info in store.runs():
            if run in (info.run_id, info.sae_name):
                return info
    return store.resolve_run(run)


def select_explanations(store: Store, run_id: str, config: ScoreConfig,
                        feature_ids: Sequence[int] | None) -> pd.DataFrame:
    frame = store.explanations(run_id, status=Status.OK.value)
    if config.explainer_model is None or not is_null_model(config.explainer_model):
        # shuffled-label null sets are scored only when asked for by name (see score/null.py)
        frame = frame[~frame["explainer_model"].map(is_null_model).astype(bool)]
    if config.explainer_model is not None:
        frame = frame[frame["explainer_model"] == config.explainer_model]
    if config.explanation_prompt is not None:
        frame = frame[frame["prompt_name"] == config.explanation_prompt]
    if feature_ids is not None:
        frame = frame[frame["feature_id"].isin([int(f) for f in feature_ids])]
    return frame.reset_index(drop=True)


def build_items(store: Store, run_id: str, explanations: pd.DataFrame, config: ScoreConfig) -> list[FeatureToScore]:
    """The explanations with their test contexts (test split only) and max activations."""
    if explanations.empty:
        return []
    wanted = sorted({int(f) for f in explanations["feature_id"]})
    examples = store.examples(run_id, feature_ids=wanted, split="test")
    by_feature = {int(f): g for f, g in examples.groupby("feature_id")} if not examples.empty else {}
    stats = store.features(run_id)
    max_act = dict(zip(stats["feature_id"].astype(int), stats["max_activation"].astype(float), strict=True))
    contexts_cache: dict[int, tuple] = {}
    items = []
    for row in explanations.to_dict("records"):
        fid = int(row["feature_id"])
        seed = feature_seed(config.seed, fid)
        if fid not in contexts_cache:
            frame = by_feature.get(fid, examples.iloc[0:0])
            contexts_cache[fid] = tuple(select_test_contexts(frame, config, seed))
        items.append(FeatureToScore(
            explanation_id=str(row["explanation_id"]),
            feature_id=fid,
            explanation=str(row["explanation"]),
            max_activation=max_act.get(fid, 0.0),
            contexts=contexts_cache[fid],
            seed=seed,
        ))
    return items


def _row(item: FeatureToScore, scorer: Scorer, keys: dict[str, Any], run_id: str, outcome: ScoreOutcome) -> dict:
    return {
        "score_id": keys["score_id"],
        "explanation_id": item.explanation_id,
        "run_id": run_id,
        "feature_id": item.feature_id,
        "scorer": scorer.name,
        "scorer_model": keys["model"],
        "prompt_hash": keys["prompt_hash"],
        "config_hash": keys["config_hash"],
        "config": keys["config"],
        "status": outcome.status,
        "score": outcome.score,
        "chance": outcome.chance,
        "details": outcome.details,
        "error": outcome.error,
        "prompt_tokens": int(outcome.prompt_tokens),
        "completion_tokens": int(outcome.completion_tokens),
        "latency_s": float(outcome.latency_s),
    }


async def ascore_features(
    store: Store,
    run: RunInfo | str | None,
    client: LLMClient | None,
    scorers: list[str],
    config: ScoreConfig | None = None,
    feature_ids: Sequence[int] | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> ScoreSummary:
    """The async body of `score_features` (use it when an event loop is already running)."""
    config = config or ScoreConfig()
    info = run if isinstance(run, RunInfo) else resolve(store, run)
    if not scorers:
        raise UserError("no scorers chosen", "pass e.g. --scorers simulation,detection,fuzzing,embedding")
    if len(set(scorers)) != len(scorers):
        raise UserError(f"a scorer is named twice in {scorers}", "name each scorer once")
    classes = [get_scorer_class(name) for name in scorers]
    check_no_leakage(store, info.run_id)
    instances = [cls(client, config) for cls in classes]
    explanations = select_explanations(store, info.run_id, config, feature_ids)

    pending: list[tuple[FeatureToScore, Scorer, dict[str, Any]]] = []
    all_ids: dict[str, list[str]] = {s.name: [] for s in instances}
    skipped: Counter[str] = Counter()
    if not explanations.empty:
        needs_client = any(s.needs_client for s in instances)
        check = getattr(client, "check", None)
        if needs_client and check is not None:
            await check()  # a dead server is a UserError before any work
        items = build_items(store, info.run_id, explanations, config)
        for scorer in instances:
            config_dict = scorer.config_for_hash()
            keys = {"model": scorer.model_name, "prompt_hash": scorer.prompt_hash,
                    "config_hash": short_hash(config_dict), "config": config_dict}
            ids = [score_id(i.explanation_id, scorer.name, keys["model"], keys["prompt_hash"], keys["config_hash"])
                   for i in items]
            all_ids[scorer.name] = ids
            statuses = store.score_statuses(ids)
            for item, sid in zip(items, ids, strict=True):
                status = statuses.get(sid)
                if status is None or (retry_failed and status not in DONE_STATUSES):
                    pending.append((item, scorer, {**keys, "score_id": sid}))
                else:
                    skipped[scorer.name] += 1

    async def run_one(item: FeatureToScore, scorer: Scorer, keys: dict[str, Any]) -> None:
        outcome = await scorer.score(item)
        store.put_score(_row(item, scorer, keys, info.run_id, outcome))

    tasks = [asyncio.ensure_future(run_one(*p)) for p in pending]
    bar = None
    if progress and tasks:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="score", unit="item")
    try:
        for finished in asyncio.as_completed(tasks):
            await finished
            if bar is not None:
                bar.update(1)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return summarise(store, info, instances, all_ids, skipped, len(explanations))


def summarise(store: Store, info: RunInfo, scorers: list[Scorer], ids: dict[str, list[str]],
              skipped: Counter[str], n_explanations: int) -> ScoreSummary:
    frame = store.scores(info.run_id)
    out = {}
    for scorer in scorers:
        rows = frame[frame["score_id"].isin(ids[scorer.name])]
        ok = rows[rows["status"] == Status.OK.value]
        chance = ok["chance"].dropna()
        out[scorer.name] = ScorerSummary(
            scorer=scorer.name,
            model=scorer.model_name,
            n_items=len(ids[scorer.name]),
            n_skipped=skipped[scorer.name],
            status_counts={str(k): int(v) for k, v in rows["status"].value_counts().items()},
            mean_score=float(ok["score"].mean()) if len(ok) else None,
            chance=float(chance.iloc[0]) if len(chance) else None,
            prompt_tokens=int(rows["prompt_tokens"].fillna(0).sum()),
            completion_tokens=int(rows["completion_tokens"].fillna(0).sum()),
        )
    return ScoreSummary(run_id=info.run_id, sae_name=info.sae_name, n_explanations=n_explanations, scorers=out)


def score_features(
    store: Store,
    run: RunInfo | str | None,
    client: LLMClient | None,
    scorers: list[str],
    config: ScoreConfig | None = None,
    feature_ids: Sequence[int] | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> ScoreSummary:
    """Score every ok explanation of `run` (a RunInfo, an SAE name or run id, or None for the only run) with
    each scorer in `scorers` (registry names), on test-split contexts only. Refuses to start
    (UserError) if the store's explain/test split leaks. Returns per-scorer counts and means.

    Called while an event loop is running (e.g. from async code sharing `client`), it returns the
    coroutine of `ascore_features` instead, to be awaited on that loop."""
    coroutine = ascore_features(store, run, client, scorers, config, feature_ids, retry_failed, progress)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    return coroutine  # type: ignore[return-value]
