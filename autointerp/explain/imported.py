"""Labels from elsewhere (Neuronpedia, people, another tool) as an explanation set of their own.

`read_label_file` reads CSV, JSON Lines, JSON or parquet with `feature_id` and `label` columns (optional
`source`), or Neuronpedia's explanation export layout (`index` and `description`, optional
`explanationModelName`), and validates every row against the run before anything is written: an
unknown feature id, an empty label or a feature labelled twice within one source is ONE error naming
the first bad row and the fix, and nothing is stored. `label_rows` turns the rows into explanation rows:
explainer_model is the source name, prompt_name `imported`, config_hash a hash of the whole set's
content. So the same file imported twice is the same set (a rerun of score skips what is done), and a
changed file is a new set, never old scores under new labels. Score, report, compare and export treat the
set like the explainer's own; `--source NAME` (or `--explainer-model NAME`) picks it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from autointerp.errors import UserError
from autointerp.hashing import short_hash
from autointerp.llm.base import Status
from autointerp.store.sets import IMPORTED_PROMPT, is_null_model

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
_FIX_COLUMNS = "give the file columns feature_id and label (or Neuronpedia's index and description)"


@dataclass(frozen=True)
class ImportedLabel:
    row: int  # 1-based data row (CSV: line row + 1, after the header)
    feature_id: int
    label: str
    source: str


def _read_frame(path: Path) -> tuple[pd.DataFrame, str]:
    fmt = FORMATS.get(path.suffix.lower())
    if not path.is_file():
        raise UserError(f"no label file at {path}", "check --file")
    if fmt is None:
        raise UserError(
            f"{path.name}: unknown label file type {path.suffix!r}",
            f"use one of {', '.join(sorted(FORMATS))}",
        )
    try:
        if fmt == "csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False), fmt
        if fmt == "parquet":
            return pd.read_parquet(path), fmt
        if fmt == "jsonl":
            records = [
                json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
            records = data.get("explanations", data.get("features")) if isinstance(data, dict) else data
            if not isinstance(records, list):
                raise ValueError("expected a list of objects (or an object with an 'explanations' list)")
        if not all(isinstance(r, dict) for r in records):
            raise ValueError("every record must be a JSON object")
        return pd.DataFrame(records), fmt
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path.name} as {fmt}: {exc}", _FIX_COLUMNS) from exc


def _int_id(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or isinstance(value, bool):
        return None
    text = str(value).strip()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return int(text) if text.lstrip("-").isdigit() else None


def read_label_file(path: str | Path, valid_ids: set[int], source: str | None = None) -> list[ImportedLabel]:
    """The validated labels of a file; `source` (when given) names the set of every row."""
    path = Path(path)
    frame, fmt = _read_frame(path)
    columns = {c.lower(): c for c in frame.columns}
    id_col = columns.get("feature_id") or columns.get("index")
    label_col = columns.get("label") or columns.get("description")
    if id_col is None or label_col is None:
        raise UserError(
            f"{path.name} has no feature id and label columns (columns: {list(frame.columns)[:8]})",
            _FIX_COLUMNS,
        )
    source_col = columns.get("source") or columns.get("explanationmodelname")
    if frame.empty:
        raise UserError(f"{path.name} holds no labels", "give a file with one row per labelled feature")
    offset = 2 if fmt == "csv" else 1  # CSV: the header is line 1

    def where(i: int) -> str:
        return f"{path.name} row {i + 1}" + (f" (line {i + offset})" if fmt in ("csv", "jsonl") else "")

    out: list[ImportedLabel] = []
    seen: dict[tuple[str, int], int] = {}
    for i, record in enumerate(frame.to_dict("records")):
        fid = _int_id(record[id_col])
        if fid is None:
            raise UserError(
                f"{where(i)}: feature id {record[id_col]!r} is not an integer",
                f"write the SAE latent index in {id_col}",
            )
        if fid not in valid_ids:
            lo, hi = (min(valid_ids), max(valid_ids)) if valid_ids else (0, -1)
            raise UserError(
                f"{where(i)}: feature {fid} is not a feature of this SAE (ids {lo}..{hi})",
                "check that the file belongs to this --sae-name, or drop that row",
            )
        raw = record[label_col]
        label = "" if raw is None or (isinstance(raw, float) and math.isnan(raw)) else str(raw).strip()
        if not label:
            raise UserError(
                f"{where(i)}: feature {fid} has an empty label", "give it a label or drop that row"
            )
        row_source = source
        if row_source is None and source_col is not None and str(record.get(source_col) or "").strip():
            row_source = str(record[source_col]).strip()
        row_source = row_source or path.stem
        if is_null_model(row_source):
            raise UserError(
                f"{where(i)}: source {row_source!r} is reserved for shuffled-label baselines",
                "pick another --source name",
            )
        if (row_source, fid) in seen:
            raise UserError(
                f"{where(i)}: feature {fid} is labelled twice for source {row_source!r} "
                f"(first in row {seen[(row_source, fid)] + 1})",
                "keep one label per feature and source",
            )
        seen[(row_source, fid)] = i
        out.append(ImportedLabel(i + 1, fid, label, row_source))
    return out


def label_rows(run_id: str, labels: list[ImportedLabel], file_name: str) -> dict[str, list[dict[str, Any]]]:
    """Explanation rows per source; each source's config_hash hashes its whole (feature, label) content."""
    by_source: dict[str, list[ImportedLabel]] = {}
    for item in labels:
        by_source.setdefault(item.source, []).append(item)
    out = {}
    for source, items in by_source.items():
        content = sorted((i.feature_id, i.label) for i in items)
        config_hash = short_hash(["imported", content])
        out[source] = [
            {
                "explanation_id": short_hash([run_id, i.feature_id, source, IMPORTED_PROMPT, config_hash]),
                "run_id": run_id,
                "feature_id": i.feature_id,
                "explainer_model": source,
                "prompt_name": IMPORTED_PROMPT,
                "prompt_hash": IMPORTED_PROMPT,
                "config_hash": config_hash,
                "config": {"imported_from": file_name, "n_labels": len(items)},
                "status": Status.OK.value,
                "explanation": i.label,
                "raw_text": i.label,
                "error": None,
                "attempts": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "latency_s": 0.0,
            }
            for i in items
        ]
    return out
