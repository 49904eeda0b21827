"""Feature matching in `compare`: which features two SAEs share, and their scores side by side.

Different SAEs have different feature ids, so `compare` can only test their *means* unpaired. When
two SAEs sit at the same model and hook, their decoders can be matched (`autointerp.sae.matching`):
a feature of A whose best B match has cosine >= `threshold` "exists in both"; the rest of A is new
relative to B (and vice versa). For matched features the scores are paired (A's feature vs its B
match), which is a much sharper test of "does B explain the same feature better" than the unpaired
means. The SAE weights are read from the path recorded at collect time; when they are not there
any more, the pair is listed as skipped with the reason instead of failing the whole comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from autointerp.errors import UserError
from autointerp.report import stats
from autointerp.report.data import RunData
from autointerp.sae import load_sae
from autointerp.sae.matching import MATCH_THRESHOLDS, FeatureMatch, match_decoders

DEFAULT_MATCH_THRESHOLD = MATCH_THRESHOLDS[0]


@dataclass
class MatchingResult:
    """Per SAE pair: shares and counts (`pairs`), paired scores of matched features (`scores`), per-feature rows."""

    pairs: pd.DataFrame
    scores: pd.DataFrame
    features: pd.DataFrame
    skipped: list[str] = field(default_factory=list)


PAIR_COLUMNS = (
    ["a", "b", "d_sae_a", "d_sae_b", "threshold", "n_in_both", "n_new_in_a", "n_new_in_b", "n_mutual"]
    + [f"share_{s}_{t:g}" for t in MATCH_THRESHOLDS for s in ("a", "b")]
    + ["mean_cos_a", "mean_cos_b"]
)
SCORE_COLUMNS = [
    "scorer",
    "a",
    "b",
    "n_pairs",
    "mean_a",
    "mean_b",
    "diff",
    "ci_low",
    "ci_high",
    "p_value",
    "p_holm",
    "significant",
]
FEATURE_COLUMNS = ["a", "b", "feature_a", "feature_b", "cosine", "mutual"]


def _decoder(data: RunData, cache: dict[str, torch.Tensor]) -> torch.Tensor:
    path = data.run.sae_path
    if path not in cache:
        sae = load_sae(path)
        cache[path] = sae.W_dec.detach().clone()
        del sae  # the encoder is not needed: keep only one matrix per SAE
    return cache[path]


def match_arms(
    arms: list[Any],
    threshold: float = DEFAULT_MATCH_THRESHOLD,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
) -> MatchingResult:
    """Match every pair of arms from different runs at the same model and hook (arms: `compare.Arm`)."""
    decoders: dict[str, torch.Tensor] = {}
    matches: dict[tuple[str, str], FeatureMatch] = {}
    pair_rows, score_rows, feature_frames, skipped = [], [], [], []
    for i in range(len(arms)):
        for j in range(i + 1, len(arms)):
            a, b = arms[i], arms[j]
            ra, rb = a.data.run, b.data.run
            if ra.run_id == rb.run_id or (ra.model, ra.hook) != (rb.model, rb.hook):
                continue  # same features already paired by id / nothing to match across hooks
            key = (ra.sae_path, rb.sae_path)
            if key not in matches:
                try:
                    matches[key] = match_decoders(_decoder(a.data, decoders), _decoder(b.data, decoders))
                except (UserError, ValueError, OSError) as exc:
                    skipped.append(f"{a.label} vs {b.label}: {exc}")
                    continue
            m = matches[key]
            in_both = m.cos_a >= threshold
            mutual = m.mutual(threshold)
            row: dict[str, Any] = {
                "a": a.label,
                "b": b.label,
                "d_sae_a": int(m.cos_a.size),
                "d_sae_b": int(m.cos_b.size),
                "threshold": threshold,
                "n_in_both": int(in_both.sum()),
                "n_new_in_a": int((~in_both).sum()),
                "n_new_in_b": int((m.cos_b < threshold).sum()),
                "n_mutual": int(mutual.sum()),
                "mean_cos_a": float(m.cos_a.mean()) if m.cos_a.size else float("nan"),
                "mean_cos_b": float(m.cos_b.mean()) if m.cos_b.size else float("nan"),
            }
            for t in MATCH_THRESHOLDS:
                row[f"share_a_{t:g}"] = m.share_a(t)
                row[f"share_b_{t:g}"] = m.share_b(t)
            pair_rows.append(row)
            ids = np.flatnonzero(in_both)
            matched = pd.DataFrame(
                {
                    "a": a.label,
                    "b": b.label,
                    "feature_a": ids,
                    "feature_b": m.best_b[ids],
                    "cosine": m.cos_a[ids],
                    "mutual": mutual[ids],
                }
            )
            feature_frames.append(matched)
            score_rows += _paired_scores(a, b, matched, n_boot, n_perm, seed)
    scores = pd.DataFrame(
        score_rows, columns=[c for c in SCORE_COLUMNS if c not in ("p_holm", "significant")] + ["_diff"]
    )
    scores = _significance(scores)
    features = (
        pd.concat(feature_frames, ignore_index=True)
        if feature_frames
        else pd.DataFrame(columns=FEATURE_COLUMNS)
    )
    return MatchingResult(pd.DataFrame(pair_rows, columns=PAIR_COLUMNS), scores, features, skipped)


def _paired_scores(a: Any, b: Any, matched: pd.DataFrame, n_boot: int, n_perm: int, seed: int) -> list[dict]:
    """Per scorer both arms have: A's matched feature vs its B match, paired."""
    rows = []
    for scorer in sorted(set(a.data.scorers) & set(b.data.scorers)):
        sa = a.data.ok_scores(scorer).rename(columns={"feature_id": "feature_a", "score": "score_a"})
        sb = b.data.ok_scores(scorer).rename(columns={"feature_id": "feature_b", "score": "score_b"})
        both = matched.merge(sa, on="feature_a").merge(sb, on="feature_b")
        diff = stats.paired_difference(
            both["score_a"].to_numpy(), both["score_b"].to_numpy(), n_boot, n_perm, seed
        )
        rows.append(
            {
                "scorer": scorer,
                "a": a.label,
                "b": b.label,
                "n_pairs": int(len(both)),
                "mean_a": float(both["score_a"].mean()) if len(both) else float("nan"),
                "mean_b": float(both["score_b"].mean()) if len(both) else float("nan"),
                "diff": diff.diff,
                "ci_low": diff.low,
                "ci_high": diff.high,
                "p_value": diff.p_value,
                "_diff": diff,
            }
        )
    return rows


def _significance(scores: pd.DataFrame) -> pd.DataFrame:
    """Holm within each scorer, as `compare.pairwise` does for the unpaired tests."""
    scores = scores.copy()
    scores["p_holm"] = np.nan
    scores["significant"] = False
    for _, idx in scores.groupby("scorer").groups.items():
        adjusted = stats.holm_adjust(scores.loc[idx, "p_value"].tolist())
        scores.loc[idx, "p_holm"] = adjusted
        scores.loc[idx, "significant"] = [
            stats.is_significant(d, p) for d, p in zip(scores.loc[idx, "_diff"], adjusted, strict=True)
        ]
    return scores.drop(columns="_diff")[SCORE_COLUMNS]
