"""The store of record: one DuckDB file per workspace. This package owns all SQL.

Stages never talk to each other; they read their inputs from a `Store` and write their
outputs to it. Writes of one logical unit (a collect run, one explanation, one score) are
atomic, so a crash loses at most the items in flight and a rerun skips what is done.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from autointerp.errors import UserError
from autointerp.store.schema import EXAMPLES_SQL, SCHEMA_SQL, SCHEMA_VERSION
from autointerp.store.sets import LABEL_FREE_PREFIX, null_set_key
from autointerp.store.sparse import DENSE_ACTIVATIONS, MIGRATE_V1_SQL, with_sparse_activations

__all__ = ["Store", "SCHEMA_VERSION", "RunInfo", "ExampleRecord"]

#: The scorer name the report reads: a score against hard negatives (`--negatives hard`, in the stored
#: config) shows as '<scorer>:hard', so it sits beside the random-negative score instead of replacing it.
_SCORER_SHOWN = "CASE WHEN s.config->>'negatives' = 'hard' THEN s.scorer || ':hard' ELSE s.scorer END"

from autointerp.store.records import ExampleRecord, RunInfo  # noqa: E402

#: DuckDB's buffer cap for whole-run scans (the leak check, report and export reads): beyond it DuckDB
#: spills to its temp directory, so those scans cost the same memory at 16k and 1M features.
SCAN_MEMORY_LIMIT = "128MB"
#: Columns of the explanations table (what `Store.explanations(columns=...)` may read).
EXPLANATION_COLUMNS = frozenset(
    "explanation_id run_id feature_id explainer_model prompt_name prompt_hash config_hash config status "
    "explanation raw_text error attempts prompt_tokens completion_tokens latency_s created_at".split()
)
#: Features per query of the parquet export (see `Store.export_catalog`).
EXPORT_CHUNK_FEATURES = 4096


def _open_error(path: Path, exc: Exception) -> UserError:
    """DuckDB says IOException both for a file held by another process and for a file that is not a
    database; the fixes differ (wait for / stop that process vs. use another file), so tell them apart."""
    text = str(exc)
    if "Could not set lock" in text or "Conflicting lock" in text:
        pid = re.search(r"PID (\d+)", text)
        holder = f"process {pid.group(1)}" if pid else "another process"
        return UserError(
            f"workspace {path} is in use by {holder} (DuckDB allows one writer per file)",
            f"wait for {holder} to finish or stop it, then rerun; or use another --db file",
        )
    if "not a valid DuckDB database" in text:
        return UserError(
            f"{path} is not a DuckDB database file",
            "point --db at a workspace written by autointerp, or at a new file name (this file is left untouched)",
        )
    return UserError(f"cannot open workspace {path}: {text}", "check the file's permissions and the disk")



def _example_filters(
    run_id: str, feature_ids: Sequence[int] | None, split: str | None, kinds: Sequence[str] | None
) -> tuple[str, list[Any]]:
    """The FROM/WHERE/ORDER BY shared by `Store.examples` and `Store.example_records` (examples joined with
    their contexts, filtered by run, features, split and kinds), and its parameters."""
    sql = (
        " FROM examples e JOIN runs r ON r.run_id = e.run_id "
        "JOIN contexts c ON c.corpus_id = r.corpus_id AND c.context_id = e.context_id "
        "WHERE e.run_id = ?"
    )
    params: list[Any] = [run_id]
    if feature_ids is not None:
        ids = [int(f) for f in feature_ids]
        # the BETWEEN lets DuckDB skip row groups by their min/max (examples are stored feature-major), so a
        # chunk's read no longer scans every example of a wide dictionary; the IN picks the exact ids
        sql += " AND e.feature_id BETWEEN ? AND ? AND e.feature_id IN (SELECT UNNEST(?::INTEGER[]))"
        params += [min(ids, default=0), max(ids, default=-1), ids]
    if split is not None:
        sql += " AND e.split = ?"
        params.append(split)
    if kinds is not None:
        sql += " AND e.kind IN (SELECT UNNEST(?::VARCHAR[]))"
        params.append(list(kinds))
    return sql + " ORDER BY e.feature_id, e.split, e.kind, e.rank", params


class Store:
    """A DuckDB workspace file. Thread-safe for the simple calls (one lock around the connection)."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        if read_only and not self.path.exists():
            raise UserError(
                f"no workspace database at {self.path}",
                "run `autointerp collect ... --db PATH` first, or check the --db path",
            )
        if self.path.exists() and self.path.is_dir():
            raise UserError(f"--db {self.path} is a directory", "give a file path such as run.duckdb")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as exc:
            raise _open_error(self.path, exc) from exc
        except duckdb.Error as exc:
            raise UserError(
                f"{self.path} is not a readable DuckDB database: {exc}",
                "point --db at a workspace written by autointerp, or at a new file name",
            ) from exc
        self._lock = threading.RLock()
        self._in_transaction = False
        self._failed_views: list[str] = []  # registered by a statement that failed inside a transaction
        self._init_schema(read_only)

    # ------------------------------------------------------------------ lifecycle
    def _init_schema(self, read_only: bool) -> None:
        tables = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "meta" in tables:
            rows = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
            version = int(rows[0][0]) if rows else None  # fetchall: a half-read result blocks register()
            if version is None or version > SCHEMA_VERSION:
                raise UserError(
                    f"{self.path} was written by a newer autointerp (schema version {version}, "
                    f"this one reads up to {SCHEMA_VERSION})",
                    "upgrade autointerp (pip install -U autointerp), or use a new --db file",
                )
            if version < SCHEMA_VERSION:
                self._migrate(version, read_only)
            return
        if tables:
            raise UserError(
                f"{self.path} is a DuckDB file but not an autointerp workspace (tables: {sorted(tables)[:5]})",
                "point --db at a new file name",
            )
        if read_only:
            raise UserError(f"{self.path} is empty", "run `autointerp collect` first")
        with self.transaction():
            self.con.execute(SCHEMA_SQL)
            self.con.execute(
                "INSERT INTO meta VALUES ('schema_version', ?), ('created_by', 'autointerp')",
                [str(SCHEMA_VERSION)],
            )

    def _migrate(self, version: int, read_only: bool) -> None:
        """Upgrade an older workspace in place, in one transaction (a read-only open reopens writable once)."""
        if read_only:
            self.con.close()
            try:
                with Store(self.path):
                    pass
            except UserError as exc:
                raise UserError(
                    f"{self.path} uses workspace schema {version} and must be upgraded to {SCHEMA_VERSION} "
                    f"once, which needs write access ({exc.args[0] if exc.args else exc})",
                    "make the file writable (or stop the process holding it) and rerun",
                ) from exc
            self.con = duckdb.connect(str(self.path), read_only=True)
            return
        with self.transaction():
            if version == 1:
                self.con.execute(MIGRATE_V1_SQL.format(create_examples=EXAMPLES_SQL))

    def close(self) -> None:
        with self._lock:
            self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All-or-nothing block: on any exception nothing inside it is kept."""
        with self._lock:
            self.con.execute("BEGIN TRANSACTION")
            self._in_transaction = True
            try:
                yield
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            else:
                self.con.execute("COMMIT")
            finally:
                self._in_transaction = False
                views, self._failed_views = self._failed_views, []
                for view in views:  # only now: the aborted transaction refused to unregister them
                    self.con.unregister(view)

    def _insert_df(self, table: str, frame: pd.DataFrame, conflict: str = "") -> None:
        """Insert a DataFrame whose columns are a subset of the table's, matched by name."""
        if not frame.empty:
            self._insert_registered(table, frame, list(frame.columns), conflict)

    def _insert_registered(self, table: str, data: Any, columns: list[str], conflict: str) -> None:
        """INSERT the rows of a DataFrame or Arrow table, registered as a view for the one statement."""
        with self._lock:
            view = f"_insert_{table}"
            self.con.register(view, data)
            cols = ", ".join(columns)
            try:
                self.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {view} {conflict}")
            except BaseException:
                # Inside a transaction the failed INSERT aborted it, and DuckDB then refuses the unregister
                # with "transaction is aborted", an error that would replace the one that says what is wrong.
                if self._in_transaction:
                    self._failed_views.append(view)
                else:
                    self.con.unregister(view)
                raise
            self.con.unregister(view)

    def query_df(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Read-only SQL for reports and exports; it lives here so all SQL stays in the store."""
        with self._lock:
            return self.con.execute(sql, params or []).df()

    # ------------------------------------------------------------------ corpora
    def has_corpus(self, corpus_id: str) -> bool:
        with self._lock:
            # fetchall, not fetchone: a half-read result blocks the next register() on this connection
            return bool(self.con.execute("SELECT 1 FROM corpora WHERE corpus_id = ?", [corpus_id]).fetchall())

    def add_corpus(self, corpus: dict[str, Any], documents: pd.DataFrame) -> None:
        """Record a corpus and its documents (doc_id, doc_key, split, n_tokens, title); idempotent."""
        if self.has_corpus(corpus["corpus_id"]):
            return
        self._insert_df("corpora", pd.DataFrame([corpus]))
        docs = documents.copy()
        docs.insert(0, "corpus_id", corpus["corpus_id"])
        self._insert_df("documents", docs)

    def add_contexts(self, contexts: pd.DataFrame) -> None:
        """Insert contexts (corpus_id, context_id, doc_id, split, token_ids, tokens); existing ones are kept."""
        self._insert_df("contexts", contexts, "ON CONFLICT DO NOTHING")

    def documents(self, corpus_id: str) -> pd.DataFrame:
        return self.query_df("SELECT * FROM documents WHERE corpus_id = ? ORDER BY doc_id", [corpus_id])

    def corpus(self, corpus_id: str) -> dict[str, Any]:
        frame = self.query_df("SELECT * FROM corpora WHERE corpus_id = ?", [corpus_id])
        if frame.empty:
            raise UserError(f"corpus {corpus_id} is not in {self.path}", "run collect again")
        return frame.iloc[0].to_dict()

    # ------------------------------------------------------------------ runs
    def begin_run(self, run: dict[str, Any]) -> None:
        """Insert a run row with status 'running'. Call inside `transaction()` with the run's data."""
        row = dict(run)
        row["status"] = "running"
        row["config"] = json.dumps(row["config"], sort_keys=True)
        row["versions"] = json.dumps(row["versions"], sort_keys=True)
        self._insert_df("runs", pd.DataFrame([row]))

    def finish_run(self, run_id: str, n_tokens: int) -> None:
        with self._lock:
            self.con.execute(
                "UPDATE runs SET status = 'complete', n_tokens = ?, finished_at = current_timestamp "
                "WHERE run_id = ?",
                [n_tokens, run_id],
            )

    def delete_run(self, run_id: str) -> None:
        """Remove a run and everything derived from it (used by --overwrite and to clear stale partial runs)."""
        with self.transaction():
            self.delete_run_rows(run_id)

    def delete_run_rows(self, run_id: str) -> None:
        """`delete_run` without its own transaction: for use inside an enclosing `transaction()`."""
        with self._lock:
            for table in ("feature_logits", "sae_metrics", "scores", "explanations", "examples", "features", "runs"):
                self.con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])

    def delete_llm_results(self, run_id: str) -> None:
        """Remove a run's explanations and scores, keeping what collect and evaluate wrote (benchmarks use
        it on their private copy of a workspace, so every feature is labelled again)."""
        with self.transaction():
            for table in ("scores", "explanations"):
                self.con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])

    def run_by_name(self, sae_name: str, include_incomplete: bool = False) -> RunInfo | None:
        frame = self.query_df("SELECT * FROM runs WHERE sae_name = ?", [sae_name])
        if frame.empty:
            return None
        info = RunInfo.from_row(frame.iloc[0].to_dict())
        if info.status != "complete" and not include_incomplete:
            return None
        return info

    def runs(self) -> list[RunInfo]:
        frame = self.query_df("SELECT * FROM runs WHERE status = 'complete' ORDER BY created_at, sae_name")
        return [RunInfo.from_row(r) for r in frame.to_dict("records")]

    def resolve_run(self, sae_name: str | None) -> RunInfo:
        """The run a command works on: the named one, or the only one in the workspace."""
        runs = self.runs()
        if sae_name is not None:
            for run in runs:
                if run.sae_name == sae_name:
                    return run
            if not runs or any(r.sae_name == sae_name for r in self.stale_runs()):
                raise self._no_complete_run()
            names = ", ".join(r.sae_name for r in runs) or "none"
            raise UserError(
                f"no completed SAE named {sae_name!r} in {self.path} (have: {names})",
                "pass one of those names to --sae-name, or run `autointerp collect --sae-name ...` first",
            )
        if not runs:
            raise self._no_complete_run()
        if len(runs) > 1:
            raise UserError(
                f"{self.path} holds several SAEs: {', '.join(r.sae_name for r in runs)}",
                "choose one with --sae-name",
            )
        return runs[0]

    # ------------------------------------------------------------------ features and examples
    def add_features(self, features: pd.DataFrame) -> None:
        """Insert per-feature statistics (columns of the `features` table, run_id included)."""
        self._insert_df("features", features)

    def add_examples(self, examples: pd.DataFrame) -> None:
        """Insert examples (columns of the `examples` table, run_id included; dense `activations`
        lists, one value per context token, are stored sparsely)."""
        if not examples.empty:
            self.add_examples_arrow(pa.Table.from_pandas(examples, preserve_index=False))

    def replace_examples(self, run_id: str, feature_ids: Sequence[int], kind: str, examples: pd.DataFrame) -> None:
        """Make the `kind` examples of `feature_ids` exactly `examples` (dense activations), in ONE transaction:
        steps that add an example kind after collect (hard negatives) rerun without duplicates."""
        with self.transaction():
            with self._lock:
                self.con.execute(
                    "DELETE FROM examples WHERE run_id = ? AND kind = ? AND feature_id IN (SELECT UNNEST(?::INTEGER[]))",
                    [run_id, kind, [int(f) for f in feature_ids]],
                )
            self.add_examples(examples)

    def features(self, run_id: str) -> pd.DataFrame:
        return self.query_df("SELECT * FROM features WHERE run_id = ? ORDER BY feature_id", [run_id])

    def examples(
        self,
        run_id: str,
        feature_ids: Sequence[int] | None = None,
        split: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Examples joined with their context's tokens and document, ordered by feature, kind, rank."""
        sql = (
            "SELECT e.run_id, e.feature_id, e.split, e.kind, e.rank, e.context_id, e.max_activation, "
            f"{DENSE_ACTIVATIONS} AS activations, c.doc_id, c.token_ids, c.tokens "
        )
        where, params = _example_filters(run_id, feature_ids, split, kinds)
        return self.query_df(sql + where, params)

    def example_records(
        self,
        run_id: str,
        feature_ids: Sequence[int],
        split: str | None = None,
        kinds: Sequence[str] | None = None,
    ) -> dict[int, list[ExampleRecord]]:
        """feature id -> its examples (same rows and order as `examples`), as `ExampleRecord`s; every id
        asked for is a key (an empty list when it has none). For one chunk of features at a time."""
        sql = (
            "SELECT e.feature_id, e.split, e.kind, e.rank, e.context_id, c.doc_id, e.max_activation, "
            f"c.token_ids, c.tokens, {DENSE_ACTIVATIONS} AS activations "
        )
        where, params = _example_filters(run_id, feature_ids, split, kinds)
        with self._lock:
            table = self.con.sql(sql + where, params=params).to_arrow_table()
        grouped: dict[int, list[ExampleRecord]] = {int(f): [] for f in feature_ids}
        columns = [table.column(name).to_pylist() for name in ExampleRecord.__dataclass_fields__]
        for f, sp, kind, rank, cid, doc, mx, ids, toks, acts in zip(*columns, strict=True):
            grouped.setdefault(int(f), []).append(
                ExampleRecord(f, sp, kind, rank, cid, doc, float(mx), tuple(ids), tuple(toks), tuple(acts))
            )
        return grouped

    # ------------------------------------------------------------------ collect (bulk writes)
    # Collect writes millions of example rows; building them as Arrow tables from numpy buffers and
    # inserting those is ~100x faster than DataFrames of Python lists. Call inside `transaction()`.
    def _insert_arrow(self, table: str, rows: Any, conflict: str = "") -> None:
        """Insert a pyarrow Table whose columns are a subset of the table's, matched by name."""
        if rows.num_rows:
            self._insert_registered(table, rows, list(rows.column_names), conflict)

    def add_examples_arrow(self, rows: Any) -> None:
        """Examples as a pyarrow Table: sparse `act_positions`/`act_values`, or dense `activations`."""
        self._insert_arrow("examples", with_sparse_activations(rows))

    def add_contexts_arrow(self, rows: Any) -> None:
        """Contexts shared by runs on the same corpus: existing ones are kept."""
        self._insert_arrow("contexts", rows, "ON CONFLICT DO NOTHING")

    def add_features_arrow(self, rows: Any) -> None:
        self._insert_arrow("features", rows)

    @contextlib.contextmanager
    def memory_limit(self, limit: str) -> Iterator[None]:
        """Cap DuckDB's buffer memory (e.g. '256MB') inside the block: collect's bulk writes would
        otherwise keep every written block cached, so the process grows with the corpus."""
        with self._lock:
            previous = self.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
            self.con.execute(f"SET memory_limit = '{limit}'")
        try:
            yield
        finally:
            with self._lock:  # the previous value, not the default: a caller may have set its own
                self.con.execute(f"SET memory_limit = '{previous}'")

    def prune_corpus(self, corpus_id: str) -> None:
        """Drop a corpus's contexts that no example refers to, and the corpus itself when no run uses it
        (after a failed or replaced collect run). One transaction."""
        with self.transaction():
            self.con.execute(
                "DELETE FROM contexts c WHERE c.corpus_id = ? AND NOT EXISTS (SELECT 1 FROM examples e "
                "JOIN runs r ON r.run_id = e.run_id WHERE r.corpus_id = c.corpus_id AND e.context_id = c.context_id)",
                [corpus_id],
            )
            if not self.con.execute("SELECT 1 FROM runs WHERE corpus_id = ?", [corpus_id]).fetchall():
                for table in ("contexts", "documents", "corpora"):
                    self.con.execute(f"DELETE FROM {table} WHERE corpus_id = ?", [corpus_id])

    def _no_complete_run(self) -> UserError:
        """The error for a workspace without a complete run; it names a killed run if one is left, because
        then the fix is to rerun that same collect (it removes the stale row and finishes)."""
        stale = self.stale_runs()
        if stale:
            names = ", ".join(repr(r.sae_name) for r in stale)
            return UserError(
                f"{self.path} holds no completed collect run, only the incomplete run {names} "
                "(its collect was killed or is still running)",
                "rerun the same `autointerp collect` command: it removes the incomplete run and collects it again",
            )
        return UserError(f"{self.path} holds no completed collect run", "run `autointerp collect` first")

    def stale_runs(self) -> list[RunInfo]:
        """Runs left with status 'running' (a process that died outside a transaction)."""
        frame = self.query_df("SELECT * FROM runs WHERE status <> 'complete'")
        return [RunInfo.from_row(r) for r in frame.to_dict("records")]

    # ------------------------------------------------------------------ explanations
    def put_explanation(self, row: dict[str, Any]) -> None:
        """Insert or replace one explanation (keyed by explanation_id); one autocommitted statement."""
        self._upsert("explanations", "explanation_id", row)

    def put_explanations(self, rows: Sequence[dict[str, Any]]) -> None:
        """Upsert several explanations in ONE commit (group commit: a DuckDB commit costs ~20 ms, so
        one commit per reply would cap explain at ~40 labels/s); all or none of them are kept."""
        if not rows:
            return
        self._upsert_many("explanations", "explanation_id", rows)

    def replace_explanation_set(self, run_id: str, key: tuple[str, str, str], rows: Sequence[dict[str, Any]]) -> int:
        """Make the set `key` of `run_id` hold exactly `rows` (explanation dicts of that set), in ONE transaction.

        Rows already stored under the same explanation_id are kept as they are, with their scores (so a rerun
        skips them); rows of the set not in `rows` are deleted together with their scores (their label
        changed, e.g. a null set re-drawn after more features were explained). Returns rows deleted.
        """
        wanted = [str(r["explanation_id"]) for r in rows]
        with self.transaction():
            stale = self.con.execute(
                "SELECT explanation_id FROM explanations WHERE run_id = ? AND explainer_model = ? AND prompt_hash = ? "
                "AND config_hash = ? AND explanation_id NOT IN (SELECT UNNEST(?::VARCHAR[]))",
                [run_id, *key, wanted],
            ).fetchall()
            stale_ids = [r[0] for r in stale]
            if stale_ids:
                self.con.execute("DELETE FROM scores WHERE explanation_id IN (SELECT UNNEST(?::VARCHAR[]))", [stale_ids])
                self.con.execute("DELETE FROM explanations WHERE explanation_id IN (SELECT UNNEST(?::VARCHAR[]))",
                                 [stale_ids])
            if rows:
                frame = pd.DataFrame([{k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)
                                       for k, v in r.items()} for r in rows])
                self._insert_df("explanations", frame, "ON CONFLICT (explanation_id) DO NOTHING")
        return len(stale_ids)

    def explanations(
        self, run_id: str, status: str | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """A run's explanations; `columns` (names of the table's) reads only those: score needs 5 of 17,
        and the rest (config JSON, raw replies) is most of a whole dictionary's frame."""
        if columns is not None and not set(columns) <= EXPLANATION_COLUMNS:
            raise ValueError(f"unknown explanation column(s): {sorted(set(columns) - EXPLANATION_COLUMNS)}")
        sql = f"SELECT {', '.join(columns) if columns else '*'} FROM explanations WHERE run_id = ?"
        params: list[Any] = [run_id]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        return self.query_df(sql + " ORDER BY feature_id, created_at", params)

    def explanation_statuses(self, explanation_ids: Sequence[str]) -> dict[str, str]:
        """explanation_id -> status for the ids that exist (used to skip finished work)."""
        frame = self.query_df(
            "SELECT explanation_id, status FROM explanations WHERE explanation_id IN (SELECT UNNEST(?::VARCHAR[]))",
            [list(explanation_ids)],
        )
        return dict(zip(frame["explanation_id"], frame["status"], strict=True))

    def explainable_feature_ids(self, run_id: str) -> list[int]:
        """Live features: firing count > 0 and at least one explain-split 'top' or 'random' example."""
        frame = self.query_df(
            "SELECT f.feature_id FROM features f WHERE f.run_id = ? AND f.firing_count > 0 AND EXISTS ("
            "SELECT 1 FROM examples e WHERE e.run_id = f.run_id AND e.feature_id = f.feature_id "
            "AND e.split = 'explain' AND e.kind IN ('top', 'random')) ORDER BY f.feature_id",
            [run_id],
        )
        return [int(f) for f in frame["feature_id"]]

    def alive_feature_ids(self, run_id: str) -> list[int]:
        """Features that fired at least once on any split (collect's "alive" count)."""
        frame = self.query_df(
            "SELECT feature_id FROM features WHERE run_id = ? AND firing_count > 0 ORDER BY feature_id", [run_id]
        )
        return [int(f) for f in frame["feature_id"]]

    # ------------------------------------------------------------------ scores
    def put_score(self, row: dict[str, Any]) -> None:
        """Insert or replace one score (keyed by score_id); one autocommitted statement."""
        self._upsert("scores", "score_id", row)

    def put_scores(self, rows: Sequence[dict[str, Any]]) -> None:
        """Upsert several scores in ONE commit (the work runner's group commit); all or none are kept."""
        if not rows:
            return
        self._upsert_many("scores", "score_id", rows)

    def scores(self, run_id: str, scorer: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM scores WHERE run_id = ?"
        params: list[Any] = [run_id]
        if scorer is not None:
            sql += " AND scorer = ?"
            params.append(scorer)
        return self.query_df(sql + " ORDER BY feature_id, scorer", params)

    def _query_with_ids(self, sql: str, ids: Sequence[str]) -> pd.DataFrame:
        """Run `sql`, which reads the id list as the view `_ids` (one column `id`).

        The ids travel as a registered Arrow table: binding ~200,000 strings as a `?::VARCHAR[]`
        parameter cost seconds of the score stage's setup at 65,536 features."""
        with self._lock:
            self.con.register("_ids", pa.table({"id": pa.array(ids, type=pa.string())}))
            try:
                return self.con.execute(sql).df()
            finally:
                self.con.unregister("_ids")

    def score_statuses(self, score_ids: Sequence[str]) -> dict[str, str]:
        """score_id -> status for the ids that exist (used to skip finished work)."""
        frame = self._query_with_ids(
            "SELECT s.score_id, s.status FROM scores s JOIN _ids ON s.score_id = _ids.id", score_ids
        )
        return dict(zip(frame["score_id"], frame["status"], strict=True))

    def row_counts(self) -> dict[str, int]:
        """Rows in the explanations and scores tables (benchmarks count finished items with it)."""
        with self._lock:
            return {t: int(self.con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0])
                    for t in ("explanations", "scores")}

    def score_totals(self, score_ids: Sequence[str]) -> pd.DataFrame:
        """Per status of the given scores: n, n with a score, mean score, the first chance level and token sums.

        Summaries of a whole dictionary read this instead of every score row (details included)."""
        return self._query_with_ids(
            "SELECT status, count(*) AS n, count(score) AS n_scored, avg(score) AS mean_score, any_value(chance) AS chance, "
            "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, coalesce(sum(completion_tokens), 0) AS completion_tokens "
            "FROM scores s JOIN _ids ON s.score_id = _ids.id GROUP BY status ORDER BY status",
            score_ids,
        )

    def split_leaks(self, run_id: str) -> pd.DataFrame:
        """Evidence that test examples could have been seen by the explainer (should be empty).

        One row per problem: a document holding both explain-split and test-split examples of the run
        ('document in both splits'), or an example whose split disagrees with its context's or its
        document's recorded split ('split mismatch'). Columns: problem, doc_id, feature_id, context_id.
        """
        sql = """
            WITH ex AS (
                SELECT e.feature_id, e.context_id, e.split AS example_split, c.split AS context_split,
                       c.doc_id, d.split AS doc_split
                FROM examples e JOIN runs r ON r.run_id = e.run_id
                JOIN contexts c ON c.corpus_id = r.corpus_id AND c.context_id = e.context_id
                LEFT JOIN documents d ON d.corpus_id = r.corpus_id AND d.doc_id = c.doc_id
                WHERE e.run_id = ?
            ),
            both_splits AS (
                SELECT doc_id FROM ex GROUP BY doc_id
                HAVING count(*) FILTER (WHERE example_split = 'test') > 0
                   AND count(*) FILTER (WHERE example_split = 'explain') > 0
            )
            SELECT 'document in both splits' AS problem, ex.doc_id, ex.feature_id, ex.context_id
            FROM ex JOIN both_splits USING (doc_id)
            UNION ALL
            SELECT 'split mismatch' AS problem, doc_id, feature_id, context_id FROM ex
            WHERE example_split <> context_split OR (doc_split IS NOT NULL AND example_split <> doc_split)
            ORDER BY problem, doc_id, feature_id, context_id
        """
        # One pass first (one join, one grouping, a count): a clean run, the usual case, costs half of the
        # listing below, which joins twice. At 65,536 features that is ~2.4 s instead of ~4.7 s of score's setup.
        any_problem = """
            SELECT count(*) FROM (
                SELECT c.doc_id FROM examples e JOIN runs r ON r.run_id = e.run_id
                JOIN contexts c ON c.corpus_id = r.corpus_id AND c.context_id = e.context_id
                LEFT JOIN documents d ON d.corpus_id = r.corpus_id AND d.doc_id = c.doc_id
                WHERE e.run_id = ? GROUP BY c.doc_id
                HAVING min(e.split) <> max(e.split)
                    OR bool_or(e.split <> c.split OR (d.split IS NOT NULL AND e.split <> d.split))
            )
        """
        # The joins and the grouping scan every example of the run (1.6 M rows at 65,536 features): capped,
        # DuckDB spills instead of holding ~350 MB, so the score stage's memory does not grow with the width.
        with self.memory_limit(SCAN_MEMORY_LIMIT):
            with self._lock:
                clean = self.con.execute(any_problem, [run_id]).fetchall()[0][0] == 0
            if clean:
                return pd.DataFrame(columns=["problem", "doc_id", "feature_id", "context_id"])
            return self.query_df(sql, [run_id])

    # ------------------------------------------------------------------ SAE metrics and output view
    def put_sae_metrics(self, run_id: str, metrics: dict[str, float | None], details: dict[str, Any] | None = None) -> None:
        """Replace the given metrics of a run in one transaction."""
        details = details or {}
        with self.transaction():
            for name, value in metrics.items():
                self.con.execute("DELETE FROM sae_metrics WHERE run_id = ? AND metric = ?", [run_id, name])
                self.con.execute(
                    "INSERT INTO sae_metrics (run_id, metric, value, details) VALUES (?, ?, ?, ?)",
                    [run_id, name, value, json.dumps(details.get(name)) if name in details else None],
                )

    def sae_metrics(self, run_id: str) -> dict[str, float | None]:
        frame = self.query_df("SELECT metric, value FROM sae_metrics WHERE run_id = ?", [run_id])
        return {m: (None if pd.isna(v) else float(v)) for m, v in zip(frame["metric"], frame["value"], strict=True)}

    def put_feature_logits(self, run_id: str, rows: pd.DataFrame) -> None:
        """Replace a run's output view (columns of `feature_logits` without run_id)."""
        frame = rows.copy()
        frame.insert(0, "run_id", run_id)
        with self.transaction():
            self.con.execute("DELETE FROM feature_logits WHERE run_id = ?", [run_id])
            self._insert_df("feature_logits", frame)

    def feature_logits(self, run_id: str) -> pd.DataFrame:
        return self.query_df(
            "SELECT * FROM feature_logits WHERE run_id = ? ORDER BY feature_id, direction, rank", [run_id]
        )

    # ------------------------------------------------------------------ report, compare and export
    # One label per feature is shown or exported, so these read one "explanation set": the rows of one
    # (explainer_model, prompt_hash, config_hash), i.e. one explanation_id per feature.
    def explanation_sets(self, run_id: str) -> pd.DataFrame:
        """Distinct explanation sets of a run with their counts, the most successful (then newest) first."""
        return self.query_df(
            "SELECT explainer_model, prompt_name, prompt_hash, config_hash, count(*) AS n, "
            "count(*) FILTER (WHERE status = 'ok') AS n_ok, max(created_at) AS last_created "
            "FROM explanations WHERE run_id = ? GROUP BY ALL ORDER BY n_ok DESC, last_created DESC, "
            "explainer_model, prompt_hash, config_hash",
            [run_id],
        )

    def set_explanations(self, run_id: str, explainer_model: str, prompt_hash: str, config_hash: str) -> pd.DataFrame:
        """The explanations of one set: one row per feature."""
        return self.query_df(
            "SELECT * FROM explanations WHERE run_id = ? AND explainer_model = ? AND prompt_hash = ? "
            "AND config_hash = ? ORDER BY feature_id",
            [run_id, explainer_model, prompt_hash, config_hash],
        )

    def set_scores(self, run_id: str, explainer_model: str, prompt_hash: str, config_hash: str) -> pd.DataFrame:
        """Scores of one explanation set: per (feature, scorer) the newest row (a rerun with a new scorer
        config supersedes the old one)."""
        return self.query_df(
            f"SELECT s.* EXCLUDE (scorer), {_SCORER_SHOWN} AS scorer FROM scores s "
            "JOIN explanations e ON e.explanation_id = s.explanation_id "
            "WHERE e.run_id = ? AND e.explainer_model = ? AND e.prompt_hash = ? AND e.config_hash = ? "
            f"QUALIFY row_number() OVER (PARTITION BY s.explanation_id, {_SCORER_SHOWN} "
            "ORDER BY s.created_at DESC, s.score_id) = 1 ORDER BY s.feature_id, scorer",
            [run_id, explainer_model, prompt_hash, config_hash],
        )

    def label_free_scores(self, run_id: str) -> pd.DataFrame:
        """Scores of the label-free scorers (intruder): per (feature, scorer) the newest row, whatever label
        set is shown (they are stored under `sets.label_free_id`, never under an explanation)."""
        return self.query_df(
            f"SELECT s.* EXCLUDE (scorer), {_SCORER_SHOWN} AS scorer FROM scores s "
            "WHERE s.run_id = ? AND starts_with(s.explanation_id, ?) "
            f"QUALIFY row_number() OVER (PARTITION BY s.explanation_id, {_SCORER_SHOWN} "
            "ORDER BY s.created_at DESC, s.score_id) = 1 ORDER BY s.feature_id, scorer",
            [run_id, LABEL_FREE_PREFIX],
        )

    def set_scorers(self, run_id: str, explainer_model: str, prompt_hash: str, config_hash: str) -> list[str]:
        """The scorers with at least one score for the set (what export needs to know, without loading the
        scores and their details: at 65,536 features that frame alone was ~2 GB)."""
        with self._lock:
            rows = self.con.execute(
                f"SELECT DISTINCT {_SCORER_SHOWN} FROM scores s JOIN explanations e ON e.explanation_id = s.explanation_id "
                "WHERE e.run_id = ? AND e.explainer_model = ? AND e.prompt_hash = ? AND e.config_hash = ? "
                "ORDER BY 1",
                [run_id, explainer_model, prompt_hash, config_hash],
            ).fetchall()
        return [str(r[0]) for r in rows if r[0] is not None]

    def label_free_scorers(self, run_id: str) -> list[str]:
        """The label-free scorers (intruder, intruder_likelihood) with at least one score in the run."""
        with self._lock:
            rows = self.con.execute(
                f"SELECT DISTINCT {_SCORER_SHOWN} FROM scores s WHERE s.run_id = ? AND starts_with(s.explanation_id, ?) "
                "ORDER BY 1",
                [run_id, LABEL_FREE_PREFIX],
            ).fetchall()
        return [str(r[0]) for r in rows if r[0] is not None]

    def _catalog_query(
        self,
        run_id: str,
        explanation_set: tuple[str, str, str] | None,
        scorers: Sequence[str],
        n_contexts: int,
        features: tuple[int, int] = (0, 2**62),
        label_free: Sequence[str] = (),
    ) -> tuple[str, dict[str, Any]]:
        """One row per feature of the run with lo <= feature_id < hi (`features`); see docs/parquet-schema.md.
        Score columns are per scorer as the report names them (`detection:hard` apart from `detection`); the
        `label_free` scorers' columns come from the feature's label-free scores, whatever label set is shown."""
        model, prompt_hash, config_hash = explanation_set or ("", "", "")  # no set: no label rows match
        null_model, null_prompt, null_config = null_set_key((model, prompt_hash, config_hash))
        params: dict[str, Any] = {"run": run_id, "m": model, "p": prompt_hash, "c": config_hash, "k": n_contexts,
                                  "nm": null_model, "np": null_prompt, "nc": null_config,
                                  "lo": int(features[0]), "hi": int(features[1]), "lfp": LABEL_FREE_PREFIX}
        def pivot(param: str, scorer: str, status: str) -> tuple[str, str]:
            """(column prefix, its score/status/chance columns) of one scorer bound as $param."""
            col = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in scorer.lower())
            params[param] = scorer
            return col, (f'max(score) FILTER (WHERE scorer = ${param}) AS "{col}_score", '
                         f'{status.format(f"max(status) FILTER (WHERE scorer = ${param})")} AS "{col}_status", '
                         f'max(chance) FILTER (WHERE scorer = ${param}) AS "{col}_chance"')

        score_cols, null_cols = [], []
        for i, scorer in enumerate(scorers):
            col, cols = pivot(f"s{i}", scorer, "coalesce({}, 'not_scored')")
            score_cols.append(cols)
            null_cols.append(f"max(score) FILTER (WHERE scorer = $s{i} AND status = 'ok') AS \"{col}_null\"")
        free_cols = [pivot(f"f{i}", scorer, "{}")[1] for i, scorer in enumerate(label_free)]
        pivot_cols = ", ".join(score_cols)
        sc_select = f", {pivot_cols}" if score_cols else ""
        nl_select = f", {', '.join(null_cols)}" if null_cols else ""
        lf_select = f", {', '.join(free_cols)}" if free_cols else ""
        outer_scores = ""
        for scorer in scorers:
            col = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in scorer.lower())
            outer_scores += (
                f', sc."{col}_score", coalesce(sc."{col}_status", \'not_scored\') AS "{col}_status", '
                f'sc."{col}_chance", nl."{col}_null"'
            )
        for scorer in label_free:
            col = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in scorer.lower())
            outer_scores += (
                f', lf."{col}_score", coalesce(lf."{col}_status", \'not_scored\') AS "{col}_status", '
                f'lf."{col}_chance"'
            )
        sql = f"""
        WITH lab AS (
            SELECT feature_id, explanation_id, status, explanation, explainer_model, prompt_name
            FROM explanations
            WHERE run_id = $run AND explainer_model = $m AND prompt_hash = $p AND config_hash = $c
              AND feature_id >= $lo AND feature_id < $hi
        ), latest AS (
            -- scorers as the report names them: detection against hard negatives is `detection:hard`
            SELECT s.feature_id, {_SCORER_SHOWN} AS scorer, s.score, s.status, s.chance
            FROM scores s JOIN lab ON lab.explanation_id = s.explanation_id
            QUALIFY row_number() OVER (PARTITION BY s.explanation_id, {_SCORER_SHOWN}
                                       ORDER BY s.created_at DESC, s.score_id) = 1
        ), sc AS (
            SELECT feature_id{sc_select} FROM latest GROUP BY feature_id
        ), null_latest AS (
            -- the feature's score with a shuffled label (its set's null set), NULL where not sampled
            SELECT s.feature_id, {_SCORER_SHOWN} AS scorer, s.score, s.status
            FROM scores s JOIN explanations ne ON ne.explanation_id = s.explanation_id
            WHERE ne.run_id = $run AND ne.explainer_model = $nm AND ne.prompt_hash = $np AND ne.config_hash = $nc
              AND ne.feature_id >= $lo AND ne.feature_id < $hi
            QUALIFY row_number() OVER (PARTITION BY s.explanation_id, {_SCORER_SHOWN}
                                       ORDER BY s.created_at DESC, s.score_id) = 1
        ), nl AS (
            SELECT feature_id{nl_select} FROM null_latest GROUP BY feature_id
        ), free_latest AS (
            -- label-free scores (intruder): stored per feature, never under an explanation
            SELECT s.feature_id, {_SCORER_SHOWN} AS scorer, s.score, s.status, s.chance
            FROM scores s
            WHERE s.run_id = $run AND starts_with(s.explanation_id, $lfp)
              AND s.feature_id >= $lo AND s.feature_id < $hi
            QUALIFY row_number() OVER (PARTITION BY s.explanation_id, {_SCORER_SHOWN}
                                       ORDER BY s.created_at DESC, s.score_id) = 1
        ), lf AS (
            SELECT feature_id{lf_select} FROM free_latest GROUP BY feature_id
        ), ranked AS (
            -- the k top examples per feature are chosen BEFORE the join with contexts, so only their
            -- token lists are read (joining first read every top example's tokens: most of export's time)
            SELECT feature_id, context_id, split, max_activation, act_positions, act_values,
                   row_number() OVER (PARTITION BY feature_id ORDER BY max_activation DESC, split, rank) AS pos
            FROM examples
            WHERE run_id = $run AND kind = 'top' AND feature_id >= $lo AND feature_id < $hi
            QUALIFY pos <= $k
        ), top AS (
            SELECT e.feature_id,
                   list({{'text': array_to_string(c.tokens, ''), 'tokens': c.tokens,
                          'activations': {DENSE_ACTIVATIONS}, 'max_activation': e.max_activation,
                          'split': e.split}} ORDER BY e.pos) AS top_contexts
            FROM ranked e
            JOIN runs r ON r.run_id = $run
            JOIN contexts c ON c.corpus_id = r.corpus_id AND c.context_id = e.context_id
            GROUP BY e.feature_id
        ), lg AS (
            SELECT feature_id,
                   list({{'token': token, 'token_id': token_id, 'value': value}} ORDER BY rank)
                       FILTER (WHERE direction = 'promote') AS promoted_tokens,
                   list({{'token': token, 'token_id': token_id, 'value': value}} ORDER BY rank)
                       FILTER (WHERE direction = 'suppress') AS suppressed_tokens
            FROM feature_logits WHERE run_id = $run AND feature_id >= $lo AND feature_id < $hi
            GROUP BY feature_id
        )
        SELECT r.sae_name, r.run_id, r.model, r.hook, f.feature_id,
               CASE WHEN lab.status = 'ok' THEN lab.explanation END AS label,
               coalesce(lab.status, 'not_explained') AS explanation_status,
               lab.explainer_model, lab.prompt_name AS explainer_prompt,
               f.density, f.firing_count, f.max_activation, f.mean_activation{outer_scores},
               coalesce(top.top_contexts, []) AS top_contexts,
               lg.promoted_tokens, lg.suppressed_tokens
        FROM features f
        JOIN runs r ON r.run_id = f.run_id
        LEFT JOIN lab ON lab.feature_id = f.feature_id
        LEFT JOIN sc ON sc.feature_id = f.feature_id
        LEFT JOIN nl ON nl.feature_id = f.feature_id
        LEFT JOIN lf ON lf.feature_id = f.feature_id
        LEFT JOIN top ON top.feature_id = f.feature_id
        LEFT JOIN lg ON lg.feature_id = f.feature_id
        WHERE f.run_id = $run AND f.feature_id >= $lo AND f.feature_id < $hi
        ORDER BY f.feature_id
        """
        return sql, params

    def catalog_df(
        self, run_id: str, explanation_set: tuple[str, str, str] | None, scorers: Sequence[str], n_contexts: int = 10,
        label_free: Sequence[str] = (),
    ) -> pd.DataFrame:
        """The feature catalog as a DataFrame (same rows and columns as `export_catalog` writes)."""
        sql, params = self._catalog_query(run_id, explanation_set, scorers, n_contexts, label_free=label_free)
        with self._lock:
            return self.con.execute(sql, params).df()

    def export_catalog(
        self,
        run_id: str,
        path: str | Path,
        explanation_set: tuple[str, str, str] | None,
        scorers: Sequence[str],
        n_contexts: int = 10,
        label_free: Sequence[str] = (),
    ) -> int:
        """Write the catalog as parquet, EXPORT_CHUNK_FEATURES features per query; returns the number of rows.

        One query over the whole run held every feature's top contexts and score rows at once (2.6 GB at
        65,536 features); per chunk of feature ids, memory depends on the chunk and the joins stay small.
        The chunks go into one parquet file (zstd) through one Arrow writer, in feature order. Written to
        a temporary file beside `path` and renamed, so a failure never leaves half a file.
        """
        import pyarrow.parquet as pq

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        with self._lock:
            bounds = self.con.execute(
                "SELECT min(feature_id), max(feature_id) FROM features WHERE run_id = ?", [run_id]
            ).fetchall()[0]
        lo, hi = (0, -1) if bounds[0] is None else (int(bounds[0]), int(bounds[1]))
        n_rows = 0
        writer = None
        try:
            for start in range(lo, hi + 1, EXPORT_CHUNK_FEATURES) if hi >= lo else [0]:
                sql, params = self._catalog_query(
                    run_id, explanation_set, scorers, n_contexts, (start, start + EXPORT_CHUNK_FEATURES), label_free
                )
                with self._lock:
                    table = self.con.sql(sql, params=params).to_arrow_table()
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table.cast(writer.schema))
                n_rows += table.num_rows
            if writer is not None:
                writer.close()
                writer = None
            tmp.replace(target)
        finally:
            if writer is not None:
                writer.close()
            tmp.unlink(missing_ok=True)
        return n_rows

    # ------------------------------------------------------------------ helpers
    def _upsert_many(self, table: str, key: str, rows: Sequence[dict[str, Any]]) -> None:
        """One INSERT ... ON CONFLICT statement for many rows (one commit; ~50x faster than row by row)."""
        frame = pd.DataFrame(
            [{k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v) for k, v in r.items()} for r in rows]
        )
        updates = ", ".join(f"{c} = excluded.{c}" for c in frame.columns if c != key)
        self._insert_df(table, frame, f"ON CONFLICT ({key}) DO UPDATE SET {updates}")

    def _upsert(self, table: str, key: str, row: dict[str, Any]) -> None:
        values = {k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v) for k, v in row.items()}
        cols = list(values)
        placeholders = ", ".join("?" for _ in cols)
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != key)
        with self._lock:
            self.con.execute(
                f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({placeholders}) "
                f"ON CONFLICT ({key}) DO UPDATE SET {updates}",
                [values[c] for c in cols],
            )
