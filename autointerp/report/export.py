"""`autointerp export`: the feature catalog as parquet (written by DuckDB) or Neuronpedia-style JSON Lines.

The parquet schema is documented in docs/parquet-schema.md. The Neuronpedia export writes one JSON object
per feature with the field names of Neuronpedia's feature exports (modelId, layer, index, explanations,
activations with tokens/values, pos_str/pos_values, neg_str/neg_values, frac_nonzero, maxActApprox), so a
catalog can be loaded by tools that read that format; `layer` is "<hook>/<sae_name>".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autointerp.report.data import choose_explanation_set
from autointerp.report.templates import _clean
from autointerp.report.writing import write_text_atomic
from autointerp.store import Store

FORMATS = {"parquet": (".parquet",), "neuronpedia": (".jsonl",)}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    n_rows: int
    scorers: list[str]


def export_catalog(store: Store, sae_name: str | None, out: Path, fmt: str, explainer_model: str | None = None,
                   n_contexts: int = 10) -> ExportResult:
    run = store.resolve_run(sae_name)
    chosen = choose_explanation_set(store, run.run_id, explainer_model)
    scorers: list[str] = []
    if chosen is not None:
        scorers = store.set_scorers(run.run_id, *chosen.key)
    key = chosen.key if chosen else None
    # Label-free scores (intruder) belong to the feature, not to a label: exported whatever set is chosen.
    label_free = store.label_free_scorers(run.run_id)
    if fmt == "parquet":
        n = store.export_catalog(run.run_id, out, key, scorers, n_contexts, label_free)
        return ExportResult(out, n, [*scorers, *label_free])
    frame = store.catalog_df(run.run_id, key, scorers, n_contexts, label_free)
    lines = [json.dumps(_clean(neuronpedia_feature(row, scorers, label_free)), ensure_ascii=False, allow_nan=False)
             for row in frame.to_dict("records")]
    write_text_atomic(out, "".join(line + "\n" for line in lines))
    return ExportResult(out, len(lines), [*scorers, *label_free])


def _num(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def neuronpedia_feature(row: dict[str, Any], scorers: list[str], label_free: list[str] | None = None) -> dict[str, Any]:
    """One catalog row in Neuronpedia's feature-export field names; label-free scores (intruder), which no
    explanation owns, go under `labelFreeScores`."""
    activations = []
    for ctx in row["top_contexts"] if row["top_contexts"] is not None else []:
        values = np.asarray(ctx["activations"], dtype=float)
        activations.append({
            "tokens": list(ctx["tokens"]),
            "values": [float(v) for v in values],
            "maxValue": float(values.max()) if values.size else 0.0,
            "maxValueTokenIndex": int(values.argmax()) if values.size else 0,
        })

    def tokens(items: Any) -> tuple[list[str], list[float]]:
        if items is None or (isinstance(items, float) and pd.isna(items)):
            return [], []
        return [str(i["token"]) for i in items], [float(i["value"]) for i in items]

    pos_str, pos_values = tokens(row.get("promoted_tokens"))
    neg_str, neg_values = tokens(row.get("suppressed_tokens"))
    explanations = []
    if row.get("label") is not None and not (isinstance(row["label"], float) and pd.isna(row["label"])):
        explanations.append({
            "description": row["label"],
            "explanationModelName": row["explainer_model"],
            "typeName": f"autointerp:{row['explainer_prompt']}",
            "scores": [{"scorer": s, "value": _num(row.get(f"{_col(s)}_score")),
                        "chance": _num(row.get(f"{_col(s)}_chance")), "status": row.get(f"{_col(s)}_status")}
                       for s in scorers],
        })
    return {
        "modelId": row["model"],
        "layer": f"{row['hook']}/{row['sae_name']}",
        "index": str(int(row["feature_id"])),
        "explanations": explanations,
        "explanationStatus": row["explanation_status"],
        "activations": activations,
        "pos_str": pos_str, "pos_values": pos_values, "neg_str": neg_str, "neg_values": neg_values,
        "frac_nonzero": _num(row["density"]),
        "maxActApprox": _num(row["max_activation"]),
        "labelFreeScores": [{"scorer": s, "value": _num(row.get(f"{_col(s)}_score")),
                             "chance": _num(row.get(f"{_col(s)}_chance")), "status": row.get(f"{_col(s)}_status")}
                            for s in label_free or []],
    }


def _col(scorer: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in scorer.lower())
