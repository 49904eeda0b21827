"""The store of record: one DuckDB file per workspace. This package owns all SQL.

Stages never talk to each other; they read their inputs from a `Store` and write their
outputs to it. Writes of one logical unit (a collect run, one explanation, one score) are
atomic, so a crash loses at most the items in flight and a rerun skips what is done.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from autointerp.errors import UserError
from autointerp.store.schema import SCHEMA_SQL, SCHEMA_VERSION

__all__ = ["Store", "SCHEMA_VERSION", "RunInfo"]

from autointerp.store.records import RunInfo  # noqa: E402


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
            raise UserError(
                f"cannot open workspace {self.path}: {exc}",
                "close other autointerp processes using this file, or check that it is a DuckDB file",
            ) from exc
        except duckdb.Error as exc:
            raise UserError(
                f"{self.path} is not a readable DuckDB database: {exc}",
                "point --db at a workspace written by autointerp, or at a new file name",
            ) from exc
        self._lock = threading.RLock()
        self._init_schema(read_only)

    # ------------------------------------------------------------------ lifecycle
    def _init_schema(self, read_only: bool) -> None:
        tables = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "meta" in tables:
            row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else None
            if version is None or version > SCHEMA_VERSION:
                raise UserError(
                    f"{self.path} was written by a newer autointerp (schema version {version}, "
                    f"this one reads up to {SCHEMA_VERSION})",
                    "upgrade autointerp (pip install -U autointerp), or use a new --db file",
                )
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
            try:
                yield
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")

    def _insert_df(self, table: str, frame: pd.DataFrame, conflict: str = "") -> None:
        """Insert a DataFrame whose columns are a subset of the table's, matched by name."""
        if frame.empty:
            return
        with self._lock:
            view = f"_insert_{table}"
            self.con.register(view, frame)
            try:
                cols = ", ".join(frame.columns)
                self.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {view} {conflict}")
            finally:
                self.con.unregister(view)

    def query_df(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Read-only SQL for reports and exports; it lives here so all SQL stays in the store."""
        with self._lock:
            return self.con.execute(sql, params or []).df()

    # ------------------------------------------------------------------ corpora
    def has_corpus(self, corpus_id: str) -> bool:
        with self._lock:
            return self.con.execute("SELECT 1 FROM corpora WHERE corpus_id = ?", [corpus_id]).fetchone() is not None

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
            for table in ("feature_logits", "sae_metrics", "scores", "explanations", "examples", "features", "runs"):
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
            names = ", ".join(r.sae_name for r in runs) or "none"
            raise UserError(
                f"no completed SAE named {sae_name!r} in {self.path} (have: {names})",
                "pass one of those names to --sae-name, or run `autointerp collect --sae-name ...` first",
            )
        if not runs:
            raise UserError(f"{self.path} holds no completed collect run", "run `autointerp collect` first")
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
        """Insert examples (columns of the `examples` table, run_id included)."""
        self._insert_df("examples", examples)

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
            "e.activations, c.doc_id, c.token_ids, c.tokens "
            "FROM examples e JOIN runs r ON r.run_id = e.run_id "
            "JOIN contexts c ON c.corpus_id = r.corpus_id AND c.context_id = e.context_id "
            "WHERE e.run_id = ?"
        )
        params: list[Any] = [run_id]
        if feature_ids is not None:
            sql += " AND e.feature_id IN (SELECT UNNEST(?::INTEGER[]))"
            params.append([int(f) for f in feature_ids])
        if split is not None:
            sql += " AND e.split = ?"
            params.append(split)
        if kinds is not None:
            sql += " AND e.kind IN (SELECT UNNEST(?::VARCHAR[]))"
            params.append(list(kinds))
        sql += " ORDER BY e.feature_id, e.split, e.kind, e.rank"
        return self.query_df(sql, params)

    # ------------------------------------------------------------------ explanations
    def put_explanation(self, row: dict[str, Any]) -> None:
        """Insert or replace one explanation (keyed by explanation_id); one autocommitted statement."""
        self._upsert("explanations", "explanation_id", row)

    def explanations(self, run_id: str, status: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM explanations WHERE run_id = ?"
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

    # ------------------------------------------------------------------ scores
    def put_score(self, row: dict[str, Any]) -> None:
        """Insert or replace one score (keyed by score_id); one autocommitted statement."""
        self._upsert("scores", "score_id", row)

    def scores(self, run_id: str, scorer: str | None = None) -> pd.DataFrame:
        sql = "SELECT * FROM scores WHERE run_id = ?"
        params: list[Any] = [run_id]
        if scorer is not None:
            sql += " AND scorer = ?"
            params.append(scorer)
        return self.query_df(sql + " ORDER BY feature_id, scorer", params)

    def score_statuses(self, score_ids: Sequence[str]) -> dict[str, str]:
        frame = self.query_df(
            "SELECT score_id, status FROM scores WHERE score_id IN (SELECT UNNEST(?::VARCHAR[]))",
            [list(score_ids)],
        )
        return dict(zip(frame["score_id"], frame["status"], strict=True))

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

    # ------------------------------------------------------------------ helpers
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
