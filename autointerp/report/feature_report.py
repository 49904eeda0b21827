"""`autointerp report`: one self-contained HTML monosemanticity report for one SAE, plus a Markdown summary.

The page has the run's summary (dead/dense counts, SAE metrics, per-scorer score statistics), inline SVG
plots, and a searchable, sortable feature table built by a small inline script from embedded JSON;
clicking a row opens the feature's card (label, scores vs chance, highlighted contexts, true vs
simulated activations, output-view tokens). The script only uses textContent/createElement, so corpus
text is never parsed as HTML.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from autointerp import __version__
from autointerp.label_quality import set_label_quality
from autointerp.report import svg
from autointerp.report.data import (
    DEFAULT_DENSE_THRESHOLD,
    RunData,
    SimulationTrace,
    dead_dense,
    load_run,
    parse_details,
    simulation_traces,
    threshold_for,
)
from autointerp.report.null import null_baselines
from autointerp.report.templates import read_asset, render_html, render_markdown
from autointerp.report.writing import write_text_atomic
from autointerp.store import Store

METRIC_LABELS = {
    "l0": "L0 (active latents / token)",
    "fve": "Fraction of variance explained",
    "ce_loss_recovered": "CE loss recovered",
    "dead_fraction": "Dead fraction",
    "dense_fraction": "Dense fraction",
}


@dataclass(frozen=True)
class ReportOptions:
    """Sizes of what goes into the page (the HTML grows with cards x contexts x tokens)."""

    max_cards: int = 1000  # features with a full card; the table always lists all features
    n_top: int = 8  # top contexts per card
    n_quantiles: int = 4  # bins of the uniform activating sample
    n_per_quantile: int = 3
    n_test: int = 6  # test contexts per card
    window_before: int = 24  # tokens kept before the peak of a top/quantile context
    window_after: int = 8
    dense_threshold: float = DEFAULT_DENSE_THRESHOLD
    thresholds: dict[str, float] | None = None
    explainer_model: str | None = None


@dataclass(frozen=True)
class ReportResult:
    html_path: Path
    markdown_path: Path
    n_features: int
    n_cards: int


def build_report(store: Store, sae_name: str | None, out: Path, options: ReportOptions) -> ReportResult:
    data = load_run(store, sae_name, explainer_model=options.explainer_model)
    summary = summarize(data, options)
    cards = build_cards(store, data, options)
    table = feature_table(data, cards)
    plots = build_plots(data, summary, options)
    context = {
        "title": f"autointerp report: {data.run.sae_name}",
        "run": data.run,
        "db_path": data.db_path,
        "summary": summary,
        "plots": plots,
        "payload": {"scorers": data.scorers, "features": table, "cards": cards,
                    "thresholds": {s: threshold_for(s, options.thresholds) for s in data.scorers}},
        "css": read_asset("report.css"),
        "js": read_asset("report.js"),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
    }
    html_text = render_html("report.html.j2", **context)
    md_text = render_markdown("report.md.j2", **context)
    md_path = out.with_suffix(".md")
    write_text_atomic(out, html_text)
    write_text_atomic(md_path, md_text)
    return ReportResult(out, md_path, len(table), len(cards))


# ---------------------------------------------------------------------------- summary


def summarize(data: RunData, options: ReportOptions) -> dict[str, Any]:
    feats = data.features
    dead, dense = dead_dense(feats, options.dense_threshold)
    expl = data.explanations
    expl_status = {str(k): int(v) for k, v in expl["status"].value_counts().sort_index().items()}
    scorer_rows = []
    for scorer in data.scorers:
        ok = data.ok_scores(scorer)["score"].to_numpy(dtype=float)
        rows = data.scores[data.scores["scorer"] == scorer]
        chance = pd.to_numeric(rows["chance"], errors="coerce").dropna()
        thr = threshold_for(scorer, options.thresholds)
        aucs = [parse_details(d).get("auc") for d in rows[rows["status"] == "ok"]["details"]]
        aucs = [float(a) for a in aucs if isinstance(a, int | float)]
        scorer_rows.append({
            "scorer": scorer,
            "models": ", ".join(sorted(rows["scorer_model"].dropna().astype(str).unique())),
            "n_ok": int(ok.size),
            "statuses": data.status_counts(scorer),
            "mean": float(ok.mean()) if ok.size else None,
            "median": float(np.median(ok)) if ok.size else None,
            "chance": float(chance.mean()) if not chance.empty else None,
            "threshold": thr,
            "frac_above": float((ok >= thr).mean()) if ok.size else None,
            # detection/fuzzing: ROC AUC of the per-context P(yes) read from logprobs, where the backend gave them
            "auc_mean": float(np.mean(aucs)) if aucs else None,
            "n_auc": len(aucs),
        })
    labels = expl.set_index("feature_id")["explanation"].to_dict() if not expl.empty else {}
    best, worst = [], []
    if data.scorers:
        primary = "simulation" if "simulation" in data.scorers else data.scorers[0]
        ok = data.ok_scores(primary).sort_values(["score", "feature_id"], ascending=[False, True])
        best = [{"feature_id": int(r.feature_id), "score": float(r.score), "label": labels.get(r.feature_id)}
                for r in ok.head(5).itertuples()]
        worst = [{"feature_id": int(r.feature_id), "score": float(r.score), "label": labels.get(r.feature_id)}
                 for r in ok.tail(5).iloc[::-1].itertuples()] if len(ok) > 5 else []
        best_worst_scorer = primary
    else:
        best_worst_scorer = None
    metrics = [{"key": k, "label": METRIC_LABELS.get(k, k), "value": v} for k, v in data.metrics.items()]
    metrics.sort(key=lambda m: (m["key"] not in METRIC_LABELS, list(METRIC_LABELS).index(m["key"])
                                if m["key"] in METRIC_LABELS else 0, m["key"]))
    return {
        "n_features": int(len(feats)),
        "n_live": int(len(feats) - dead),
        "n_dead": dead,
        "n_dense": dense,
        "dense_threshold": options.dense_threshold,
        "n_tokens": data.run.n_tokens,
        "explanation_set": data.explanation_set,
        "other_sets": [s for s in data.all_sets if data.explanation_set is None or s.key != data.explanation_set.key],
        "explanation_status": expl_status,
        "n_explained": expl_status.get("ok", 0),
        # share of unusable labels (echoed prompt, markers, loops; failed items count as empty), and of first
        # replies that were not labels before explain's sampled retries
        "label_quality": set_label_quality(zip(expl["status"], expl["explanation"], expl["error"], strict=True))
        if not expl.empty
        else None,
        "scorers": scorer_rows,
        "null_baseline": [b.as_dict() for b in null_baselines(data.scores, data.null_scores, data.scorers,
                                                                 label_free=data.label_free_scorers)],
        "best": best,
        "worst": worst,
        "best_worst_scorer": best_worst_scorer,
        "metrics": metrics,
        "has_logits": not data.logits.empty,
    }


# ---------------------------------------------------------------------------- plots


def _score_range(scorer: str, values: np.ndarray) -> tuple[float, float]:
    lo = -1.0 if scorer == "simulation" and values.size and values.min() < 0 else 0.0
    return (min(lo, float(values.min()) if values.size else lo), max(1.0, float(values.max()) if values.size else 1.0))


def build_plots(data: RunData, summary: dict[str, Any], options: ReportOptions) -> list[dict[str, Any]]:
    """Each plot: {'svg': Markup, 'caption': str}."""
    plots: list[dict[str, Any]] = []
    for i, row in enumerate(summary["scorers"]):
        scorer = row["scorer"]
        values = data.ok_scores(scorer)["score"].to_numpy(dtype=float)
        markers = [(row["threshold"], f"threshold {row['threshold']:g}")]
        if row["chance"] is not None:
            markers.append((row["chance"], f"chance {row['chance']:.2g}"))
        plots.append({
            "svg": svg.histogram(values, f"{scorer} score distribution (n={values.size})", f"{scorer} score",
                                 bins=20, x_range=_score_range(scorer, values), markers=markers, fill=svg.color(i)),
            "caption": f"Distribution of {scorer} scores over features with a successful score.",
        })
    if summary["scorers"]:
        grid = np.linspace(0, 1, 51)
        series = []
        for row in summary["scorers"]:
            values = data.ok_scores(row["scorer"])["score"].to_numpy(dtype=float)
            if values.size:
                series.append(svg.Series(row["scorer"], grid.tolist(), [(values >= t).mean() for t in grid]))
        plots.append({
            "svg": svg.lines(series, "Fraction of scored features above threshold", "threshold",
                             "fraction of features", y_range=(0, 1)),
            "caption": "For each threshold t, the fraction of successfully scored features with score \u2265 t.",
        })
        feats = data.features.set_index("feature_id")["density"]
        series = []
        for row in summary["scorers"]:
            ok = data.ok_scores(row["scorer"])
            series.append(svg.Series(row["scorer"], feats.reindex(ok["feature_id"]).tolist(), ok["score"].tolist()))
        plots.append({
            "svg": svg.scatter(series, "Score vs feature density", "density (fraction of tokens, log)", "score",
                               log_x=True),
            "caption": "Each point is a feature: how often it fires against how well its label explains it.",
        })
    live = data.features[data.features["firing_count"] > 0]["density"].to_numpy(dtype=float)
    log_density = np.log10(live[live > 0]) if live.size else np.array([])
    markers = [(math.log10(options.dense_threshold), f"dense > {options.dense_threshold:g}")]
    plots.append({
        "svg": svg.histogram(log_density, f"Activation density (live features; {summary['n_dead']} dead)",
                             "log10(density)", bins=30, markers=markers, fill="#6a51a3"),
        "caption": "log10 of the fraction of tokens on which each live feature fires; dead features are counted "
                   "above, dense ones are right of the marker.",
    })
    return plots


# ---------------------------------------------------------------------------- table and cards


def feature_table(data: RunData, cards: dict[str, Any]) -> list[dict[str, Any]]:
    expl = data.explanations.set_index("feature_id") if not data.explanations.empty else None
    score_map: dict[int, dict[str, float | None]] = {}
    for r in data.scores.itertuples():
        value = float(r.score) if r.status == "ok" and r.score is not None and not pd.isna(r.score) else None
        score_map.setdefault(int(r.feature_id), {})[r.scorer] = value
    rows = []
    for f in data.features.itertuples():
        fid = int(f.feature_id)
        status, label = "not_explained", None
        if expl is not None and fid in expl.index:
            status = str(expl.at[fid, "status"])
            label = expl.at[fid, "explanation"] if status == "ok" else None
        rows.append({
            "id": fid,
            "label": label,
            "status": "dead" if f.firing_count == 0 and status == "not_explained" else status,
            "density": float(f.density),
            "firing": int(f.firing_count),
            "max": float(f.max_activation),
            "scores": score_map.get(fid, {}),
            "card": str(fid) in cards,
        })
    return rows


def _round(values: Any) -> list[float]:
    return [float(f"{v:.3g}") if v else 0.0 for v in np.asarray(values, dtype=float).tolist()]


def _context(tokens: list[str], acts: list[float], kind: str, before: int | None, after: int | None,
             max_act: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A context record for the card; trimmed to a window around its peak when before/after are given."""
    start, end = 0, len(tokens)
    if before is not None and after is not None and acts:
        peak = int(np.argmax(acts))
        start, end = max(0, peak - before), min(len(tokens), peak + after + 1)
    record = {"t": list(tokens[start:end]), "a": _round(acts[start:end]), "m": float(f"{max_act:.3g}"),
              "k": kind, "pre": start > 0, "post": end < len(tokens)}
    if extra:
        record.update(extra)
    return record


def _select_card_features(data: RunData, max_cards: int) -> list[int]:
    feats = data.features[data.features["firing_count"] > 0]
    explained = set(data.explanations["feature_id"].astype(int)) if not data.explanations.empty else set()
    order = sorted(feats.itertuples(), key=lambda f: (int(f.feature_id) not in explained, -int(f.firing_count),
                                                       int(f.feature_id)))
    return [int(f.feature_id) for f in order[:max_cards]]


def build_cards(store: Store, data: RunData, options: ReportOptions) -> dict[str, Any]:
    """Per-feature card data keyed by feature id (as a string, for JSON)."""
    chosen = _select_card_features(data, options.max_cards)
    if not chosen:
        return {}
    feats = data.features.set_index("feature_id")
    expl = data.explanations.set_index("feature_id") if not data.explanations.empty else None
    scores_by_feature = {fid: grp for fid, grp in data.scores.groupby("feature_id")} if not data.scores.empty else {}
    logits_by_feature = {fid: grp for fid, grp in data.logits.groupby("feature_id")} if not data.logits.empty else {}
    cards: dict[str, Any] = {}
    for start in range(0, len(chosen), 500):  # bounded memory for large SAEs
        chunk = chosen[start : start + 500]
        examples = store.examples(data.run.run_id, feature_ids=chunk)
        by_feature = {fid: grp for fid, grp in examples.groupby("feature_id")}
        for fid in chunk:
            f = feats.loc[fid]
            ex = by_feature.get(fid, examples.iloc[0:0])
            card: dict[str, Any] = {
                "id": fid,
                "density": float(f["density"]),
                "firing": int(f["firing_count"]),
                "max": float(f["max_activation"]),
                "mean": None if pd.isna(f["mean_activation"]) else float(f["mean_activation"]),
                "hist": {"counts": [int(c) for c in f["hist_counts"]], "edges": [float(e) for e in f["hist_edges"]]},
            }
            if expl is not None and fid in expl.index:
                e = expl.loc[fid]
                card.update(label=e["explanation"] if e["status"] == "ok" else None, status=str(e["status"]),
                            error=None if pd.isna(e.get("error")) else str(e.get("error")))
            else:
                card.update(label=None, status="not_explained", error=None)
            card["scores"], traces = _card_scores(scores_by_feature.get(fid))
            card["top"], card["quantiles"] = _explain_contexts(ex, options)
            card["test"] = _test_contexts(ex, traces, options)
            card["promoted"], card["suppressed"] = _logit_tokens(logits_by_feature.get(fid))
            cards[str(fid)] = card
    return cards


def _card_scores(rows: pd.DataFrame | None) -> tuple[list[dict[str, Any]], list[SimulationTrace]]:
    if rows is None:
        return [], []
    out, traces = [], []
    for r in rows.sort_values("scorer").itertuples():
        details = parse_details(r.details)
        out.append({
            "scorer": r.scorer,
            "model": r.scorer_model,
            "score": None if r.status != "ok" or pd.isna(r.score) else float(r.score),
            "chance": None if r.chance is None or pd.isna(r.chance) else float(r.chance),
            "status": str(r.status),
            "error": None if r.error is None or pd.isna(r.error) else str(r.error)[:500],
            "auc": details.get("auc") if isinstance(details.get("auc"), int | float) else None,
        })
        if r.scorer == "simulation" and not traces:
            traces = simulation_traces(details)
    return out, traces


def _explain_contexts(ex: pd.DataFrame, options: ReportOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    split = ex[ex["split"] == "explain"]
    top = split[split["kind"] == "top"].sort_values("rank").head(options.n_top)
    top_records = [_context(list(r.tokens), list(r.activations), "top", options.window_before,
                            options.window_after, r.max_activation) for r in top.itertuples()]
    sample = split[split["kind"] == "random"].sort_values(["max_activation", "rank"], ascending=[False, True])
    quantiles = []
    if not sample.empty:
        bins = np.array_split(np.arange(len(sample)), min(options.n_quantiles, len(sample)))
        for q, idx in enumerate(bins):
            part = sample.iloc[idx]
            lo, hi = float(part["max_activation"].min()), float(part["max_activation"].max())
            # Within a bin the random sample's own (rank) order is kept: a fair draw from that bin.
            picks = part.sort_values("rank").head(options.n_per_quantile)
            quantiles.append({
                "name": f"Q{q + 1} of {len(bins)}",
                "range": [float(f"{lo:.3g}"), float(f"{hi:.3g}")],
                "contexts": [_context(list(r.tokens), list(r.activations), "random", options.window_before,
                                      options.window_after, r.max_activation) for r in picks.itertuples()],
            })
    return top_records, quantiles


def _test_contexts(ex: pd.DataFrame, traces: list[SimulationTrace], options: ReportOptions) -> list[dict[str, Any]]:
    test = ex[ex["split"] == "test"]
    by_context = {int(r.context_id): r for r in test.itertuples()}
    records = []
    if traces:
        for tr in traces[: options.n_test]:
            row = by_context.get(tr.context_id) if tr.context_id is not None else None
            tokens = tr.tokens or (list(row.tokens) if row is not None else None)
            if tokens is None:
                continue
            n = min(len(tokens), len(tr.true), len(tr.simulated))
            true = tr.true[-n:] if len(tr.true) != len(tokens) else tr.true
            sim = tr.simulated[-n:] if len(tr.simulated) != len(tokens) else tr.simulated
            tokens = tokens[-n:]
            kind = tr.kind or (row.kind if row is not None else "test")
            records.append(_context(tokens, true, kind, None, None, max(true) if true else 0.0,
                                    {"s": _round(sim)}))
        if records:
            return records
    per_kind = {"top": max(1, options.n_test // 2), "random": max(1, options.n_test // 3), "nonactivating": 1}
    for kind, n in per_kind.items():
        part = test[test["kind"] == kind].sort_values("rank").head(n)
        records += [_context(list(r.tokens), list(r.activations), kind, options.window_before,
                             options.window_after, r.max_activation) for r in part.itertuples()]
    return records


def _logit_tokens(rows: pd.DataFrame | None) -> tuple[list[list[Any]], list[list[Any]]]:
    if rows is None:
        return [], []
    promoted = rows[rows["direction"] == "promote"].sort_values("rank")
    suppressed = rows[rows["direction"] == "suppress"].sort_values("rank")
    return ([[str(r.token), float(f"{r.value:.3g}")] for r in promoted.itertuples()],
            [[str(r.token), float(f"{r.value:.3g}")] for r in suppressed.itertuples()])
