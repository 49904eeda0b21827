"""The explain stage: one label per live feature, written to the store as each reply arrives.

Why it is shaped this way:
- Features go through the shared work runner (`autointerp.llm.runner`): examples are read from the
  store CHUNK_FEATURES features at a time, a bounded window is in flight (the client's concurrency
  limit decides how many requests reach the server), and labels are group-committed by one writer.
  Memory stays flat for dictionaries of any width.
- Each label is keyed by (run, feature, model, prompt hash, config hash): kill -9 loses only the
  items in flight, and a rerun skips what is done without duplicating.
- A reply that does not parse or validate is retried a bounded number of times and then stored as a
  failure with its raw text; a failure never carries a label.
- A reply that parses but is not a label (`autointerp.label_quality`: the prompt echoed, markers, a copied
  worked example, a loop) counts as a failed attempt too (`reject_unusable`, on by default): small
  explainers write one often, and a sampled retry usually writes a real label. An accepted label keeps
  in `error` which earlier replies were rejected and why, so the share of first replies that were not
  labels stays measurable; a feature without a usable label after the retries ends `unusable_label`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from autointerp.explain.config import ExplainConfig
from autointerp.explain.formatting import build_messages, select_examples
from autointerp.explain.schema import EXPLANATION_SCHEMA, validate_explanation
from autointerp.hashing import short_hash
from autointerp.label_quality import label_problem, rejection_note, unmarked
from autointerp.llm.base import ChatResult, LLMClient, Status
from autointerp.llm.runner import Outcome, RunStats, error_text, run_items, run_sync, window_for
from autointerp.prompting import PromptTemplate, load_prompt
from autointerp.store import ExampleRecord, RunInfo, Store

#: Failures about the reply's content: worth another attempt within the run, and redone on a rerun only
#: with --retry-failed (the same prompt will likely fail the same way).
CONTENT_FAILURES = {
    Status.PARSE_ERROR,
    Status.SCHEMA_ERROR,
    Status.EMPTY,
    Status.TRUNCATED,
    Status.UNUSABLE_LABEL,
}
#: Failures of the infrastructure (the client already retried them with backoff): a plain rerun redoes them.
TRANSIENT_FAILURES = {Status.SERVER_ERROR, Status.TIMEOUT, Status.CONNECTION_ERROR, Status.RATE_LIMITED}
#: Retries after a content failure sample at least this hot, so a deterministic model can give another reply.
RETRY_TEMPERATURE = 0.7
#: Features whose examples are read from the store in one query.
CHUNK_FEATURES = 256


@dataclass
class ExplainSummary:
    """What one `explain` call did (printed at the end, returned to callers and the benchmark)."""

    run_id: str
    model: str
    prompt: str
    config_hash: str
    n_selected: int = 0
    n_not_live: int = 0  # selected but not explainable: n_dead + n_test_only
    # "explainable" = fired AND has explain-split examples; collect's "alive" = fired on any split, so the
    # two differ by the features that fire only on test-split documents (named apart so counts agree).
    n_dead: int = 0  # selected (or alive) features that never fired
    n_test_only: int = 0  # fired, but only in the test split: nothing to show the explainer
    n_done_before: int = 0  # already had an ok label for this key
    n_failed_skipped: int = 0  # earlier content failures left alone (use retry_failed)
    n_attempted: int = 0
    n_ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    run: RunStats | None = None  # this call's work: items/s, requests, time to first item

    @property
    def n_failed(self) -> int:
        return sum(self.failures.values())

    @property
    def features_per_s(self) -> float:
        return self.n_attempted / self.wall_s if self.wall_s > 0 else 0.0

    def label_quality(self, store: Store, feature_ids: Sequence[int]) -> tuple[str, Any]:
        """The label-quality line of this pass's labels on `feature_ids`, and those rows (feature_id,
        status, explanation, error) sorted by feature: what explain prints and the benchmark shows."""
        from autointerp.label_quality import set_label_quality

        rows = store.set_explanations(self.run_id, self.model, load_prompt(self.prompt).hash, self.config_hash)
        rows = rows[rows["feature_id"].isin(list(feature_ids))].sort_values("feature_id")
        quality = set_label_quality(zip(rows["status"], rows["explanation"], rows["error"], strict=True))
        return quality.format(), rows

    def tokens_per_feature(self) -> tuple[float, float]:
        """(prompt, completion) tokens per attempted feature, all attempts of a feature included."""
        n = max(self.n_attempted, 1)
        return self.prompt_tokens / n, self.completion_tokens / n

    def format(self) -> str:
        prompt_tok, completion_tok = self.tokens_per_feature()
        lines = [
            f"explain: {self.n_ok} labelled, {self.n_failed} failed of {self.n_attempted} attempted "
            f"in {self.wall_s:.1f} s ({self.features_per_s:.2f} features/s) with {self.model or '?'}",
            f"  selected {self.n_selected}: {self.n_done_before} already labelled, {self.n_not_live} not explainable"
            + (
                f" ({self.n_dead} dead, {self.n_test_only} alive but firing only in the test split, so without "
                "examples to explain from)"
                if self.n_not_live
                else ""
            )
            + (
                f", {self.n_failed_skipped} earlier failures skipped (rerun with --retry-failed)"
                if self.n_failed_skipped
                else ""
            ),
            f"  tokens per feature: {prompt_tok:.0f} prompt + {completion_tok:.0f} completion",
        ]
        if self.failures:
            lines.append("  failures: " + ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())))
        if self.run is not None and self.run.n_items:
            lines.append("  " + self.run.format())
        return "\n".join(lines)


def explanation_id(run_id: str, feature_id: int, model: str, prompt_hash: str, config_hash: str) -> str:
    """The key of one label: rerunning with the same model, prompt text and settings finds it."""
    return short_hash([run_id, int(feature_id), model, prompt_hash, config_hash])


async def explain(
    store: Store,
    run: RunInfo,
    client: LLMClient,
    config: ExplainConfig | None = None,
    feature_ids: Sequence[int] | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> ExplainSummary:
    """Label the live features of `run` (all, or those in `feature_ids`) and store each result as it arrives.

    `client.model_name` must be settled (call `await client.check()` first for HTTP clients).
    Returns a summary; per-item failures are stored and counted, never raised.
    """
    config = config or ExplainConfig()
    template = load_prompt(config.prompt)
    model = client.model_name
    summary = ExplainSummary(run_id=run.run_id, model=model, prompt=template.name, config_hash=config.hash)
    live = set(store.explainable_feature_ids(run.run_id))
    alive = set(store.alive_feature_ids(run.run_id))
    # The default selection is collect's "alive" set, so the counts printed here add up to collect's.
    selected = sorted(alive | live) if feature_ids is None else sorted({int(f) for f in feature_ids})
    summary.n_selected = len(selected)
    candidates = [f for f in selected if f in live]
    summary.n_not_live = len(selected) - len(candidates)
    summary.n_test_only = sum(1 for f in selected if f in alive and f not in live)
    summary.n_dead = summary.n_not_live - summary.n_test_only
    keys = {f: explanation_id(run.run_id, f, model, template.hash, config.hash) for f in candidates}
    statuses = store.explanation_statuses(list(keys.values())) if keys else {}
    todo: list[int] = []
    for feature in candidates:
        status = statuses.get(keys[feature])
        if status == Status.OK.value:
            summary.n_done_before += 1
        elif status is not None and not retry_failed and Status(status) not in TRANSIENT_FAILURES:
            summary.n_failed_skipped += 1
        else:
            todo.append(feature)
    summary.n_attempted = len(todo)
    worker = _Worker(store, run, client, config, template, keys, summary)
    summary.run = await run_items(
        worker.chunks(todo),
        worker.process,
        worker.fail,
        store.put_explanations,
        window=window_for(client),
        total=len(todo),
        name="explain",
        progress=progress,
        on_outcome=worker.count,
    )
    summary.wall_s = summary.run.wall_s
    return summary


class _Worker:
    """Holds what every item needs; one instance per `explain` call. An item is (feature, its example rows)."""

    def __init__(
        self,
        store: Store,
        run: RunInfo,
        client: LLMClient,
        config: ExplainConfig,
        template: PromptTemplate,
        keys: dict[int, str],
        summary: ExplainSummary,
    ) -> None:
        self.store, self.run, self.client, self.config = store, run, client, config
        self.template, self.keys, self.summary = template, keys, summary

    def chunks(self, todo: list[int]) -> Iterator[list[tuple[int, list[ExampleRecord]]]]:
        """The features to label with their explain-split examples, one store query per chunk."""
        for start in range(0, len(todo), CHUNK_FEATURES):
            chunk = todo[start : start + CHUNK_FEATURES]
            groups = self.store.example_records(self.run.run_id, chunk, "explain", ["top", "random"])
            yield [(feature, groups[feature]) for feature in chunk]

    def _row(
        self,
        feature: int,
        status: str,
        label: str | None,
        text: str | None,
        error: str | None,
        attempts: int,
        prompt_tokens: int,
        completion_tokens: int,
        latency_s: float,
    ) -> dict[str, object]:
        return {
            "explanation_id": self.keys[feature],
            "run_id": self.run.run_id,
            "feature_id": int(feature),
            "explainer_model": self.summary.model,
            "prompt_name": self.template.name,
            "prompt_hash": self.template.hash,
            "config_hash": self.config.hash,
            "config": self.config.keyed(),
            "status": status,
            "explanation": label,
            "raw_text": text,
            "error": error,
            "attempts": attempts,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "latency_s": latency_s,
        }

    async def process(self, item: tuple[int, list[ExampleRecord]]) -> Outcome:
        feature, rows = item
        examples = select_examples(rows, self.config)
        messages = build_messages(self.template, examples, self.config)
        result, label, attempts, prompt_tokens, completion_tokens = await self._ask(messages)
        row = self._row(
            feature,
            result.status.value,
            label,
            result.text,
            result.error,
            attempts,
            prompt_tokens,
            completion_tokens,
            result.latency_s,
        )
        return Outcome(result.status.value, row, prompt_tokens, completion_tokens, requests=attempts)

    def fail(self, item: tuple[int, list[ExampleRecord]], exc: BaseException) -> Outcome:
        row = self._row(item[0], Status.EXCEPTION.value, None, None, error_text(exc), 0, 0, 0, 0.0)
        return Outcome(Status.EXCEPTION.value, row, requests=0)

    def count(self, item: object, outcome: Outcome) -> None:
        summary = self.summary
        summary.prompt_tokens += outcome.prompt_tokens
        summary.completion_tokens += outcome.completion_tokens
        if outcome.status == Status.OK.value:
            summary.n_ok += 1
        else:
            summary.failures[outcome.status] += 1

    async def _ask(self, messages: list[dict[str, str]]) -> tuple[ChatResult, str | None, int, int, int]:
        """The final result, its label (None unless ok), attempts and tokens summed over all attempts."""
        attempts = prompt_tokens = completion_tokens = 0
        config = self.config
        rejected: list[tuple[str, str]] = []  # (problem, label) of parsed replies that were not labels
        for attempt in range(config.retries + 1):
            result = await self.client.chat(
                messages,
                json_schema=EXPLANATION_SCHEMA,
                max_tokens=config.max_tokens,
                temperature=config.temperature
                if attempt == 0
                else max(config.temperature, RETRY_TEMPERATURE),
                seed=config.seed + attempt,
            )
            attempts += result.attempts
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens
            if result.status is Status.OK:
                try:
                    label = validate_explanation(result.parsed)
                except (jsonschema.ValidationError, TypeError, KeyError, AttributeError) as exc:
                    result.status, result.error = Status.SCHEMA_ERROR, f"explanation reply rejected: {exc}"
                    result.parsed = None
                else:
                    if config.unmark_labels:
                        label = unmarked(label) or label  # nothing but markers: judged (and rejected) as is
                    problem = label_problem(label) if config.reject_unusable else None
                    if problem is None:
                        result.error = rejection_note(rejected, final=False) if rejected else None
                        return result, label, attempts, prompt_tokens, completion_tokens
                    rejected.append((problem, label))
                    result.status, result.parsed = Status.UNUSABLE_LABEL, None
                    result.error = rejection_note(rejected, final=True)
            if result.status not in CONTENT_FAILURES:
                break
        return result, None, attempts, prompt_tokens, completion_tokens


def explain_sync(*args: object, **kwargs: object) -> ExplainSummary:
    """`explain` for synchronous callers (notebooks, scripts); inside a running loop, await `explain`."""
    return run_sync(explain(*args, **kwargs))  # type: ignore[arg-type]
