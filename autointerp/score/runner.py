"""`score_features`: score every ok explanation of a run with the chosen scorers, resumably.

Each (explanation, scorer, scorer model, prompt hash, config hash) has one `score_id`; a rerun
skips ids already stored (failed ones too, unless `retry_failed`). The ids are cheap (no contexts),
so what is left to do is known up front; the test contexts are then read from the store a chunk of
features at a time and the items go through the shared work runner (`autointerp.llm.runner`): a
bounded window in flight, scores group-committed by one writer. Memory depends on the chunk and the
window, not on the dictionary's width; an interrupted run loses only the items in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import pandas as pd

from autointerp.errors import UserError
from autointerp.hashing import canonical_json, short_hash
from autointerp.llm.base import LLMClient, Status
from autointerp.llm.runner import Outcome, RunStats, error_text, run_items, run_sync, window_for
from autointerp.score.base import FeatureToScore, ScoreOutcome, Scorer, get_scorer_class
from autointerp.score.config import ScoreConfig
from autointerp.score.contexts import check_no_leakage, feature_seed, select_test_contexts
from autointerp.store import RunInfo, Store
from autointerp.store.sets import is_null_model, label_free_id

#: Features whose test contexts are read from the store in one query (and held in memory at once, plus
#: the one chunk prefetched ahead).
CHUNK_FEATURES = 256
#: Items in flight for scorers without an LLM client (embedding).
WINDOW_WITHOUT_CLIENT = 64

DONE_STATUSES = {Status.OK.value, Status.UNDEFINED.value}
#: What scoring reads of an explanation: the selection's filters and what an item needs.
EXPLANATION_FIELDS = ("explanation_id", "feature_id", "explanation", "explainer_model", "prompt_name")


@dataclass
class ScorerSummary:
    """One scorer's results over the explanations this call covered (run now or earlier)."""

    scorer: str
    model: str
    n_items: int = 0
    n_skipped: int = 0  # already in the store before this call
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
    run: RunStats | None = None  # this call's work: items/s, requests, time to first item

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
        if self.run is not None and self.run.n_items:
            lines.append("  " + self.run.format())
        return "\n".join(lines)


def score_id(explanation_id: str, scorer: str, model: str, prompt_hash: str, config_hash: str) -> str:
    return short_hash([explanation_id, scorer, model, prompt_hash, config_hash])


def score_ids(
    explanation_ids: Sequence[str | None], scorer: str, model: str, prompt_hash: str, config_hash: str
) -> list[str | None]:
    """`score_id` of each explanation id (None stays None), equal to it but without a json.dumps per id.

    The canonical JSON of the key list differs between explanations only in the first string, so the
    rest is encoded once; at 65,536 features x 3 scorers the per-id dumps were seconds of setup."""
    tail = canonical_json([scorer, model, prompt_hash, config_hash])[1:]  # '"scorer",...]' without '['
    out: list[str | None] = []
    for eid in explanation_ids:
        if eid is None:
            out.append(None)
        else:
            text = "[" + encode_basestring_ascii(eid) + "," + tail
            out.append(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])
    return out


def resolve(store: Store, run: str | None) -> RunInfo:
    """A run by SAE name or run id (None: the only run in the workspace)."""
    if run is not None:
        for info in store.runs():
            if run in (info.run_id, info.sae_name):
                return info
    return store.resolve_run(run)


def select_explanations(
    store: Store, run_id: str, config: ScoreConfig, feature_ids: Sequence[int] | None
) -> pd.DataFrame:
    frame = store.explanations(run_id, status=Status.OK.value, columns=EXPLANATION_FIELDS)
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


def feature_contexts(
    store: Store, run_id: str, feature_ids: Sequence[int], config: ScoreConfig
) -> dict[int, tuple]:
    """feature_id -> its test contexts (test split only), for one chunk of features."""
    records = store.example_records(run_id, list(feature_ids), split="test")
    return {
        int(f): tuple(select_test_contexts(records[int(f)], config, feature_seed(config.seed, int(f))))
        for f in feature_ids
    }


def _max_activations(store: Store, run_id: str) -> dict[int, float]:
    stats = store.features(run_id)
    return dict(zip(stats["feature_id"].astype(int), stats["max_activation"].astype(float), strict=True))


def _explanation_rows(explanations: pd.DataFrame) -> list[tuple[str, int, str]]:
    """(explanation_id, feature_id, explanation) per row: what an item needs, nothing else kept."""
    return list(
        zip(
            explanations["explanation_id"].astype(str),
            explanations["feature_id"].astype(int),
            explanations["explanation"].astype(str),
            strict=True,
        )
    )


def _item(
    row: tuple[str, int, str], contexts: dict[int, tuple], max_act: dict[int, float], config: ScoreConfig
) -> FeatureToScore:
    explanation_id, fid, text = row
    return FeatureToScore(
        explanation_id=explanation_id,
        feature_id=fid,
        explanation=text,
        max_activation=max_act.get(fid, 0.0),
        contexts=contexts[fid],
        seed=feature_seed(config.seed, fid),
    )


def _row(
    item: FeatureToScore, scorer: Scorer, keys: dict[str, Any], run_id: str, outcome: ScoreOutcome
) -> dict:
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


@dataclass(frozen=True)
class _Job:
    """One (explanation, scorer) pair to score, with the keys its row is stored under."""

    item: FeatureToScore
    scorer: Scorer
    keys: dict[str, Any]


@dataclass
class _Plan:
    """What is to be scored, without the per-(row, scorer) ids: those are computed a chunk at a time.

    Holding every id and status of a 65,536-feature dictionary at once (~200 k strings, a status dict and a
    to-do list) made score's peak RSS and its setup grow with the width; per chunk they do not."""

    run_id: str
    rows: list[tuple[str, int, str]]  # (explanation_id, feature_id, text); label-free rows after the labelled
    n_label_rows: int
    scorers: list[Scorer]
    keys: list[dict[str, Any]]  # per scorer: model, prompt_hash, config_hash, config

    def row_chunks(self) -> Iterator[list[int]]:
        """Row indices, feature-major, CHUNK_FEATURES features per chunk (a feature's rows never split)."""
        order = sorted(range(len(self.rows)), key=lambda r: self.rows[r][1])
        chunk: list[int] = []
        features: set[int] = set()
        for r in order:
            fid = self.rows[r][1]
            if fid not in features and len(features) >= CHUNK_FEATURES:
                yield chunk
                chunk, features = [], set()
            features.add(fid)
            chunk.append(r)
        if chunk:
            yield chunk

    def pairs(self, chunk: list[int]) -> list[tuple[int, int, str]]:
        """(row, scorer index, score_id) of a chunk: a label scorer covers the explanation rows, a
        label-free one the per-feature rows after them."""
        per_scorer = [
            score_ids(
                [
                    self.rows[r][0] if (r < self.n_label_rows) == scorer.needs_explanation else None
                    for r in chunk
                ],
                scorer.name,
                k["model"],
                k["prompt_hash"],
                k["config_hash"],
            )
            for scorer, k in zip(self.scorers, self.keys, strict=True)
        ]
        out = []
        for i, r in enumerate(chunk):
            for s, ids in enumerate(per_scorer):
                if ids[i] is not None:
                    out.append((r, s, ids[i]))
        return out

    def n_pairs(self) -> int:
        n_free = len(self.rows) - self.n_label_rows
        return sum(self.n_label_rows if s.needs_explanation else n_free for s in self.scorers)


def _jobs(
    store: Store, plan: _Plan, config: ScoreConfig, retry_failed: bool, skipped: Counter[str]
) -> Iterator[list[_Job]]:
    """The pending jobs, chunk by chunk: each chunk computes its ids, reads their statuses (a rerun skips
    what is stored) and then the contexts of the features with work left."""
    max_act = _max_activations(store, plan.run_id)
    for chunk in plan.row_chunks():
        pairs = plan.pairs(chunk)
        statuses = store.score_statuses([i for _, _, i in pairs])
        todo = []
        for r, s, sid in pairs:
            status = statuses.get(sid)
            if status is None or (retry_failed and status not in DONE_STATUSES):
                todo.append((r, s, sid))
            else:
                skipped[plan.scorers[s].name] += 1
        if not todo:
            continue
        contexts = feature_contexts(store, plan.run_id, sorted({plan.rows[r][1] for r, _, _ in todo}), config)
        items: dict[int, FeatureToScore] = {}
        jobs = []
        for r, s, sid in todo:
            if r not in items:
                items[r] = _item(plan.rows[r], contexts, max_act, config)
            jobs.append(_Job(items[r], plan.scorers[s], {**plan.keys[s], "score_id": sid}))
        yield jobs


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
    rows = _explanation_rows(explanations)
    n_explanations = len(rows)
    del explanations
    label_free = [s for s in instances if not s.needs_explanation]
    if label_free and config.explainer_model is not None and is_null_model(config.explainer_model):
        # a shuffled label changes nothing for a scorer that reads no label: never score it twice
        instances = [s for s in instances if s.needs_explanation]
        label_free = []
    n_label_rows = len(rows)
    if label_free:
        # one row per feature: the requested features (labelled or not), else every labelled one in the selection
        wanted = feature_ids if feature_ids is not None else [r[1] for r in rows]
        rows += [(label_free_id(info.run_id, f), int(f), "") for f in sorted({int(f) for f in wanted})]
    if rows and client is not None and any(s.needs_client for s in instances):
        await client.check()  # a dead server is a UserError before any work; it may settle model_name

    keys: list[dict[str, Any]] = []
    for scorer in instances:
        config_dict = scorer.config_for_hash()
        keys.append(
            {
                "model": scorer.model_name,
                "prompt_hash": scorer.prompt_hash,
                "config_hash": short_hash(config_dict),
                "config": config_dict,
            }
        )
    plan = _Plan(info.run_id, rows, n_label_rows, instances, keys)
    skipped: Counter[str] = Counter()

    async def process(job: _Job) -> Outcome:
        outcome = await job.scorer.score(job.item)
        return Outcome(
            outcome.status,
            _row(job.item, job.scorer, job.keys, info.run_id, outcome),
            outcome.prompt_tokens,
            outcome.completion_tokens,
            requests=0,
        )  # not counted per scorer

    def fail(job: _Job, exc: BaseException) -> Outcome:
        outcome = ScoreOutcome(Status.EXCEPTION.value, error=error_text(exc))
        return Outcome(outcome.status, _row(job.item, job.scorer, job.keys, info.run_id, outcome), requests=0)

    window = window_for(client) if client is not None else WINDOW_WITHOUT_CLIENT
    stats = await run_items(
        _jobs(store, plan, config, retry_failed, skipped),
        process,
        fail,
        store.put_scores,
        window=window,
        total=plan.n_pairs(),  # an upper bound: ids already stored are skipped chunk by chunk
        name="score",
        progress=progress,
    )
    summary = await asyncio.to_thread(summarise, store, info, plan, skipped, n_explanations)
    summary.run = stats
    return summary


#: Score ids per aggregate query when summarising (bounded, like the chunks).
SUMMARY_IDS = 8192


def summarise(
    store: Store, info: RunInfo, plan: _Plan, skipped: Counter[str], n_explanations: int
) -> ScoreSummary:
    """Per scorer, over the ids this call covered: counts per status, mean of ok scores, tokens (aggregate
    queries over bounded id batches, so neither a whole dictionary's rows nor its ids are held at once)."""
    n_items: Counter[str] = Counter()
    counts: dict[str, Counter[str]] = {s.name: Counter() for s in plan.scorers}
    scored: Counter[str] = Counter()  # ok rows with a score, per scorer
    score_sum: Counter[str] = Counter()
    chance: dict[str, float] = {}
    tokens: dict[str, list[int]] = {s.name: [0, 0] for s in plan.scorers}
    batch: dict[str, list[str]] = {s.name: [] for s in plan.scorers}

    def flush(name: str) -> None:
        totals = store.score_totals(batch[name])
        batch[name] = []
        for row in totals.itertuples(index=False):
            counts[name][str(row.status)] += int(row.n)
            tokens[name][0] += int(row.prompt_tokens)
            tokens[name][1] += int(row.completion_tokens)
            if row.status == Status.OK.value:
                if int(row.n_scored):
                    scored[name] += int(row.n_scored)
                    score_sum[name] += float(row.mean_score) * int(row.n_scored)
                if name not in chance and not pd.isna(row.chance):
                    chance[name] = float(row.chance)

    for chunk in plan.row_chunks():
        for _, s, sid in plan.pairs(chunk):
            name = plan.scorers[s].name
            n_items[name] += 1
            batch[name].append(sid)
            if len(batch[name]) >= SUMMARY_IDS:
                flush(name)
    out = {}
    for scorer in plan.scorers:
        name = scorer.name
        if batch[name]:
            flush(name)
        out[name] = ScorerSummary(
            scorer=name,
            model=scorer.model_name,
            n_items=n_items[name],
            n_skipped=skipped[name],
            status_counts=dict(sorted(counts[name].items())),
            mean_score=score_sum[name] / scored[name] if scored[name] else None,
            chance=chance.get(name),
            prompt_tokens=tokens[name][0],
            completion_tokens=tokens[name][1],
        )
    return ScoreSummary(
        run_id=info.run_id, sae_name=info.sae_name, n_explanations=n_explanations, scorers=out
    )


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

    Synchronous callers only: inside a running event loop it refuses; await `ascore_features` there."""
    return run_sync(ascore_features(store, run, client, scorers, config, feature_ids, retry_failed, progress))
