"""`autointerp compare`: which SAE explains best, by how much, and at what sparsity/fidelity.

An *arm* is one SAE run (from any of the given workspaces) with one explanation set. Per scorer and
arm we report n, mean, median and the fraction of features at or above a threshold, each with a seeded
percentile-bootstrap 95 % CI. Pairs of arms are tested for a difference of mean scores:
- same run (same SAE and collect, e.g. two explainers): paired by feature id, paired bootstrap CI and
  sign-flip permutation test on the features scored in both arms;
- different runs (different SAEs have different features): unpaired bootstrap CI of the difference of
  means and a label-permutation test.
p-values are Holm-adjusted within each scorer; a difference is "significant" when its 95 % CI excludes 0
and the adjusted p < 0.05 (see `stats.is_significant`). SAE-level metrics (L0, fraction of variance
explained, CE loss recovered, dead/dense fractions), when the workspace has them, are shown beside the
scores with scatter plots and Pareto fronts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from autointerp import __version__
from autointerp.errors import UserError
from autointerp.report import stats, svg
from autointerp.report.data import ExplanationSet, RunData, explanation_sets, load_run, threshold_for
from autointerp.report.findings import findings
from autointerp.report.matching import DEFAULT_MATCH_THRESHOLD, MatchingResult, match_arms
from autointerp.report.null import baseline_for
from autointerp.report.templates import read_asset, render_html, render_markdown
from autointerp.report.writing import write_text_atomic
from autointerp.store import Store

# (metric key, display name, Pareto direction for x: 'min_x' = lower is better, 'max_x' = higher is better, log x)
PARETO_METRICS = [
    ("l0", "L0 (active latents per token)", "min_x", True),
    ("fve", "fraction of variance explained", "max_x", False),
    ("ce_loss_recovered", "CE loss recovered", "max_x", False),
]
METRIC_ORDER = ["l0", "fve", "ce_loss_recovered", "dead_fraction", "dense_fraction"]


@dataclass
class Arm:
    """One SAE (run) with one explanation set: the unit that gets a row per scorer."""

    label: str
    data: RunData
    db_path: str

    @property
    def run_id(self) -> str:
        return self.data.run.run_id


@dataclass(frozen=True)
class CompareOptions:
    thresholds: dict[str, float] | None = None
    n_boot: int = 2000
    n_perm: int = 2000
    seed: int = 0
    all_explainers: bool = False  # one arm per explanation set instead of the most complete one per run
    explainer_model: str | None = None
    match: bool = True  # match features across SAEs at the same model/hook by decoder cosine
    match_threshold: float = DEFAULT_MATCH_THRESHOLD


@dataclass(frozen=True)
class CompareResult:
    html_path: Path
    csv_path: Path
    pairs_csv_path: Path
    markdown_path: Path
    summary: pd.DataFrame
    pairs: pd.DataFrame
    matching: MatchingResult | None = None
    matches_csv_path: Path | None = None


def load_arms(db_paths: list[str], sae_names: list[str] | None, options: CompareOptions) -> list[Arm]:
    arms: list[Arm] = []
    found: set[str] = set()
    for db in db_paths:
        with Store(db, read_only=True) as store:
            for run in store.runs():
                if sae_names and run.sae_name not in sae_names:
                    continue
                found.add(run.sae_name)
                if options.all_explainers:
                    sets: list[ExplanationSet | None] = list(explanation_sets(store, run.run_id)) or [None]
                else:
                    sets = [None]
                for chosen in sets:
                    data = load_run(store, run.sae_name, explainer_model=options.explainer_model,
                                    explanation_set=chosen)
                    arms.append(Arm(label=run.sae_name, data=data, db_path=str(db)))
    missing = [n for n in (sae_names or []) if n not in found]
    if missing:
        raise UserError(f"SAE name(s) not found in the given workspaces: {', '.join(missing)}",
                        "check --sae-names against the names used at collect time")
    if not arms:
        raise UserError("no completed SAE runs in the given workspaces", "run `autointerp collect` first")
    _disambiguate(arms)
    return arms


def _disambiguate(arms: list[Arm]) -> None:
    """Unique labels: add the workspace, then the explainer, only where names collide."""
    def collisions() -> set[str]:
        labels = [a.label for a in arms]
        return {x for x in labels if labels.count(x) > 1}

    dup = collisions()
    for a in arms:
        if a.label in dup and sum(b.data.run.sae_name == a.data.run.sae_name for b in arms if b.db_path != a.db_path):
            a.label = f"{a.label} ({Path(a.db_path).stem})"
    dup = collisions()
    for a in arms:
        if a.label in dup and a.data.explanation_set is not None:
            a.label = f"{a.label} [{a.data.explanation_set.explainer_model}]"
    dup = collisions()
    for a in arms:
        if a.label in dup and a.data.explanation_set is not None:
            a.label = f"{a.label} {a.data.explanation_set.prompt_hash[:6]}/{a.data.explanation_set.config_hash[:6]}"


def summarize(arms: list[Arm], options: CompareOptions) -> pd.DataFrame:
    """One row per (scorer, arm) with estimates, CIs and the arm's SAE metrics."""
    scorers = sorted({s for a in arms for s in a.data.scorers})
    rows = []
    for scorer in scorers:
        thr = threshold_for(scorer, options.thresholds)
        for a in arms:
            values = a.data.ok_scores(scorer)["score"].to_numpy(dtype=float)
            statuses = a.data.status_counts(scorer)
            mean = stats.bootstrap_ci(values, stats.STATISTICS["mean"], options.n_boot, options.seed)
            median = stats.bootstrap_ci(values, stats.STATISTICS["median"], options.n_boot, options.seed)
            frac = stats.bootstrap_ci(values, stats.fraction_above(thr), options.n_boot, options.seed)
            es = a.data.explanation_set
            row: dict[str, Any] = {
                "scorer": scorer, "sae": a.label, "sae_name": a.data.run.sae_name, "run_id": a.run_id,
                "db": a.db_path, "explainer_model": es.explainer_model if es else None,
                "n": int(values.size), "n_not_ok": int(sum(v for k, v in statuses.items() if k != "ok")),
                "mean": mean.value, "mean_ci_low": mean.low, "mean_ci_high": mean.high,
                "median": median.value, "median_ci_low": median.low, "median_ci_high": median.high,
                "threshold": thr, "frac_above": frac.value, "frac_ci_low": frac.low, "frac_ci_high": frac.high,
            }
            base = baseline_for(a.data.scores, a.data.null_scores, scorer, a.data.label_free_scorers,
                                options.n_boot, options.n_perm, options.seed)
            row.update({"chance": a.data.chance(scorer), "label_free": scorer in a.data.label_free_scorers,
                        "null_passed": base.passed, "null_pairs": base.n_pairs, "real_mean_paired": base.real_mean, "null_mean": base.null_mean,
                        "null_diff": base.diff, "null_ci_low": base.ci_low, "null_ci_high": base.ci_high,
                        "null_share_real_wins": base.share_real_wins, "beats_null": base.beats_null,
                        "null_verdict": base.verdict})
            row.update({f"sae_{k}": v for k, v in _metrics(a).items()})
            rows.append(row)
    return pd.DataFrame(rows)


def _metrics(arm: Arm) -> dict[str, float | None]:
    m = dict(arm.data.metrics)
    ordered = {k: m.pop(k) for k in METRIC_ORDER if k in m}
    ordered.update(sorted(m.items()))
    return ordered


def pairwise(arms: list[Arm], options: CompareOptions) -> pd.DataFrame:
    """Every pair of arms per scorer: difference of mean scores (A - B) with CI, p-value and verdict."""
    scorers = sorted({s for a in arms for s in a.data.scorers})
    rows = []
    for scorer in scorers:
        block = []
        for i in range(len(arms)):
            for j in range(i + 1, len(arms)):
                a, b = arms[i], arms[j]
                sa, sb = a.data.ok_scores(scorer), b.data.ok_scores(scorer)
                if a.run_id == b.run_id:
                    both = sa.merge(sb, on="feature_id", suffixes=("_a", "_b"))
                    diff = stats.paired_difference(both["score_a"].to_numpy(), both["score_b"].to_numpy(),
                                                   options.n_boot, options.n_perm, options.seed)
                else:
                    diff = stats.unpaired_difference(sa["score"].to_numpy(), sb["score"].to_numpy(),
                                                     options.n_boot, options.n_perm, options.seed)
                block.append({"scorer": scorer, "a": a.label, "b": b.label,
                              "test": "paired (same features)" if diff.paired else "unpaired",
                              "n_a": diff.n_a, "n_b": diff.n_b, "diff": diff.diff, "ci_low": diff.low,
                              "ci_high": diff.high, "p_value": diff.p_value, "_diff": diff})
        adjusted = stats.holm_adjust([r["p_value"] for r in block])
        for r, p_adj in zip(block, adjusted, strict=True):
            r["p_holm"] = p_adj
            r["significant"] = stats.is_significant(r.pop("_diff"), p_adj)
            rows.append(r)
    columns = ["scorer", "a", "b", "test", "n_a", "n_b", "diff", "ci_low", "ci_high", "p_value", "p_holm",
               "significant"]
    return pd.DataFrame(rows, columns=columns)


def build_plots(arms: list[Arm], summary: pd.DataFrame) -> list[dict[str, Any]]:
    plots: list[dict[str, Any]] = []
    if summary.empty:
        return plots
    for scorer, block in summary.groupby("scorer", sort=True):
        rows = [(r.sae, r.mean, r.mean_ci_low, r.mean_ci_high) for r in block.itertuples()]
        plots.append({"svg": svg.interval_chart(rows, f"mean {scorer} score, 95 % CI", f"{scorer} score"),
                      "caption": f"Mean {scorer} score per SAE with its bootstrap 95 % interval."})
        thr = float(block["threshold"].iloc[0])
        rows = [(r.sae, r.frac_above, r.frac_ci_low, r.frac_ci_high) for r in block.itertuples()]
        plots.append({"svg": svg.interval_chart(rows, f"fraction of features with {scorer} \u2265 {thr:g}",
                                                "fraction of scored features"),
                      "caption": f"Fraction of scored features with {scorer} score \u2265 {thr:g} (95 % CI)."})
    for key, name, direction, log_x in PARETO_METRICS:
        column = f"sae_{key}"
        if column not in summary.columns or summary[column].notna().sum() == 0:
            continue
        for scorer, block in summary.groupby("scorer", sort=True):
            block = block[block[column].notna()]
            series = [svg.Series(scorer, block[column].tolist(), block["mean"].tolist(), block["sae"].tolist(),
                                 list(zip(block["mean_ci_low"], block["mean_ci_high"], strict=True)))]
            better = "lower" if direction == "min_x" else "higher"
            plots.append({
                "svg": svg.scatter(series, f"mean {scorer} vs {name}", name + (" (log)" if log_x else ""),
                                   f"mean {scorer}", log_x=log_x, frontier=direction, radius=5),
                "caption": f"Each point is an SAE (bars: 95 % CI). Dashed green: Pareto front ({better} {key} "
                           f"and higher score are better).",
            })
    return plots


def negatives_effect(arms: list[Arm], options: CompareOptions) -> pd.DataFrame:
    """Per arm and scorer scored against both kinds of negatives: the same labels' score against random
    minus against hard negatives, paired by feature (bootstrap CI, sign-flip p). Positive = hard negatives
    make the task harder."""
    rows = []
    for a in arms:
        for hard in [s for s in a.data.scorers if s.endswith(":hard")]:
            base = hard.removesuffix(":hard")
            both = a.data.ok_scores(base).merge(a.data.ok_scores(hard), on="feature_id", suffixes=("_r", "_h"))
            if both.empty:
                continue
            d = stats.paired_difference(both["score_r"].to_numpy(), both["score_h"].to_numpy(), options.n_boot,
                                        options.n_perm, options.seed)
            # each mean's own CI too: "lower against hard negatives" should be readable with its uncertainty
            r, h = (stats.bootstrap_ci(both[c].to_numpy(float), n_boot=options.n_boot, seed=options.seed)
                    for c in ("score_r", "score_h"))
            rows.append({"scorer": base, "sae": a.label, "n": d.n_a, "random_mean": float(both["score_r"].mean()),
                         "random_ci_low": r.low, "random_ci_high": r.high,
                         "hard_mean": float(both["score_h"].mean()), "hard_ci_low": h.low, "hard_ci_high": h.high,
                         "diff": d.diff, "ci_low": d.low, "ci_high": d.high, "p_value": d.p_value,
                         "harder": bool(d.low > 0)})
    return pd.DataFrame(rows, columns=["scorer", "sae", "n", "random_mean", "random_ci_low", "random_ci_high",
                                       "hard_mean", "hard_ci_low", "hard_ci_high", "diff", "ci_low", "ci_high",
                                       "p_value", "harder"])


def _example_matches(arms: list[Arm], matching: MatchingResult | None, n: int = 12) -> list[dict[str, Any]]:
    """The most similar mutual matches per SAE pair, with both labels (the pairs a reader can check)."""
    if matching is None or matching.features.empty:
        return []
    labels = {}
    for a in arms:
        ex = a.data.explanations
        ok = ex[ex["status"] == "ok"] if "status" in ex.columns else ex
        labels[a.label] = dict(zip(ok["feature_id"].astype(int), ok["explanation"].astype(str), strict=True))
    rows = []
    for (name_a, name_b), block in matching.features.groupby(["a", "b"], sort=False):
        block = block[block["mutual"].astype(bool)].sort_values("cosine", ascending=False)
        known_a, known_b = set(labels.get(name_a, {})), set(labels.get(name_b, {}))
        labelled = block[block["feature_a"].astype(int).isin(known_a) | block["feature_b"].astype(int).isin(known_b)]
        for r in pd.concat([labelled, block]).drop_duplicates(["feature_a", "feature_b"]).head(n).itertuples():
            rows.append({"a": name_a, "b": name_b, "feature_a": int(r.feature_a), "feature_b": int(r.feature_b),
                         "cosine": float(r.cosine), "label_a": labels.get(name_a, {}).get(int(r.feature_a), ""),
                         "label_b": labels.get(name_b, {}).get(int(r.feature_b), "")})
    return rows


def build_compare(db_paths: list[str], sae_names: list[str] | None, out: Path, options: CompareOptions) -> CompareResult:
    arms = load_arms(db_paths, sae_names, options)
    summary = summarize(arms, options)
    pairs = pairwise(arms, options)
    matching = (match_arms(arms, options.match_threshold, options.n_boot, options.n_perm, options.seed)
                if options.match else None)
    metric_keys: list[str] = []
    for a in arms:
        metric_keys += [k for k in _metrics(a) if k not in metric_keys]
    sae_rows = []
    for a in arms:
        es = a.data.explanation_set
        metrics = _metrics(a)
        sae_rows.append({
            "label": a.label, "run": a.data.run, "db": a.db_path, "explainer": es.name if es else "none",
            "n_labelled": es.n_ok if es else 0, "metrics": [metrics.get(k) for k in metric_keys],
        })
    negatives = negatives_effect(arms, options)
    words = findings(summary, pairs, matching, sae_rows, metric_keys, negatives)
    context = {
        "title": "autointerp SAE comparison",
        "findings": words,
        "negatives": negatives.to_dict("records"),
        "example_matches": _example_matches(arms, matching),
        "arms": sae_rows,
        "metric_keys": metric_keys,
        "summary": summary.to_dict("records"),
        "pairs": pairs.to_dict("records"),
        "plots": build_plots(arms, summary),
        "matching": None if matching is None else {
            "pairs": matching.pairs.to_dict("records"), "scores": matching.scores.to_dict("records"),
            "skipped": matching.skipped, "threshold": options.match_threshold},
        "options": options,
        "has_metrics": any(a.data.metrics for a in arms),
        "css": read_asset("report.css"),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
    }
    csv_path = out.with_suffix(".csv")
    pairs_path = out.with_name(out.stem + "-pairs.csv")
    md_path = out.with_suffix(".md")
    write_text_atomic(out, render_html("compare.html.j2", **context))
    write_text_atomic(md_path, render_markdown("compare.md.j2", **context))
    write_text_atomic(csv_path, summary.to_csv(index=False))
    write_text_atomic(pairs_path, pairs.to_csv(index=False))
    matches_path = None
    if matching is not None:
        matches_path = out.with_name(out.stem + "-matches.csv")
        write_text_atomic(matches_path, matching.features.to_csv(index=False))
    return CompareResult(out, csv_path, pairs_path, md_path, summary, pairs, matching, matches_path)

